"""Running the application: listening socket, TLS, and a guard against connections that never finish a request.

aiohttp has no timeout for reading a request's headers, so a client that sends them a byte at a time
(slowloris) would hold its connection forever; the guard closes any connection that has not delivered a
complete request within ``handshake_timeout``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

from aiohttp import web

from . import keys
from .config import Settings

log = logging.getLogger("relay.server")


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if not settings.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.tls_cert, settings.tls_key or None)
    return context


class HandshakeGuard:
    """A protocol factory around aiohttp's that times out connections without a request."""

    def __init__(self, factory: Any, app: web.Application, timeout: float) -> None:
        self.factory, self.app, self.timeout = factory, app, timeout

    def __call__(self) -> Any:
        protocol = self.factory()
        asyncio.get_running_loop().call_later(self.timeout, self._check, protocol)
        return protocol

    def _check(self, protocol: Any) -> None:
        if self.app[keys.HANDSHAKEN].pop(id(protocol), None) is not None:
            return
        transport = protocol.transport
        if transport is not None and not transport.is_closing():
            peer = transport.get_extra_info("peername")
            log.warning("connection closed peer=%s reason=%r", peer and peer[0], "no complete request within "
                        f"{self.timeout:g}s (handshake timeout)")
            self.app[keys.METRICS].refused.labels("handshake_timeout").inc()
            transport.close()


@web.middleware
async def mark_handshaken(request: web.Request, handler: Any) -> web.StreamResponse:
    """A request arrived whole on this connection: the guard leaves it alone."""
    request.app[keys.HANDSHAKEN][id(request.protocol)] = True
    return await handler(request)


class Server:
    """The relay listening on host:port, with TLS when configured."""

    def __init__(self, app: web.Application, settings: Settings) -> None:
        self.app, self.settings = app, settings
        self.runner = web.AppRunner(app, handle_signals=False, access_log=None)
        self.listener: asyncio.AbstractServer | None = None
        self.port = settings.port

    async def start(self) -> "Server":
        await self.runner.setup()
        guard = HandshakeGuard(self.runner.server, self.app, self.settings.handshake_timeout)
        context = ssl_context(self.settings)
        self.listener = await asyncio.get_running_loop().create_server(
            guard, self.settings.host, self.settings.port, ssl=context, reuse_address=True, backlog=1024)
        self.port = self.listener.sockets[0].getsockname()[1]
        scheme = "https" if context else "http"
        log.info("relay listening on %s://%s:%d", scheme, self.settings.host, self.port)
        return self

    async def stop(self) -> None:
        if self.listener is not None:
            self.listener.close()
        await self.runner.cleanup()
