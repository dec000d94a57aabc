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
    """Closes connections that take longer than ``timeout`` to deliver their first whole request. (After a
    response, aiohttp's keep-alive timeout, set to the same value, bounds the wait for the next one.)"""

    def __init__(self, app: web.Application, timeout: float) -> None:
        self.app, self.timeout = app, timeout
        self.factory: Any = None  # aiohttp's protocol factory, once the runner is set up
        self.waiting: set[Any] = set()  # protocols with no request in progress

    def __call__(self) -> Any:
        protocol = self.factory()
        self.waiting.add(protocol)
        asyncio.get_running_loop().call_later(self.timeout, self._check, protocol)
        return protocol

    def arrived(self, protocol: Any) -> None:
        self.waiting.discard(protocol)

    def _check(self, protocol: Any) -> None:
        if protocol not in self.waiting:
            return
        self.waiting.discard(protocol)
        transport = protocol.transport
        if transport is not None and not transport.is_closing():
            peer = transport.get_extra_info("peername")
            log.warning("connection closed peer=%s reason=%r", peer and peer[0],
                        f"no complete request within {self.timeout:g}s (handshake timeout)")
            self.app[keys.METRICS].refused.labels("handshake_timeout").inc()
            transport.close()


@web.middleware
async def guard_requests(request: web.Request, handler: Any) -> web.StreamResponse:
    """A whole request arrived on this connection: the guard stands down."""
    guard = request.app.get(keys.GUARD)
    if guard is not None:
        guard.arrived(request.protocol)
    return await handler(request)


class Server:
    """The relay listening on host:port, with TLS when configured."""

    def __init__(self, app: web.Application, settings: Settings) -> None:
        self.app, self.settings = app, settings
        self.runner = web.AppRunner(app, handle_signals=False, access_log=None,
                                    keepalive_timeout=settings.handshake_timeout)
        self.listener: asyncio.AbstractServer | None = None
        self.port = settings.port

    async def start(self) -> "Server":
        guard = self.app[keys.GUARD] = HandshakeGuard(self.app, self.settings.handshake_timeout)
        await self.runner.setup()
        guard.factory = self.runner.server
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
