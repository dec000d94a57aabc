"""Settings: flags over environment over defaults, sizes with units, and a README that lists them all."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from relay import config
from relay.config import Settings, parse_size


def test_flags_override_environment_which_overrides_defaults() -> None:
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    args = vars(parser.parse_args(["--port", "9000", "--max-frame-size", "2M"]))
    env = {"RELAY_PORT": "7000", "RELAY_INGEST_TOKEN": "t0k", "RELAY_VIEWER_MAX_BEHIND": "2.5"}
    settings = Settings.from_sources(args, env)
    assert settings.port == 9000 and settings.max_frame_size == 2 << 20
    assert settings.ingest_token == "t0k" and settings.viewer_max_behind == 2.5
    assert settings.gop_cache_bytes == Settings().gop_cache_bytes


@pytest.mark.parametrize("text,value", [("123", 123), ("16K", 16384), ("16MiB", 16 << 20), ("1.5g", 3 << 29)])
def test_sizes_take_binary_units(text: str, value: int) -> None:
    assert parse_size(text) == value


def test_the_readme_documents_every_setting() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for flag, env, _, _ in config.describe():
        assert f"`{flag}`" in readme and f"`{env}`" in readme, flag
