"""Prometheus metrics (``ivideogpt_*``), one registry per app so tests can run several apps."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


ENGINE_STATS = ("sessions", "cache_blocks_used", "cache_blocks_free", "batch_rows_last", "evictions", "restores")


class EngineCollector(Collector):
    """Engine gauges as the backend reported them at this scrape (``/metrics`` asks it first: never stale)."""

    def __init__(self, stats: Callable[[], dict]):
        self.stats = stats

    def collect(self) -> Iterator:
        s = self.stats()
        yield GaugeMetricFamily("ivideogpt_active_sessions", "sessions held by this replica's engine", s["sessions"])
        yield GaugeMetricFamily("ivideogpt_kv_cache_blocks_used", "KV cache blocks in use", s["cache_blocks_used"])
        yield GaugeMetricFamily("ivideogpt_kv_cache_blocks_free", "KV cache blocks free", s["cache_blocks_free"])
        yield GaugeMetricFamily("ivideogpt_batch_size", "rows in the engine's last token step", s["batch_rows_last"])
        yield CounterMetricFamily("ivideogpt_evictions", "idle sessions evicted from the engine", s["evictions"])
        yield CounterMetricFamily("ivideogpt_restores", "sessions rebuilt from their history", s["restores"])


class Metrics:
    def __init__(self) -> None:
        self.engine_stats = dict.fromkeys(ENGINE_STATS, 0)  # the backend's counters, updated at each scrape
        self.registry = CollectorRegistry()
        r = self.registry
        self.step_latency = Histogram(
            "ivideogpt_step_latency_seconds", "step request latency", ["transport"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.imagine_latency = Histogram(
            "ivideogpt_imagine_latency_seconds", "imagine request latency", buckets=LATENCY_BUCKETS, registry=r
        )
        self.observe_latency = Histogram(
            "ivideogpt_observe_latency_seconds",
            "observe request latency",
            ["transport"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.plan_latency = Histogram(
            "ivideogpt_plan_latency_seconds", "plan request latency", buckets=LATENCY_BUCKETS, registry=r
        )
        self.first_frame = Histogram(
            "ivideogpt_time_to_first_frame_seconds", "request to first frame", buckets=LATENCY_BUCKETS, registry=r
        )
        self.queue_wait = Histogram(
            "ivideogpt_queue_wait_seconds",
            "request arrival to engine start (session lock, lease, restore)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.frames = Counter("ivideogpt_frames_generated", "predicted frames (steps, imagines, plans)", registry=r)
        self.tokens = Counter("ivideogpt_tokens_generated", "sampled tokens (16 per frame)", registry=r)
        self.frames_observed = Counter("ivideogpt_frames_observed", "real frames observed into sessions", registry=r)
        self.plan_frames = Counter(
            "ivideogpt_plan_imagined_frames", "frames imagined by plan requests (rewards only)", registry=r
        )
        self.requests = Counter(
            "ivideogpt_requests", "requests by route and status code", ["route", "method", "status"], registry=r
        )
        self.idempotent_replays = Counter(
            "ivideogpt_idempotent_replays", "retried steps answered from the record", registry=r
        )
        self.gateway_restores = Counter(
            "ivideogpt_gateway_restores", "restores done by this gateway (eviction, other replica)", registry=r
        )
        self.forwarded = Counter(
            "ivideogpt_forwarded_requests", "requests sent on to the replica holding the session", registry=r
        )
        self.admission_running = Gauge(
            "ivideogpt_admission_running_frames", "frames admitted into the engine (admission control)", registry=r
        )
        self.admission_queued = Gauge(
            "ivideogpt_admission_queued_frames", "frames waiting for the engine (admission queue depth)", registry=r
        )
        self.admission_rejections = Counter(
            "ivideogpt_admission_rejections",
            "requests refused with 429 overloaded (reason: queue_full, timeout)",
            ["reason"],
            registry=r,
        )
        r.register(EngineCollector(lambda: self.engine_stats))
