"""Real fragmented MP4, encoded in memory with PyAV, for the demo, tests and benchmarks.

Nothing is read from disk: the picture is FFmpeg's lavfi ``testsrc`` (moving
pattern + frame counter), the sound a numpy sine tone. With ``clock=True`` each
picture also carries its wall-clock capture time as a row of black/white blocks
(see :func:`read_clock`), for glass-to-glass latency measurements.
"""

from __future__ import annotations

import asyncio
import io
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from fractions import Fraction
from typing import Any

import av
import numpy as np

SAMPLE_RATE = 48_000
_TONE_HZ = 440.0

# Encoder and options (given the GOP length) per codec name: low-latency, cheap
# presets, and keyframes exactly every `gop` frames (scene-cut detection off,
# closed GOPs) so tests can predict where keyframes fall. HEVC keeps x265's
# B-frames on purpose: it is the one codec here with composition offsets.
_VIDEO: dict[str, tuple[str, Callable[[int], dict[str, str]]]] = {
    "h264": (
        "libx264",
        lambda gop: {
            "preset": "ultrafast",
            "tune": "zerolatency",
            "profile": "baseline",
            "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0",
        },
    ),
    "hevc": (
        "libx265",
        lambda gop: {
            "preset": "ultrafast",
            "x265-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:open-gop=0:log-level=error",
        },
    ),
    "vp9": (
        "libvpx-vp9",
        lambda gop: {
            "deadline": "realtime",
            "cpu-used": "8",
            "lag-in-frames": "0",
            "g": str(gop),
            "keyint_min": str(gop),
        },
    ),
    "av1": (
        "libsvtav1",
        lambda gop: {
            "preset": "12",
            "svtav1-params": "rtc=1",  # low-delay prediction, no lookahead
            "g": str(gop),
            "keyint_min": str(gop),
        },
    ),
}
_AUDIO = {"aac": "aac", "opus": "libopus"}

# Clock stamp: 8x8 px blocks, left to right, wrapping onto further block rows
# when the picture is narrower than 64 blocks. Bits: marker, 48-bit ms, checksum.
_BLOCK = 8
_MARKER = (1, 0, 1, 1, 0, 0, 1, 0)
_VALUE_BITS = 48
_NBITS = len(_MARKER) + _VALUE_BITS + 8


