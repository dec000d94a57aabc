"""Create a MeetStream bot whose live video streams to this relay."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp

log = logging.getLogger("relay.createbot")


class CreateBotError(RuntimeError):
    pass


def ingest_url(public_url: str, token: str = "") -> str:
    """The ``wss://`` URL the bot should connect to, derived from the relay's public URL."""
    parts = urlsplit(public_url)
    scheme = {"https": "wss", "http": "ws"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss"):
        raise CreateBotError(f"public URL must be http(s):// or ws(s)://, not {public_url!r}")
    path = parts.path.rstrip("/") + "/ingest"
    query = f"token={quote(token, safe='')}" if token else ""
    return urlunsplit((scheme, parts.netloc, path, query, ""))


def watch_url(public_url: str, bot_id: str) -> str:
    parts = urlsplit(public_url)
    scheme = {"wss": "https", "ws": "http"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + f"/watch/{quote(bot_id)}", "", ""))


def payload(meeting_link: str, websocket_url: str, bot_name: str = "") -> dict[str, Any]:
    body: dict[str, Any] = {
        "meeting_link": meeting_link,
        "video_required": True,
        "live_video_required": {"websocket_url": websocket_url},
    }
    if bot_name:
        body["bot_name"] = bot_name
    return body


async def create_bot(api_base: str, api_key: str, body: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    """POST the vendor's create-bot request; returns its JSON answer (which carries ``bot_id``)."""
    url = api_base.rstrip("/") + "/api/v1/bots/create_bot"
    headers = {"Authorization": f"Token {api_key}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        async with session.post(url, json=body, headers=headers) as response:
            text = await response.text()
            if response.status >= 400:
                raise CreateBotError(f"MeetStream answered {response.status}: {text[:500]}")
            try:
                answer = await response.json(content_type=None)
            except ValueError as exc:
                raise CreateBotError(f"MeetStream answered with something that is not JSON: {text[:200]}") from exc
    if not isinstance(answer, dict) or not answer.get("bot_id"):
        raise CreateBotError(f"MeetStream's answer has no bot_id: {text[:500]}")
    return answer
