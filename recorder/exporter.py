"""Serving the recorder's figures (recorder.metrics) at /metrics, in the Prometheus format.

Its own registry, not prometheus_client's global one: only these figures, none of the
process's. Each scrape copies the figures (recorder.metrics.TargetMetrics.snapshot) and builds
the families from the copies; it reads no database and waits for no poll.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from recorder.metrics import BUCKETS, Figures, TargetMetrics


class FiguresCollector(Collector):
    """The figures of every target, as metric families."""

    def __init__(self, targets: Sequence[TargetMetrics]) -> None:
        """Export the figures of `targets`, each once it has loaded its starting counts (and
        until it forgets them); the daemons started on SIGHUP join the list as they come."""
        self.targets = targets

    def collect(self) -> Iterator[Metric]:
        """The families, built from a copy of every target's figures."""
        copies = [f for f in (t.snapshot() for t in list(self.targets)) if f is not None]
        return iter(families(copies))


def families(copies: Sequence[Figures]) -> list[Metric]:
    """The metric families of the targets' figures."""
    by_type = ["target", "type"]
    running = GaugeMetricFamily(
        "recorder_jobs_running", "Jobs running now (open in the record).", labels=by_type
    )
    finished = CounterMetricFamily(
        "recorder_jobs_finished",
        "Jobs closed (a job that reappeared after its end is counted once).",
        labels=by_type,
    )
    durations = HistogramMetricFamily(
        "recorder_job_duration_seconds",
        "Durations of the finished jobs (their best estimates).",
        labels=by_type,
    )
    polls = CounterMetricFamily(
        "recorder_polls", "Polls recorded, by outcome.", labels=["target", "outcome"]
    )
    last_success = GaugeMetricFamily(
        "recorder_last_success_timestamp_seconds",
        "When the latest successful poll was sent (Unix time).",
        labels=["target"],
    )
    offset = GaugeMetricFamily(
        "recorder_server_clock_offset_seconds",
        "The API server's clock minus the recorder's, as estimated.",
        labels=["target"],
    )
    overdue = GaugeMetricFamily(
        "recorder_jobs_overdue",
        "Running jobs older than the p95 duration of their type over 7 days.",
        labels=by_type,
    )
    for figures in copies:
        name = figures.target
        for label, count in sorted(figures.running.items()):
            running.add_metric([name, label], count)
        for label, count in sorted(figures.finished.items()):
            finished.add_metric([name, label], count)
        for label, histogram in sorted(figures.durations.items()):
            # As prometheus_client writes its own: 5.0, 3600.0 (every bound is small and whole).
            bounds = [*(str(float(bound)) for bound in BUCKETS), "+Inf"]
            buckets = list(zip(bounds, map(float, histogram.cumulative()), strict=True))
            durations.add_metric([name, label], buckets, histogram.sum_s)
        for outcome, count in sorted(figures.polls.items()):
            polls.add_metric([name, outcome], count)
        if figures.last_success_s is not None:
            last_success.add_metric([name], figures.last_success_s)
        if figures.offset_s is not None:
            offset.add_metric([name], figures.offset_s)
        for label, count in sorted(figures.overdue.items()):
            overdue.add_metric([name, label], count)
    return [running, finished, durations, polls, last_success, offset, overdue]


class Exporter:
    """The /metrics HTTP server, on a thread of its own."""

    def __init__(self, targets: Sequence[TargetMetrics], host: str, port: int) -> None:
        """Listen on `host`:`port` (0: any free port; see `port`)."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(FiguresCollector(targets))
        server, thread = start_http_server(port, addr=host, registry=registry)
        self._server: WSGIServer = server
        self._thread: threading.Thread = thread
        self.port: int = server.server_port

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
