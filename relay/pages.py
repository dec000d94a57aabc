"""The HTML pages: the dashboard (``/``), one stream's player (``/watch/<bot_id>``), the wall (``/wall``),
and their static files (``/static/``).

Pages are rendered on the server for a first paint that works without JavaScript; the scripts in
``web/static`` then keep them current by polling ``/api/streams``. The formatting helpers here have
twins in ``dashboard.js`` (same output), so a refresh does not change how a value reads.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from aiohttp import web

from . import keys
from .ids import bot_id_problem

WEB = Path(__file__).resolve().parent.parent / "web"
STATIC = WEB / "static"
MAX_RECORDINGS = 50
STALLED_AFTER = 5.0  # seconds since the last fragment after which a live stream is flagged as stalled

# Fields of the bot's start message that describe the media, not the meeting (shown elsewhere).
_TECHNICAL = {
    "type", "bot_id", "container", "codec", "width", "height", "framerate", "audio_codec",
    "audio_sample_rate", "audio_bitrate", "audio_channels", "sample_rate", "channels", "bitrate",
}
# Meeting fields worth showing first, when the bot sends them.
_MEETING_FIRST = ("meeting_title", "title", "meeting_name", "platform", "meeting_id", "meeting_url", "bot_name")
_CODEC_NAMES = (
    (("avc1", "avc3"), "H.264"), (("hvc1", "hev1"), "HEVC"), (("vp09",), "VP9"), (("vp08",), "VP8"),
    (("av01",), "AV1"), (("mp4a",), "AAC"), (("opus", "Opus"), "Opus"), (("fLaC", "flac"), "FLAC"),
)


# -- formatting (twins in dashboard.js) ------------------------------------------------------------
def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    s = int(max(0, seconds))
    h, m, s = s // 3600, s // 60 % 60, s % 60
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def fmt_bitrate(bps: float | None) -> str:
    if not bps:
        return "–"
    return f"{bps / 1e6:.2f} Mbit/s" if bps >= 1e6 else f"{round(bps / 1e3)} kbit/s"


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "–"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def fmt_age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    return f"{seconds:.1f} s ago" if seconds < 60 else f"{fmt_duration(seconds)} ago"


def fmt_time(ts: float | None) -> str:
    if ts is None:
        return "–"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def codec_name(codec: str) -> str:
    for prefixes, name in _CODEC_NAMES:
        if codec.startswith(prefixes):
            return name
    return codec.split(".")[0]


def resolution(status: dict[str, Any]) -> str:
    video = next((t for t in status.get("tracks") or [] if t.get("kind") == "video"), None)
    meta = status.get("meta") or {}
    width = (video or {}).get("width") or meta.get("width")
    height = (video or {}).get("height") or meta.get("height")
    if not (width and height):
        return "–"
    fps = meta.get("framerate")
    return f"{width}×{height}" + (f" @ {round(fps, 1):g} fps" if isinstance(fps, (int, float)) and fps > 0 else "")


def codecs(status: dict[str, Any]) -> tuple[str, str]:
    """("H.264 · AAC", "avc1.42C01F, mp4a.40.2") from the tracks (or the start message before the init)."""
    tracks = status.get("tracks") or []
    if tracks:
        return (" · ".join(codec_name(t["codec"]) for t in tracks if t.get("codec")),
                ", ".join(t["codec"] for t in tracks if t.get("codec")))
    meta = status.get("meta") or {}
    names = [str(meta[k]) for k in ("codec", "audio_codec") if meta.get(k)]
    return (" · ".join(names) or "–", "")


def meeting(meta: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The start message's meeting fields as (label, value) pairs, the well-known ones first."""
    meta = meta or {}
    keys_ = [k for k in _MEETING_FIRST if k in meta]
    keys_ += sorted(k for k in meta if k not in _TECHNICAL and k not in keys_)
    out = []
    for key in keys_:
        value = meta[key]
        if isinstance(value, (str, int, float)) and not isinstance(value, bool) and str(value).strip():
            out.append((key.replace("_", " "), str(value)[:120]))
    return out[:6]


def recording_link(bot_id: str, path: str | None) -> str | None:
    if not path:
        return None
    return f"/recordings/{quote(bot_id, safe='')}/{quote(Path(path).name, safe='')}"


