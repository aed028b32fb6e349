"""Evaluate a world model on held-out episodes: ``python -m training.evaluate``.

For every episode: the first c frames (from ``--start``) are the context, then ``--horizon``
frames are predicted by the serving engine (``RolloutEngine``, one session per episode: what
is evaluated is what is served), driven by the recorded actions
(future frame i gets a[start + c - 1 + i]). Reported against the ground truth: PSNR and SSIM
(one seeded sample; best-of-N with ``--best-of``, as the paper does), the same metrics for the
copy-last-context-frame baseline, the tokenizer's own reconstruction of the context and the
future frames (the ceiling of any prediction), reward R^2 of predicted against true rewards
r[start + c + i], per-task rows, and the action gain: how much PSNR the true actions buy over
the actions of another held-out episode (same contexts, same seeds). A model that ignores its
actions has a gain of 0; a planner needs it well above 0 to rank action sequences.
LPIPS and FVD are computed only from local TorchScript modules passed by path (never
downloaded); otherwise they are reported as skipped.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ivideogpt import checkpoint
from ivideogpt.engine import EngineConfig, RolloutEngine
from ivideogpt.engine.tokenizer_steps import FutureEncode
from ivideogpt.model import WorldModel
from ivideogpt.sampling import SamplingParams
from training.data import Episode, frames_to_tensor, load_episodes

DEFAULT_CHECKPOINT = "models/default"
DEFAULT_DATA = "data/heldout"
# how data/heldout was collected (regenerated from this if missing; it is committed)
HELDOUT_COLLECTION = {"episodes": 5, "seed": 1000}


def psnr(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """[..., 3, H, W] in [0, 1] -> PSNR per frame [...]."""
    mse = (pred - truth).pow(2).flatten(-3).mean(-1)
    return -10 * torch.log10(mse.clamp_min(1e-10))


def ssim(pred: torch.Tensor, truth: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """SSIM per frame [...] with a Gaussian window (11, sigma 1.5, valid padding, as piqa)."""
    shape = pred.shape[:-3]
    x, y = pred.reshape(-1, *pred.shape[-3:]).double(), truth.reshape(-1, *truth.shape[-3:]).double()
    coords = torch.arange(window, dtype=torch.float64) - (window - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    ch = x.shape[1]
    kernel = (g[:, None] * g[None, :]).expand(ch, 1, window, window).contiguous()

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, groups=ch)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1).float().reshape(shape)


def r2_score(pred: np.ndarray, truth: np.ndarray) -> float:
    ss_res = float(((truth - pred) ** 2).sum())
    ss_tot = float(((truth - truth.mean()) ** 2).sum())
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")


def rollout_episodes(
    engine: RolloutEngine, context: torch.Tensor, actions: torch.Tensor, seeds: list[int], sampling: SamplingParams
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """context [B, c, 3, H, W], actions [B, n, A] -> frames [B, n, 3, H, W], rewards [B, n].

    One engine session per episode (episode j samples with ``seeds[j]``), one after the
    other: a session stepped alone is batched alone, so the numbers do not depend on timing.
    """
    frames, rewards = [], []
    for j, seed in enumerate(seeds):
        sid = engine.open(context[j], SamplingParams(**{**vars(sampling), "seed": seed}))
        try:
            out = engine.step(sid, actions[j])
        finally:
            engine.close(sid)
        assert out.frames is not None
        frames.append(out.frames)
        rewards.append(out.rewards)
    return torch.stack(frames), (None if rewards[0] is None else torch.stack(rewards))


def action_permutation(n: int, seed: int = 0) -> np.ndarray:
    """A fixed permutation without fixed points: episode j borrows the actions of episode perm[j]."""
    if n < 2:
        raise ValueError("the action gain needs at least two episodes")
    rng = np.random.default_rng(seed)
    while True:
        perm = rng.permutation(n)
        if not (perm == np.arange(n)).any():
            return perm


@torch.no_grad()
def tokenizer_reconstruction(
    model: WorldModel, context: torch.Tensor, future: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode + decode the true context and future frames: what a perfect transformer could show
    (future frames encoded as the transformer's targets were and a session's observations are)."""
    tok = model.tokenizer
    ctx_ids, enc_feats = tok.encode_context(context)
    fut_ids = FutureEncode(tok, model.cfg.future_encode_dtype)(future, *enc_feats)
    ctx_recon, dec_feats = tok.decode_context(ctx_ids)
    return ctx_recon, tok.decode_future(fut_ids, dec_feats)


