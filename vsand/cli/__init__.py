"""Command-line front ends: `vsanctl` command groups and `vsand` offline tools."""
