"""CPU demo: open one rollout on a checkpoint (or a seeded random ``tiny`` model) and stream frames.

``python -m ivideogpt.demo [--checkpoint DIR] [--steps N]`` prints per-frame rewards and the
frames per second of token generation and pixel decoding together.
"""

from __future__ import annotations

import argparse
import time

import torch

from ivideogpt.checkpoint import load
from ivideogpt.config import PRESETS, preset
from ivideogpt.model import WorldModel
from ivideogpt.rollout import Rollout
from ivideogpt.sampling import SamplingParams


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="our checkpoint folder (default: random tiny)")
    parser.add_argument("--preset", default="tiny", choices=list(PRESETS))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--greedy", action="store_true")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    model = load(args.checkpoint, args.device) if args.checkpoint else WorldModel(preset(args.preset))
    model = model.to(args.device).eval()
    cfg = model.cfg
    tok = cfg.tokenizer
    g = torch.Generator().manual_seed(args.seed)
    context = torch.rand(1, tok.context_length, tok.in_channels, tok.resolution, tok.resolution, generator=g)
    rollout = Rollout(model, context, SamplingParams(seed=args.seed, greedy=args.greedy))
    steps = min(args.steps, rollout.max_steps)
    print(
        f"model {cfg.name}: {tok.resolution}x{tok.resolution}, {tok.context_length} context frames, "
        f"{tok.future_tokens} tokens per future frame, up to {rollout.max_steps} future frames"
    )

    start = time.perf_counter()
    for i in range(steps):
        actions = None
        if cfg.transformer.action_dim:
            actions = torch.rand(1, cfg.transformer.action_dim, generator=g) * 2 - 1
        out = rollout.step(actions)
        reward = "-" if out.rewards is None else f"{out.rewards[0].item():+.3f}"
        print(f"frame {i + 1:3d}  mean pixel {out.frames.mean().item():.3f}  reward {reward}")
    elapsed = time.perf_counter() - start
    print(f"{steps} frames in {elapsed:.2f}s: {steps / elapsed:.1f} frames/s")


if __name__ == "__main__":
    main()
