"""README's vsanctl synopsis lists every command vsanctl has (issue 13 finding 10:
the synopsis had fallen behind the CLI), and every `make run` variable is documented."""

from __future__ import annotations

import argparse
import os
import re

from vsand.cli.vsanctl import build_parser

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def commands(parser: argparse.ArgumentParser, prefix: str = "") -> list[str]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [prefix.strip()]
    out = []
    for name, p in subs[0].choices.items():
        out += commands(p, f"{prefix}{name} ")
    return out


def synopsis() -> str:
    text = open(os.path.join(ROOT, "README.md")).read()
    m = re.search(r"### The CLI: `vsanctl`\s*```\n(.*?)```", text, re.S)
    assert m, "README has no vsanctl synopsis block"
    return m.group(1)


def test_every_command_is_in_the_readme_synopsis():
    block = synopsis()
    missing = [c for c in commands(build_parser()) if not re.search(rf"\b{re.escape(c)}\b", block)]
    assert not missing, f"README's vsanctl synopsis lacks: {', '.join(missing)}"


def test_make_run_variables_are_documented():
    text = open(os.path.join(ROOT, "README.md")).read()
    makefile = open(os.path.join(ROOT, "Makefile")).read()
    demo = open(os.path.join(ROOT, "scripts", "run_demo.py")).read()
    names = set(re.findall(r"os\.environ\.get\(\"(\w+)\"", demo))
    names |= {v for v in re.findall(r"^(\w+)\s*\?=", makefile, re.M) if v in ("STATE", "PY")}
    assert names, "found no variables to check"
    undocumented = sorted(n for n in names if n not in text)
    assert not undocumented, f"README does not mention {undocumented}"
