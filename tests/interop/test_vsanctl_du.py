"""Space accounting through a real daemon: data written, overwritten and trimmed by
an NBD client (nbdsh), snapshots of the LUN and of a snapshot, then the exact
figures of `vsanctl du` and `lun list -o ... --bytes`, the list filters, their
errors, and deletes freeing exactly what EXCLUSIVE said."""

from __future__ import annotations

import pytest
from test_clients_libnbd import need_nbdsh, nbdsh
from test_vsanctl import ctl, js

MiB = 1 << 20
FIGS = ("provisioned", "allocated", "referenced", "exclusive", "shared")


def mib(a, r, x) -> dict:
    """Expected figures of a 64 MiB LD, in MiB: allocated, referenced, exclusive."""
    return {"provisioned": 64 * MiB, "allocated": a * MiB, "referenced": r * MiB,
            "exclusive": x * MiB, "shared": (r - x) * MiB}


def du_rows(daemon, *name) -> dict[str, dict]:
    out = js(daemon, "du", *name)
    return {u["name"]: {k: u[k] for k in FIGS} for c in out["chains"] for u in c["lds"]}


def pool_allocated(daemon) -> int:
    return js(daemon, "du")["pool"]["allocated"]


@pytest.fixture(scope="module")
def chain(daemon):
    """db (64 MiB RAID5): segments 0-7 written; snapshot db-s1; db overwrites 0-1
    whole, writes 4 KiB into segment 16, trims segment 7; snapshot db-s1a of db-s1,
    which writes 4 KiB into segment 20. Chain: db-s1a <-> db-s1 <-> db."""
    need_nbdsh()
    ctl(daemon, "lun", "create", "db", "--size", "64M")
    nbdsh(daemon.uri("db"), "h.pwrite(b'\\x11' * (8 << 20), 0); h.flush()")
    ctl(daemon, "snapshot", "create", "db", "db-s1")
    nbdsh(daemon.uri("db"), """
        h.pwrite(b'\\x22' * (2 << 20), 0)
        h.pwrite(b'\\x33' * 4096, 16 << 20)
        h.trim(1 << 20, 7 << 20)
        h.flush()
    """)
    ctl(daemon, "snapshot", "create", "db-s1", "db-s1a")
    nbdsh(daemon.uri("db-s1a"), "h.pwrite(b'\\x44' * 4096, 20 << 20); h.flush()")
    return ["db-s1a", "db-s1", "db"]


def test_du_figures_exact(daemon, chain):
    rows = du_rows(daemon, "db")
    assert list(rows) == chain                       # the chain, oldest first
    assert rows["db"] == mib(8, 8, 3)               # owns 0-6, 16; db-s1 reads 2-6 through it
    assert rows["db-s1"] == mib(3, 8, 0)            # old 0, 1, 7; db-s1a reads them all through it
    assert rows["db-s1a"] == mib(1, 9, 1)           # its own segment 20
    out = js(daemon, "du", "db")
    assert [c["allocated"] for c in out["chains"]] == [12 * MiB]
    assert out["pool"]["allocated"] == 12 * MiB     # nothing else in this daemon yet
    st = js(daemon, "status")
    assert (out["pool"]["capacity"], out["pool"]["free"]) == (st["capacity"], st["free"])
    # RAID5: 12 segments in 2 RStores of 5 PSEGs
    assert out["pool"]["physical"] == 2 * 5 * 2 * MiB


def test_du_human_and_bytes(daemon, chain):
    lines = ctl(daemon, "du", "db").stdout.splitlines()
    assert lines[0].split() == ["NAME", "PROVISIONED", "ALLOCATED", "REFERENCED", "EXCLUSIVE", "SHARED"]
    assert lines[1].split() == ["db-s1a", "64", "MiB", "1", "MiB", "9", "MiB", "1", "MiB", "8", "MiB"]
    assert lines[3].split() == ["db", "64", "MiB", "8", "MiB", "8", "MiB", "3", "MiB", "5", "MiB"]
    assert lines[4].split() == ["<chain", "db>", "192", "MiB", "12", "MiB"]
    # 8 drives of 1 GiB less 64 MiB of quorum space each
    assert lines[5].startswith("pool: capacity 7.50 GiB, used ") and "data 12 MiB allocated in 20 MiB" in lines[5]
    exact = ctl(daemon, "du", "db", "--bytes").stdout.splitlines()
    assert exact[2].split() == ["db-s1", str(64 * MiB), str(3 * MiB), str(8 * MiB), "0", str(8 * MiB)]


