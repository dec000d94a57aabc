"""Who may see what: viewer and admin credentials, signed per-bot links, origins, networks and proxies.

Off by default (a demo is open to anyone), on with one setting: ``viewer_password``. Then every page,
viewer socket, thumbnail, recording and API needs the viewer password (HTTP Basic, or the login form's
signed cookie), the admin password, or, for one bot's live stream only, a signed link
``/watch/<bot_id>?exp=...&sig=...`` (HMAC-SHA256 over the bot id and expiry). Admin actions need the
admin password; without one configured they are allowed from this machine only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import logging
import time
from typing import Any, Awaitable, Callable
from urllib.parse import urlencode, urlsplit

from aiohttp import web

from . import keys
from .config import Settings

log = logging.getLogger("relay.auth")

PUBLIC, VIEWER, BOT, ADMIN = "public", "viewer", "bot", "admin"  # BOT: a viewer, or a signed link for that bot
SESSION_COOKIE = "relay_session"
GRANT_COOKIE = "relay_grant_"  # + bot id
_PUBLIC_PREFIXES = ("/static/", "/vendor/")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _networks(text: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(part.strip(), strict=False) for part in text.split(",") if part.strip()]


def _in(address: str | None, networks: list) -> bool:
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    return any(ip in net for net in networks)


class Auth:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.enabled = bool(settings.viewer_password)
        seed = settings.secret or f"relay-link-key\0{settings.viewer_password}\0{settings.admin_password}"
        self.key = hashlib.sha256(seed.encode()).digest()
        self.ingest_networks = _networks(settings.ingest_allow)
        self.proxies = _networks(settings.trusted_proxies)
        self.origins = {o.strip().rstrip("/") for o in settings.allowed_origins.split(",") if o.strip()}

    # -- signatures ---------------------------------------------------------------------------------
    def _mac(self, message: str) -> str:
        return base64.urlsafe_b64encode(hmac.new(self.key, message.encode(), hashlib.sha256).digest()).decode().rstrip("=")

    def sign_link(self, bot_id: str, ttl: float, now: float | None = None) -> str:
        """The query string that opens ``/watch/<bot_id>`` (and nothing else) for ``ttl`` seconds."""
        exp = int((now or time.time()) + ttl)
        return urlencode({"exp": exp, "sig": self._mac(f"link\0{bot_id}\0{exp}")})

    def link_ok(self, bot_id: str, exp: str, sig: str) -> bool:
        try:
            expiry = int(exp)
        except ValueError:
            return False
        return expiry > time.time() and hmac.compare_digest(sig.encode(), self._mac(f"link\0{bot_id}\0{expiry}").encode())

    def session(self, role: str, ttl: float) -> str:
        body = base64.urlsafe_b64encode(json.dumps({"role": role, "exp": int(time.time() + ttl)}).encode()).decode()
        return f"{body}.{self._mac('session' + body)}"

    def session_role(self, value: str) -> str | None:
        body, _, mac = value.partition(".")
        if not hmac.compare_digest(mac.encode(), self._mac("session" + body).encode()):
            return None
        try:
            data = json.loads(base64.urlsafe_b64decode(body))
        except (ValueError, binascii.Error):
            return None
        return data.get("role") if isinstance(data, dict) and data.get("exp", 0) > time.time() else None

    # -- who is asking ------------------------------------------------------------------------------
    def password_role(self, password: str) -> str | None:
        if self.settings.admin_password and hmac.compare_digest(password.encode(), self.settings.admin_password.encode()):
            return ADMIN
        if self.settings.viewer_password and hmac.compare_digest(password.encode(), self.settings.viewer_password.encode()):
            return VIEWER
        return None

    def role(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            try:
                _, _, password = base64.b64decode(header[6:]).decode().partition(":")
            except (ValueError, UnicodeDecodeError, binascii.Error):
                password = ""
            role = self.password_role(password)
            if role:
                return role
        cookie = request.cookies.get(SESSION_COOKIE)
        return self.session_role(cookie) if cookie else None

    def granted(self, request: web.Request, bot_id: str) -> bool:
        """A signed link for this bot, in the query or in the cookie the watch page set from it."""
        query = request.query
        if "sig" in query and self.link_ok(bot_id, query.get("exp", ""), query["sig"]):
            return True
        exp, _, sig = request.cookies.get(GRANT_COOKIE + bot_id, "").partition(".")
        return bool(sig) and self.link_ok(bot_id, exp, sig)

    def allows(self, request: web.Request, level: str) -> bool:
        if level == PUBLIC:
            return True
        role = self.role(request)
        if level == ADMIN:
            if self.settings.admin_password:
                return role == ADMIN
            return _in(request.remote, _networks("127.0.0.0/8,::1/128"))
        if not self.enabled or role in (VIEWER, ADMIN):
            return True
        bot_id = request.match_info.get("bot_id")
        return level == BOT and bot_id is not None and self.granted(request, bot_id)

    def origin_ok(self, request: web.Request) -> bool:
        """A browser WebSocket from another site could ride on a viewer's cookie: same host or listed only."""
        origin = request.headers.get("Origin")
        if origin is None:
            return True  # not a browser
        if origin.rstrip("/") in self.origins:
            return True
        return urlsplit(origin).netloc == request.host