def card(status: dict[str, Any] | None) -> dict[str, Any]:
    """What a stream card shows; ``None`` gives the empty card dashboard.js clones for new streams."""
    if status is None:
        return {"bot_id": "", "state": "", "watch": "#", "meeting": [], "uptime": "", "bitrate": "",
                "resolution": "", "codec": "", "codec_full": "", "viewers": "", "age": "", "stalled": False,
                "recording": "", "recording_link": None, "delay": ""}
    age = status.get("last_fragment_age")
    live = status.get("state") == "live"
    rec = status.get("recording") or {}
    codec, codec_full = codecs(status)
    delay = status.get("one_way_delay_ms")
    return {
        "bot_id": status["bot_id"],
        "state": status.get("state", ""),
        "watch": "/watch/" + quote(status["bot_id"], safe=""),
        "meeting": meeting(status.get("meta")),
        "uptime": fmt_duration(status.get("uptime")),
        "bitrate": fmt_bitrate(status.get("bitrate")),
        "resolution": resolution(status),
        "codec": codec,
        "codec_full": codec_full,
        "viewers": str(status.get("viewers", 0)),
        "age": fmt_age(age),
        "stalled": live and (age is None or age > STALLED_AFTER) and status.get("uptime", 0) > STALLED_AFTER,
        "recording": fmt_bytes(rec.get("bytes")) if rec else "",
        "recording_link": recording_link(status["bot_id"], rec.get("path")),
        "delay": f"{delay:.0f} ms" if isinstance(delay, (int, float)) else "–",
    }


# -- recordings ----------------------------------------------------------------------------------------
def list_recordings(root: Path, live_paths: set[str]) -> list[dict[str, Any]]:
    """The newest recordings under ``root/<bot_id>/*.mp4`` (blocking: run it in a thread)."""
    found: list[tuple[float, Path, int]] = []
    try:
        folders = [d for d in root.iterdir() if d.is_dir() and bot_id_problem(d.name) is None]
    except OSError:
        return []
    for folder in folders:
        try:
            for path in folder.glob("*.mp4"):
                st = path.stat()
                found.append((st.st_mtime, path, st.st_size))
        except OSError:
            continue  # a folder that vanished or cannot be read: skip it, list the rest
    found.sort(key=lambda item: item[0], reverse=True)
    return [
        {
            "bot_id": path.parent.name,
            "name": path.name,
            "href": recording_link(path.parent.name, str(path)),
            "size": fmt_bytes(size),
            "modified": fmt_time(mtime),
            "live": str(path.resolve()) in live_paths,
        }
        for mtime, path, size in found[:MAX_RECORDINGS]
    ]


# -- rendering -------------------------------------------------------------------------------------------
def _static_url(name: str) -> str:
    """``/static/<name>?v=<mtime>``: a new version of a file is never served from a stale cache."""
    try:
        version = int((STATIC / name).stat().st_mtime)
    except OSError:
        version = 0
    return f"/static/{name}?v={version}"


_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(WEB / "templates"),
    autoescape=True,
    trim_blocks=True,
    lstrip_blocks=True,
    undefined=jinja2.StrictUndefined,
)
_env.globals["static"] = _static_url
_env.filters["pathpart"] = lambda value: quote(str(value), safe="")


def render(template: str, status: int = 200, active: str = "", **context: Any) -> web.Response:
    """``active`` names the page the top bar highlights ("dashboard", "wall" or none)."""
    html = _env.get_template(template).render(active=active, **context)
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")


def _all_streams(request: web.Request) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    registry = request.app[keys.REGISTRY]
    return [s.status() for s in registry.streams.values()], [s.status() for s in registry.ended]


async def dashboard(request: web.Request) -> web.Response:
    live, ended = _all_streams(request)
    settings = request.app[keys.SETTINGS]
    live_paths = {str(Path(s["recording"]["path"]).resolve()) for s in live if (s.get("recording") or {}).get("path")}
    recordings = await asyncio.to_thread(list_recordings, Path(settings.recordings), live_paths)
    return render(
        "dashboard.html",
        active="dashboard",
        cards=[card(s) for s in live],
        empty_card=card(None),
        ended=[
            {"bot_id": s["bot_id"], "ended": fmt_time(s.get("ended_at")), "duration": fmt_duration(s.get("uptime")),
             "size": fmt_bytes(s.get("bytes_in")),
             "recording_link": recording_link(s["bot_id"], (s.get("recording") or {}).get("path"))}
            for s in ended
        ],
        recordings=recordings,
        rendered_at=time.time(),
    )


async def watch(request: web.Request) -> web.Response:
    bot_id = request.match_info["bot_id"]
    registry = request.app[keys.REGISTRY]
    stream = registry.get(bot_id) or next((s for s in registry.ended if s.bot_id == bot_id), None)
    status = stream.status() if stream else None
    return render("watch.html", bot_id=bot_id, card=card(status) if status else None)


async def wall(request: web.Request) -> web.Response:
    live, _ = _all_streams(request)
    wanted = [i.strip() for i in request.query.get("ids", "").split(",") if i.strip()]
    wanted = list(dict.fromkeys(wanted))[:64]  # no duplicates; a sane bound on tiles
    tiles = wanted or [s["bot_id"] for s in live]
    states = {s["bot_id"]: s["state"] for s in live}
    return render("wall.html", active="wall", tiles=[{"bot_id": i, "state": states.get(i, "waiting")} for i in tiles],
                  ids=",".join(wanted))


def setup_pages(app: web.Application) -> None:
    app.router.add_get("/", dashboard, name="dashboard")
    app.router.add_get("/watch/{bot_id}", watch, name="watch")
    app.router.add_get("/wall", wall, name="wall")
    app.router.add_static("/static/", STATIC, name="static")
