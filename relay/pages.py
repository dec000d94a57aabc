"""The HTML pages: the dashboard (``/``), one stream's player (``/watch/<bot_id>``), the wall (``/wall``),
the recordings (``/recordings``) and one recording's player (``/recordings/<bot_id>/<name>``), and their
static files (``/static/``, and ``/vendor/`` for hls.js, which ``make deps`` installs from the npm registry).

Pages are rendered on the server for a first paint that works without JavaScript; the scripts in
``web/static`` then keep them current by polling ``/api/streams``. The formatting helpers here have
twins in ``dashboard.js`` (same output), so a refresh does not change how a value reads.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
from aiohttp import web

from . import keys, recordings as recs
from .ids import bot_id_problem

ROOT = Path(__file__).resolve().parent.parent
WEB = ROOT / "web"
STATIC = WEB / "static"
# Third-party browser code: installed by `make deps` (npm ci) into node_modules, never copied into the repo.
VENDOR = {
    "hls.min.js": ROOT / "node_modules" / "hls.js" / "dist" / "hls.min.js",
    "hls.min.js.map": ROOT / "node_modules" / "hls.js" / "dist" / "hls.min.js.map",
}
MAX_RECORDINGS = 10  # on the dashboard; /recordings has them all
MAX_LISTED = 500  # on /recordings, newest first (each row reads a sidecar), as /api/recordings
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
    """The player page of the recording at ``path`` (``/recordings/<bot_id>/<name without .mp4>``)."""
    if not path:
        return None
    return f"/recordings/{quote(bot_id, safe='')}/{quote(Path(path).stem, safe='')}"


def fmt_iso(text: str | None, seconds: bool = True) -> str:
    """"2026-11-24T05:39:00.123Z" -> "2026-11-24 05:39:00 UTC"."""
    if not text:
        return "–"
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return text
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC" if seconds else "%Y-%m-%d %H:%M UTC")


def mime_codecs(mime: str | None) -> tuple[str, str]:
    """('H.264 · AAC', 'avc1.42C01E, mp4a.40.2') from 'video/mp4; codecs="avc1.42C01E,mp4a.40.2"'."""
    inside = (mime or "").partition("codecs=")[2].strip('"; ')
    parts = [c.strip() for c in inside.split(",") if c.strip()]
    return (" · ".join(codec_name(c) for c in parts) or "–", ", ".join(parts))


def card(status: dict[str, Any] | None) -> dict[str, Any]:
    """What a stream card shows; ``None`` gives the empty card dashboard.js clones for new streams."""
    if status is None:
        return {"bot_id": "", "state": "", "watch": "#", "meeting": [], "uptime": "", "bitrate": "",
                "resolution": "", "codec": "", "codec_full": "", "viewers": "", "age": "", "stalled": False,
                "recording": "", "recording_link": None, "delay": "", "video": False}
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
        "video": any(t.get("kind") == "video" for t in status.get("tracks") or []),  # has a thumbnail to show
    }


# -- recordings ----------------------------------------------------------------------------------------
def list_recordings(root: Path, live_paths: set[Path]) -> tuple[list[dict[str, Any]], int]:
    """The newest recordings under ``root/<bot_id>/*.mp4`` and how many there are (blocking: run it in a thread).

    Only file metadata, no sidecars: the dashboard stays cheap however many recordings there are.
    """
    found: list[tuple[float, Path, int]] = []
    try:
        folders = [d for d in root.iterdir() if d.is_dir() and bot_id_problem(d.name) is None]
    except OSError:
        return [], 0
    for folder in folders:
        try:
            for path in folder.glob("*.mp4"):
                if not recs._NAME.fullmatch(path.stem):
                    continue  # a remuxed copy (.remux.mp4) or a stranger: not a recording
                st = path.stat()
                found.append((st.st_mtime, path, st.st_size))
        except OSError:
            continue  # a folder that vanished or cannot be read: skip it, list the rest
    found.sort(key=lambda item: item[0], reverse=True)
    return [
        {
            "bot_id": path.parent.name,
            "name": path.stem,
            "href": recording_link(path.parent.name, str(path)),
            "download": f"/recordings/{quote(path.parent.name, safe='')}/{quote(path.name, safe='')}",
            "size": fmt_bytes(size),
            "modified": fmt_time(mtime),
            "live": path in live_paths,
        }
        for mtime, path, size in found[:MAX_RECORDINGS]
    ], len(found)


def recording_state(live: bool, error: str | None) -> str:
    return "recording" if live else "error" if error else "complete"


def recording_row(item: dict[str, Any], live: Any) -> dict[str, Any]:
    """One row of /recordings from ``recordings.describe`` and the live Recording (if still written)."""
    duration = item.get("duration") or 0.0
    if live is not None:  # the sidecar lags by up to sidecar_interval: the in-memory index is current
        duration = sum(f["duration"] for f in list(live.fragments))
    mime = item.get("mime") or (live.inits[0].get("mime") if live is not None and live.inits else None)
    codec, codec_full = mime_codecs(mime)
    bot_id, name = item["bot_id"], item["name"]
    base = f"/recordings/{quote(bot_id, safe='')}/{quote(name, safe='')}"
    return {
        "bot_id": bot_id,
        "name": name,
        "started": fmt_iso(item.get("started_at") or _name_iso(name)),
        "duration": fmt_duration(duration),
        "size": fmt_bytes(item.get("size")),
        "codec": codec,
        "codec_full": codec_full,
        "state": recording_state(live is not None, item.get("error")),
        "error": item.get("error") or "",
        "play": base,
        "download": base + ".mp4",
        "delete": base,
    }


def _name_iso(name: str) -> str:
    """The start time a recording's file name carries: "2026-11-24T05-39-00Z" -> "2026-11-24T05:39:00Z"."""
    day, _, clock = name.partition("T")
    return f"{day}T{clock[:8].replace('-', ':')}Z" if clock else ""


def _resolution(inits: list[dict[str, Any]]) -> str:
    for init in inits:
        for track in init.get("tracks") or []:
            if track.get("kind") == "video" and track.get("width") and track.get("height"):
                return f"{track['width']}×{track['height']}"
    return "–"


def _message_items(message: dict[str, Any]) -> list[tuple[str, str]]:
    """Every field of the start message, for the player page's details (values made short and printable)."""
    out = []
    for key, value in message.items():
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        out.append((str(key), text if len(text) <= 300 else text[:300] + "…"))
    return out


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
    """``active`` names the page the top bar highlights ("dashboard", "wall", "recordings" or none)."""
    html = _env.get_template(template).render(active=active, **context)
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")


async def dashboard(request: web.Request) -> web.Response:
    statuses = request.app[keys.REGISTRY].statuses()
    live, ended = statuses["streams"], statuses["ended"]
    settings = request.app[keys.SETTINGS]
    live_paths = set(request.app[keys.REGISTRY].live_recordings())
    recordings, recordings_total = await asyncio.to_thread(list_recordings, Path(settings.recordings), live_paths)
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
        recordings_total=recordings_total,
        rendered_at=time.time(),
    )


async def watch(request: web.Request) -> web.Response:
    bot_id = request.match_info["bot_id"]
    stream = request.app[keys.REGISTRY].find(bot_id)
    status = stream.status() if stream else None
    return render("watch.html", bot_id=bot_id, card=card(status) if status else None)


async def wall(request: web.Request) -> web.Response:
    """Every live stream (or ``?ids=a,b``) as small players, or with ``?thumbs=1`` as thumbnails only."""
    live = [s.status() for s in request.app[keys.REGISTRY].streams.values()]
    thumbs = request.query.get("thumbs", "") not in ("", "0")
    wanted = [i.strip() for i in request.query.get("ids", "").split(",") if i.strip()]
    wanted = list(dict.fromkeys(wanted))[: 256 if thumbs else 64]  # no duplicates; a sane bound on tiles
    tiles = wanted or [s["bot_id"] for s in live]
    by_id = {s["bot_id"]: s for s in live}
    ids = {"ids": ",".join(wanted)} if wanted else {}
    other = ids if thumbs else ids | {"thumbs": "1"}
    return render(
        "wall.html", active="wall", ids=",".join(wanted), thumbs=thumbs,
        show_all="/wall?thumbs=1" if thumbs else "/wall",
        other_mode="/wall" + (f"?{urlencode(other)}" if other else ""),
        tiles=[{"bot_id": i, "state": by_id[i]["state"] if i in by_id else "waiting"} for i in tiles],
    )


async def recordings_page(request: web.Request) -> web.Response:
    root = Path(request.app[keys.SETTINGS].recordings)
    items = await asyncio.to_thread(recs.list_recordings, root, MAX_LISTED)
    live = request.app[keys.REGISTRY].live_recordings()
    rows = [recording_row(item, live.get(root / item["bot_id"] / f"{item['name']}.mp4")) for item in items]
    return render("recordings.html", active="recordings", rows=rows, limited=len(items) >= MAX_LISTED,
                  limit=MAX_LISTED, query=request.query.get("q", "")[:128])


async def recording_page(request: web.Request) -> web.Response:
    """One recording's player: byte-range HLS over the file (hls.js, or the browser's own HLS), and its facts."""
    root = Path(request.app[keys.SETTINGS].recordings)
    bot_id, name = request.match_info["bot_id"], request.match_info["name"]
    try:
        path = recs.recording_path(root, bot_id, name)
    except web.HTTPNotFound:
        return render("recording.html", status=404, active="recordings", missing=True, bot_id=bot_id, name=name)
    sidecar = await asyncio.to_thread(recs.read_sidecar, path)
    try:
        item = await asyncio.to_thread(recs.describe, path, sidecar)
    except OSError:  # deleted between the two looks
        return render("recording.html", status=404, active="recordings", missing=True, bot_id=bot_id, name=name)
    live = request.app[keys.REGISTRY].live_recordings().get(path)
    row = recording_row(item, live)
    inits = list(live.inits) if live is not None else sidecar.get("inits") or []
    fragments = list(live.fragments) if live is not None else sidecar.get("fragments") or []
    message = (live.start_message if live is not None else sidecar.get("start_message")) or {}
    error = (live.error if live is not None else sidecar.get("error")) or ""
    lost = (live.bytes_lost if live is not None else sidecar.get("bytes_lost")) or 0
    if live is not None:
        ended, reason = "still recording", "–"
    elif sidecar.get("ended_at"):
        ended, reason = fmt_iso(sidecar["ended_at"]), str(sidecar.get("end_reason") or "–")
    else:  # a crash or kill -9: the file plays up to its last complete fragment, but was never closed
        ended, reason = "–", "not closed (the server stopped first)"
    facts = [
        ("Started", fmt_iso(sidecar.get("started_at") or _name_iso(name))),
        ("Ended", ended),
        ("End reason", reason),
        ("Fragments", str(len(fragments))),
        ("Keyframes", str(sum(1 for f in fragments if f.get("random_access") or f.get("keyframe")))),
        ("Resolution", _resolution(inits)),
        ("From", str(sidecar.get("peer") or (live.peer if live is not None else "") or "–")),
        ("Bytes lost", fmt_bytes(lost) if lost else "none"),
    ]
    if len(inits) > 1:
        facts.append(("Init segments", str(len(inits))))
    return render(
        "recording.html", active="recordings", missing=False, bot_id=bot_id, name=name, row=row, facts=facts,
        error=error, meeting=meeting(message), message=_message_items(message),
        playlist=row["play"] + ".m3u8", hls_js=_vendor_url("hls.min.js"), watch="/watch/" + quote(bot_id, safe=""),
    )


async def vendor(request: web.Request) -> web.StreamResponse:
    """Third-party browser code from node_modules (hls.js), installed by `make deps`."""
    path = VENDOR.get(request.match_info["name"])
    if path is None:
        raise web.HTTPNotFound(text="no such vendor file\n")
    if not path.is_file():
        raise web.HTTPNotFound(text=f"{request.match_info['name']} is not installed on this relay: run `make deps` "
                                    "(npm ci) in its directory to install hls.js from the npm registry\n")
    content_type = "application/json" if path.suffix == ".map" else "text/javascript"
    return web.FileResponse(path, headers={"Content-Type": content_type, "Cache-Control": "public, max-age=86400"})


def _vendor_url(name: str) -> str:
    """``/vendor/<name>?v=<installed version>``, so an upgrade is never served from a stale cache."""
    try:
        version = json.loads((VENDOR[name].parents[1] / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        version = "0"
    return f"/vendor/{name}?v={quote(str(version), safe='')}"


def setup_pages(app: web.Application) -> None:
    app.router.add_get("/", dashboard, name="dashboard")
    app.router.add_get("/watch/{bot_id}", watch, name="watch")
    app.router.add_get("/wall", wall, name="wall")
    app.router.add_get("/recordings", recordings_page, name="recordings")
    # names have no dot: "<name>.mp4" and "<name>.m3u8" (download, playlist) never reach the page
    app.router.add_get("/recordings/{bot_id}/{name:[^/.]+}", recording_page, name="recording")
    app.router.add_get("/vendor/{name}", vendor, name="vendor")
    app.router.add_static("/static/", STATIC, name="static")
