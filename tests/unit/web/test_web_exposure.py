"""Which bound addresses of the HTTP listener get the start-up warning (vsand/web/server.py)."""

from __future__ import annotations

import pytest

from vsand.web.server import loopback


@pytest.mark.parametrize("host", ["127.0.0.1", "127.3.4.5", "::1", "::ffff:127.0.0.1"])
def test_loopback_addresses_are_quiet(host):
    assert loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "10.0.0.1", "fe80::1%eth0",
                                  "2001:db8::1", "storage-host", ""])
def test_every_other_address_is_warned_of(host):
    assert not loopback(host)
