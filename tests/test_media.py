"""The pure fMP4 layer against real PyAV media cut at arbitrary byte boundaries, and hand-built boxes."""

from __future__ import annotations

import io
import struct

import av
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from relay.media import BoxSplitter, FragmentAssembler, InitSegment, MediaError, parse_init
from relay.testsrc import probe_packets
from tests.conftest import media, split

VARIANTS = {
    "h264+aac keyframe fragments": dict(seconds=2, video="h264", audio="aac"),
    "h264+aac fragments by duration": dict(seconds=2, video="h264", audio="aac", gop=50,
                                           fragmentation="duration", frag_duration=0.3),
    "h264+opus separate moofs": dict(seconds=2, video="h264", audio="opus", separate_moof=True),
    "aac audio only": dict(seconds=2, video=None, audio="aac"),
    "vp9+opus": dict(seconds=2, video="vp9", audio="opus"),
    "av1 video only": dict(seconds=2, video="av1", audio=None),
    "hevc+aac": dict(seconds=2, video="hevc", audio="aac"),
}


def box(kind: str, payload: bytes = b"") -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind.encode("latin-1") + payload


def full_box(kind: str, payload: bytes, version: int = 0, flags: int = 0) -> bytes:
    return box(kind, struct.pack(">I", (version << 24) | flags) + payload)


def feed_in_chunks(data: bytes, sizes: list[int]) -> tuple[list, FragmentAssembler]:
    assembler = FragmentAssembler()
    events, pos, i = [], 0, 0
    while pos < len(data):
        size = sizes[i % len(sizes)] if sizes else len(data)
        events += assembler.feed(data[pos : pos + size])
        pos, i = pos + size, i + 1
    return events + assembler.finish(), assembler


@pytest.mark.parametrize("variant", VARIANTS)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(min_value=1, max_value=9000), min_size=1, max_size=50))
def test_any_chunking_gives_the_same_boxes_and_fragments(variant: str, sizes: list[int]) -> None:
    data = media(**VARIANTS[variant])
    splitter = BoxSplitter()
    boxes, pos, i = [], 0, 0
    while pos < len(data):
        boxes += splitter.feed(data[pos : pos + sizes[i % len(sizes)]])
        pos, i = pos + sizes[i % len(sizes)], i + 1
    boxes += splitter.finish()
    assert b"".join(b.data for b in boxes) == data
    assert [b.offset for b in boxes] == [sum(b.size for b in boxes[:k]) for k in range(len(boxes))]

    events, _ = feed_in_chunks(data, sizes)
    whole = feed_in_chunks(data, [])[0]
    assert [(type(e), e.offset, len(e.data)) for e in events] == [(type(e), e.offset, len(e.data)) for e in whole]
    assert [getattr(e, "keyframe", None) for e in events] == [getattr(e, "keyframe", None) for e in whole]
    joined = b"".join(e.data for e in events)
    assert data.startswith(joined) and data[len(joined) + 4 : len(joined) + 8] == b"mfra"


@pytest.mark.parametrize("variant", VARIANTS)
def test_keyframes_and_times_match_what_pyav_says(variant: str) -> None:
    data = media(**VARIANTS[variant])
    init, fragments = split(data)
    packets = probe_packets(data)
    video = [p for p in packets if p["kind"] == "video"]
    assert fragments
    for fragment in fragments:
        inside = sorted((p for p in packets if fragment.offset <= p["pos"] < fragment.offset + fragment.size),
                        key=lambda p: p["pos"])
        assert inside, "every fragment carries samples"
        first_video = next((p for p in inside if p["kind"] == "video"), None)
        if not video:
            assert fragment.keyframe and fragment.random_access, "audio-only fragments are all random access points"
            continue
        if first_video is None:
            assert not fragment.keyframe, "a fragment without video cannot start a video GOP"
            continue
        assert fragment.keyframe == first_video["is_keyframe"]
        assert fragment.random_access == any(p["is_keyframe"] for p in inside if p["kind"] == "video")
        track = init.info.primary
        run = next(r for r in fragment.runs if r.track_id == track.track_id)
        assert run.decode_time * first_video["time_base"] * track.timescale == pytest.approx(
            first_video["dts"], abs=1), "tfdt agrees with the demuxer's dts"
    keyframe_fragments = sum(f.keyframe for f in fragments)
    if VARIANTS[variant].get("fragmentation") == "duration":
        assert 0 < keyframe_fragments < len(fragments), "fragments by duration mostly start mid-GOP"
    elif video:
        assert keyframe_fragments == sum(p["is_keyframe"] for p in video)


