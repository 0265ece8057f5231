"""Management RPC: msgpack frames over a UNIX socket (mode 0600).

schema.py is all the CLI imports; server.py and handlers.py run in the daemon."""
