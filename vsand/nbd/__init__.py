"""Sans-IO NBD protocol (server side): bytes in -> events, replies -> bytes.

Imports only the standard library; knows nothing of storage or asyncio.
"""
