"""vsand: a userspace block-storage daemon (pooled drives, RAID LUNs, snapshots, NBD)."""

__version__ = "0.1.0"
