"""Names that reach the filesystem: a bot id is checked before it becomes a folder."""

from __future__ import annotations

import re
import secrets

MAX_BOT_ID = 128
_BOT_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")


def bot_id_problem(value: object) -> str | None:
    """Why ``value`` cannot be a bot id, or None when it can."""
    if not isinstance(value, str) or not value:
        return "bot_id must be a non-empty string"
    if len(value) > MAX_BOT_ID:
        return f"bot_id longer than {MAX_BOT_ID} characters"
    if not _BOT_ID.fullmatch(value) or ".." in value:
        return "bot_id may hold only letters, digits, '_', '-' and '.', and no '..'"
    return None


def connection_name() -> str:
    """A stream name for a connection that sent media but never said who it is."""
    return f"unnamed-{secrets.token_hex(4)}"
