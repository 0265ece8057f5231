"""Drives, quorum space access, PSEG allocation, LDAD / RSS grouping (DESIGN.md §4)."""