def _clock_bits(ms: int) -> np.ndarray:
    value = ms.to_bytes(_VALUE_BITS // 8, "big")
    payload = np.unpackbits(np.frombuffer(value + bytes([sum(value) & 0xFF]), np.uint8))
    return np.concatenate([np.array(_MARKER, np.uint8), payload])


def _clock_grid(width: int) -> tuple[int, int]:
    """(columns, rows) of blocks the stamp occupies in a picture this wide."""
    cols = width // _BLOCK
    return cols, -(-_NBITS // cols)


def stamp_clock(rgb: np.ndarray, ms: int) -> None:
    """Draw `ms` into the top rows of an (H, W, 3) uint8 picture, in place."""
    cols, rows = _clock_grid(rgb.shape[1])
    if rows * _BLOCK > rgb.shape[0]:
        raise ValueError(f"picture {rgb.shape[1]}x{rgb.shape[0]} too small for the clock stamp")
    cells = np.zeros(rows * cols, np.uint8)
    cells[:_NBITS] = _clock_bits(ms) * 255
    blocks = cells.reshape(rows, cols).repeat(_BLOCK, 0).repeat(_BLOCK, 1)
    rgb[: rows * _BLOCK, : cols * _BLOCK] = blocks[:, :, None]


def read_clock(rgb_rows: np.ndarray) -> int | None:
    """Decode the ms timestamp from (the top rows of) a decoded RGB picture.

    Each block's inner 4x4 pixels are averaged and thresholded at mid-grey, so
    compression ringing at block edges does not flip bits. Returns None when
    the marker or checksum does not match (no stamp, or too damaged).
    """
    cols, rows = _clock_grid(rgb_rows.shape[1])
    if rows * _BLOCK > rgb_rows.shape[0]:
        return None
    grey = rgb_rows[: rows * _BLOCK, : cols * _BLOCK].astype(np.float32).mean(axis=2)
    inner = grey.reshape(rows, _BLOCK, cols, _BLOCK)[:, 2:-2, :, 2:-2]
    bits = (inner.mean(axis=(1, 3)).ravel()[:_NBITS] > 127.5).astype(np.uint8)
    if tuple(bits[: len(_MARKER)]) != _MARKER:
        return None
    value, check = np.packbits(bits[len(_MARKER) :]).tobytes()[:-1], bits[-8:]
    if sum(value) & 0xFF != int(np.packbits(check)[0]):
        return None
    return int.from_bytes(value, "big")


class _Sink:
    """Write-only file object for the muxer: without seek/tell PyAV marks the
    output non-seekable, which fMP4 (empty_moov) never needs."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(data)
        return len(data)

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


def _mux_options(
    fragmentation: str, frag_duration: float, separate_moof: bool, audio_only: bool
) -> dict[str, str]:
    if fragmentation not in ("keyframe", "duration", "both"):
        raise ValueError(f"fragmentation must be 'keyframe', 'duration' or 'both', not {fragmentation!r}")
    flags = ["empty_moov", "default_base_moof"]
    options: dict[str, str] = {}
    # frag_keyframe only looks at video keyframes, so audio-only output is cut
    # by duration too (every audio packet is a sync sample anyway).
    if fragmentation in ("keyframe", "both"):
        flags.insert(0, "frag_keyframe")
    if fragmentation in ("duration", "both") or audio_only:
        options["frag_duration"] = str(round(frag_duration * 1_000_000))
    if separate_moof:
        flags.append("separate_moof")
    options["movflags"] = "+".join(flags)
    return options


class LivePattern:
    """A test-pattern fMP4 stream produced frame by frame in real time (demo bot,
    live tests). Encoding runs in worker threads so the event loop never waits
    on it; a lock keeps :meth:`close` from freeing the encoder under a worker."""

    def __init__(
        self,
        *,
        video: str | None = "h264",
        audio: str | None = "aac",
        width: int = 320,
        height: int = 240,
        fps: int = 25,
        gop: int = 25,
        fragmentation: str = "keyframe",
        frag_duration: float = 0.5,
        separate_moof: bool = False,
        clock: bool = False,
    ) -> None:
        if video is None and audio is None:
            raise ValueError("need video, audio or both")
        if video == "av1":
            os.environ.setdefault("SVT_LOG", "1")  # else SVT-AV1 prints a banner per encoder
        self._fps = fps
        self._clock = clock
        self._sink = _Sink()
        self._out = av.open(
            self._sink,
            "w",
            format="mp4",
            container_options=_mux_options(
                fragmentation, frag_duration, separate_moof, audio_only=video is None
            ),
        )
        self._video: av.VideoStream | None = None
        self._audio: av.AudioStream | None = None
        self._source: av.container.InputContainer | None = None
        if video is not None:
            codec, options = _VIDEO[video]
            self._video = self._out.add_stream(codec, rate=fps, options=options(gop))
            self._video.width, self._video.height, self._video.pix_fmt = width, height, "yuv420p"
            if video == "hevc":
                self._video.codec_context.codec_tag = "hvc1"  # Apple/MSE want hvc1, not hev1
            self._source = av.open(f"testsrc=size={width}x{height}:rate={fps}", format="lavfi")
            self._pictures = self._source.decode(video=0)
        if audio is not None:
            self._audio = self._out.add_stream(_AUDIO[audio], rate=SAMPLE_RATE, layout="mono")
        self._lock = threading.Lock()
        self._ticks = 0
        self._stopped = False
        self._closed = False

    async def chunks(self) -> AsyncIterator[bytes]:
        """Yield the muxer's output as it is written (init segment, then
        fragments), producing frame i no earlier than start + i/fps. After
        :meth:`stop` the encoders are flushed and the tail is yielded."""
        start = time.monotonic() - self._ticks / self._fps
        while True:
            delay = start + self._ticks / self._fps - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if self._stopped:
                break
            if data := await asyncio.to_thread(self._step):
                yield data
        if data := await asyncio.to_thread(self._finish):
            yield data

    def stop(self) -> None:
        """End :meth:`chunks` after the current frame, flushing the last fragment."""
        self._stopped = True

    def close(self) -> None:
        """Release the encoders and muxer (waits for a frame being encoded)."""
        self._stopped = True
        with self._lock:
            self._release()

    def _step(self) -> bytes:
        """Encode tick i: video frame i and the audio up to that frame's end."""
        with self._lock:
            if self._closed:
                return b""
            i = self._ticks
            self._ticks += 1
            if self._audio is not None:
                start, end = i * SAMPLE_RATE // self._fps, (i + 1) * SAMPLE_RATE // self._fps
                t = np.arange(start, end) / SAMPLE_RATE
                tone = (0.2 * np.sin(2 * np.pi * _TONE_HZ * t)).astype(np.float32)[None, :]
                sound = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
                sound.sample_rate, sound.pts = SAMPLE_RATE, start
                sound.time_base = Fraction(1, SAMPLE_RATE)
                self._out.mux(self._audio.encode(sound))
            if self._video is not None:
                picture = next(self._pictures)
                if self._clock:
                    rgb = picture.to_ndarray()
                    stamp_clock(rgb, time.time_ns() // 1_000_000)
                    picture = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                else:  # testsrc marks every picture as an I-frame, which encoders obey
                    picture.pict_type = av.video.frame.PictureType.NONE
                picture.pts, picture.time_base = i, Fraction(1, self._fps)
                self._out.mux(self._video.encode(picture))
            return self._sink.take()

    def _finish(self) -> bytes:
        """Flush encoders and muxer (last fragment), then release everything."""
        with self._lock:
            if self._closed:
                return b""
            for stream in (self._video, self._audio):
                if stream is not None:
                    self._out.mux(stream.encode(None))
            self._release()
            return self._sink.take()

    def _release(self) -> None:
        if not self._closed:
            self._closed = True
            self._out.close()
            if self._source is not None:
                self._source.close()


def encode_fmp4(*, seconds: float = 3.0, **options: Any) -> bytes:
    """Encode `seconds` of test pattern, as fast as possible, into one fMP4
    byte string (ftyp, moov, moof+mdat..., mfra). `options` are LivePattern's.

    fragmentation="keyframe" starts a fragment at every video keyframe;
    "duration" cuts every `frag_duration` seconds regardless of keyframes, so
    with gop/fps > frag_duration some fragments start mid-GOP; "both" cuts at
    every keyframe and every `frag_duration` (GOPs of several fragments).
    """
    pattern = LivePattern(**options)
    try:
        parts = [pattern._step() for _ in range(round(seconds * pattern._fps))]
        return b"".join(parts) + pattern._finish()
    finally:
        pattern.close()


def probe_packets(data: bytes) -> list[dict[str, Any]]:
    """Demux fMP4 bytes with FFmpeg and list every packet in demux order, as a
    reference to check our own box parser (keyframes, timing, sizes) against.
    `pos` is the byte offset of the sample data, to map packets to fragments."""
    with av.open(io.BytesIO(data), format="mp4") as container:
        return [
            {
                "stream": packet.stream.index,
                "kind": packet.stream.type,
                "dts": packet.dts,
                "pts": packet.pts,
                "duration": packet.duration,
                "time_base": float(packet.time_base),
                "is_keyframe": packet.is_keyframe,
                "size": packet.size,
                "pos": packet.pos,
            }
            for packet in container.demux()
            if packet.size  # skip the empty end-of-stream packets
        ]


def decode_frames(data: bytes) -> int:
    """Decode every video frame of an fMP4 (init + fragments); return the count.

    The decoder runs with ``err_detect=explode`` and corrupt frames are
    rejected, so a stream that merely "mostly plays" (e.g. missing references
    after a cut in the middle of a GOP) raises instead of being concealed.
    """
    with av.open(io.BytesIO(data), format="mp4") as container:
        if not container.streams.video:
            return 0
        stream = container.streams.video[0]
        stream.codec_context.options = {"err_detect": "explode", "flags2": "+showall"}
        count = 0
        for frame in container.decode(stream):
            if frame.is_corrupt:
                raise ValueError(f"corrupt video frame #{count} (pts {frame.pts})")
            count += 1
        return count
