"""Connection and rate limits shared by the ingest and viewer handlers."""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger("relay.limits")


class ClientLimiter:
    """Open connections per client address."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: Counter[str] = Counter()

    def acquire(self, client: str) -> bool:
        if self.open[client] >= self.limit:
            return False
        self.open[client] += 1
        return True

    def release(self, client: str) -> None:
        self.open[client] -= 1
        if self.open[client] <= 0:
            del self.open[client]


class RateLimit:
    """A token bucket: ``rate`` bytes per second with a burst of ``window`` seconds' worth."""

    def __init__(self, rate: float, window: float = 10.0) -> None:
        self.rate, self.capacity = rate, rate * window
        self.tokens = self.capacity
        self.stamp = time.monotonic()

    def take(self, amount: int) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= amount
        return self.tokens >= 0


def refuse_request(request: "web.Request", error: type["web.HTTPException"], reason: str, label: str) -> NoReturn:
    """Refuse before the WebSocket upgrade: logged, counted, and said in plain words."""
    from . import keys

    log.warning("refused peer=%s path=%s reason=%r", request.remote, request.path, reason)
    request.app[keys.METRICS].refused.labels(label).inc()
    raise error(text=reason + "\n")
