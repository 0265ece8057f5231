"""Access control for NBD clients against a real daemon (issue 14 item 4).

- The TCP listener's allowlist (``nbd_allow``): a client from 127.0.0.1 when only
  127.0.0.2/32 is allowed gets the greeting and ERR_POLICY for every option but
  ABORT (EXPORT_NAME: closed), one WARNING per connection; a client bound to
  127.0.0.2 is served; nbdinfo says why it was refused; UNIX clients are not bound.
- Per-LUN rules (``vsanctl lun set --allow-cert / --readonly-for``): read-only for
  an address (qemu-io, nbdsh, raw requests: EPERM; reads work; another address
  writes), an allowed-certificate rule refusing plain-TCP clients (LIST omits the
  export), rules surviving a restart and a kill -9, and the vsanctl error paths.

Certificate names are tested at unit level (tests/unit/test_access_rules.py) and
end to end once TLS client certificates exist.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import struct
import subprocess
import time

import pytest

from daemonkit import SYS_PY, VSAND, Daemon, healthy, need, run, vsanctl
from test_nbd_bad_input import Conn
from test_vsanctl import ctl, js
from vsand.nbd import constants as C
from vsand.server.nbd_server import MAX_OUTSIDERS, OUTSIDER_TIMEOUT

MiB = 1 << 20
ALLOWED = "127.0.0.2"          # the one address the allowlist daemon serves over TCP
REFUSED = "127.0.0.1"


def qemu_io(uri, cmd, *flags, check=True):
    return run(["qemu-io", "-f", "raw", *flags, "-c", cmd, uri], check=check, timeout=60)


def tcp_uri(d, name: str) -> str:
    return d.uri(name, tcp=True)


def go(c: Conn, name: str) -> list[tuple[int, bytes]]:
    nb = name.encode()
    c.option(C.OPT_GO, struct.pack(">I", len(nb)) + nb + b"\x00\x00")
    return c.opt_final(C.OPT_GO)


def ro_flag(got) -> bool:
    """READ_ONLY in a successful GO's NBD_INFO_EXPORT."""
    info = [x for t, x in got if t == C.REP_INFO and x[:2] == b"\x00\x00"]
    return bool(struct.unpack(">HQH", info[0])[2] & C.FLAG_READ_ONLY)


def listed(c: Conn) -> list[str]:
    c.option(C.OPT_LIST)
    got = c.opt_final(C.OPT_LIST)
    assert got[-1] == (C.REP_ACK, b""), got
    return [d[4:4 + struct.unpack_from(">I", d)[0]].decode() for t, d in got if t == C.REP_SERVER]


def opened(d, source: str | None = None, transport: str = "tcp", host: str = "127.0.0.1") -> Conn:
    c = Conn(d, transport, source=source, host=host)
    c.greeting()
    c.send(struct.pack(">I", C.FLAG_C_FIXED_NEWSTYLE | C.FLAG_C_NO_ZEROES))
    return c


def wait_log(d, text: str, count: int = 1) -> str:
    deadline = time.monotonic() + 15
    while d.read_log().count(text) < count:
        assert time.monotonic() < deadline, f"no {count}x {text!r} in the log:\n{d.read_log()}"
        time.sleep(0.05)
    return d.read_log()


def idle(d) -> None:
    """Every probe so far has closed: the daemon is done with them, alive, no traceback."""
    deadline = time.monotonic() + 30
    while d.ctl("status")["connections"]:
        assert time.monotonic() < deadline, d.ctl("status")
        time.sleep(0.05)
    healthy(d)
    assert "internal error" not in d.read_log()


# ---- the listener's allowlist ----------------------------------------------------------
@pytest.fixture(scope="module")
def walled(tmp_path_factory):
    """A daemon whose TCP listener serves 127.0.0.2 and ::1 only (set in its TOML file)."""
    state = tmp_path_factory.mktemp("acl-walled")
    cfg = state / "vsand.toml"
    cfg.write_text(f'nbd_allow = ["{ALLOWED}/32", "::1"]\n')
    d = Daemon(state, drives=6, drive_size="256M", extra=["--config", str(cfg)]).start()
    d.ctl("lun.create", name="wall", size=16 * MiB, raid=5)
    yield d
    assert d.stop() == 0, d.read_log()


