"""What both training scripts share: optimiser and schedule, autocast, resumable
checkpoints, the metrics log and the loss curve.

A run folder holds ``checkpoint/`` (our model format: ``config.json`` + ``model.safetensors``,
plus ``train_state.pt`` with the optimiser, step and RNG states for resuming),
``metrics.jsonl`` (one line per logged step) and ``loss.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ivideogpt import checkpoint
from ivideogpt.model import WorldModel

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def dtype_name(flag: str) -> str:
    """A command line's "fp32"/"bf16" -> the name configs use ("float32"/"bfloat16")."""
    return str(DTYPES[flag]).removeprefix("torch.")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_at(step: int, base: float, warmup: int, total: int, min_ratio: float = 0.1) -> float:
    """Linear warmup, then cosine decay to ``min_ratio * base`` at ``total`` steps."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(params: list[tuple[str, nn.Parameter]], lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW; no weight decay on norms, biases, embeddings and codebooks (as published)."""
    decay = [p for n, p in params if p.ndim >= 2 and "embed" not in n and "quantize" not in n]
    no_decay = [p for n, p in params if not (p.ndim >= 2 and "embed" not in n and "quantize" not in n)]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8)


def autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[dtype])


def save_run(run: Path, model: WorldModel, optimizer: torch.optim.Optimizer, step: int, extra: dict) -> None:
    """Write ``run/checkpoint`` atomically (a kill mid-save keeps the previous one)."""
    tmp, final = run / "checkpoint.tmp", run / "checkpoint"
    shutil.rmtree(tmp, ignore_errors=True)
    checkpoint.save(model, tmp)
    state = {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        **extra,
    }
    torch.save(state, tmp / "train_state.pt")
    old = run / "checkpoint.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def resume_state(run: Path) -> dict | None:
    """The saved train state of ``run`` (weights are loaded by the caller), or None."""
    path = run / "checkpoint" / "train_state.pt"
    if not path.is_file():
        return None
    state = torch.load(path, weights_only=False)
    torch.set_rng_state(state["torch_rng"])
    return state


def log_metrics(run: Path, record: dict) -> None:
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def read_metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(run: Path, step: int) -> None:
    """Drop log lines past ``step`` (written after the checkpoint a resumed run restarts from)."""
    kept = [r for r in read_metrics(run) if r["step"] <= step]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))


def plot_losses(run: Path, keys: list[str], width: int = 640, height: int = 360) -> Path:
    """A log-scale loss curve per key, drawn with Pillow (no plotting dependency)."""
    from PIL import Image, ImageDraw

    records = read_metrics(run)
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd"]
    series = {k: [(r["step"], r[k]) for r in records if r.get(k) is not None and r[k] > 0] for k in keys}
    points = [p for s in series.values() for p in s]
    margin = 40
    if points:
        x0, x1 = min(p[0] for p in points), max(p[0] for p in points) or 1
        y0, y1 = math.log10(min(p[1] for p in points)), math.log10(max(p[1] for p in points))
        y1 = y1 if y1 > y0 else y0 + 1

        def xy(step: float, value: float) -> tuple[float, float]:
            x = margin + (step - x0) / max(1, x1 - x0) * (width - 2 * margin)
            y = height - margin - (math.log10(value) - y0) / (y1 - y0) * (height - 2 * margin)
            return x, y

        for i, (k, s) in enumerate(series.items()):
            color = colors[i % len(colors)]
            if len(s) > 1:
                draw.line([xy(*p) for p in s], fill=color, width=2)
            draw.text((margin + 5, 5 + 12 * i), k, fill=color)
        draw.text((margin, height - margin + 5), f"step {x0}", fill="black")
        draw.text((width - margin - 60, height - margin + 5), f"step {x1}", fill="black")
        draw.text((2, margin), f"{10**y1:.3g}", fill="black")
        draw.text((2, height - margin - 10), f"{10**y0:.3g}", fill="black")
    draw.rectangle([margin, margin, width - margin, height - margin], outline="gray")
    path = run / "loss.png"
    img.save(path)
    return path


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """The options every training run shares: data and its split, precision, device, seed, cadence."""
    p.add_argument(
        "--data",
        nargs="+",
        default=["data/metaworld"],
        help="folders with manifest.json and shards (several: trained on together, each split on its own)",
    )
    p.add_argument("--heldout-fraction", type=float, default=0.05)
    p.add_argument(
        "--dtype",
        default="bf16",
        choices=list(DTYPES),
        help="autocast dtype (bf16: 2x faster on CPU, same losses)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--ckpt-every", type=int, default=100)
    p.add_argument("--stop-after", type=int, default=0, help="stop (with a checkpoint) after N steps of this run")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)


def check_run_arguments(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.eval_every % args.log_every:
        p.error("--eval-every must be a multiple of --log-every")
    if args.dtype == "bf16" and args.device == "cpu" and not cpu_has_bf16():
        print(
            "warning: this CPU has no bf16 instructions (AVX2): bf16 autocast runs through reference "
            "kernels, 10-20x slower than fp32 here; pass --dtype fp32",
            file=sys.stderr,
        )


def cpu_has_bf16() -> bool:
    """Whether oneDNN runs bf16 natively here (AVX512-BF16 or AMX), as autocast's speed-up needs."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
