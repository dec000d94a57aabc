"""Fuzzing the pure fMP4 layer with mutated real media: whatever a bot sends, the box splitter, the fragment
assembler and the init/moof parsers raise nothing but ``MediaError``, hold bounded memory, and return promptly.

Seeds are real PyAV fMP4 in several codecs and fragmentation modes. Mutations are byte-level (flips, inserts,
deletions, truncation) and structure-aware (a box's size set to 0, 1, 7, huge, 2**32-1 or a 64-bit largesize up to
2**64-1; boxes swapped, duplicated, dropped or cut short with their ancestors' sizes fixed up so the damage reaches
deep parsers; 32-bit fields inside a box overwritten with boundary values). Streams are fed in random chunkings.
The atheris harness ``benchmarks/fuzz_media.py`` runs the same properties unguided for as long as you like.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import struct
import time
import tracemalloc
from dataclasses import dataclass
from typing import Iterator

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from relay.media import BoxSplitter, Fragment, FragmentAssembler, InitInfo, InitSegment, MediaError, parse_init
from relay.media.boxes import parse_header
from relay.media.fragment import parse_moof
from tests.conftest import media, split

MAX_BOX = 1 << 20  # a small limit, so that "too big" is reachable by mutation and memory bounds are tight
SEEDS = {
    "h264+aac": dict(seconds=1),
    "h264+aac by duration": dict(seconds=1, gop=50, fragmentation="duration", frag_duration=0.3),
    "h264+opus separate moofs": dict(seconds=1, audio="opus", separate_moof=True),
    "aac only": dict(seconds=1, video=None),
    "vp9+opus": dict(seconds=1, video="vp9", audio="opus"),
    "hevc+aac": dict(seconds=1, video="hevc"),
    "av1 only": dict(seconds=1, video="av1", audio=None),
}
FUZZ = dict(deadline=2000, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], derandomize=False)


class Hang(Exception):
    """An example ran far past its deadline (raised by a timer, so a real infinite loop fails instead of hanging)."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    def expired(signum: int, frame: object) -> None:
        raise Hang(f"no return after {seconds}s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module", autouse=True)
def encoded() -> None:
    """Encode every seed before the first example runs, so no example's deadline pays for PyAV."""
    for options in SEEDS.values():
        media(**options)


def seed(name: str) -> bytes:
    return media(**SEEDS[name])


# -- the box tree, leniently: as far as it parses ------------------------------------------------------
CONTAINERS = {"moov", "trak", "mdia", "minf", "stbl", "mvex", "moof", "traf", "edts", "dinf", "udta", "sinf",
              "schi", "mfra"}
CHILDREN_AT = {"stsd": 8, "dref": 8, "meta": 4, "avc1": 78, "avc3": 78, "hvc1": 78, "hev1": 78, "vp09": 78,
               "av01": 78, "encv": 78, "mp4a": 28, "Opus": 28, "fLaC": 28, "enca": 28}


@dataclass(frozen=True)
class Node:
    offset: int
    header: int  # 8, or 16 with a largesize
    size: int  # bytes in all
    type: str
    parent: int | None  # index in the node list

    @property
    def end(self) -> int:
        return self.offset + self.size

    @property
    def payload(self) -> int:
        return self.offset + self.header


def box_tree(data: bytes) -> list[Node]:
    """Every box we can find, depth first; stops quietly where the bytes stop making sense."""
    nodes: list[Node] = []

    def walk(start: int, end: int, parent: int | None) -> None:
        pos = start
        while pos < end:
            try:
                head = parse_header(data, pos, end)
            except MediaError:
                return
            if head is None:
                return
            kind, header, size = head
            size = end - pos if size == 0 else size
            if pos + size > end:
                return
            nodes.append(Node(pos, header, size, kind, parent))
            index = len(nodes) - 1
            if kind in CONTAINERS:
                walk(pos + header, pos + size, index)
            elif kind in CHILDREN_AT:
                walk(pos + header + CHILDREN_AT[kind], pos + size, index)
            pos += size

    walk(0, len(data), None)
    return nodes


def _resize(data: bytearray, nodes: list[Node], index: int | None, delta: int) -> None:
    """Grow (or shrink) the size fields of a node and all its ancestors by ``delta``."""
    while index is not None:
        node = nodes[index]
        (small,) = struct.unpack_from(">I", data, node.offset)
        if small == 1:
            (large,) = struct.unpack_from(">Q", data, node.offset + 8)
            struct.pack_into(">Q", data, node.offset + 8, max(0, large + delta))
        elif small != 0:
            struct.pack_into(">I", data, node.offset, max(0, min(2**32 - 1, small + delta)))
        index = node.parent


