"""The ``io`` setting (drive I/O mode): flag, TOML key, default and bad values."""

from __future__ import annotations

import pytest

from vsand.config import load


def test_io_default_flag_and_toml(tmp_path):
    assert load([]).io == "auto"
    assert load(["--io", "direct"]).io == "direct"
    f = tmp_path / "v.toml"
    f.write_text('io = "buffered"\n')
    assert load(["--config", str(f)]).io == "buffered"
    assert load(["--config", str(f), "--io", "auto"]).io == "auto"      # the flag wins


@pytest.mark.parametrize("how", ["flag", "toml"])
def test_bad_io_value_is_refused_with_the_choices(tmp_path, capsys, how):
    if how == "flag":
        argv = ["--io", "odirect"]
    else:
        f = tmp_path / "v.toml"
        f.write_text('io = "odirect"\n')
        argv = ["--config", str(f)]
    with pytest.raises(SystemExit) as e:
        load(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "'odirect'" in err and "buffered, direct, auto" in err, err
    if how == "toml":
        assert "v.toml: io:" in err, err
