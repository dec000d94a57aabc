"""Prometheus metrics (prometheus-client), one registry per application.

Counters that would cost a call per viewer per fragment are not kept on the hot path: each viewer counts in
plain attributes, and the collector sums live viewers at scrape time plus what departed viewers left behind.
Per-stream series exist only for live streams and are capped, so a flood of bot ids cannot explode them.
"""

from __future__ import annotations

from typing import Any, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .stream import Registry

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self, streams: Registry, max_stream_series: int) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.ingest_connections = Counter("relay_ingest_connections", "Ingest WebSocket connections accepted", registry=r)
        self.ingest_open = Gauge("relay_ingest_open_connections", "Ingest connections open now", registry=r)
        self.refused = Counter("relay_refused", "Connections refused or closed by the relay, by reason", ["reason"], registry=r)
        self.bytes_in = Counter("relay_ingest_bytes", "Bytes received from bots", registry=r)
        self.fragments = Counter("relay_fragments", "Media fragments received", registry=r)
        self.keyframes = Counter("relay_keyframe_fragments", "Fragments holding a keyframe", registry=r)
        self.viewers_total = Counter("relay_viewer_connections", "Viewer WebSocket connections accepted", registry=r)
        self.disconnects = Counter("relay_viewer_disconnects", "Viewer disconnects by reason", ["reason"], registry=r)
        self.recording_bytes = Counter("relay_recording_bytes", "Bytes written to recordings", registry=r)
        self.recording_errors = Counter("relay_recording_errors", "Recordings stopped by a disk error", registry=r)
        self.ping_delay = Histogram(
            "relay_ping_one_way_delay_seconds", "Bot ping sent_at_ms to our receipt (includes clock skew)",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5), registry=r)
        self.departed_bytes = 0
        self.departed_skipped = 0
        r.register(_LiveCollector(self, streams, max_stream_series))

    def viewer_left(self, viewer: Any, reason: str) -> None:
        self.departed_bytes += viewer.bytes_sent
        self.departed_skipped += viewer.skipped
        self.disconnects.labels(reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _LiveCollector(Collector):
    def __init__(self, metrics: Metrics, streams: Registry, cap: int) -> None:
        self.metrics, self.streams, self.cap = metrics, streams, cap

    def collect(self) -> Iterable[Any]:
        live = list(self.streams.streams.values())
        viewers = [v for s in live for v in s.consumers]
        sent = CounterMetricFamily("relay_viewer_bytes", "Bytes written to viewers")
        sent.add_metric([], self.metrics.departed_bytes + sum(v.bytes_sent for v in viewers))
        skipped = CounterMetricFamily("relay_viewer_skipped_fragments", "Fragments skipped for viewers that fell behind")
        skipped.add_metric([], self.metrics.departed_skipped + sum(v.skipped for v in viewers))
        yield sent
        yield skipped
        yield GaugeMetricFamily("relay_streams", "Streams live or reconnecting", value=len(live))
        yield GaugeMetricFamily("relay_viewers", "Viewers connected", value=len(viewers))
        families = {
            "bitrate": GaugeMetricFamily("relay_stream_bitrate_bits", "Incoming bitrate per stream", labels=["bot_id"]),
            "viewers": GaugeMetricFamily("relay_stream_viewers", "Viewers per stream", labels=["bot_id"]),
            "age": GaugeMetricFamily("relay_stream_last_fragment_age_seconds", "Seconds since the last fragment",
                                     labels=["bot_id"]),
        }
        shown = sorted(live, key=lambda s: len(s.consumers), reverse=True)[: self.cap]
        for stream in shown:
            age = stream.last_fragment_age
            families["bitrate"].add_metric([stream.bot_id], stream.bitrate)
            families["viewers"].add_metric([stream.bot_id], len(stream.consumers))
            if age is not None:
                families["age"].add_metric([stream.bot_id], age)
        yield from families.values()