def cut_at_end(data: bytes, nodes: list[Node], index: int, keep: int) -> bytes:
    """The stream cut ``keep`` bytes into the payload of a box, every enclosing box ending there too:
    the cut box is the last thing in the buffer (where a careless parser reads past the end)."""
    node = nodes[index]
    end = node.payload + min(keep, node.size - node.header)
    out = bytearray(data[:end])
    i: int | None = index
    while i is not None:
        n = nodes[i]
        if struct.unpack_from(">I", out, n.offset)[0] == 1:
            struct.pack_into(">Q", out, n.offset + 8, end - n.offset)
        else:
            struct.pack_into(">I", out, n.offset, end - n.offset)
        i = n.parent
    return bytes(out)


# -- mutations ---------------------------------------------------------------------------------------
INTERESTING_32 = [0, 1, 7, 8, 9, 15, 16, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000,
                  0xFFFFFFFE, 0xFFFFFFFF]
BOX_SIZES = [0, 1, 7, 8, 9, 16, MAX_BOX, MAX_BOX + 1, 1 << 31, 2**32 - 1]
LARGE_SIZES = [0, 1, 8, 15, 16, 17, MAX_BOX + 1, 2**32, 4 << 30, 2**63, 2**64 - 1]
BOX_TYPES = [b"ftyp", b"moov", b"moof", b"mdat", b"free", b"styp", b"trak", b"traf", b"trun", b"tfhd", b"mvex",
             b"trex", b"stsd", b"avcC", b"sidx", b"emsg", b"prft", b"mfra", b"\xa9too", b"\x00\x01\x02\x03"]

index_ = st.integers(0, 2**32)
ops = st.one_of(
    st.tuples(st.just("flip"), index_, st.integers(1, 255)),
    st.tuples(st.just("insert"), index_, st.binary(min_size=1, max_size=24)),
    st.tuples(st.just("delete"), index_, st.integers(1, 4096)),
    st.tuples(st.just("truncate"), index_),
    st.tuples(st.just("size"), index_, st.sampled_from(BOX_SIZES) | st.integers(0, 2**32 - 1)),
    st.tuples(st.just("largesize"), index_, st.sampled_from(LARGE_SIZES) | st.integers(0, 2**64 - 1), st.booleans()),
    st.tuples(st.just("nudge"), index_, st.integers(-16, 16)),
    st.tuples(st.just("field"), index_, st.integers(0, 64), st.sampled_from(INTERESTING_32) | st.integers(0, 2**32 - 1)),
    st.tuples(st.just("swap"), index_, index_),
    st.tuples(st.just("dup"), index_),
    st.tuples(st.just("drop"), index_, st.booleans()),
    st.tuples(st.just("cut"), index_, st.integers(0, 64), st.booleans()),
    st.tuples(st.just("newbox"), index_, st.sampled_from(BOX_TYPES), st.integers(0, 64), st.booleans()),
)
chunkings = st.lists(st.integers(1, 1 << 16), min_size=1, max_size=40) | st.lists(st.integers(1, 64), min_size=1,
                                                                                     max_size=8)


