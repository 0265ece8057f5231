"""The daemon's HTTP listener (off unless ``metrics`` is configured): Prometheus
metrics at /metrics (metrics.py), built by server.make_app. It reads the daemon's
objects on the event loop and changes nothing; nothing below vsand/web imports it."""
