"""The engine on a GPU: correctness against the CPU in the same process, then throughput.

    python -m benchmarks.cuda [--device cuda] [--write docs/benchmarks-history.md]

Checks what the CPU tests cannot: the engine (eager and on the exported TorchScript) runs on
``--device``, greedy rollouts there take the CPU's tokens, bf16 runs; then frames/s of one
session's steps and of a batched imagine, fp32 and bf16, with the CPU as the baseline.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from ivideogpt.engine import EngineConfig, RolloutEngine
from ivideogpt.sampling import SamplingParams

REPO = Path(__file__).resolve().parents[1]


def context(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (2, 3, 64, 64), generator=g, dtype=torch.uint8)


def actions(seed: int, *shape: int) -> torch.Tensor:
    return torch.rand(*shape, 4, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def make_engine(source: str, device: str, dtype: str) -> RolloutEngine:
    config = EngineConfig(device=device, dtype=dtype, cache_bytes=256 << 20)
    if source == "repository":
        return RolloutEngine.from_repository(REPO / "model_repository", config)
    return RolloutEngine.from_checkpoint(REPO / "models" / "default", config)


def greedy_rollout(engine: RolloutEngine, frames: int) -> tuple[list[list[int]], torch.Tensor]:
    sid = engine.open(context(), SamplingParams(greedy=True))
    out = engine.step(sid, actions(1, frames))
    tokens = [r.tokens for r in engine.history(sid).steps]
    engine.close(sid)
    return tokens, out.frames.float().cpu()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def frames_per_s(engine: RolloutEngine, device: str, k: int, h: int, repeats: int) -> float:
    """k == 1: a fresh session's h-frame step; else one imagine of k sequences of h frames."""

    def run() -> None:
        sid = engine.open(context(), SamplingParams(seed=0))
        t0 = time.perf_counter()
        if k == 1:
            engine.step(sid, actions(2, h))
        else:
            engine.imagine(sid, actions(3, k, h), return_frames=True)
        sync(device)
        times.append(time.perf_counter() - t0)
        engine.close(sid)

    times: list[float] = []
    run()  # warm-up
    times.clear()
    for _ in range(repeats):
        run()
    return k * h * repeats / sum(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--write", default=None, help="append a markdown section to this file")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    dev = args.device
    report: dict = {
        "device": torch.cuda.get_device_name(0) if dev.startswith("cuda") else platform.processor() or "cpu",
        "torch": torch.__version__,
    }

    cpu_tokens, cpu_frames = greedy_rollout(make_engine("checkpoint", "cpu", "float32"), args.frames)
    checks = {}
    for source in ("checkpoint", "repository"):
        for dtype in ("float32", "bfloat16"):
            engine = make_engine(source, dev, dtype)
            try:
                tokens, frames = greedy_rollout(engine, args.frames)
            finally:
                engine.shutdown()
            same = sum(a == b for a, b in zip(tokens, cpu_tokens, strict=True))
            first_diff = next((i for i, (a, b) in enumerate(zip(tokens, cpu_tokens, strict=True)) if a != b), None)
            checks[f"{source}/{dtype}"] = {
                "greedy frames with the CPU's tokens": f"{same}/{len(cpu_tokens)}",
                "first differing frame": first_diff,
                "max pixel diff of frame 0": float((frames[0] - cpu_frames[0]).abs().max()),
            }
    report["checks"] = checks

    speed = {}
    for device, dtype in (("cpu", "float32"), (dev, "float32"), (dev, "bfloat16")):
        if device == "cpu" and dev == "cpu" and dtype == "bfloat16":
            continue
        engine = make_engine("repository", device, dtype)
        try:
            one = frames_per_s(engine, device, 1, args.frames, repeats=3)
            many = frames_per_s(engine, device, 64 if device != "cpu" else 8, 8, repeats=2)
        finally:
            engine.shutdown()
        speed[f"{device}/{dtype}"] = {"one session frames/s": round(one, 1), "imagine frames/s": round(many, 1)}
    report["speed"] = speed
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    if args.write:
        with open(args.write, "a") as f:
            f.write(f"\n```json\n{text}\n```\n")


if __name__ == "__main__":
    main()
