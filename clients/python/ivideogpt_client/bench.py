"""A bounded load generator: N concurrent sessions stepping (and imagining) until a request or time budget.

Each session alternates a step of ``steps`` actions and, with ``imagine`` K > 0, an imagine of K
sequences of ``steps`` actions; latencies are per request as the client sees them (network,
queueing and engine), frames count predicted frames (K x steps for an imagine).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ivideogpt_client.async_client import AsyncSession, AsyncWorldModelClient
from ivideogpt_client.errors import WorldModelError


@dataclass
class BenchConfig:
    url: str
    api_key: str | None = None
    transport: str = "json"
    sessions: int = 4
    steps: int = 4
    imagine: int = 0
    requests: int = 64  # stop after this many requests ...
    duration: float = 60.0  # ... or after this many seconds, whichever comes first
    seed: int = 0


@dataclass
class BenchResult:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    frames: int = 0
    seconds: float = 0.0

    def summary(self) -> dict:
        ops = {
            op: {
                "requests": len(xs),
                "p50_ms": float(np.percentile(xs, 50) * 1e3),
                "p99_ms": float(np.percentile(xs, 99) * 1e3),
            }
            for op, xs in self.latencies.items()
            if xs
        }
        done = sum(len(xs) for xs in self.latencies.values())
        return {
            "requests": done,
            "errors": dict(self.errors),
            "seconds": self.seconds,
            "requests_per_s": done / self.seconds if self.seconds else 0.0,
            "frames": self.frames,
            "frames_per_s": self.frames / self.seconds if self.seconds else 0.0,
            "ops": ops,
        }


def format_summary(s: dict) -> str:
    lines = [
        f"{op:8s} {o['requests']:6d} requests  p50 {o['p50_ms']:8.1f} ms  p99 {o['p99_ms']:8.1f} ms"
        for op, o in s["ops"].items()
    ]
    lines.append(
        f"total    {s['requests']:6d} requests in {s['seconds']:.1f} s ({s['requests_per_s']:.1f}/s), "
        f"{s['frames']} frames ({s['frames_per_s']:.1f} frames/s), errors {s['errors'] or 0}"
    )
    return "\n".join(lines)


async def run_bench(cfg: BenchConfig, progress: Any = None) -> BenchResult:
    """Run the load; ``progress`` (a tqdm bar, say) gets ``update(1)`` per finished request. No retries:
    a 429 or 5xx counts as an error (by its code) instead of hiding in the latency."""
    result = BenchResult()
    async with AsyncWorldModelClient(cfg.url, cfg.api_key, cfg.transport, retries=0) as client:
        info = await client.model()
        dim = info["action_dim"]
        try:
            context = await client.sample_context()
        except WorldModelError:  # a server without held-out data: flat grey frames
            n, size = info["context_frames"], info["image_size"]
            context = np.full((n, size, size, 3), 128, np.uint8)
        opened = await asyncio.gather(*(client.session(context, seed=cfg.seed + i) for i in range(cfg.sessions)))
        claimed = 0
        start = time.perf_counter()
        deadline = start + cfg.duration

        async def worker(i: int, s: AsyncSession) -> None:
            nonlocal claimed
            rng = np.random.default_rng([cfg.seed, i])
            n = 0
            while claimed < cfg.requests and time.perf_counter() < deadline:
                claimed += 1
                op = "imagine" if cfg.imagine > 0 and n % 2 == 1 else "step"
                n += 1
                t0 = time.perf_counter()
                try:
                    if op == "step":
                        await s.step(rng.uniform(-1, 1, (cfg.steps, dim)).astype(np.float32))
                        frames = cfg.steps
                    else:
                        await s.imagine(rng.uniform(-1, 1, (cfg.imagine, cfg.steps, dim)).astype(np.float32))
                        frames = cfg.imagine * cfg.steps
                except WorldModelError as err:
                    result.errors[err.code or type(err).__name__] += 1
                else:
                    result.latencies[op].append(time.perf_counter() - t0)
                    result.frames += frames
                if progress is not None:
                    progress.update(1)

        try:
            await asyncio.gather(*(worker(i, s) for i, s in enumerate(opened)))
            result.seconds = time.perf_counter() - start
        finally:
            await asyncio.gather(*(s.close() for s in opened), return_exceptions=True)
    return result
