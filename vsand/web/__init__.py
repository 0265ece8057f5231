"""The daemon's HTTP listener (off unless ``metrics`` is configured), built by
server.make_app: Prometheus metrics at /metrics (metrics.py) and the status page at
/ (status.py). It reads the daemon's objects on the event loop and changes nothing;
nothing below vsand/web imports it."""
