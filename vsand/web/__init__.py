"""The daemon's HTTP side: the status page (status.py) on the listener of server.py."""
