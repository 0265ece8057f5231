"""Logical disks: the I/O path, space, transactions, the pool that composes them."""
