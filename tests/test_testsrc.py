"""relay.testsrc really makes the fMP4 it claims: checked with PyAV and a plain box walk."""

from __future__ import annotations

import asyncio
import io
import struct
import time

import av
import pytest

from relay.testsrc import LivePattern, decode_frames, encode_fmp4, probe_packets, read_clock


def boxes(data: bytes, start: int = 0, end: int | None = None) -> list[tuple[str, int, int]]:
    """(type, offset, size) of the complete boxes laid end to end in data[start:end]."""
    end = len(data) if end is None else end
    found = []
    while start + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, start)
        if size == 1:
            (size,) = struct.unpack_from(">Q", data, start + 8)
        assert size >= 8, f"bad box size at {start}"
        if start + size > end:
            break
        found.append((kind.decode("latin-1"), start, size))
        start += size
    return found


def top_level(data: bytes) -> list[str]:
    """Top-level box types; the boxes must cover the data exactly."""
    found = boxes(data)
    assert found and found[-1][1] + found[-1][2] == len(data), "trailing bytes"
    return [kind for kind, _, _ in found]


def fragment_starts(data: bytes) -> list[dict]:
    """First video packet of each moof (packets are mapped to moofs by byte position)."""
    moofs = [offset for kind, offset, _ in boxes(data) if kind == "moof"]
    video = [p for p in probe_packets(data) if p["kind"] == "video"]
    firsts = []
    for moof, next_moof in zip(moofs, moofs[1:] + [len(data)]):
        inside = [p for p in video if moof < p["pos"] < next_moof]
        if inside:
            firsts.append(inside[0])
    return firsts


@pytest.mark.parametrize("audio", ["aac", "opus"])
@pytest.mark.parametrize("video", ["h264", "hevc", "vp9", "av1"])
def test_codecs_make_playable_fmp4(video: str, audio: str) -> None:
    data = encode_fmp4(seconds=1, video=video, audio=audio, width=160, height=120, gop=10)
    top = top_level(data)
    assert top[:2] == ["ftyp", "moov"]
    assert top.count("moof") >= 2 and top.count("moof") == top.count("mdat")
    assert decode_frames(data) == 25
    kinds = {p["kind"] for p in probe_packets(data)}
    assert kinds == {"video", "audio"}
    assert all(p["is_keyframe"] for p in fragment_starts(data))


def test_video_only_and_audio_only() -> None:
    assert decode_frames(encode_fmp4(seconds=1, audio=None)) == 25
    data = encode_fmp4(seconds=2, video=None, frag_duration=0.5)
    assert top_level(data).count("moof") >= 3
    assert decode_frames(data) == 0
    assert {p["kind"] for p in probe_packets(data)} == {"audio"}


def test_keyframe_interval_is_exact() -> None:
    packets = [p for p in probe_packets(encode_fmp4(seconds=2, gop=10)) if p["kind"] == "video"]
    assert [i for i, p in enumerate(packets) if p["is_keyframe"]] == [0, 10, 20, 30, 40]


def test_duration_fragments_start_mid_gop() -> None:
    data = encode_fmp4(seconds=2, gop=50, fragmentation="duration", frag_duration=0.5)
    starts = fragment_starts(data)
    assert len(starts) >= 3
    assert starts[0]["is_keyframe"]
    assert not all(p["is_keyframe"] for p in starts[1:])
    # A viewer joining at such a fragment cannot decode: decode_frames must say so.
    moofs = [offset for kind, offset, _ in boxes(data) if kind == "moof"]
    init = data[: moofs[0]]
    with pytest.raises((ValueError, av.FFmpegError)):
        decode_frames(init + data[moofs[1] :])


def test_separate_moof_gives_one_traf_per_moof() -> None:
    data = encode_fmp4(seconds=2, separate_moof=True)
    moofs = [(offset, size) for kind, offset, size in boxes(data) if kind == "moof"]
    for offset, size in moofs:
        assert [k for k, _, _ in boxes(data, offset + 8, offset + size)].count("traf") == 1
    assert len(moofs) >= 4  # video and audio fragments alternate
    assert decode_frames(data) == 50


@pytest.mark.parametrize("video", ["h264", "vp9"])
def test_clock_stamp_round_trips(video: str) -> None:
    before = time.time() * 1000
    data = encode_fmp4(seconds=1, video=video, audio=None, clock=True)
    after = time.time() * 1000
    with av.open(io.BytesIO(data)) as container:
        stamps = [read_clock(f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]
    assert len(stamps) == 25
    assert all(s is not None and before - 1 <= s <= after + 1 for s in stamps)
    assert stamps == sorted(stamps)


def test_read_clock_rejects_unstamped_picture() -> None:
    with av.open(io.BytesIO(encode_fmp4(seconds=0.2, audio=None))) as container:
        frame = next(container.decode(video=0))
    assert read_clock(frame.to_ndarray(format="rgb24")) is None


def test_bad_fragmentation_is_rejected() -> None:
    with pytest.raises(ValueError):
        encode_fmp4(fragmentation="sometimes")


def test_live_pattern_streams_in_real_time() -> None:
    fps, gop = 25, 12

    async def run() -> list[tuple[float, bytes]]:
        pattern = LivePattern(fps=fps, gop=gop, clock=True)
        received: list[tuple[float, bytes]] = []
        start = time.monotonic()
        try:
            async with asyncio.timeout(5):
                async for chunk in pattern.chunks():
                    received.append((time.monotonic() - start, chunk))
                    so_far = b"".join(c for _, c in received)
                    if [k for k, _, _ in boxes(so_far)].count("moof") >= 2:
                        pattern.stop()  # the generator then yields the flushed tail and ends
        finally:
            pattern.close()
        return received

    received = asyncio.run(run())
    data = b"".join(chunk for _, chunk in received)
    top = top_level(data)
    assert top[:2] == ["ftyp", "moov"] and top.count("moof") >= 2
    # When the 2nd fragment arrived: paced (it needs 2 GOPs of frames) but prompt.
    second_moof = [offset for kind, offset, _ in boxes(data) if kind == "moof"][1]
    received_bytes, arrival = 0, 0.0
    for arrival, chunk in received:
        received_bytes += len(chunk)
        if received_bytes > second_moof:
            break
    assert 2 * gop / fps - 0.05 <= arrival < 3.0
    frames = decode_frames(data)
    assert frames >= 2 * gop
    # Capture times follow the wall clock at the frame rate.
    with av.open(io.BytesIO(data)) as container:
        stamps = [read_clock(f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]
    assert None not in stamps
    assert stamps[-1] - stamps[0] == pytest.approx((frames - 1) * 1000 / fps, abs=60)
