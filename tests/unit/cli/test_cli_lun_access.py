"""How vsanctl shows and takes a LUN's access rules (vsand/cli/lun.py)."""

from __future__ import annotations

from vsand.cli.lun import access, name_list, render_list, render_one

BASE = {"name": "db", "id": 3, "size": 1 << 20, "allocated": 0, "raid": 5, "ldad": "default",
        "state": "ok", "kind": "lun"}


def test_no_rules():
    assert access(BASE) == "-"
    out = render_one(BASE)
    assert "allowed certs" not in out and "read-only for" not in out
    head, row = render_list([BASE]).splitlines()
    assert row[head.index("ACCESS"):].split()[0] == "-"


def test_rules_shown_in_show_and_list():
    i = dict(BASE, allow_cert=["app1", "backup"], readonly_for=["10.0.0.0/8", "cert:rep"])
    assert access(i) == "certs=app1,backup;ro=10.0.0.0/8,cert:rep"
    out = render_one(i).splitlines()
    assert "allowed certs  app1, backup" in out and "read-only for  10.0.0.0/8, cert:rep" in out
    assert not any(ln.startswith(("allow-cert", "readonly-for")) for ln in out)   # not repeated raw
    head, row = render_list([i]).splitlines()
    col = head.index("ACCESS")
    assert row[col:].split()[0] == "certs=app1,backup;ro=10.0.0.0/8,cert:rep"
    assert access(dict(BASE, readonly_for=["::1/128"])) == "ro=::1/128"


def test_name_lists():
    assert name_list("") == [] and name_list("  ") == []
    assert name_list("a, b") == ["a", "b"]
    assert name_list("a,,b") == ["a", "", "b"]      # the daemon refuses the empty name