def test_lun_list_columns_bytes(daemon, chain):
    out = ctl(daemon, "lun", "list", "--chain", "db", "-o", "name,kind,origin,allocated,referenced,"
              "exclusive,shared,provisioned", "--bytes").stdout.splitlines()
    assert out[0].split() == ["NAME", "KIND", "ORIGIN", "ALLOCATED", "REFERENCED", "EXCLUSIVE", "SHARED",
                              "PROVISIONED"]
    assert [ln.split()[0] for ln in out[1:]] == chain
    row = next(ln for ln in out if ln.startswith("db "))
    assert row.split() == ["db", "lun", "-", str(8 * MiB), str(8 * MiB), str(3 * MiB), str(5 * MiB),
                           str(64 * MiB)]
    row = next(ln for ln in out if ln.startswith("db-s1a "))
    assert row.split() == ["db-s1a", "snapshot", "of", "db-s1", "db-s1", str(MiB), str(9 * MiB), str(MiB),
                           str(8 * MiB), str(64 * MiB)]
    # human units by default; the default columns stay as they were
    human = ctl(daemon, "lun", "list", "--chain", "db", "-o", "name,referenced").stdout.splitlines()
    assert human[1].split() == ["db-s1a", "9", "MiB"]
    assert ctl(daemon, "lun", "list").stdout.splitlines()[0].split() == \
        ["NAME", "SIZE", "ALLOCATED", "RAID", "MODE", "ACCESS", "LDAD", "KIND", "STATE"]
    infos = {i["name"]: i for i in js(daemon, "lun", "list")}
    assert {k: infos["db-s1"][k] for k in FIGS} == mib(3, 8, 0)
    show = js(daemon, "lun", "show", "db")
    assert {k: show[k] for k in FIGS} == mib(8, 8, 3)
    assert "referenced   8 MiB (8388608 bytes)" in ctl(daemon, "lun", "show", "db").stdout


def test_lun_list_filters(daemon, chain):
    ctl(daemon, "lun", "create", "other", "--size", "16M")
    ctl(daemon, "snapclone", "create", "other", "other-c")   # unwritten: BGCOPY copies nothing

    def names(*args):
        return [i["name"] for i in js(daemon, "lun", "list", *args)]
    assert names("--snapshots-of", "db") == ["db-s1"]
    assert names("--snapshots-of", "db-s1") == ["db-s1a"]
    assert names("--snapshots-of", "other") == ["other-c"]
    assert names("--chain", "db-s1") == chain
    assert names("--chain", "db", "--kind", "snapshot") == ["db-s1a", "db-s1"]
    assert names("--kind", "snapclone") == ["other-c"]
    assert names("--kind", "lun") == ["db", "other"]
    assert names("--snapshots-of", "db", "--kind", "lun") == []
    assert ctl(daemon, "lun", "list", "--snapshots-of", "db", "--kind", "lun").stdout.strip() == "no LUNs match"


@pytest.mark.parametrize("args,rc,msg", [
    (["-o", "name,bogus"], 2, "unknown column 'bogus' (valid: name,id,kind,origin,size,provisioned,"),
    (["-o", ""], 2, "unknown column"),
    (["--kind", "volume"], 2, "invalid choice: 'volume'"),
    (["--snapshots-of", "nosuch"], 1, "nosuch"),
    (["--chain", "nosuch"], 1, "nosuch"),
])
def test_lun_list_errors(daemon, chain, args, rc, msg):
    r = ctl(daemon, "lun", "list", *args, rc=rc)
    assert msg in r.stderr


def test_du_unknown_name(daemon, chain):
    assert "nosuch" in ctl(daemon, "du", "nosuch", rc=1).stderr


def test_deletes_free_exactly_exclusive(daemon, chain):
    """Runs last: deletes the chain, one LD at a time, middle first."""
    for name in ("db-s1", "db-s1a", "db"):
        excl = du_rows(daemon, name)[name]["exclusive"]
        before = pool_allocated(daemon)
        # --force: db-s1a names db-s1 as its origin (it keeps its data, which is the point)
        ctl(daemon, "snapshot" if name != "db" else "lun", "delete", name, "--force")
        assert before - pool_allocated(daemon) == excl, name
        if name == "db-s1":
            # db-s1's old segments 0, 1 and 7 passed to db-s1a: now its own
            assert du_rows(daemon, "db-s1a")["db-s1a"] == mib(4, 9, 4)
            # the origin is remembered by name after it is gone
            assert [i["name"] for i in js(daemon, "lun", "list", "--snapshots-of", "db-s1")] == ["db-s1a"]
    out = js(daemon, "du")
    assert out["pool"]["allocated"] == sum(u["allocated"] for c in out["chains"] for u in c["lds"])
