"""CPU demo: the shipped model predicts a held-out episode from its first frames and recorded actions.

``python -m ivideogpt.demo [--checkpoint DIR] [--episode E] [--steps N] [--greedy] [--gif PATH]``
opens one rollout (``ivideogpt.rollout.Rollout``) on the first context frames of a held-out
Meta-World episode (``data/heldout/``, never trained on), feeds it the actions that were
recorded in that episode, and prints per frame the PSNR against the recorded frame and the
predicted reward next to the recorded one, then the frames per second of tokens and pixels
together. ``--random PRESET`` times an untrained model instead (its frames are noise).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from ivideogpt.checkpoint import load
from ivideogpt.config import PRESETS, preset
from ivideogpt.model import WorldModel
from ivideogpt.rollout import Rollout
from ivideogpt.sampling import SamplingParams

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = REPO / "models" / "default"
HELDOUT = REPO / "data" / "heldout"


def heldout_episode(folder: Path, episode: int) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
    """(shard path, frames uint8 [T, H, W, 3], actions float32 [T, A], rewards float32 [T]) of episode ``episode``."""
    shards = json.loads((folder / "manifest.json").read_text())["shards"]
    if not 0 <= episode < len(shards):
        raise SystemExit(f"error: --episode {episode}: {folder} holds episodes 0-{len(shards) - 1}")
    path = shards[episode]["path"]
    with np.load(folder / path, allow_pickle=False) as z:
        return path, z["frames"], z["actions"].astype(np.float32), z["rewards"].astype(np.float32)


def psnr(pred: torch.Tensor, truth: torch.Tensor) -> float:
    """PSNR in dB of two frames in [0, 1]."""
    return float(-10 * torch.log10((pred - truth).pow(2).mean().clamp_min(1e-10)))


def write_gif(path: str, truth: list[torch.Tensor], predicted: list[torch.Tensor], scale: int = 3) -> None:
    """Recorded (left) and predicted (right) frames side by side, upscaled, looping at 4 frames/s."""
    from PIL import Image

    pairs = [torch.cat([t, p], dim=-1) for t, p in zip(truth, predicted, strict=True)]
    images = []
    for frame in pairs:
        hwc = (frame.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        img = Image.fromarray(hwc, "RGB")
        images.append(img.resize((img.width * scale, img.height * scale), Image.NEAREST))
    images[0].save(path, save_all=True, append_images=images[1:], duration=250, loop=0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT), help="our checkpoint folder (%(default)s)")
    parser.add_argument("--random", metavar="PRESET", choices=list(PRESETS), help="an untrained model of this preset")
    parser.add_argument("--episode", type=int, default=0, help="held-out episode (manifest order) for context")
    parser.add_argument("--steps", type=int, default=10, help="frames to predict (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--greedy", action="store_true", help="most likely tokens instead of sampling")
    parser.add_argument("--gif", metavar="PATH", help="write recorded | predicted frames side by side as a GIF")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (default: by model size)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    model = WorldModel(preset(args.random)) if args.random else load(args.checkpoint, args.device)
    model = model.to(args.device).eval()
    parameters = sum(p.numel() for p in model.parameters())
    cfg = model.cfg
    tok, c = cfg.tokenizer, cfg.tokenizer.context_length
    source, frames, actions, rewards = heldout_episode(HELDOUT, args.episode)
    if frames.shape[1] == tok.resolution and actions.shape[1] == cfg.transformer.action_dim:
        video = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255  # [T, 3, H, W]
        print(f"context: held-out episode {args.episode} ({source}), frames 0-{c - 1}, and its recorded actions")
    else:  # a model of another image size or action space: noise in, timings only
        g = torch.Generator().manual_seed(args.seed)
        video = torch.rand(c + args.steps, tok.in_channels, tok.resolution, tok.resolution, generator=g)
        actions = np.random.default_rng(args.seed).uniform(-1, 1, (len(video), cfg.transformer.action_dim))
        rewards = None
        print("context: random noise (held-out frames and actions do not fit this model), random actions")

    rollout = Rollout(model, video[None, :c], SamplingParams(seed=args.seed, greedy=args.greedy), args.threads)
    steps = min(args.steps, rollout.max_steps, len(video) - c)
    origin = f"untrained {args.random}" if args.random else args.checkpoint
    print(
        f"model {cfg.name} ({origin}, {parameters / 1e6:.1f}M parameters, intra-op threads "
        f"{rollout.engine.loop.threads}): {tok.resolution}x{tok.resolution}, {c} context frames, "
        f"{tok.future_tokens} tokens per future frame"
    )
    if steps < args.steps:
        why = (
            f"this reference loop stops after one anchor, {rollout.max_steps} future frames "
            f"({cfg.transformer.max_positions} positions; the server's engine re-anchors and runs on)"
            if steps == rollout.max_steps
            else f"the episode has {len(video) - c} frames after the context"
        )
        print(f"note: --steps {args.steps} capped at {steps}: {why}")

    truth, predicted = [], []
    start = time.perf_counter()
    for i in range(steps):
        action = None
        if cfg.transformer.action_dim:  # frame c + i is entered by the action taken at frame c - 1 + i
            action = torch.as_tensor(actions[c - 1 + i], dtype=torch.float32)[None]
        out = rollout.step(action)
        truth.append(video[c + i])
        predicted.append(out.frames[0].float().cpu())
        line = f"frame {i + 1:3d}"
        if rewards is not None:
            line += f"  PSNR {psnr(predicted[-1], truth[-1]):5.2f} dB vs recorded"
        if out.rewards is not None:
            line += f"  reward {out.rewards[0].item():+.3f}"
            if rewards is not None:
                line += f" (recorded {rewards[c + i]:+.3f})"
        print(line)
    elapsed = time.perf_counter() - start
    print(f"{steps} frames in {elapsed:.2f}s: {steps / elapsed:.1f} frames/s")
    if args.gif:
        write_gif(args.gif, truth, predicted)
        print(f"wrote {args.gif}: recorded (left) and predicted (right)")


if __name__ == "__main__":
    main()
