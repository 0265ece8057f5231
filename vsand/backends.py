"""Where a pool's drives live when they are not local files or block devices.

A backend is a plugin found through the ``vsand.backends`` entry point group (the
RADOS one is ``plugins/rados``); the core never imports one by name. What the
daemon needs of a backend object:

- ``paths(count)``: the drive paths of the pool (those formatted, or ``count`` new);
- ``formatted()``: whether a pool was begun there;
- ``open_drive(path, size)``: a drive with the interface of physical/drive.py;
- ``units``, ``quorum_copies``: how a new pool is formatted;
- ``where()``: the pool's location, for messages;
- ``claim()``: takes ownership or raises Busy naming the owner; ``on_lost``: set by
  the daemon, called once ownership is gone (from any thread): nothing may be
  written after it; ``inspect(live)``: reads without taking it (the checker);
- ``standby(cfg)``: an awaitable that returns once this daemon took the pool over;
  ``beacon(cfg)``: the active side's heartbeats (async context manager);
- ``close(release)``.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from .errors import InvalidArgument

GROUP = "vsand.backends"


def names() -> list[str]:
    return sorted(ep.name for ep in entry_points(group=GROUP))


def load(name: str):
    """The backend class registered as ``name``."""
    found = entry_points(group=GROUP, name=name)
    if not found:
        raise InvalidArgument(f"backend {name!r} is not installed (installed: "
                              f"{', '.join(names()) or 'none'}; the local one is 'files')")
    return next(iter(found)).load()