OPTIONS = [  # every option a client may send, with well-formed data
    (C.OPT_LIST, b""),
    (C.OPT_INFO, struct.pack(">I", 4) + b"wall" + b"\x00\x00"),
    (C.OPT_GO, struct.pack(">I", 4) + b"wall" + b"\x00\x00"),
    (C.OPT_STRUCTURED_REPLY, b""),
    (C.OPT_STARTTLS, b""),
    (C.OPT_LIST_META_CONTEXT, struct.pack(">I", 4) + b"wall" + struct.pack(">I", 0)),
    (C.OPT_SET_META_CONTEXT, struct.pack(">I", 4) + b"wall" + struct.pack(">I", 0)),
    (4, b""),                     # PEEK_EXPORT (withdrawn)
    (11, b""),                    # EXTENDED_HEADERS
    (0x1234, b"anything"),        # unknown
]


def test_refused_address_gets_err_policy_for_every_option(walled):
    before = walled.read_log().count("refused: address")
    c = opened(walled, REFUSED)
    for o, data in OPTIONS:
        c.option(o, data)
        [(t, msg)] = c.opt_final(o)
        assert t == C.REP_ERR_POLICY, (o, t, msg)
        assert msg == f"address {REFUSED} is not allowed on this listener (nbd_allow)".encode()
    c.option(C.OPT_ABORT)
    assert c.opt_final(C.OPT_ABORT) == [(C.REP_ACK, b"")]
    assert c.closed_by_server()
    c.close()
    log = wait_log(walled, "refused: address", before + 1)
    line = [ln for ln in log.splitlines() if "refused: address" in ln][-1]
    assert "WARNING" in line and f"connection {REFUSED}:" in line, line
    # one line per connection, however many options it sent
    assert log.count("refused: address") == before + 1
    idle(walled)


def test_refused_address_export_name_closes(walled):
    c = opened(walled, REFUSED)
    c.option(C.OPT_EXPORT_NAME, b"wall")
    assert c.closed_by_server()         # no reply exists for EXPORT_NAME: the session ends
    c.close()
    idle(walled)


def test_allowed_address_is_served(walled):
    c = opened(walled, ALLOWED)
    assert listed(c) == ["wall"]
    got = go(c, "wall")
    assert got[-1] == (C.REP_ACK, b""), got
    c.write(0, b"\x5a" * 4096)
    assert c.read(0, 4096) == b"\x5a" * 4096
    c.request(C.CMD_DISC)
    c.close()
    idle(walled)
    assert not [ln for ln in walled.read_log().splitlines() if "refused" in ln and ALLOWED in ln]


def test_nbdinfo_refused_with_the_reason(walled):
    need("nbdinfo")
    r = run(["nbdinfo", tcp_uri(walled, "wall")], check=False)
    assert r.returncode != 0
    assert "server replied with error to opt_go request" in r.stderr, r.stderr
    # libnbd shows the server's message in its debug output (its error text says only
    # "Operation not supported" for ERR_POLICY)
    r = run(["nbdinfo", tcp_uri(walled, "wall")], check=False, env=dict(os.environ, LIBNBD_DEBUG="1"))
    assert r.returncode != 0
    assert (f"server error message: address {REFUSED} is not allowed on this listener (nbd_allow)"
            in r.stderr), r.stderr[-3000:]
    # the UNIX socket is governed by its file permissions, not by nbd_allow
    out = json.loads(run(["nbdinfo", "--json", walled.uri("wall")]).stdout)
    assert out["exports"][0]["export-size"] == 16 * MiB
    idle(walled)


