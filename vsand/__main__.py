"""`vsand`: the daemon (`vsand --state-dir DIR ...`) and the offline checker (`vsand check`)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "check":
        from .cli.check import main as check_main
        return check_main(argv[1:])
    from .daemon import main as daemon_main
    return daemon_main(argv)


if __name__ == "__main__":
    sys.exit(main())