def _forwarded(request: web.Request, auth: Auth) -> web.Request:
    """Take the client address and scheme from X-Forwarded-* only when a configured proxy sent them."""
    if not auth.proxies or not _in(request.remote, auth.proxies):
        return request
    changes: dict[str, Any] = {}
    hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",") if h.strip()]
    while hops and _in(hops[-1], auth.proxies):
        hops.pop()
    if hops:
        changes["remote"] = hops[-1]
    proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip()
    if proto in ("http", "https"):
        changes["scheme"] = proto
    return request.clone(**changes) if changes else request


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    auth: Auth = request.app[keys.AUTH]
    request = _forwarded(request, auth)
    if request.path.startswith(_PUBLIC_PREFIXES):
        return await handler(request)
    level = request.app[keys.ACCESS].get(request.match_info.handler, VIEWER)
    if level == PUBLIC and request.path.startswith("/ingest"):
        if auth.ingest_networks and not _in(request.remote, auth.ingest_networks):
            log.warning("ingest refused peer=%s reason=%r", request.remote, "source network not allowed")
            request.app[keys.METRICS].refused.labels("ingest_network").inc()
            raise web.HTTPForbidden(text="this network may not send streams here\n")
        return await handler(request)
    if request.headers.get("Upgrade", "").lower() == "websocket" and not auth.origin_ok(request):
        log.warning("websocket refused peer=%s path=%s origin=%r", request.remote, request.path, request.headers["Origin"])
        request.app[keys.METRICS].refused.labels("origin").inc()
        raise web.HTTPForbidden(text="cross-site WebSocket refused (origin not allowed)\n")
    if not auth.allows(request, level):
        return _deny(request, auth, level)
    response = await handler(request)
    if level == BOT and "sig" in request.query and request.method == "GET" and not response.prepared:
        _remember_grant(request, response)
    return response


def _remember_grant(request: web.Request, response: web.StreamResponse) -> None:
    """Keep a signed link's grant in a cookie for this bot, so the page's socket and status calls carry it."""
    bot_id = request.match_info["bot_id"]
    exp = request.query.get("exp", "")
    response.set_cookie(GRANT_COOKIE + bot_id, f"{exp}.{request.query['sig']}", max_age=max(0, int(exp) - int(time.time())),
                        httponly=True, samesite="Lax", secure=request.secure, path="/")


def _deny(request: web.Request, auth: Auth, level: str) -> web.StreamResponse:
    log.info("access refused peer=%s path=%s needs=%s", request.remote, request.path, level)
    request.app[keys.METRICS].refused.labels("auth").inc()
    if level == ADMIN and not auth.settings.admin_password:
        raise web.HTTPForbidden(text="admin actions are allowed from this machine only (no admin password set)\n")
    wants_html = "text/html" in request.headers.get("Accept", "") and request.method == "GET"
    if wants_html and level != ADMIN:
        raise web.HTTPFound(f"/login?{urlencode({'next': request.path_qs})}")
    raise web.HTTPUnauthorized(text="credentials required\n", headers={"WWW-Authenticate": 'Basic realm="relay"'})


async def login_page(request: web.Request) -> web.Response:
    from .pages import render

    return render("login.html", next=_safe_next(request.query.get("next", "/")), error="")


async def login(request: web.Request) -> web.Response:
    from .pages import render

    form = await request.post()
    auth: Auth = request.app[keys.AUTH]
    target = _safe_next(str(form.get("next", "/")))
    role = auth.password_role(str(form.get("password", "")))
    if role is None:
        log.info("login refused peer=%s", request.remote)
        request.app[keys.METRICS].refused.labels("login").inc()
        return render("login.html", status=401, next=target, error="Wrong password.")
    log.info("login peer=%s role=%s", request.remote, role)
    redirect = web.HTTPFound(target)
    redirect.set_cookie(SESSION_COOKIE, auth.session(role, request.app[keys.SETTINGS].session_ttl),
                        max_age=int(request.app[keys.SETTINGS].session_ttl), httponly=True, samesite="Lax",
                        secure=request.secure, path="/")
    raise redirect


def _safe_next(target: str) -> str:
    """Only local paths: a login form must not bounce people to another site."""
    return target if target.startswith("/") and not target.startswith("//") else "/"