def test_codec_strings_of_real_media_agree_with_the_encoders_config() -> None:
    data = media(seconds=1, video="h264", audio="aac")
    with av.open(io.BytesIO(data)) as container:
        avcc = container.streams.video[0].codec_context.extradata
    info = split(data)[0].info
    assert info.mime == f'video/mp4; codecs="avc1.{avcc[1]:02X}{avcc[2]:02X}{avcc[3]:02X},mp4a.40.2"'
    assert info.primary.width == 320 and info.primary.height == 240
    assert [t.kind for t in info.tracks] == ["video", "audio"]
    assert split(media(seconds=1, video="vp9", audio="opus"))[0].mime.endswith('codecs="vp09.00.20.08.01.02.02.02.00,opus"')
    assert split(media(seconds=1, video=None, audio="aac"))[0].mime == 'audio/mp4; codecs="mp4a.40.2"'


def _init_with(entry: bytes, handler: str = "vide") -> bytes:
    stsd = full_box("stsd", struct.pack(">I", 1) + entry)
    mdia = box("mdia", full_box("mdhd", bytes(8) + struct.pack(">II", 90000, 0) + bytes(4))
               + full_box("hdlr", bytes(4) + handler.encode() + bytes(12) + b"\0")
               + box("minf", box("stbl", stsd)))
    trak = box("trak", full_box("tkhd", bytes(8) + struct.pack(">I", 1) + bytes(64)) + mdia)
    trex = full_box("trex", struct.pack(">5I", 1, 1, 3000, 0, 0x10000))
    return box("ftyp", b"isom\0\0\0\0") + box("moov", trak + box("mvex", trex))


def _visual(fourcc: str, config: bytes) -> bytes:
    fields = bytes(6) + struct.pack(">H", 1) + bytes(16) + struct.pack(">HH", 1280, 720) + bytes(50)
    return box(fourcc, fields + config)


def _audio(fourcc: str, config: bytes) -> bytes:
    fields = bytes(6) + struct.pack(">H", 1) + bytes(8) + struct.pack(">HHHHI", 2, 16, 0, 0, 48000 << 16)
    return box(fourcc, fields + config)


def _esds(object_type: int, asc: bytes) -> bytes:
    dsi = bytes([0x05, len(asc)]) + asc
    dcd = bytes([0x04, 13 + len(dsi), object_type, 0x15]) + bytes(11) + dsi
    es = bytes([0x03, 3 + len(dcd)]) + b"\x00\x01\x00" + dcd
    return full_box("esds", es)


