"""Sizes and space through vsanctl against a real daemon (issue 13): the size hint,
the README and the pool agree; size and space errors speak human units and say
what is needed and what is free; the overcommit warning."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from daemonkit import ROOT, Daemon, healthy, vsanctl

from vsand.cli.lun import SIZE_HELP
from vsand.units import MiB, parse_size

RAW_NUMBER = re.compile(r"\b\d{5,}\b(?! bytes\))")     # a byte count not in "(N bytes)"


def error_line(r) -> str:
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("vsanctl: ") and not r.stdout, r.stderr
    assert not RAW_NUMBER.search(lines[0]), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """4 drives of 256 MiB: 4 x 96 PSEGs of 2 MiB after the quorum space, RAID0 only."""
    d = Daemon(tmp_path_factory.mktemp("space"), drives=4, drive_size="256M",
               overcommit_warn="1.0").start()
    yield d
    d.stop()


def test_the_size_hint_and_the_readme_give_sizes_the_pool_takes(small):
    hinted = re.findall(r"\b\d+[KMGT]\b", SIZE_HELP)
    assert hinted and "1 MiB" in SIZE_HELP
    readme = open(os.path.join(ROOT, "README.md")).read()
    line = re.search(r"Sizes: (.*?)\n(.*?)\n", readme)
    in_readme = re.findall(r"`(\d+[KMGT]?)`", line.group(0))
    assert in_readme and "1 MiB" in line.group(0)
    for i, text in enumerate(sorted(set(hinted + in_readme))):
        assert parse_size(text) % MiB == 0, text
        info = json.loads(vsanctl(small, "--json", "lun", "create", f"hint{i}", "--size", text,
                                  "--raid", "0").stdout)
        assert info["size"] == parse_size(text)
        vsanctl(small, "lun", "delete", f"hint{i}")
    assert "granularity, 1 MiB" in vsanctl(small, "lun", "create", "--help").stdout


def test_size_errors_are_in_human_units(small):
    line = error_line(vsanctl(small, "lun", "create", "odd", "--size", "4096", rc=1))
    assert line == ("vsanctl: lun create: size 4 KiB (4096 bytes) is not a multiple of the LUN "
                    "granularity, 1 MiB (the next is 1 MiB)")
    line = error_line(vsanctl(small, "lun", "create", "odd", "--size", "1537K", rc=1))
    assert "size 1.50 MiB (1573888 bytes)" in line and "(the next is 2 MiB)" in line


def test_space_errors_say_what_is_needed_and_what_is_free(small):
    # thick: all of it now
    line = error_line(vsanctl(small, "lun", "create", "fat", "--size", "1G", "--raid", "0", "--thick", rc=1))
    m = re.search(r"not enough free space in LDAD 'default' for 1 GiB of RAID0: it needs 1 GiB of drive "
                  r"space \(redundancy included\), (\d+) MiB is free", line)
    assert m and 600 < int(m.group(1)) <= 768, line
    assert "fat" not in {i["name"] for i in json.loads(vsanctl(small, "--json", "lun", "list").stdout)}
    # a reserved snapshot: a full copy on top of what is reserved already
    vsanctl(small, "lun", "create", "base", "--size", "512M", "--raid", "0")
    vsanctl(small, "snapshot", "create", "base", "base-r1", "--reserve")
    line = error_line(vsanctl(small, "snapshot", "create", "base", "base-r2", "--reserve", rc=1))
    assert re.search(r"not enough free space to reserve a full copy of base \(512 MiB of RAID0\): with "
                     r"the reservations made already it needs 1 GiB of drive space, \d+ MiB is free$", line), line
    for name in ("base-r1", "base"):
        vsanctl(small, "lun", "delete", name, "--force")
    healthy(small)


def test_overcommit_warning(small):
    """The operation is done; one line on stderr (so --json stays clean) and the log."""
    r = vsanctl(small, "lun", "create", "oc1", "--size", "512M", "--raid", "0")
    assert r.stderr == ""                                    # 512 MiB of 768: fine
    r = vsanctl(small, "--json", "lun", "create", "oc2", "--size", "512M", "--raid", "0")
    assert json.loads(r.stdout)["name"] == "oc2"
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert re.fullmatch(r"vsanctl: warning: LDAD 'default' is overcommitted: its LUNs, clones and reserved "
                        r"snapshots \(1 GiB\) need 1 GiB of drive space when full, more than 1 x its "
                        r"capacity of 768 MiB; writes fail with ENOSPC once it fills \(\d+ MiB free now; "
                        r"the ratio is the daemon's overcommit_warn setting\)", lines[0]), lines[0]
    assert "WARNING LDAD 'default' is overcommitted" in small.read_log()
    vsanctl(small, "lun", "delete", "oc2")
    assert vsanctl(small, "lun", "resize", "oc1", "+128M").stderr == ""
    r = vsanctl(small, "lun", "resize", "oc1", "+512M")      # growing past it warns
    assert r.stderr.startswith("vsanctl: warning: LDAD 'default' is overcommitted") and "(1.12 GiB)" in r.stderr
    r = vsanctl(small, "lun", "resize", "oc1", "640M", "--allow-shrink")
    assert r.stderr == ""
    assert vsanctl(small, "snapshot", "create", "oc1", "oc1-s").stderr == ""    # on demand: not counted
    r = vsanctl(small, "snapshot", "create", "oc1", "oc1-r", "--reserve")
    assert "is overcommitted" in r.stderr and "(1.25 GiB)" in r.stderr
    for name in ("oc1-r", "oc1-s", "oc1"):
        vsanctl(small, "lun", "delete", name, "--force")
    healthy(small)


@pytest.mark.parametrize("how", ["flag", "toml"])
def test_overcommit_ratio_and_off(tmp_path, how):
    d = Daemon(tmp_path / "state", drives=4, drive_size="256M", overcommit_warn="1.0")
    if how == "flag":
        d.args += ["--overcommit-warn", "2"]
    else:
        cfg = tmp_path / "vsand.toml"
        cfg.write_text('overcommit_warn = "off"\n')
        d.args += ["--config", str(cfg)]
        d.args.remove("--overcommit-warn")
        d.args.remove("1.0")
    d.start()
    try:
        assert vsanctl(d, "lun", "create", "a", "--size", "1G", "--raid", "0").stderr == ""
        r = vsanctl(d, "lun", "create", "b", "--size", "1G", "--raid", "0")
        assert ("is overcommitted" in r.stderr and "more than 2 x" in r.stderr) if how == "flag" \
            else r.stderr == ""
    finally:
        d.stop()


def test_a_bad_overcommit_ratio_is_refused_at_start(tmp_path):
    cfg = tmp_path / "vsand.toml"
    cfg.write_text('overcommit_warn = "lots"\n')
    r = subprocess.run([sys.executable, "-m", "vsand", "--config", str(cfg), "--state-dir",
                        str(tmp_path / "s")], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip() == (f"vsand: {cfg}: overcommit_warn: expected a ratio such as 1.0 or 1.5, "
                                f"or off, not 'lots' (see 'vsand --help')")
