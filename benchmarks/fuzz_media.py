"""Coverage-guided fuzzing of the pure fMP4 layer with atheris (libFuzzer). Not part of the test suite.

    pip install atheris
    python benchmarks/fuzz_media.py --seconds 300            # corpus in /tmp/relay-fuzz-corpus
    python benchmarks/fuzz_media.py --seconds 60 --corpus DIR -- -jobs=4 -workers=4   # any libFuzzer flags after --

The corpus is seeded with real PyAV fMP4 (several codecs and fragmentation modes): whole streams, init segments
and single moofs. An input's first byte picks the target (a stream fed in chunks through BoxSplitter and
FragmentAssembler, parse_init, or parse_moof against one of the seeds' init segments), the next two bytes the
chunk size; the rest is the data. A finding is any exception but MediaError, a splitter or assembler holding more
than its bound, or an input running past libFuzzer's -timeout (5 s here): libFuzzer then writes crash-*/timeout-*
files into the current directory and prints the input. Same properties as tests/test_fuzz.py, unguided by hand.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

with atheris.instrument_imports(include=["relay.media"]):
    from relay.media import BoxSplitter, FragmentAssembler, MediaError, parse_init
    from relay.media.fragment import parse_moof

from tests.test_fuzz import MAX_BOX, SEEDS  # noqa: E402  (the same seeds and limit as the hypothesis fuzz)
STREAM, INIT, MOOF = 0, 1, 2
INFOS: list = []  # the seeds' InitInfo, for parse_moof


def split(data: bytes) -> tuple:
    assembler = FragmentAssembler()
    events = assembler.feed(data) + assembler.finish()
    return events[0], events[1:]


def seed_corpus(corpus: Path) -> None:
    from relay.testsrc import encode_fmp4  # PyAV: not instrumented

    corpus.mkdir(parents=True, exist_ok=True)
    for name, options in SEEDS.items():
        data = encode_fmp4(**options)
        init, fragments = split(data)
        INFOS.append(init.info)
        stem = name.replace(" ", "_").replace("+", "_")
        (corpus / f"seed-{stem}-stream").write_bytes(bytes([STREAM]) + struct.pack(">H", 4096) + data[:60000])
        (corpus / f"seed-{stem}-init").write_bytes(bytes([INIT, 0, 0]) + init.data)
        for i, fragment in enumerate(fragments[:3]):
            moof_size = struct.unpack_from(">I", fragment.data)[0]
            (corpus / f"seed-{stem}-moof{i}").write_bytes(bytes([MOOF, len(INFOS) - 1, 0]) + fragment.data[:moof_size])


def feed_stream(data: bytes, chunk: int) -> None:
    splitter = BoxSplitter(MAX_BOX)
    assembler = FragmentAssembler(MAX_BOX)
    split_ok = assemble_ok = True
    for pos in range(0, len(data), chunk):
        piece = data[pos : pos + chunk]
        if split_ok:
            try:
                splitter.feed(piece)
            except MediaError:
                split_ok = False
            if splitter.buffered > MAX_BOX + len(piece):
                raise AssertionError(f"splitter holds {splitter.buffered} bytes")
        if assemble_ok:
            try:
                for event in assembler.feed(piece):
                    if data[event.offset : event.offset + len(event.data)] != event.data:
                        raise AssertionError("an event's bytes are not the stream's bytes at its offset")
            except MediaError:
                assemble_ok = False
            if assembler.splitter.buffered > MAX_BOX + len(piece) or assembler._pending_bytes > MAX_BOX:
                raise AssertionError("assembler over its bound")
    for done, finish in ((split_ok, splitter.finish), (assemble_ok, assembler.finish)):
        if done:
            try:
                finish()
            except MediaError:
                pass


def test_one_input(raw: bytes) -> None:
    if len(raw) < 3:
        return
    target, arg = raw[0] % 3, struct.unpack_from(">H", raw, 1)[0]
    data = raw[3:]
    try:
        if target == STREAM:
            feed_stream(data, max(1, arg))
        elif target == INIT:
            parse_init(data)
        else:
            parse_moof(data, INFOS[raw[1] % len(INFOS)], arg * 1000)
    except MediaError:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=60, help="how long to fuzz (default 60)")
    parser.add_argument("--corpus", default="/tmp/relay-fuzz-corpus", help="corpus directory (kept between runs)")
    parser.add_argument("libfuzzer", nargs="*", help="extra libFuzzer flags, after --")
    args = parser.parse_args()
    corpus = Path(args.corpus)
    seed_corpus(corpus)
    os.environ.setdefault("SVT_LOG", "1")
    argv = [sys.argv[0], str(corpus), f"-max_total_time={args.seconds}", "-timeout=5", "-rss_limit_mb=2048",
            "-max_len=131072", "-print_final_stats=1", *args.libfuzzer]
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
