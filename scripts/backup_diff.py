#!/usr/bin/python3
"""Incremental backup from vsand: copies into BACKUP only the extents of export
NEWER that changed since snapshot SINCE (NBD block-status context
``vsand:changed:SINCE``, flag bit 0 = changed), so a BACKUP that held SINCE
then holds NEWER byte for byte.

    python3 scripts/backup_diff.py "nbd+unix:///db-tue?socket=/var/lib/vsand/nbd.sock" db-mon backup.img

Needs libnbd's Python binding (Debian python3-libnbd, the system python3). Prints
what it copied; --json prints {"extents": [[offset, length], ...], "copied": N}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

CHUNK = 4 << 20          # bytes per read
STATUS = 64 << 20        # bytes asked for per block-status request


def changed_extents(h, ctx: str, size: int) -> list[list[int]]:
    changed: list[list[int]] = []
    off = 0
    while off < size:
        reached = []

        def cb(name, start, entries, err):
            pos = start
            if name != ctx:
                return 0
            for i in range(0, len(entries), 2):
                n, flags = min(entries[i], size - pos), entries[i + 1]
                if flags & 1:
                    if changed and sum(changed[-1]) == pos:
                        changed[-1][1] += n
                    else:
                        changed.append([pos, n])
                pos += n
            reached.append(pos)
            return 0
        h.block_status(min(size - off, STATUS), off, cb)
        if not reached or reached[0] <= off:
            raise SystemExit(f"backup_diff: the server answered no progress at offset {off}")
        off = reached[0]
    return changed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("uri", help="NBD URI of the newer export (a snapshot or the LUN)")
    ap.add_argument("since", help="the snapshot BACKUP holds now")
    ap.add_argument("backup", help="the backup image (a file or block device)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    try:
        import nbd
    except ImportError:
        raise SystemExit("backup_diff: needs libnbd's Python binding (python3-libnbd) and /usr/bin/python3")
    ctx = f"vsand:changed:{a.since}"
    h = nbd.NBD()
    h.add_meta_context(ctx)
    try:
        h.connect_uri(a.uri)
    except nbd.Error as e:
        raise SystemExit(f"backup_diff: cannot connect to {a.uri}: {e}")
    if not h.can_meta_context(ctx):
        raise SystemExit(f"backup_diff: the server does not offer {ctx} on that export "
                         f"(is {a.since} a snapshot in the same chain?)")
    size = h.get_size()
    fd = os.open(a.backup, os.O_WRONLY)
    try:
        have = os.lseek(fd, 0, os.SEEK_END)
        if have < size:
            raise SystemExit(f"backup_diff: {a.backup} is {have} bytes, the export {size}: "
                             f"not a full backup of it")
        extents = changed_extents(h, ctx, size)
        copied = 0
        for o, n in extents:
            for p in range(o, o + n, CHUNK):
                m = min(CHUNK, o + n - p)
                os.pwrite(fd, h.pread(m, p), p)
                copied += m
        os.fsync(fd)
    finally:
        os.close(fd)
    h.shutdown()
    if a.json:
        print(json.dumps({"extents": extents, "copied": copied}))
    else:
        print(f"copied {copied} bytes in {len(extents)} extents of {size}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