def mutate(data: bytes, operations: list[tuple]) -> bytes:
    out = bytearray(data)
    for op in operations:
        kind = op[0]
        if not out:
            out += b"\0\0\0\x08free"
        nodes = box_tree(bytes(out))
        node_i = op[1] % len(nodes) if nodes else None
        node = nodes[node_i] if nodes else None
        pos = op[1] % (len(out) + 1)
        if kind == "flip" and pos < len(out):
            out[pos] ^= op[2]
        elif kind == "insert":
            out[pos:pos] = op[2]
        elif kind == "delete":
            del out[pos : pos + op[2]]
        elif kind == "truncate":
            del out[pos:]
        elif node is None:
            continue
        elif kind == "size":
            struct.pack_into(">I", out, node.offset, op[2])
        elif kind == "largesize":
            struct.pack_into(">I", out, node.offset, 1)
            if op[3]:  # a 64-bit size inserted after the type
                out[node.offset + 8 : node.offset + 8] = struct.pack(">Q", op[2])
            elif node.offset + 16 <= len(out):  # or written over the payload's first bytes
                struct.pack_into(">Q", out, node.offset + 8, op[2])
        elif kind == "nudge":
            (size,) = struct.unpack_from(">I", out, node.offset)
            struct.pack_into(">I", out, node.offset, max(0, min(2**32 - 1, size + op[2])))
        elif kind == "field":
            at = node.payload + 4 * (op[2] % max(1, (node.size - node.header) // 4))
            if at + 4 <= node.end:
                struct.pack_into(">I", out, at, op[3])
        elif kind == "swap":
            siblings = [i for i, n in enumerate(nodes) if n.parent == node.parent]
            other = nodes[siblings[op[2] % len(siblings)]]
            a, b = sorted((node, other), key=lambda n: n.offset)
            if a.end <= b.offset:
                out[a.offset : b.end] = out[b.offset : b.end] + out[a.end : b.offset] + out[a.offset : a.end]
        elif kind == "dup":
            out[node.end : node.end] = out[node.offset : node.end]
            _resize(out, nodes, node.parent, node.size)
        elif kind == "drop":
            del out[node.offset : node.end]
            if op[2]:
                _resize(out, nodes, node.parent, -node.size)
        elif kind == "cut":
            keep = min(op[2], node.size - node.header)
            if op[3]:
                out = bytearray(cut_at_end(bytes(out), nodes, node_i, keep))
            else:
                del out[node.payload + keep : node.end]
                _resize(out, nodes, node_i, keep - (node.size - node.header))
        elif kind == "newbox":
            new = struct.pack(">I", 8 + op[3]) + op[2] + bytes(op[3])
            at = node.end if op[4] else node.offset
            out[at:at] = new
            _resize(out, nodes, node.parent, len(new))
    return bytes(out)


def chunks(data: bytes, sizes: list[int]) -> Iterator[bytes]:
    pos, i = 0, 0
    while pos < len(data):
        size = sizes[i % len(sizes)]
        yield data[pos : pos + size]
        pos, i = pos + size, i + 1


# -- the properties ------------------------------------------------------------------------------------
def check_info(info: InitInfo) -> None:
    assert isinstance(info, InitInfo) and info.tracks
    for track in info.tracks:
        assert track.kind in ("video", "audio") and track.timescale > 0 and isinstance(track.codec, str)
    assert isinstance(info.mime, str) and info.primary in info.tracks
    json.dumps(info.describe(), allow_nan=False)


def check_fragment(fragment: Fragment) -> None:
    assert fragment.runs and math.isfinite(fragment.decode_time) and math.isfinite(fragment.duration)
    assert not fragment.keyframe or fragment.random_access, "a keyframe fragment is a join point"
    json.dumps(fragment.index_entry(), allow_nan=False)  # what goes in the sidecar, status and HLS


def run_splitter(data: bytes, sizes: list[int]) -> None:
    splitter = BoxSplitter(MAX_BOX)
    fed = at = 0

    def take(boxes: list) -> None:
        nonlocal at
        for box in boxes:  # whole boxes, in order, exactly the stream's bytes: none lost, none repeated
            assert box.offset == at and data[at : at + box.size] == box.data and box.size >= 8
            at += box.size

    for chunk in chunks(data, sizes):
        fed += len(chunk)
        try:
            take(splitter.feed(chunk))
        except MediaError as exc:
            take(exc.boxes)  # the whole boxes ahead of the bad bytes are not lost with them
            assert splitter.buffered <= MAX_BOX + len(chunk)
            assert at + splitter.buffered == fed
            return
        assert splitter.buffered <= MAX_BOX, "held more than one box's worth"
        assert at + splitter.buffered == splitter.position == fed
    try:
        take(splitter.finish())
        assert at == len(data) and splitter.buffered == 0
    except MediaError as exc:
        assert exc.boxes == [] and at + splitter.buffered == len(data)


def run_assembler(data: bytes, sizes: list[int]) -> list:
    assembler = FragmentAssembler(MAX_BOX)
    events: list = []
    for chunk in chunks(data, sizes):
        try:
            events += assembler.feed(chunk)
        except MediaError as exc:
            events += exc.events  # what the chunk completed before the bad bytes
            assert assembler.splitter.buffered <= MAX_BOX + len(chunk)
            break
        assert assembler.splitter.buffered <= MAX_BOX
        assert assembler._pending_bytes <= MAX_BOX and assembler._init_bytes <= MAX_BOX
    else:
        try:
            events += assembler.finish()
        except MediaError as exc:
            events += exc.events
    end = 0
    for event in events:  # in stream order, never overlapping, each exactly the bytes at its offset
        assert event.offset >= end and data[event.offset : event.offset + len(event.data)] == event.data
        end = event.offset + len(event.data)
        if isinstance(event, InitSegment):
            check_info(event.info)
        else:
            assert isinstance(event, Fragment)
            check_fragment(event)
    assert len(assembler._next_decode) <= max((len(e.info.tracks) for e in events if isinstance(e, InitSegment)),
                                              default=0), "a clock per track the init declares, no more"
    return events


# -- hypothesis ----------------------------------------------------------------------------------------
@settings(max_examples=1000, **FUZZ)
@given(name=st.sampled_from(sorted(SEEDS)), operations=st.lists(ops, max_size=6), sizes=chunkings)
def test_mutated_streams_raise_only_media_errors_in_bounded_memory(name: str, operations: list, sizes: list) -> None:
    data = mutate(seed(name), operations)
    with time_limit(10):
        run_splitter(data, sizes)
        run_assembler(data, sizes)


@settings(max_examples=800, **FUZZ)
@given(name=st.sampled_from(sorted(SEEDS)), operations=st.lists(ops, min_size=1, max_size=8))
def test_mutated_init_segments_raise_only_media_errors(name: str, operations: list) -> None:
    data = mutate(split(seed(name))[0].data, operations)
    with time_limit(10):
        try:
            info = parse_init(data)
        except MediaError:
            return
        check_info(info)


@settings(max_examples=800, **FUZZ)
@given(name=st.sampled_from(sorted(SEEDS)), init_of=st.sampled_from(sorted(SEEDS)), which=st.integers(0, 99),
       operations=st.lists(ops, min_size=1, max_size=8), offset=st.sampled_from([0, 1000, 2**40]))
def test_mutated_moofs_raise_only_media_errors(name: str, init_of: str, which: int, operations: list,
                                              offset: int) -> None:
    fragments = split(seed(name))[1]
    fragment = fragments[which % len(fragments)]
    moof_size = next(n.size for n in box_tree(fragment.data) if n.type == "moof" and n.parent is None)
    moof_at = fragment.data.index(b"moof") - 4
    moof = mutate(fragment.data[moof_at : moof_at + moof_size], operations)
    with time_limit(10):
        try:
            parsed = parse_moof(moof, split(seed(init_of))[0].info, offset)
        except MediaError:
            return
    assert parsed.runs and isinstance(parsed.data_end, int)


# -- systematic: every box cut short at the very end of the buffer --------------------------------------
@pytest.mark.parametrize("name", sorted(SEEDS))
def test_every_box_cut_short_as_the_last_bytes_is_a_media_error(name: str) -> None:
    """Each box of the init and of a moof, its payload cut at every length up to 48 bytes, as the last thing
    in the buffer (its ancestors shrunk to match): parsers that read a fixed field past a box's end meet the
    end of the data, not a sibling's bytes."""
    init, fragments = split(seed(name))
    moof = fragments[0].data[: next(n.size for n in box_tree(fragments[0].data) if n.type == "moof")]
    with time_limit(20):
        for data, parse in ((init.data, parse_init), (moof, lambda d: parse_moof(d, init.info))):
            nodes = box_tree(data)
            assert len(nodes) > 5
            for index, node in enumerate(nodes):
                for keep in range(min(48, node.size - node.header) + 1):
                    with contextlib.suppress(MediaError):
                        parse(cut_at_end(data, nodes, index, keep))


# -- hostile shapes that are valid box by box: time linear in the input, memory bounded --------------------
def box(kind: bytes, payload: bytes = b"") -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def full_box(kind: bytes, payload: bytes, flags: int = 0) -> bytes:
    return box(kind, struct.pack(">I", flags) + payload)


def tiny_fragment(track_id: int) -> bytes:
    """moof (one traf: default-base-is-moof, one 8-byte sample) + its 16-byte mdat."""
    tfhd = full_box(b"tfhd", struct.pack(">I", track_id), flags=0x20000)
    trun_size = 8 + 4 + 4 + 4 + 4  # header, version/flags, count, data offset, one sample size
    moof_size = 8 + 16 + 8 + len(tfhd) + trun_size
    trun = full_box(b"trun", struct.pack(">IiI", 1, moof_size + 8, 8), flags=0x201)
    moof = box(b"moof", full_box(b"mfhd", struct.pack(">I", 1)) + box(b"traf", tfhd + trun))
    assert len(moof) == moof_size
    return moof + box(b"mdat", b"12345678")


def timed(assembler: FragmentAssembler, data: bytes, chunk: int = 1 << 16) -> tuple[float, list]:
    events, started = [], time.perf_counter()
    for piece in chunks(data, [chunk]):
        events += assembler.feed(piece)
    return time.perf_counter() - started, events


def test_a_megabyte_of_tiny_boxes_before_the_moov_takes_linear_time() -> None:
    """1 MiB of 8-byte ``free`` boxes where the init should be: the size check once summed every box so far
    per box (quadratic: minutes of a blocked event loop for a megabyte, hours for the default 64 MiB)."""
    with time_limit(10):
        took, events = timed(FragmentAssembler(MAX_BOX), box(b"free") * (MAX_BOX // 8))
    assert events == [] and took < 2, f"{took:.1f}s for 1 MiB"


def test_tiny_boxes_around_a_moof_take_linear_time() -> None:
    """Thousands of boxes before a moof, then its data in thousands of 8-byte mdats: completing the fragment
    once re-summed the boxes ahead of the moof for every mdat (quadratic)."""
    init, fragments = split(seed("h264+aac"))
    moof = fragments[0].data[: struct.unpack_from(">I", fragments[0].data)[0]]
    covered = parse_moof(moof, init.info).data_end - len(moof)  # mdat bytes (headers included) the samples need
    mdats = box(b"mdat", b"x") * -(-covered // 9)  # 9-byte mdats: the last one completes the fragment
    stream = init.data + box(b"free") * 100_000 + moof + mdats
    with time_limit(10):
        took, events = timed(FragmentAssembler(MAX_BOX), stream)
    assert [type(e) for e in events] == [InitSegment, Fragment] and took < 2, f"{took:.1f}s"


def test_many_trafs_cost_the_same_against_one_track_or_thousands() -> None:
    """Moofs of many trafs against an init of 4000 tracks: the track lookup per traf was a scan of the
    tracks (time tracks x trafs); it must cost what the same moof costs against a one-track init."""
    init = split(seed("aac only"))[0]
    nodes = box_tree(init.data)
    moov, trak, tkhd = (next(n for n in nodes if n.type == kind) for kind in ("moov", "trak", "tkhd"))

    def with_tracks(count: int) -> bytes:
        traks = bytearray()
        for track_id in range(1, count + 1):
            copy = bytearray(init.data[trak.offset : trak.end])
            struct.pack_into(">I", copy, tkhd.payload + 12 - trak.offset, track_id)
            traks += copy
        body = init.data[moov.payload : trak.offset] + traks + init.data[trak.end : moov.end]
        return init.data[: moov.offset] + box(b"moov", body)

    many = with_tracks(4000)
    assert len(parse_init(many).tracks) == 4000
    trafs = b"".join(box(b"traf", full_box(b"tfhd", struct.pack(">I", 4000 - i % 4000), flags=0x20000))
                     for i in range(20000))
    fragment = box(b"moof", full_box(b"mfhd", struct.pack(">I", 1)) + trafs) + box(b"mdat", b"x")

    def cost(init_data: bytes) -> float:
        best = math.inf
        for _ in range(2):
            assembler = FragmentAssembler(4 * MAX_BOX)
            assembler.feed(init_data)
            took, events = timed(assembler, fragment)
            assert len(events) == 1
            best = min(best, took)
        return best

    with time_limit(30):
        one, thousands = cost(with_tracks(1)), cost(many)
    assert thousands < 2 * one + 0.05, f"{thousands:.2f}s against 4000 tracks, {one:.2f}s against one"


def test_made_up_track_ids_do_not_grow_memory() -> None:
    """Fragments of trafs with ever new track ids (none of them in the init): the per-track clock kept one
    entry per id ever seen, for the life of the connection."""
    init = split(seed("h264+aac"))[0]
    assembler = FragmentAssembler(MAX_BOX)
    assembler.feed(init.data)
    stream = b"".join(tiny_fragment(1000 + i) for i in range(8000))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        count = 0
        with time_limit(20):
            for piece in chunks(stream, [1 << 16]):
                count += len(assembler.feed(piece))
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert count == 8000
    assert grown < 256 * 1024, f"{grown} bytes retained after 8000 fragments"


def test_a_four_gib_largesize_is_refused_without_buffering() -> None:
    splitter = BoxSplitter(MAX_BOX)
    with pytest.raises(MediaError, match="exceeds the limit"):
        splitter.feed(struct.pack(">I4sQ", 1, b"mdat", 4 << 30) + bytes(100))
    for size in (2**63, 2**64 - 1):
        with pytest.raises(MediaError, match="exceeds the limit"):
            BoxSplitter(MAX_BOX).feed(struct.pack(">I4sQ", 1, b"mdat", size))