@pytest.mark.parametrize("entry,handler,codec", [
    (_visual("avc1", box("avcC", bytes([1, 0x64, 0x00, 0x28, 0xFF]))), "vide", "avc1.640028"),
    (_visual("avc3", box("avcC", bytes([1, 0x42, 0xC0, 0x1F, 0xFF]))), "vide", "avc3.42C01F"),
    (_visual("hvc1", box("hvcC", bytes([1, 0x01]) + struct.pack(">I", 0x60000000) + bytes([0xB0, 0, 0, 0, 0, 0, 93]))),
     "vide", "hvc1.1.6.L93.B0"),
    (_visual("hev1", box("hvcC", bytes([1, 0x22]) + struct.pack(">I", 0x20000000) + bytes([0x90, 0, 0, 0, 0, 0, 120]))),
     "vide", "hev1.2.4.H120.90"),
    (_visual("vp09", full_box("vpcC", bytes([0, 10, 0x82, 1, 1, 1]), version=1)), "vide", "vp09.00.10.08.01.01.01.01.00"),
    (_visual("av01", box("av1C", bytes([0x81, 0x04, 0x0C, 0]))), "vide", "av01.0.04M.08"),
    (_visual("av01", box("av1C", bytes([0x81, 0x28, 0xCC, 0]))), "vide", "av01.1.08H.10"),
    (_audio("mp4a", _esds(0x40, bytes([0x12, 0x10]))), "soun", "mp4a.40.2"),
    (_audio("mp4a", _esds(0x40, bytes([0x2B, 0x92, 0x08, 0x00]))), "soun", "mp4a.40.5"),
    (_audio("mp4a", _esds(0x6B, b"")), "soun", "mp4a.6B"),
    (_audio("Opus", box("dOps", bytes(11))), "soun", "opus"),
    (_audio("fLaC", full_box("dfLa", bytes(38))), "soun", "flac"),
])
def test_codec_strings_from_hand_built_sample_entries(entry: bytes, handler: str, codec: str) -> None:
    info = parse_init(_init_with(entry, handler))
    assert info.tracks[0].codec == codec
    assert info.tracks[0].timescale == 90000 and info.tracks[0].defaults.duration == 3000
    assert info.mime == f'{"video" if handler == "vide" else "audio"}/mp4; codecs="{codec}"'


def test_largesize_and_open_ended_boxes_split_byte_by_byte() -> None:
    large = struct.pack(">I4sQ", 1, b"free", 16 + 5) + b"12345"
    open_ended = struct.pack(">I4s", 0, b"mdat") + b"x" * 100
    splitter = BoxSplitter()
    boxes = [b for byte in range(len(large + open_ended)) for b in splitter.feed((large + open_ended)[byte : byte + 1])]
    assert [(b.type, b.size) for b in boxes] == [("free", 21)]
    last = splitter.finish()
    assert [(b.type, b.offset, b.data) for b in last] == [("mdat", 21, open_ended)]


@pytest.mark.parametrize("data,message", [
    (struct.pack(">I4s", 4, b"moof"), "impossible size 4"),
    (struct.pack(">I4sQ", 1, b"mdat", 8), "impossible 64-bit size"),
    (struct.pack(">I4s", 1 << 31, b"mdat"), "exceeds the limit"),
    (struct.pack(">I4sQ", 1, b"mdat", 4 << 30), "exceeds the limit"),
    (b"\x00\x00\x00\x10\xff\xfe\x00\x01", "not an MP4 box"),
])
def test_impossible_boxes_are_clear_errors(data: bytes, message: str) -> None:
    with pytest.raises(MediaError, match=message):
        BoxSplitter(max_box_size=1 << 20).feed(data)


def test_truncated_stream_and_media_without_init_are_errors() -> None:
    splitter = BoxSplitter()
    splitter.feed(box("moov", bytes(100))[:50])
    with pytest.raises(MediaError, match="ended inside a box"):
        splitter.finish()
    with pytest.raises(MediaError, match="before the init segment"):
        FragmentAssembler().feed(box("mdat", bytes(10)))
    data = media(seconds=1)
    init, fragments = split(data)
    with pytest.raises(MediaError, match="mdat without a moof"):
        FragmentAssembler().feed(init.data + box("mdat", bytes(10)))
    with pytest.raises(MediaError, match="no audio or video track"):
        parse_init(box("ftyp", b"isom\0\0\0\0") + box("moov", full_box("mvhd", bytes(96))))


def test_a_new_init_mid_stream_starts_a_new_segment() -> None:
    first, second = media(seconds=1, video="h264", audio="aac"), media(seconds=1, video="vp9", audio="opus")
    first = first[: first.rindex(b"mfra") - 4]
    events, _ = feed_in_chunks(first + second, [777])
    inits = [e for e in events if isinstance(e, InitSegment)]
    assert [i.mime.split('"')[1].split(".")[0] for i in inits] == ["avc1", "vp09"]
    assert inits[1].offset == len(first)
    after = events[events.index(inits[1]) + 1]
    assert after.keyframe and after.decode_time == 0
