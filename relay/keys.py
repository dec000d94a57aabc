"""Typed keys for what the aiohttp application holds."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .background import Background
from .auth import Auth
from .config import Settings
from .limits import ClientLimiter
from .metrics import Metrics
from .storage import Storage
from .stream import Registry

SETTINGS = web.AppKey("settings", Settings)
REGISTRY = web.AppKey("registry", Registry)
BACKGROUND = web.AppKey("background", Background)
INGEST_SESSIONS: web.AppKey[set[Any]] = web.AppKey("ingest_sessions", set)
METRICS = web.AppKey("metrics", Metrics)
STORAGE = web.AppKey("storage", Storage)
GUARD: web.AppKey[Any] = web.AppKey("guard", object)
AUTH = web.AppKey("auth", Auth)
CLIENTS = web.AppKey("clients", ClientLimiter)
VIEWERS: web.AppKey[dict[int, Any]] = web.AppKey("viewers", dict)
ACCESS: web.AppKey[dict[Any, str]] = web.AppKey("access", dict)
