"""role.kind: what `lun list --kind` selects, for every role an LD can have."""

from __future__ import annotations

import pytest

from vsand.disk.role import Role, kind


@pytest.mark.parametrize("role,attrs,want", [
    (Role.LUN, {}, "lun"),
    (Role.SNAPSHOT, {"snapshot_of": "a"}, "snapshot"),
    (Role.RESERVED_SNAPSHOT, {"snapshot_of": "a"}, "snapshot"),
    (Role.INVALID, {"snapshot_of": "a"}, "snapshot"),        # invalidated: what it was made as
    (Role.COPYING_CLONE, {"snapclone_of": "a"}, "snapclone"),
    (Role.CLONE, {"snapclone_of": "a"}, "snapclone"),
    (Role.INVALID, {"snapclone_of": "a"}, "snapclone"),
])
def test_kind(role, attrs, want):
    assert kind(role, attrs) == want
