"""Rollout speed of one session on the CPU: our one-cache loop against the published loop.

The published rollout starts a new ``generate`` per frame, re-prefilling the whole prefix;
ours keeps one KV cache for the session's life. Both run here, interleaved, in one process,
and the ratio is what we report (absolute numbers on shared CPUs vary from run to run).

    python benchmarks/bench_rollout.py [--preset tiny] [--frames 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from ivideogpt.config import PRESETS, preset
from ivideogpt.model import WorldModel
from ivideogpt.rollout import Rollout
from ivideogpt.sampling import SamplingParams, draw_uniforms, sample_tokens
from ivideogpt.transformer import KVCache


@torch.no_grad()
def published_loop(model: WorldModel, context: torch.Tensor, actions: torch.Tensor, sampling: SamplingParams) -> None:
    """Re-prefill the whole prefix for every frame (KV cache only inside a frame), then decode it."""
    tok, trm, lay = model.tokenizer, model.transformer, model.layout
    ids, _ = tok.encode_context(context)
    _, feats = tok.decode_context(ids)
    prefix = trm.embed(lay.context_sequence(ids))
    gens = [torch.Generator().manual_seed(sampling.seed)]
    for i in range(actions.shape[1]):
        sdf = trm.embed_step(torch.full((1,), lay.sdf_id), actions[:, i])
        prefix = torch.cat([prefix, sdf[:, None]], dim=1)
        cache = KVCache.empty(trm.cfg, 1)
        hidden = trm.prefill(prefix, cache)
        new = []
        for _ in range(lay.future_tokens):
            token = sample_tokens(trm.logits(hidden), sampling, draw_uniforms(gens))
            new.append(token)
            hidden = trm.decode(token, cache)
        trm.reward(hidden)
        new_ids = torch.stack(new, dim=1)
        prefix = torch.cat([prefix, trm.embed(new_ids)], dim=1)
        future = (new_ids - lay.future_offset).clamp(0, lay.future_codebook_size - 1)
        tok.decode_future(future[:, None], feats)


@torch.no_grad()
def cached_loop(model: WorldModel, context: torch.Tensor, actions: torch.Tensor, sampling: SamplingParams) -> None:
    rollout = Rollout(model, context, sampling)
    for i in range(actions.shape[1]):
        rollout.step(actions[:, i])


@torch.no_grad()
def decode_only(model: WorldModel, context: torch.Tensor, frames: int) -> None:
    ids, _ = model.tokenizer.encode_context(context)
    _, feats = model.tokenizer.decode_context(ids)
    future = torch.zeros(1, 1, model.layout.future_tokens, dtype=torch.long)
    for _ in range(frames):
        model.tokenizer.decode_future(future, feats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", choices=list(PRESETS))
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = WorldModel(preset(args.preset, action_dim=4)).eval()  # action-conditioned, as served
    cfg = model.cfg
    frames = min(args.frames, model.layout.max_future_frames(cfg.transformer.max_positions))
    res = cfg.tokenizer.resolution
    context = torch.rand(1, cfg.tokenizer.context_length, 3, res, res)
    actions = torch.randn(1, frames, 4)
    sampling = SamplingParams(seed=0)
    runs = {
        "cached (ours)": lambda: cached_loop(model, context, actions, sampling),
        "re-prefill (published)": lambda: published_loop(model, context, actions, sampling),
        "pixel decode only": lambda: decode_only(model, context, frames),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    for fn in runs.values():  # warm-up
        fn()
    for _ in range(args.rounds):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)

    print(f"# {args.preset}: {frames} frames per rollout, {args.rounds} rounds, median")
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    med = {k: statistics.median(v) for k, v in times.items()}
    for name, t in med.items():
        print(f"{name:24s} {frames / t:7.1f} frames/s  ({1000 * t / frames:6.1f} ms/frame)")
    print(f"speed-up of the cached loop: {med['re-prefill (published)'] / med['cached (ours)']:.2f}x")


if __name__ == "__main__":
    main()
