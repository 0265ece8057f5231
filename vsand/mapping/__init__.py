"""L2MAP / LMAP / RSD memory representation (DESIGN.md §6): compact arrays, bulk ops."""
