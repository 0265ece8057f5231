"""`lun list -o` column parsing and rendering, and `du` rendering (vsand/cli/lun.py,
vsand/cli/du.py), without a daemon: human units, --bytes, chain and total rows."""

from __future__ import annotations

import argparse

import pytest

from vsand.cli import du, lun
from vsand.cli.vsanctl import build_parser

MiB = 1 << 20


def ld(name, alloc, ref, excl, size=64 * MiB, **kw):
    return {"name": name, "size": size, "provisioned": size, "allocated": alloc * MiB,
            "referenced": ref * MiB, "exclusive": excl * MiB, "shared": (ref - excl) * MiB,
            "raid": 5, "ldad": "default", "state": "ok", **kw}


def test_columns_arg():
    assert lun.columns_arg("name,Referenced, exclusive") == ("name", "referenced", "exclusive")
    with pytest.raises(argparse.ArgumentTypeError, match=r"unknown columns 'foo', 'bar' \(valid: name,id,"):
        lun.columns_arg("name,foo,bar")
    with pytest.raises(argparse.ArgumentTypeError, match="unknown column"):
        lun.columns_arg("")


def test_every_column_is_in_the_help():
    p = build_parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices["lun"]
    lst = next(a for a in sub._actions if isinstance(a, argparse._SubParsersAction)).choices["list"]
    text = " ".join(lst.format_help().split())
    assert "from: " + ", ".join(lun.COLUMNS) in text


def test_render_list_human_and_bytes():
    rows = [ld("db", 8, 8, 3), ld("db-s", 3, 8, 0, snapshot_of="db", origin="db")]
    cols = ("name", "kind", "origin", "referenced", "exclusive", "allocated")
    human = lun.render_list(rows, cols).splitlines()
    assert human[0].split() == ["NAME", "KIND", "ORIGIN", "REFERENCED", "EXCLUSIVE", "ALLOCATED"]
    assert human[2].split() == ["db-s", "snapshot", "of", "db", "db", "8", "MiB", "0", "B", "3", "MiB", "(5%)"]
    exact = lun.render_list(rows, cols, exact=True).splitlines()
    assert exact[1].split() == ["db", "lun", "-", str(8 * MiB), str(3 * MiB), str(8 * MiB)]
    assert lun.render_list([], cols) == "no LUNs"
    assert lun.render_list([], cols, filtered=True) == "no LUNs match"


def test_render_du():
    pool = {"capacity": 8 << 30, "used": 40 * MiB, "free": (8 << 30) - 40 * MiB, "physical": 20 * MiB,
            "allocated": 14 * MiB, "reserved": 0, "freeing": MiB}
    r = {"chains": [{"lds": [ld("s", 3, 8, 0), ld("db", 8, 8, 3)], "provisioned": 128 * MiB,
                     "allocated": 11 * MiB},
                    {"lds": [ld("web", 3, 3, 3, size=1 << 30)], "provisioned": 1 << 30, "allocated": 3 * MiB}],
         "pool": pool}
    lines = du.render(r).splitlines()
    assert [ln.split()[0] for ln in lines] == ["NAME", "s", "db", "<chain", "web", "<TOTAL>", "pool:"]
    assert lines[3].split() == ["<chain", "db>", "128", "MiB", "11", "MiB"]
    assert lines[5].split() == ["<TOTAL>", "1.12", "GiB", "14", "MiB"]
    assert lines[6] == ("pool: capacity 8 GiB, used 40 MiB, free 7.96 GiB; data 14 MiB allocated in "
                        "20 MiB of RStores, 0 B reserved, 1 MiB freeing")
    exact = du.render(r, exact=True).splitlines()
    assert exact[2].split() == ["db", str(64 * MiB), str(8 * MiB), str(8 * MiB), str(3 * MiB), str(5 * MiB)]
    one = du.render({"chains": [r["chains"][1]], "pool": pool}).splitlines()
    assert [ln.split()[0] for ln in one] == ["NAME", "web", "pool:"]      # no chain or total row
