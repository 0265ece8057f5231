"""asyncio adapter: listeners, per-connection protocol, dispatch to block devices."""
