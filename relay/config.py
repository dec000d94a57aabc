"""Every setting in one place. Each field is a CLI flag (``--max-frame-size``) and an environment
variable (``RELAY_MAX_FRAME_SIZE``); flags win over the environment, which wins over the default.
Byte sizes accept K/M/G suffixes (binary: ``16M`` is 16 MiB), durations are seconds.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping

_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(text: str) -> int:
    """``"16M"`` -> 16777216; a plain number is bytes."""
    text = text.strip().lower().removesuffix("ib").removesuffix("b")
    if text and text[-1] in _UNITS:
        return int(float(text[:-1]) * _UNITS[text[-1]])
    return int(text)


def _setting(default: Any, help: str, kind: str = "") -> Any:
    return field(default=default, metadata={"help": help, "kind": kind})


@dataclass(frozen=True)
class Settings:
    host: str = _setting("127.0.0.1", "address to listen on")
    port: int = _setting(8080, "port to listen on")
    recordings: str = _setting("recordings", "directory for recordings and their JSON sidecars")
    ingest_token: str = _setting("", "if set, /ingest requires ?token=... or /ingest/<token>")
    public_url: str = _setting("", "base URL people reach the relay at (printed links); default http://host:port")
    log_level: str = _setting("info", "debug, info, warning or error")
    log_format: str = _setting("text", "text (key=value) or json, one event per line")
    max_frame_size: int = _setting(32 << 20, "largest WebSocket message accepted from a bot", "bytes")
    max_box_size: int = _setting(64 << 20, "largest MP4 box (and fragment) accepted", "bytes")
    max_prestart_bytes: int = _setting(16 << 20, "media kept before video_stream_start names the stream", "bytes")
    gop_cache_bytes: int = _setting(32 << 20, "bound of the per-stream cache of fragments since the last keyframe", "bytes")
    gop_cache_fragments: int = _setting(1000, "bound of the same cache in fragments")
    reconnect_grace: float = _setting(30.0, "seconds a stream waits for its bot to reconnect before it ends")
    ended_streams_kept: int = _setting(50, "ended streams still listed in status")
    recorder_backlog: int = _setting(32 << 20, "bytes waiting for the disk before a bot's ingest is paused", "bytes")
    sidecar_interval: float = _setting(5.0, "seconds between rewrites of a live recording's sidecar")
    viewer_queue_bytes: int = _setting(8 << 20, "unsent bytes a viewer may lag before it skips to the next keyframe", "bytes")
    viewer_max_behind: float = _setting(30.0, "seconds a viewer may stay behind before it is disconnected")
    viewer_wait_timeout: float = _setting(60.0, "seconds a viewer of an unknown stream waits for it to appear")
    viewer_password: str = _setting("", "if set, every page, viewer socket, thumbnail and recording needs it (or a signed link)")
    admin_password: str = _setting("", "needed to delete recordings, end streams and kick viewers (else: this machine only)")
    secret: str = _setting("", "key for signed links and session cookies (default: derived from the passwords)")
    session_ttl: float = _setting(12 * 3600.0, "seconds a login lasts")
    allowed_origins: str = _setting("", "other sites (e.g. https://app.example.com) allowed to open viewer sockets, comma-separated")
    ingest_allow: str = _setting("", "networks allowed to connect to /ingest (CIDRs, comma-separated; default any)")
    trusted_proxies: str = _setting("", "proxies whose X-Forwarded-For/-Proto are believed (CIDRs, comma-separated)")
    tls_cert: str = _setting("", "certificate chain (PEM) to serve https:// and wss:// directly")
    tls_key: str = _setting("", "private key (PEM) for --tls-cert")
    handshake_timeout: float = _setting(10.0, "seconds a connection may take to send a complete HTTP request")
    ingest_idle_timeout: float = _setting(60.0, "seconds a bot connection may stay silent before it is closed")
    viewer_heartbeat: float = _setting(30.0, "seconds between pings to viewers; one unanswered for as long closes it")
    max_ingest_connections: int = _setting(200, "ingest connections open at once")
    max_streams: int = _setting(200, "live streams at once")
    max_viewers: int = _setting(20000, "viewer connections at once, all streams together")
    max_viewers_per_stream: int = _setting(5000, "viewer connections at once for one stream")
    max_connections_per_client: int = _setting(100, "ingest and viewer connections at once from one client address")
    max_ingest_rate: int = _setting(8 << 20, "bytes per second one stream may send, averaged over 10 s", "bytes")
    max_fragment_rate: float = _setting(60.0, "fragments per second one stream may send, averaged over 10 s")
    max_recording_size: int = _setting(16 << 30, "size at which a recording file stops growing (the live relay goes on)", "bytes")
    thumbnail_interval: float = _setting(5.0, "seconds a stream's thumbnail is reused before a new one is made")
    metrics_max_streams: int = _setting(100, "streams with their own series in /metrics (the busiest ones)")
    retention_days: float = _setting(0.0, "delete recordings older than this many days (0 keeps them forever)")
    min_free_space: int = _setting(256 << 20, "below this much free disk, recording stops (the live relay goes on)", "bytes")
    storage_check_interval: float = _setting(30.0, "seconds between checks of free space and retention")
    remux_on_end: bool = _setting(False, "also write a regular MP4 (moov first) when a recording ends")
    meetstream_api_base: str = _setting("https://api.meetstream.ai", "MeetStream API base URL, for create-bot")

    @classmethod
    def from_sources(cls, args: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> "Settings":
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = (args or {}).get(f.name)
            if raw is None:
                raw = environ.get(f"RELAY_{f.name.upper()}")
            if raw is not None:
                values[f.name] = _convert(f, raw)
        return cls(**values)

    def with_(self, **changes: Any) -> "Settings":
        return replace(self, **changes)

    @property
    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"


def _convert(f: Any, raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    if isinstance(f.default, bool):
        if raw.strip().lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off", ""):
            raise ValueError(f"RELAY_{f.name.upper()} must be true or false, not {raw!r}")
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if f.metadata.get("kind") == "bytes":
        return parse_size(raw)
    return type(f.default)(raw)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting; defaults stay None so the environment can fill what the flags leave."""
    for f in fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        kind = f.metadata.get("kind")
        shown = f"{f.default >> 20}M" if kind == "bytes" and f.default >= 1 << 20 else f.default
        text = f"{f.metadata['help']} (env RELAY_{f.name.upper()}, default {shown!r})"
        if isinstance(f.default, bool):
            parser.add_argument(flag, dest=f.name, default=None, action=argparse.BooleanOptionalAction, help=text)
        else:
            parser.add_argument(flag, dest=f.name, default=None, metavar=f.name.upper(), help=text)


def describe() -> list[tuple[str, str, str, str]]:
    """(flag, env var, default, help) for the README's settings table."""
    return [
        ("--" + f.name.replace("_", "-"), f"RELAY_{f.name.upper()}", repr(f.default), f.metadata["help"])
        for f in fields(Settings)
    ]
