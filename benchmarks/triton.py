"""A session's per-step latency through Triton (gRPC, ``ivideogpt_rollout``) vs the in-process engine.

    python -m benchmarks.triton [--steps N] [--triton-url HOST:PORT] [--write docs/benchmarks-history.md]

Both run the same exported files (``model_repository/``): a real tritonserver (started here
on loopback unless ``--triton-url`` names one) and an in-process engine. One-frame steps with
pixels, interleaved round-robin so machine noise hits both alike; p50/p99 and the difference.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from ivideogpt.engine import EngineConfig, RolloutEngine
from ivideogpt.frames import from_uint8_hwc
from ivideogpt.sampling import SamplingParams
from ivideogpt_triton.server import TritonServer
from server.backends.triton_client import TritonRolloutClient

REPO = Path(__file__).resolve().parents[1]
HEADING = "## Triton (`python -m benchmarks.triton`)"


def ms(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1000.0, q))


async def measure(url: str, repository: Path, steps: int) -> dict[str, list[float]]:
    rng = np.random.default_rng(0)
    ctx = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    acts = rng.uniform(-1, 1, (steps + 1, 1, 4)).astype(np.float32)
    engine = RolloutEngine.from_repository(repository, EngineConfig(cache_bytes=32 << 20))
    client = TritonRolloutClient(url)
    times: dict[str, list[float]] = {"engine_in_process": [], "triton_grpc": []}
    try:
        sid = engine.open(from_uint8_hwc(ctx), SamplingParams(seed=0))
        await client.open(1, ctx, {"seed": 0})
        engine.step(sid, acts[0])  # warm-up
        await client.step(1, acts[0])
        for a in acts[1:]:
            t0 = time.perf_counter()
            engine.step(sid, a)
            times["engine_in_process"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            await client.step(1, a)
            times["triton_grpc"].append(time.perf_counter() - t0)
        await client.close(1)
        engine.close(sid)
    finally:
        await client.close_connection()
        engine.shutdown()
    return times


def report(times: dict[str, list[float]], steps: int) -> str:
    base = ms(times["engine_in_process"], 50)
    rows = [
        f"| {name} | {ms(xs, 50):.2f} | {ms(xs, 99):.2f} | {ms(xs, 50) - base:+.2f} |" for name, xs in times.items()
    ]
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    load = os.getloadavg()[0]
    return "\n".join(
        [
            f"{HEADING}",
            "",
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {machine}, load {load:.1f}; {steps} one-frame steps with "
            "pixels each, interleaved; default model (tiny), tritonserver 2.51 (nvidia-pytriton 0.7.0) on loopback.",
            "",
            "| path | p50 ms | p99 ms | p50 over in-process |",
            "|---|---|---|---|",
            *rows,
            "",
        ]
    )


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repository", default=str(REPO / "model_repository"))
    parser.add_argument("--triton-url", default=None, help="a running Triton serving the repository")
    parser.add_argument("--write", default=None, help="append the table to this markdown file")
    args = parser.parse_args(argv)
    repository = Path(args.repository)
    if args.triton_url:
        times = asyncio.run(measure(args.triton_url, repository, args.steps))
    else:
        with TritonServer(repository) as srv:
            times = asyncio.run(measure(srv.grpc_url, repository, args.steps))
    text = report(times, args.steps)
    print(text)
    if args.write:
        with open(args.write, "a") as f:
            f.write("\n" + text)
    return text


if __name__ == "__main__":
    main()
