"""The aiohttp application: routes, shared state, and an orderly shutdown."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from aiohttp import WSCloseCode, web

from . import api, auth, keys, pages, recordings, server
from .background import Background
from .config import Settings
from .fanout import handle_viewer
from .ingest import handle_ingest
from .metrics import Metrics
from .limits import ClientLimiter
from .pages import setup_pages
from .storage import Storage
from .stream import Registry

log = logging.getLogger("relay")


async def _close_connections(app: web.Application) -> None:
    """Tell every viewer and bot we are going away; bot sessions then finalize recordings before exit."""
    for viewer in list(app[keys.VIEWERS].values()):
        viewer.close(WSCloseCode.GOING_AWAY, "server shutting down")
    sessions = list(app[keys.INGEST_SESSIONS])
    if sessions:
        log.info("shutting down: closing %d ingest connection(s)", len(sessions))
    for session in sessions:
        session.close_reason = "server shutdown"
        await session.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")


async def _drain(app: web.Application) -> None:
    await app[keys.BACKGROUND].drain()


async def _storage_watch(app: web.Application):
    task = asyncio.create_task(app[keys.STORAGE].watch(lambda: set(app[keys.REGISTRY].live_recordings())))
    yield
    task.cancel()


# Who may call what (see relay/auth.py); anything not listed needs a viewer credential when auth is on.
ACCESS = {
    handle_ingest: auth.PUBLIC,  # the ingest token is its own check
    api.healthz: auth.PUBLIC,
    api.readyz: auth.PUBLIC,
    auth.login_page: auth.PUBLIC,
    auth.login: auth.PUBLIC,
    pages.watch: auth.BOT,
    handle_viewer: auth.BOT,
    api.get_stream: auth.BOT,
    api.thumbnail: auth.BOT,
    recordings.delete: auth.ADMIN,
    api.end_stream: auth.ADMIN,
    api.kick_viewer: auth.ADMIN,
}


def create_app(settings: Settings) -> web.Application:
    app = web.Application(client_max_size=1 << 20, middlewares=[server.guard_requests, auth.middleware])
    app[keys.SETTINGS] = settings
    app[keys.AUTH] = auth.Auth(settings)
    app[keys.CLIENTS] = ClientLimiter(settings.max_connections_per_client)
    app[keys.VIEWERS] = {}
    app[keys.ACCESS] = ACCESS
    app[keys.REGISTRY] = Registry(settings)
    app[keys.METRICS] = Metrics(app[keys.REGISTRY], settings.metrics_max_streams)
    app[keys.STORAGE] = Storage(settings)
    app[keys.BACKGROUND] = Background()
    app[keys.INGEST_SESSIONS] = set()
    add = app.router.add_get
    add("/ingest", handle_ingest)
    add("/ingest/{token}", handle_ingest)
    add("/ws/watch/{bot_id}", handle_viewer)
    add("/api/streams", api.list_streams)
    add("/api/streams/{bot_id}", api.get_stream)
    add("/api/streams/{bot_id}/thumbnail.jpg", api.thumbnail)
    add("/api/recordings", recordings.api_list)
    add("/recordings/{bot_id}/{name}.mp4", recordings.download)
    add("/recordings/{bot_id}/{name}.m3u8", recordings.playlist)
    app.router.add_delete("/recordings/{bot_id}/{name}", recordings.delete)
    app.router.add_post("/api/streams/{bot_id}/end", api.end_stream)
    app.router.add_post("/api/viewers/{viewer_id}/kick", api.kick_viewer)
    add("/login", auth.login_page)
    app.router.add_post("/login", auth.login)
    add("/metrics", api.metrics)
    add("/healthz", api.healthz)
    add("/readyz", api.readyz)
    setup_pages(app)
    app.cleanup_ctx.append(_storage_watch)
    app.on_shutdown.append(_close_connections)
    app.on_cleanup.append(_drain)
    return app
