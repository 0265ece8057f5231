"""Persistence: on-disk formats, the metadata log, checkpoints, recovery (DESIGN.md §9)."""