def save_grid(path: Path, rows: list[torch.Tensor], scale: int = 2) -> None:
    """Rows of frames [n, 3, H, W] -> one PNG (a gap between rows, missing cells blank)."""
    from PIL import Image

    h, w = rows[0].shape[-2:]
    cols = max(r.shape[0] for r in rows)
    gap = 2
    canvas = np.full((len(rows) * (h + gap), cols * w, 3), 255, np.uint8)
    for i, r in enumerate(rows):
        img = (r.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
        for j, frame in enumerate(img):
            canvas[i * (h + gap) : i * (h + gap) + h, j * w : (j + 1) * w] = frame
    Image.fromarray(canvas).resize((canvas.shape[1] * scale, canvas.shape[0] * scale), Image.NEAREST).save(path)


def optional_metric(path: str | None, name: str) -> torch.jit.ScriptModule | None:
    if path is None:
        return None
    if not Path(path).is_file():
        print(f"{name}: skipped, {path} does not exist (weights are never downloaded)")
        return None
    return torch.jit.load(path).eval()


def evaluate(
    model: WorldModel,
    episodes: list[Episode],
    horizon: int = 10,
    start: int = 0,
    best_of: int = 1,
    sampling: SamplingParams | None = None,
    lpips_path: str | None = None,
    fvd_path: str | None = None,
    grid_path: Path | None = None,
    grid_episodes: int = 6,
    threads: int = 0,
    action_gain: bool = True,
) -> dict:
    """The metrics of ``model`` against copy-last on ``episodes`` (see the module docstring)."""
    sampling = sampling or SamplingParams()
    c = model.cfg.tokenizer.context_length
    clip = [e for e in episodes if len(e) >= start + c + horizon]
    if len(clip) < len(episodes):
        print(f"skipping {len(episodes) - len(clip)} episodes shorter than {start + c + horizon} frames")
    frames = frames_to_tensor(np.stack([e.frames[start : start + c + horizon] for e in clip]))
    actions = torch.from_numpy(np.stack([e.actions[start + c - 1 : start + c - 1 + horizon] for e in clip]))
    true_rewards = np.stack([e.rewards[start + c : start + c + horizon] for e in clip])
    context, truth = frames[:, :c], frames[:, c:]
    b = len(clip)
    action_gain = action_gain and b >= 2

    engine = RolloutEngine(model, EngineConfig(threads=threads, max_horizon=max(horizon, EngineConfig.max_horizon)))
    try:
        t0 = time.time()
        samples, reward_samples = [], []
        for k in range(best_of):  # sample k of episode j uses seed + k * B + j
            seeds = [sampling.seed + k * b + j for j in range(b)]
            pred, rew = rollout_episodes(engine, context, actions, seeds, sampling)
            samples.append(pred)
            reward_samples.append(rew)
        rollout_s = time.time() - t0
        other = None
        if action_gain:  # the first sample's seeds, another episode's actions
            perm = action_permutation(b)
            other, _ = rollout_episodes(engine, context, actions[perm], [sampling.seed + j for j in range(b)], sampling)
    finally:
        engine.shutdown()

    sample_psnr = torch.stack([psnr(p, truth) for p in samples])  # [N, B, n]
    sample_ssim = torch.stack([ssim(p, truth) for p in samples])
    copy_last = context[:, -1:].expand_as(truth)  # the last true context frame, repeated
    base_psnr, base_ssim = psnr(copy_last, truth), ssim(copy_last, truth)
    ctx_recon, recon = tokenizer_reconstruction(model, context, truth)
    recon_psnr, recon_ssim = psnr(recon, truth), ssim(recon, truth)

    def per_step(values: torch.Tensor) -> list[float]:
        return [round(float(v), 3) for v in values.mean(0)]

    result = {
        "checkpoint": None,
        "episodes": b,
        "horizon": horizon,
        "context_frames": c,
        "start": start,
        "best_of": best_of,
        "sampling": {
            "temperature": sampling.temperature,
            "top_k": sampling.top_k,
            "greedy": sampling.greedy,
            "seed": sampling.seed,
        },
        # one seeded sample (the first)
        "psnr": float(sample_psnr[0].mean()),
        "ssim": float(sample_ssim[0].mean()),
        # per clip: mean over frames, then best over samples, then mean over clips (paper)
        "psnr_best_of": float(sample_psnr.mean(2).max(0).values.mean()),
        "ssim_best_of": float(sample_ssim.mean(2).max(0).values.mean()),
        "baseline_psnr": float(base_psnr.mean()),
        "baseline_ssim": float(base_ssim.mean()),
        # the tokenizer's reconstruction of the true future frames (and of the context frames)
        "tokenizer_psnr": float(recon_psnr.mean()),
        "tokenizer_ssim": float(recon_ssim.mean()),
        "tokenizer_psnr_context": float(psnr(ctx_recon, context).mean()),
        "psnr_per_step": per_step(sample_psnr[0]),
        "baseline_psnr_per_step": per_step(base_psnr),
        "action_gain_psnr": None,
        "action_gain_per_step": None,
        "reward_r2": None,
        "reward_mae": None,
        "per_task": {},
        "rollout_seconds": round(rollout_s, 2),
    }
    if other is not None:
        gain = sample_psnr[0] - psnr(other, truth)  # [B, n]
        result["action_gain_psnr"] = float(gain.mean())
        result["action_gain_per_step"] = per_step(gain)
    pred_rewards = None if reward_samples[0] is None else reward_samples[0].numpy()
    if pred_rewards is not None:
        result["reward_r2"] = r2_score(pred_rewards.ravel(), true_rewards.ravel())
        result["reward_mae"] = float(np.abs(pred_rewards - true_rewards).mean())
    tasks = [e.name.split("/")[0] for e in clip]
    for task in sorted(set(tasks)):
        rows = [j for j, t in enumerate(tasks) if t == task]
        row = {
            "episodes": len(rows),
            "psnr": float(sample_psnr[0, rows].mean()),
            "baseline_psnr": float(base_psnr[rows].mean()),
            "reward_r2": None,
            "reward_mae": None,
        }
        if pred_rewards is not None:  # R^2 is unstable where a task's rewards hardly vary: MAE beside it
            pred, true = pred_rewards[rows], true_rewards[rows]
            row |= {"reward_r2": r2_score(pred.ravel(), true.ravel()), "reward_mae": float(np.abs(pred - true).mean())}
        result["per_task"][task] = row

    lpips = optional_metric(lpips_path, "LPIPS")
    result["lpips"] = (
        None if lpips is None else float(lpips(samples[0].flatten(0, 1) * 2 - 1, truth.flatten(0, 1) * 2 - 1).mean())
    )
    fvd = optional_metric(fvd_path, "FVD")
    result["fvd"] = None if fvd is None else float(fvd(torch.cat([context, samples[0]], 1), frames))
    if lpips is None or fvd is None:
        result["skipped"] = [n for n, m in (("lpips", lpips), ("fvd", fvd)) if m is None]

    if grid_path is not None:
        rows = []
        for j in range(min(grid_episodes, b)):
            rows += [frames[j], torch.cat([context[j], samples[0][j]]), torch.cat([context[j], copy_last[j]])]
        save_grid(grid_path, rows)
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT)
    p.add_argument("--data", default=DEFAULT_DATA, help="folder with manifest.json and shards")
    p.add_argument("--json", default=None, help="write the metrics here (and a PNG grid beside it)")
    p.add_argument("--png", default=None, help="PNG grid path (rows: truth, prediction, copy-last)")
    p.add_argument("--episodes", type=int, default=None, help="only the first N episodes")
    p.add_argument("--horizon", type=int, default=10)
    p.add_argument("--start", type=int, default=0, help="first context frame of every episode")
    p.add_argument("--best-of", type=int, default=1, help="samples per episode (paper: best of 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=100)
    p.add_argument("--greedy", action="store_true", help="argmax tokens instead of sampling")
    p.add_argument("--lpips", default=None, help="local TorchScript LPIPS module")
    p.add_argument("--fvd", default=None, help="local TorchScript FVD module (real, fake videos -> distance)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of each engine thread")
    a = p.parse_args(argv)

    data = Path(a.data)
    if not (data / "manifest.json").is_file() and a.data == DEFAULT_DATA:
        from training.collect_metaworld import collect

        print(f"{data} missing: regenerating it deterministically")
        collect(data, **HELDOUT_COLLECTION)
    episodes = load_episodes(data)[: a.episodes]
    model = checkpoint.load(a.checkpoint)
    sampling = SamplingParams(temperature=a.temperature, top_k=a.top_k, greedy=a.greedy, seed=a.seed)
    png = Path(a.png) if a.png else (Path(a.json).with_suffix(".png") if a.json else None)
    result = evaluate(model, episodes, a.horizon, a.start, a.best_of, sampling, a.lpips, a.fvd, png, threads=a.threads)
    result["checkpoint"], result["data"] = str(a.checkpoint), str(a.data)

    print(f"{result['episodes']} episodes, {result['horizon']} predicted frames after {result['context_frames']}")
    print("| | PSNR | SSIM |\n|---|---|---|")
    print(f"| model (1 sample) | {result['psnr']:.2f} | {result['ssim']:.4f} |")
    if a.best_of > 1:
        print(f"| model (best of {a.best_of}) | {result['psnr_best_of']:.2f} | {result['ssim_best_of']:.4f} |")
    print(f"| copy last context frame | {result['baseline_psnr']:.2f} | {result['baseline_ssim']:.4f} |")
    print(f"| tokenizer reconstruction | {result['tokenizer_psnr']:.2f} | {result['tokenizer_ssim']:.4f} |")
    print(f"tokenizer reconstruction of the context frames: {result['tokenizer_psnr_context']:.2f} dB")
    if result["action_gain_psnr"] is not None:
        print(f"action gain (true actions vs another episode's): {result['action_gain_psnr']:+.2f} dB")
    if result["reward_r2"] is not None:
        print(f"reward R^2 {result['reward_r2']:.3f}, MAE {result['reward_mae']:.3f}")
    print("| task | PSNR | copy-last | reward R^2 | reward MAE |\n|---|---|---|---|---|")
    for task, row in result["per_task"].items():
        r2, mae = ("", "") if row["reward_r2"] is None else (f"{row['reward_r2']:.3f}", f"{row['reward_mae']:.3f}")
        print(f"| {task} | {row['psnr']:.2f} | {row['baseline_psnr']:.2f} | {r2} | {mae} |")
    for name in result.get("skipped", []):
        print(f"{name}: skipped (no local weights; pass --{name} PATH)")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {a.json}" + (f" and {png}" if png else ""))
    elif png:
        print(f"wrote {png}")


if __name__ == "__main__":
    main()
