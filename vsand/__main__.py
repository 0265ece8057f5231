"""`vsand`: the daemon entry point (later issues) and offline tools."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "check":
        from .cli.check import main as check_main
        return check_main(argv[1:])
    if argv and argv[0] == "demo":
        from .cli.demo import main as demo_main
        return demo_main(argv[1:])
    print("usage: vsand check STATE_DIR | vsand demo [--state-dir DIR]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
