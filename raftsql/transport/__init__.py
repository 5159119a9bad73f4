"""Peer traffic: the versioned frame codec and the aiohttp WebSocket transport."""

from raftsql.transport.websocket import Transport

__all__ = ["Transport"]
