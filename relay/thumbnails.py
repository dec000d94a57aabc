"""JPEG snapshots of live streams, made from the latest keyframe in a worker thread.

Made only on request and at most every ``thumbnail_interval`` seconds per stream: a stream nobody looks at
costs nothing, and a wall of a hundred tiles costs one decode per stream per interval.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time

import av

log = logging.getLogger("relay.thumbnails")


def snapshot(init: bytes, fragment: bytes, width: int = 0) -> bytes:
    """The first keyframe in ``fragment`` as a JPEG (at the stream's size unless ``width`` is given)."""
    with av.open(io.BytesIO(init + fragment), format="mp4") as container:
        stream = container.streams.video[0]
        stream.codec_context.skip_frame = "NONKEY"  # decode the keyframe only: cheap, and never a broken picture
        frame = next(container.decode(stream))
    if width and width < frame.width:
        frame = frame.reformat(width=width, height=round(frame.height * width / frame.width / 2) * 2)
    encoder = av.CodecContext.create("mjpeg", "w")
    encoder.width, encoder.height = frame.width, frame.height
    encoder.pix_fmt = "yuvj420p"
    encoder.time_base = stream.time_base or 1
    encoder.options = {"q": "4"}
    frame = frame.reformat(format="yuvj420p")
    frame.pts = None
    return b"".join(bytes(p) for p in encoder.encode(frame) + encoder.encode(None))


class Thumbnailer:
    """One stream's cached snapshot; concurrent requests share one decode."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.jpeg: bytes | None = None
        self.made_at = 0.0
        self._pending: asyncio.Task | None = None

    async def get(self, init: bytes | None, fragment: bytes | None) -> bytes | None:
        if self.jpeg is not None and time.monotonic() - self.made_at < self.interval:
            return self.jpeg
        if init is None or fragment is None:
            return self.jpeg
        if self._pending is None:
            self._pending = asyncio.create_task(asyncio.to_thread(snapshot, init, fragment))
        task = self._pending
        try:
            self.jpeg = await asyncio.shield(task)
            self.made_at = time.monotonic()
        except (av.FFmpegError, StopIteration, IndexError) as exc:
            log.warning("thumbnail failed: %r", exc)
        finally:
            if self._pending is task and task.done():
                self._pending = None
        return self.jpeg
