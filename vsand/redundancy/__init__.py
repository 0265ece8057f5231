"""RStores: RAID 0/1/5 geometry, parity, degraded I/O, resync (DESIGN.md §5)."""