@pytest.mark.parametrize("bad, why", [
    (["--nbd-allow", "127.0.0.300"], "not an address or network: '127.0.0.300'"),
    (["--nbd-allow", "10.0.0.1/8"], "has host bits set"),
    (["--nbd-allow", "localhost"], "not an address or network: 'localhost'"),
])
def test_bad_allowlist_flag_refuses_the_start(tmp_path, bad, why):
    r = subprocess.run(VSAND + ["--state-dir", str(tmp_path / "s"), *bad], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and why in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    assert not (tmp_path / "s").exists()            # refused before anything was made


def test_bad_allowlist_key_refuses_the_start(tmp_path):
    cfg = tmp_path / "vsand.toml"
    for text, why in (('nbd_allow = ["::1", "fe80::/3g"]\n', "nbd_allow: not an address or network"),
                      ('nbd_allow = "127.0.0.1"\n', "nbd_allow: expected a list")):
        cfg.write_text(text)
        r = subprocess.run(VSAND + ["--state-dir", str(tmp_path / "s"), "--config", str(cfg)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and why in r.stderr, r.stderr


def test_ipv6_loopback_allowlist_and_rules(tmp_path):
    """A listener on [::1]: ::1 admitted by nbd_allow, and a --readonly-for ::1 rule
    matched (IPv6 refusals: tests/unit/test_access_rules.py)."""
    d = Daemon(tmp_path / "state", drives=6, drive_size="256M")
    d.args += ["--listen", f"[::1]:{d.port}", "--nbd-allow", "::1"]
    d.start()
    try:
        d.ctl("lun.create", name="v6ro", size=16 * MiB, raid=0)
        d.ctl("lun.create", name="v6rw", size=16 * MiB, raid=0)
        ctl(d, "lun", "set", "v6ro", "--readonly-for", "::1")
        c = opened(d, host="::1")
        assert listed(c) == ["v6ro", "v6rw"]
        got = go(c, "v6ro")
        assert got[-1] == (C.REP_ACK, b"") and ro_flag(got)
        ck = c.request(C.CMD_WRITE, 0, 512, payload=b"\x66" * 512)
        assert c.reply_errno(ck) == C.EPERM
        c.close()
        c = opened(d, host="::1")
        got = go(c, "v6rw")
        assert not ro_flag(got)
        c.write(0, b"\x77" * 512)
        c.close()
        idle(d)
    finally:
        d.stop()


# ---- per-LUN rules ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def open_d(tmp_path_factory):
    """A daemon that serves every address (no allowlist)."""
    d = Daemon(tmp_path_factory.mktemp("acl-open"), drives=6, drive_size="256M").start()
    yield d
    assert d.stop() == 0, d.read_log()


def test_readonly_for_an_address(open_d):
    need("qemu-io")
    d = open_d
    ctl(d, "lun", "create", "shared", "--size", "16M")
    qemu_io(tcp_uri(d, "shared"), "write -P 0xab 0 64k")
    out = js(d, "lun", "set", "shared", "--readonly-for", REFUSED)
    assert out["readonly_for"] == [f"{REFUSED}/32"]
    uri = tcp_uri(d, "shared")            # qemu-io and nbdsh connect from 127.0.0.1

    r = qemu_io(uri, "write -P 0xcd 0 4k", check=False)
    assert r.returncode != 0 and "permission denied" in (r.stdout + r.stderr).lower(), r
    qemu_io(uri, "read -P 0xab 0 64k", "-r")          # reads work
    if shutil.which("nbdsh") and run([SYS_PY, "-c", "import nbd"], check=False).returncode == 0:
        env = dict(os.environ, PATH="/usr/bin:" + os.environ.get("PATH", ""))
        script = ("print('RO', h.is_read_only())\nh.set_strict_mode(0)\n"
                  "try:\n    h.pwrite(b'\\xcd' * 4096, 0)\nexcept nbd.Error as e:\n    print('ERR', e.errno)\n"
                  "else:\n    print('WROTE')\n")
        r = run(["nbdsh", "-u", uri, "-c", script], env=env, timeout=60)
        assert r.stdout.split() == ["RO", "True", "ERR", "EPERM"], r.stdout

    # a raw client: READ_ONLY in the flags, and every write-type command EPERM
    c = opened(d, REFUSED)
    assert ro_flag(go(c, "shared"))
    for cmd, length, payload in ((C.CMD_WRITE, 512, b"\xee" * 512), (C.CMD_TRIM, 4096, b""),
                                 (C.CMD_WRITE_ZEROES, 4096, b"")):
        ck = c.request(cmd, 0, length, payload=payload)
        assert c.reply_errno(ck) == C.EPERM, cmd
    assert c.read(0, 512) == b"\xab" * 512
    c.close()

    # another address writes; the read-only client sees what it wrote
    c = opened(d, ALLOWED)
    assert not ro_flag(go(c, "shared"))
    c.write(0, b"\x11" * 4096)
    c.close()
    qemu_io(uri, "read -P 0x11 0 4k", "-r")
    # a UNIX client is not bound by address rules
    qemu_io(d.uri("shared"), "write -P 0x22 4k 4k")
    idle(d)


def test_rule_change_applies_to_new_connections(open_d):
    d = open_d
    ctl(d, "lun", "create", "later", "--size", "16M")
    old = opened(d, REFUSED)
    assert go(old, "later")[-1] == (C.REP_ACK, b"")
    ctl(d, "lun", "set", "later", "--readonly-for", "127.0.0.0/30", "--readonly-for", "cert:reports")
    old.write(0, b"\x33" * 512)             # the connection keeps the access it was given
    new = opened(d, REFUSED)
    assert ro_flag(go(new, "later"))
    ck = new.request(C.CMD_WRITE, 0, 512, payload=b"\x44" * 512)
    assert new.reply_errno(ck) == C.EPERM
    assert new.read(0, 512) == b"\x33" * 512
    old.close()
    new.close()
    assert js(d, "lun", "show", "later")["readonly_for"] == ["127.0.0.0/30", "cert:reports"]
    assert "readonly_for" not in js(d, "lun", "set", "later", "--readonly-for", "")
    c = opened(d, REFUSED)
    assert not ro_flag(go(c, "later"))
    c.write(0, b"\x55" * 512)               # cleared: read-write again
    c.close()
    idle(d)


def test_allow_cert_refuses_plain_tcp_clients(open_d):
    d = open_d
    ctl(d, "lun", "create", "secret", "--size", "16M")
    ctl(d, "lun", "create", "public", "--size", "16M")
    out = ctl(d, "lun", "set", "secret", "--allow-cert", "db1.example,backup").stdout
    assert re.search(r"^allowed certs +backup, db1.example$", out, re.M), out
    row = next(ln for ln in ctl(d, "lun", "list").stdout.splitlines() if ln.startswith("secret "))
    assert " certs=backup,db1.example " in row, row
    ctl(d, "snapshot", "create", "secret", "secret-snap")     # a copy starts with the rules

    c = opened(d, REFUSED)
    names = listed(c)
    assert "public" in names and "secret" not in names and "secret-snap" not in names, names
    # a policy refusal with the reason; a missing export stays unknown
    for o in (C.OPT_INFO, C.OPT_GO):
        c.option(o, struct.pack(">I", 6) + b"secret" + b"\x00\x00")
        [(t, msg)] = c.opt_final(o)
        assert t == C.REP_ERR_POLICY and b"no verified client certificate" in msg, (t, msg)
        c.option(o, struct.pack(">I", 6) + b"secreT" + b"\x00\x00")
        assert c.opt_final(o) == [(C.REP_ERR_UNKNOWN, b"no export named 'secreT'")]
    assert go(c, "public")[-1] == (C.REP_ACK, b"")
    c.close()
    c = opened(d, REFUSED)
    c.option(C.OPT_EXPORT_NAME, b"secret-snap")
    assert c.closed_by_server()
    c.close()
    log = wait_log(d, "refused export secret-snap")
    line = [ln for ln in log.splitlines() if "refused export secret:" in ln][0]
    assert "WARNING" in line and "no verified client certificate" in line, line   # the real reason
    if shutil.which("nbdinfo"):
        r = run(["nbdinfo", tcp_uri(d, "secret")], check=False, env=dict(os.environ, LIBNBD_DEBUG="1"))
        assert r.returncode != 0 and "server error message: no verified client certificate" in r.stderr, \
            r.stderr[-3000:]
        r = run(["nbdinfo", "--list", f"nbd://127.0.0.1:{d.port}"])
        assert "public" in r.stdout and "secret" not in r.stdout, r.stdout
        run(["nbdinfo", d.uri("secret")])      # UNIX: file permissions decide
    ctl(d, "lun", "set", "secret", "--allow-cert", "")
    assert "allow_cert" not in js(d, "lun", "show", "secret")
    c = opened(d, REFUSED)
    assert "secret" in listed(c) and go(c, "secret")[-1] == (C.REP_ACK, b"")
    c.close()
    idle(d)


@pytest.mark.parametrize("args, msg", [
    (["lun", "set", "nope", "--allow-cert", "a"], "vsanctl: lun set: no logical disk named 'nope'"),
    (["lun", "set", "nope", "--readonly-for", "bogus"], "vsanctl: lun set: no logical disk named 'nope'"),
    (["lun", "set", "guard", "--readonly-for", "10.0.0.1/8"], "has host bits set"),
    (["lun", "set", "guard", "--readonly-for", "not-a-net"], "not an address or network: 'not-a-net'"),
    (["lun", "set", "guard", "--readonly-for", "cert:"], "empty certificate name"),
    (["lun", "set", "guard", "--allow-cert", "a,,b"], "empty certificate name"),
])
def test_lun_set_errors(open_d, args, msg):
    if not any(i["name"] == "guard" for i in js(open_d, "lun", "list")):
        ctl(open_d, "lun", "create", "guard", "--size", "16M")
    ctl(open_d, "lun", "set", "guard", "--readonly-for", "::1")
    r = ctl(open_d, *args, rc=1)
    assert msg in r.stderr, r.stderr
    assert js(open_d, "lun", "show", "guard")["readonly_for"] == ["::1/128"]   # nothing changed


def test_rules_survive_restart_and_kill(tmp_path):
    d = Daemon(tmp_path / "state", drives=6, drive_size="256M").start()
    try:
        d.ctl("lun.create", name="keep", size=16 * MiB, raid=5)
        ctl(d, "lun", "set", "keep", "--allow-cert", "db1", "--readonly-for", ALLOWED)
        assert d.stop() == 0
        d.start()
        info = js(d, "lun", "show", "keep")
        assert (info["allow_cert"], info["readonly_for"]) == (["db1"], [f"{ALLOWED}/32"])
        c = opened(d, REFUSED)
        assert "keep" not in listed(c)
        c.close()
        # changed, then killed before any orderly shutdown: the change was durable
        ctl(d, "lun", "set", "keep", "--allow-cert", "", "--readonly-for", REFUSED)
        d.stop(signal.SIGKILL)
        d.start()
        info = js(d, "lun", "show", "keep")
        assert "allow_cert" not in info and info["readonly_for"] == [f"{REFUSED}/32"]
        c = opened(d, REFUSED)
        assert ro_flag(go(c, "keep"))
        c.close()
        idle(d)
    finally:
        d.stop()


def test_revert_keep_carries_the_rules(open_d):
    """The snapshot ``lun revert --keep`` makes holds the LUN's old data: it starts
    with the LUN's rules, like any snapshot of it."""
    d = open_d
    ctl(d, "lun", "create", "rvguard", "--size", "16M")
    ctl(d, "lun", "set", "rvguard", "--allow-cert", "db1", "--readonly-for", ALLOWED)
    ctl(d, "snapshot", "create", "rvguard", "rvguard-s1")
    ctl(d, "lun", "revert", "rvguard", "--to", "rvguard-s1", "--keep", "rvguard-before")
    info = js(d, "lun", "show", "rvguard-before")
    assert (info["allow_cert"], info["readonly_for"]) == (["db1"], [f"{ALLOWED}/32"]), info
    c = opened(d, REFUSED)
    assert "rvguard-before" not in listed(c)
    c.close()
    idle(d)


def test_lun_set_warns_of_unguarded_chain(open_d):
    """A rule guards one LD: ``lun set`` names the LDs of its chain (same data)
    that lack it, on stderr, and still sets it."""
    d = open_d
    ctl(d, "lun", "create", "kin", "--size", "16M")
    ctl(d, "snapshot", "create", "kin", "kin-s1")
    ctl(d, "snapshot", "create", "kin", "kin-s2")
    ctl(d, "snapclone", "create", "kin", "kin-c", "--wait")     # copied: out of the chain, same data
    assert "kin-c" not in [i["name"] for i in js(d, "lun", "list", "--chain", "kin")]
    r = vsanctl(d, "lun", "set", "kin", "--allow-cert", "db1")
    warns = [ln for ln in r.stderr.splitlines() if ln.startswith("vsanctl: warning: ")]
    assert len(warns) == 1 and "kin-c, kin-s1, kin-s2" in warns[0] and "allow_cert" in warns[0], r.stderr
    vsanctl(d, "lun", "set", "kin-c", "--allow-cert", "db1", "--readonly-for", ALLOWED)
    assert js(d, "lun", "show", "kin")["allow_cert"] == ["db1"]     # done all the same
    vsanctl(d, "lun", "set", "kin-s1", "--allow-cert", "db1")     # warns of kin-s2
    r = vsanctl(d, "lun", "set", "kin", "--allow-cert", "db1", "--readonly-for", ALLOWED)
    warns = [ln for ln in r.stderr.splitlines() if ln.startswith("vsanctl: warning: ")]
    assert len(warns) == 2, r.stderr
    assert "kin-s2 (its" in warns[0] and "kin-s1" not in warns[0], warns   # s1 has allow_cert
    assert "kin-s1, kin-s2" in warns[1] and "readonly_for" in warns[1], warns
    vsanctl(d, "lun", "set", "kin-s2", "--allow-cert", "db1")
    assert "warning" not in vsanctl(d, "lun", "set", "kin", "--allow-cert", "db1").stderr
    assert "warning" not in vsanctl(d, "lun", "set", "kin", "--readonly-for", "").stderr   # clearing
    assert "warning" in js_err(d, "lun", "set", "kin-s1", "--readonly-for", "::1")


def js_err(d, *args) -> str:
    """stderr of a --json command: its warnings never mix into the JSON."""
    r = vsanctl(d, "--json", *args)
    json.loads(r.stdout)
    return r.stderr


def test_ipv4_mapped_rule_matches_ipv4_clients(open_d):
    """``::ffff:127.0.0.1`` names the IPv4 client 127.0.0.1: kept in IPv4 form, and it
    matches (as written it never would: a client address is judged as IPv4)."""
    d = open_d
    ctl(d, "lun", "create", "mapped", "--size", "16M")
    out = js(d, "lun", "set", "mapped", "--readonly-for", f"::ffff:{REFUSED}")
    assert out["readonly_for"] == [f"{REFUSED}/32"], out
    c = opened(d, REFUSED)
    assert ro_flag(go(c, "mapped"))
    c.close()
    c = opened(d, ALLOWED)
    assert not ro_flag(go(c, "mapped"))
    c.close()
    idle(d)


def test_refused_addresses_hold_no_connection_slots(tmp_path):
    """Connections nbd_allow refuses do not count toward max_connections: idle ones
    from an excluded address leave an allowed client served; they get a short
    handshake deadline, and past a small cap one is closed before the greeting."""
    d = Daemon(tmp_path / "state", drives=4, drive_size="256M",
               extra=["--nbd-allow", ALLOWED, "--max-connections", "3"]).start()
    try:
        d.ctl("lun.create", name="slots", size=16 * MiB, raid=0)
        hold = [opened(d, REFUSED) for _ in range(3)]        # idle, as many as the limit
        c = opened(d, ALLOWED)
        got = go(c, "slots")
        assert got[-1] == (C.REP_ACK, b""), got
        c.write(0, b"\x42" * 512)
        assert c.read(0, 512) == b"\x42" * 512
        hold += [opened(d, REFUSED) for _ in range(MAX_OUTSIDERS - 3)]
        extra = Conn(d, "tcp", source=REFUSED)
        assert extra.closed_by_server()            # no greeting: closed at once
        extra.close()
        wait_log(d, "refused connections are open already")
        # the idle refused ones end on their short deadline (the test waits far less
        # than the 60 s an allowed client's handshake gets)
        for h in hold:
            assert h.closed_by_server(timeout=30)
            h.close()
        wait_log(d, f"handshake not finished within {OUTSIDER_TIMEOUT:g} s", len(hold))
        c.write(512, b"\x43" * 512)                # the served client went on all along
        c.request(C.CMD_DISC)
        c.close()
        idle(d)
    finally:
        d.stop()


def meta_data(name: str, queries=()) -> bytes:
    nb = name.encode()
    return struct.pack(">I", len(nb)) + nb + struct.pack(">I", len(queries)) + b"".join(
        struct.pack(">I", len(q)) + q.encode() for q in queries)


def test_changed_contexts_hide_lds_the_client_may_not_use(open_d):
    """``vsand:changed:<LD>`` names an LD and how it differs: offered on an allowed
    export only for the LDs of its chain this client may use."""
    d = open_d
    ctl(d, "lun", "create", "ctx", "--size", "16M")
    ctl(d, "snapshot", "create", "ctx", "ctx-open")
    ctl(d, "snapshot", "create", "ctx", "ctx-hidden")
    vsanctl(d, "lun", "set", "ctx-hidden", "--allow-cert", "db1")      # warns: its chain lacks it
    c = opened(d, REFUSED)
    c.option(C.OPT_STRUCTURED_REPLY)
    assert c.opt_final(C.OPT_STRUCTURED_REPLY) == [(C.REP_ACK, b"")]
    c.structured = True
    for o, queries in ((C.OPT_LIST_META_CONTEXT, ()), (C.OPT_LIST_META_CONTEXT, ("vsand:",)),
                       (C.OPT_SET_META_CONTEXT, ("base:allocation", "vsand:changed:ctx-open",
                                                 "vsand:changed:ctx-hidden"))):
        c.option(o, meta_data("ctx", queries))
        got = c.opt_final(o)
        assert got[-1] == (C.REP_ACK, b"")
        names = sorted(x[4:].decode() for t, x in got if t == C.REP_META_CONTEXT)
        want = ["vsand:changed:ctx-open"] + (["base:allocation"] if queries != ("vsand:",) else [])
        assert names == sorted(want), (o, queries, names)
    c.option(C.OPT_SET_META_CONTEXT, meta_data("ctx", ["vsand:changed:ctx-hidden"]))
    assert c.opt_final(C.OPT_SET_META_CONTEXT) == [(C.REP_ACK, b"")]     # selects nothing
    assert go(c, "ctx")[-1] == (C.REP_ACK, b"")
    ck = c.request(C.CMD_BLOCK_STATUS, 0, 4096)
    assert c.reply_errno(ck) == C.EINVAL         # no context selected: nothing to report
    c.close()
    # a UNIX client (file permissions decide) is offered every LD of the chain
    c = Conn(d, "unix")
    c.greeting()
    c.send(struct.pack(">I", C.FLAG_C_FIXED_NEWSTYLE | C.FLAG_C_NO_ZEROES))
    c.option(C.OPT_STRUCTURED_REPLY)
    c.opt_final(C.OPT_STRUCTURED_REPLY)
    c.option(C.OPT_LIST_META_CONTEXT, meta_data("ctx", ["vsand:"]))
    got = c.opt_final(C.OPT_LIST_META_CONTEXT)
    assert sorted(x[4:].decode() for t, x in got if t == C.REP_META_CONTEXT) == \
        ["vsand:changed:ctx-hidden", "vsand:changed:ctx-open"]
    c.close()
    idle(d)
