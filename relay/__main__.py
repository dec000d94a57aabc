"""``python -m relay serve | demo | simulate``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from . import config, logs
from .app import create_app
from .config import Settings
from .server import Server

log = logging.getLogger("relay")


def _ingest_url(settings: Settings) -> str:
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    query = f"?token={settings.ingest_token}" if settings.ingest_token else ""
    return f"ws://{host}:{settings.port}/ingest{query}"


async def _serve(settings: Settings, demo: bool = False) -> None:
    """Run until SIGTERM or SIGINT, then shut down in order: viewers and bots told, recordings finalized."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = await Server(create_app(settings), settings).start()
    log.info("recordings=%s", Path(settings.recordings).resolve())
    tasks = [asyncio.create_task(_demo_bot(settings.with_(port=server.port)))] if demo else []
    if demo:
        print(f"\n  relay demo is live: open {settings.base_url}/watch/demo  (dashboard: {settings.base_url}/)\n",
              flush=True)
    try:
        await stop.wait()
        log.info("shutting down")
    finally:
        await server.stop()  # first, so the demo bot's connection ends as "server shutdown" like any bot's
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _demo_bot(settings: Settings) -> None:
    """A simulated MeetStream bot streaming a live test pattern (with its capture clock drawn in) to this relay."""
    from .simulate import Bot, stream_live
    from .testsrc import LivePattern

    while True:
        pattern = LivePattern(video="h264", audio="aac", width=640, height=360, fps=25, gop=25, clock=True)
        try:
            async with Bot(_ingest_url(settings), "demo") as bot:
                await stream_live(bot, pattern.chunks(), framerate=25)
        except Exception as exc:  # the demo bot restarts; the relay keeps serving
            log.warning("demo bot stopped: %r; restarting", exc)
            await asyncio.sleep(1)
        finally:
            pattern.close()


async def _simulate(args: argparse.Namespace) -> int:
    from .simulate import Bot, stream_file, stream_live
    from .testsrc import LivePattern, encode_fmp4

    async with Bot(args.url, args.bot_id, seed=args.seed) as bot:
        if args.source != "testsrc":
            await stream_file(bot, Path(args.source).read_bytes(), realtime=args.realtime)
        elif args.realtime:
            pattern = LivePattern(width=640, height=360, fps=25, gop=25, clock=True)
            try:
                await stream_live(bot, pattern.chunks(), duration=args.duration, framerate=25)
            finally:
                pattern.close()
        else:
            data = await asyncio.to_thread(encode_fmp4, seconds=args.duration or 10, width=640, height=360)
            await stream_file(bot, data, realtime=False)
        await asyncio.sleep(0.5)  # let the last pongs arrive
    report = bot.report
    print(f"sent {report.bytes_sent} bytes in {report.chunks} chunks; pings {report.pings}, pongs {report.pongs}, "
          f"pong errors {len(report.pong_errors)}; close code {report.close_code} {report.close_reason}")
    for problem in report.pong_errors:
        print("  ", problem)
    return 1 if report.pong_errors else 0


async def _create_bot(args: argparse.Namespace) -> int:
    from .createbot import CreateBotError, create_bot, ingest_url, payload, watch_url

    settings = Settings.from_sources({"public_url": args.public_url, "meetstream_api_base": args.api_base})
    api_key = args.api_key or os.environ.get("MEETSTREAM_API_KEY", "")
    if not api_key:
        print("create-bot needs --api-key or MEETSTREAM_API_KEY", file=sys.stderr)
        return 2
    if not settings.public_url:
        print("create-bot needs --public-url (or RELAY_PUBLIC_URL): the https:// or wss:// address MeetStream "
              "can reach this relay at", file=sys.stderr)
        return 2
    websocket_url = ingest_url(settings.public_url, settings.ingest_token)
    try:
        answer = await create_bot(settings.meetstream_api_base, api_key,
                                  payload(args.meeting_link, websocket_url, args.bot_name))
    except (CreateBotError, OSError) as exc:
        print(f"create-bot failed: {exc}", file=sys.stderr)
        return 1
    print(f"bot_id: {answer['bot_id']}\nwatch:  {watch_url(settings.public_url, answer['bot_id'])}")
    return 0


def _sign_link(args: argparse.Namespace) -> int:
    """Signed with the same key as the server (RELAY_SECRET, or derived from the passwords in the environment)."""
    from .auth import Auth
    from .ids import bot_id_problem

    settings = Settings.from_sources({"public_url": args.public_url})
    problem = bot_id_problem(args.bot_id)
    if problem or not (settings.secret or settings.viewer_password):
        print(problem or "sign-link needs RELAY_SECRET or RELAY_VIEWER_PASSWORD, as the server has", file=sys.stderr)
        return 2
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    ttl = float(args.ttl[:-1]) * units[args.ttl[-1]] if args.ttl[-1] in units else float(args.ttl)
    print(f"{settings.base_url}/watch/{args.bot_id}?{Auth(settings).sign_link(args.bot_id, ttl)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m relay", description="Live fMP4 relay for MeetStream bots.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("serve", "run the relay"), ("demo", "run the relay with a built-in demo bot")):
        config.add_arguments(commands.add_parser(name, help=text))
    sim = commands.add_parser("simulate", help="stream like a MeetStream bot")
    sim.add_argument("--url", default="ws://127.0.0.1:8080/ingest")
    sim.add_argument("--bot-id", default="demo")
    sim.add_argument("--source", default="testsrc", help="an fMP4 file, or 'testsrc' for a synthetic pattern")
    sim.add_argument("--realtime", action="store_true", help="pace by the fragments' timestamps")
    sim.add_argument("--duration", type=float, default=None, help="seconds of testsrc (default: until stopped)")
    sim.add_argument("--seed", type=int, default=None, help="seed for the chunk sizes")
    sim.add_argument("--log-level", default="info")
    rem = commands.add_parser("remux", help="write a regular MP4 (moov first) from a recording, without re-encoding")
    rem.add_argument("recording", type=Path)
    rem.add_argument("--out", type=Path, default=None, help="default: <recording>.remux.mp4")
    bot = commands.add_parser("create-bot", help="create a MeetStream bot that streams to this relay")
    bot.add_argument("--meeting-link", required=True)
    bot.add_argument("--api-key", default="", help="default: $MEETSTREAM_API_KEY")
    bot.add_argument("--public-url", default=None, help="where MeetStream reaches this relay (default: $RELAY_PUBLIC_URL)")
    bot.add_argument("--api-base", default=None, help="MeetStream API base (default: $RELAY_MEETSTREAM_API_BASE)")
    bot.add_argument("--bot-name", default="")
    link = commands.add_parser("sign-link", help="print a link that opens one bot's live stream, for a while")
    link.add_argument("bot_id")
    link.add_argument("--ttl", default="2h", help="how long it works: 90s, 30m, 2h, 7d (default 2h)")
    link.add_argument("--public-url", default=None, help="default: $RELAY_PUBLIC_URL or http://127.0.0.1:8080")
    args = parser.parse_args(argv)
    if args.command == "remux":
        from .remux import remux

        logs.configure()
        print(remux(args.recording, args.out))
        return 0
    if args.command == "create-bot":
        return asyncio.run(_create_bot(args))
    if args.command == "simulate":
        logs.configure(args.log_level)
        return asyncio.run(_simulate(args))
    if args.command == "sign-link":
        return _sign_link(args)
    settings = Settings.from_sources(vars(args))
    logs.configure(settings.log_level, settings.log_format)
    import uvloop

    uvloop.run(_serve(settings, demo=args.command == "demo"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
