"""Train the world-model transformer on a frozen tokenizer: ``python -m training.train_transformer``.

Published recipe (thuml/iVideoGPT's transformer training): next-token cross-entropy where the logits at position
t predict token t + 1, with targets only after the prelude and the first sdf (labels -100
for positions 0..P), so the model learns every future frame's tokens and every later sdf;
plus reward MSE (weight 1.0) on symlog rewards read at each future frame's last token.
Future frame i gets action a[s + c - 1 + i] on its sdf token and reward target r[s + c + i]
(docs/DATA.md). AdamW with warmup + cosine, gradient clipping, optional bf16 autocast.

The frozen tokenizer turns fixed clip windows (every ``--stride`` frames of every training
episode) into token ids once; the ids are cached in the run folder. The run folder is
resumable: re-running the same command continues from its checkpoint.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ivideogpt import checkpoint
from ivideogpt.config import PRESETS, preset
from ivideogpt.engine.tokenizer_steps import FutureEncode
from ivideogpt.model import WorldModel
from ivideogpt.tokens import TokenLayout
from ivideogpt.transformer import WorldModelTransformer
from training import loop
from training.data import Episode, check_alike, clip_batch, load_split
from training.train_tokenizer import ENCODER_PARTS

DEFAULT_TOKENIZER = "runs/tokenizer/checkpoint"  # where train_tokenizer's default run puts it


@dataclass
class TokenClips:
    """Token ids, actions and symlog reward targets of fixed clip windows."""

    ids: torch.Tensor  # [N, L] full sequences in the token layout
    actions: torch.Tensor  # [N, T, A]
    rewards: torch.Tensor  # [N, n] symlog

    def __len__(self) -> int:
        return self.ids.shape[0]

    @staticmethod
    def cat(parts: list[TokenClips]) -> TokenClips:
        return TokenClips(*(torch.cat([getattr(p, f) for p in parts]) for f in ("ids", "actions", "rewards")))


def build_model(args: argparse.Namespace) -> WorldModel:
    """The model to train: tokenizer from ``--tokenizer``, transformer fresh or from ``--init``."""
    if args.init:
        model = checkpoint.load(args.init)
    elif args.init_official:
        model = checkpoint.load_official(args.init_official)
    else:
        model = WorldModel(preset(args.preset))
    tokenizer = args.tokenizer or (None if args.init or args.init_official else DEFAULT_TOKENIZER)
    if tokenizer:
        tok = checkpoint.load(tokenizer).tokenizer
        if tok.cfg != model.cfg.tokenizer:
            raise ValueError(f"{tokenizer}: tokenizer config differs from the transformer's model config")
        model.tokenizer = tok
    adapt_heads(model.transformer, args.action_dim, args.reward_head)
    if args.max_positions:  # rotary positions: no weight depends on their number
        cfg = copy.deepcopy(model.cfg)
        cfg.transformer.max_positions = args.max_positions
        cfg.validate()
        resized = WorldModel(cfg)
        resized.load_state_dict(model.state_dict())
        model = resized
    model.cfg = dataclasses.replace(model.cfg, future_encode_dtype=loop.dtype_name(args.tokenize_dtype))
    return model


def in_parts(name: str, parts: list[str]) -> bool:
    """Whether parameter ``name`` is one of ``parts`` or inside one (``layers.1`` holds
    ``layers.1.mlp.up.weight``, not ``layers.10...``)."""
    return any(name == p or name.startswith(p + ".") for p in parts)


def same_ids_tokenizer(trained_on: nn.Module, other: nn.Module) -> nn.Module:
    """``other`` if it turns frames into exactly the ids the transformer was trained on (its
    encoders and codebooks equal ``trained_on``'s: only its decoders may differ)."""
    mine, theirs = trained_on.state_dict(), other.state_dict()
    for name, value in mine.items():
        if name.startswith(ENCODER_PARTS) and not torch.equal(value, theirs[name]):
            raise ValueError(f"--export-tokenizer: {name} differs from the tokenizer the transformer was trained on")
    return other


def adapt_heads(trm: WorldModelTransformer, action_dim: int | None, reward_head: bool | None) -> None:
    """Fine-tuning to a new action space: a new zero-initialised action layer (as published)."""
    cfg = trm.cfg
    if action_dim is not None and action_dim != cfg.action_dim:
        cfg.action_dim = action_dim
        trm.action_proj = None
        if action_dim:
            trm.action_proj = nn.Linear(action_dim, cfg.hidden_size)
            nn.init.zeros_(trm.action_proj.weight)
            nn.init.zeros_(trm.action_proj.bias)
    if reward_head is not None and reward_head != cfg.reward_head:
        cfg.reward_head = reward_head
        trm.reward_head = nn.Linear(cfg.hidden_size, 1) if reward_head else None


@torch.no_grad()
def tokenize_clips(
    model: WorldModel,
    episodes: list[Episode],
    n_future: int,
    stride: int,
    batch: int = 32,
    progress: bool = True,
) -> TokenClips:
    """Every ``stride``-th window of c + n frames -> token sequences (context ids in fp32, as
    inference computes them; future ids as the model's ``future_encode_dtype`` says, as an
    observed frame is encoded: ``FutureEncode``)."""
    from tqdm import tqdm

    tok, layout = model.tokenizer.eval(), model.layout
    encode_future = FutureEncode(tok, model.cfg.future_encode_dtype)
    c = layout.context_length
    starts = [(e, s) for e, ep in enumerate(episodes) for s in range(0, len(ep) - c - n_future + 1, stride)]
    ids, actions, rewards = [], [], []
    device = next(tok.parameters()).device
    for i in tqdm(range(0, len(starts), batch), desc="tokenizing", disable=not progress):
        clips = clip_batch(episodes, starts[i : i + batch], c, n_future)
        frames = clips.frames.to(device)
        ctx_ids, feats = tok.encode_context(frames[:, :c])
        fut_ids = encode_future(frames[:, c:], *feats)
        ids.append(layout.build(ctx_ids, fut_ids).cpu())
        actions.append(clips.actions)
        rewards.append(clips.rewards)
    return TokenClips(torch.cat(ids), torch.cat(actions), torch.cat(rewards))


def sequence_losses(
    trm: WorldModelTransformer, layout: TokenLayout, ids: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Cross-entropy on future tokens and later sdf tokens, reward MSE in symlog space."""
    logits, pred_rewards = trm.forward_sequence(ids, layout, actions)
    labels = ids.clone()
    labels[:, : layout.prelude_length + 1] = -100  # prelude + first sdf: given, not predicted
    ce = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
    losses = {"ce": ce}
    if pred_rewards is not None:
        losses["reward_mse"] = F.mse_loss(pred_rewards.float(), rewards)
    return losses


@torch.no_grad()
def validate(
    trm: WorldModelTransformer, layout: TokenLayout, clips: TokenClips, device: torch.device, batch: int
) -> dict[str, float]:
    trm.eval()
    sums: dict[str, float] = {}
    for i in range(0, len(clips), batch):
        part = slice(i, i + batch)
        losses = sequence_losses(
            trm, layout, clips.ids[part].to(device), clips.actions[part].to(device), clips.rewards[part].to(device)
        )
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + v.item() * clips.ids[part].shape[0]
    trm.train()
    return {f"val_{k}": v / len(clips) for k, v in sums.items()}


def cached_clips(
    run: Path, tag: str, model: WorldModel, folder: str, episodes: list[Episode], args: argparse.Namespace
) -> TokenClips:
    """Tokenized windows of one data folder, cached per encoder weights (the decoders do not change an
    id: a decoder fine-tune keeps the cache), episodes and window settings (so adding a folder to
    ``--data`` tokenizes only that folder)."""
    digest = hashlib.sha1()
    for name, v in model.tokenizer.state_dict().items():
        if name.startswith(ENCODER_PARTS):
            digest.update(v.detach().cpu().float().numpy().tobytes())
    digest.update(f"{Path(folder).resolve()}{[e.name for e in episodes]}".encode())
    digest.update(f"{args.n_future}{args.stride}{model.cfg.future_encode_dtype}".encode())
    path = run / f"tokens-{tag}-{digest.hexdigest()[:12]}.pt"
    if path.is_file():
        return TokenClips(**torch.load(path))
    clips = tokenize_clips(model, episodes, args.n_future, args.stride)
    torch.save(vars(clips), path)
    return clips


def train(args: argparse.Namespace) -> Path:
    loop.seed_everything(args.seed)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    run = Path(args.run)
    run.mkdir(parents=True, exist_ok=True)

    resumed = loop.resume_state(run)
    model = checkpoint.load(run / "checkpoint") if resumed else build_model(args)
    model = model.to(device)
    model.tokenizer.requires_grad_(False)
    trm, layout = model.transformer.train(), model.layout

    splits = [load_split([folder], args.heldout_fraction, min_heldout=2) for folder in args.data]
    check_alike([e for train_eps, val_eps in splits for e in train_eps + val_eps])
    t0 = time.time()
    train_parts, val_parts = [], []
    for folder, (train_eps, val_eps) in zip(args.data, splits, strict=True):
        train_parts.append(cached_clips(run, "train", model, folder, train_eps, args))
        val_parts.append(cached_clips(run, "val", model, folder, val_eps, args))
    train_clips, val_clips = TokenClips.cat(train_parts), TokenClips.cat(val_parts)
    # the windows batches are drawn from: each folder's as many times as --repeat says
    windows, offset = [], 0
    for part, times in zip(train_parts, args.repeat or [1] * len(train_parts), strict=True):
        windows.append(torch.arange(offset, offset + len(part)).repeat(times))
        offset += len(part)
    windows = torch.cat(windows)
    print(f"{len(train_clips)} training clips, {len(val_clips)} validation clips ({time.time() - t0:.0f}s)")

    for n, p in trm.named_parameters():
        p.requires_grad_(not args.train_only or in_parts(n, args.train_only))
    trained = [(n, p) for n, p in trm.named_parameters() if p.requires_grad]
    if not trained:
        raise ValueError(f"--train-only {args.train_only}: no transformer parameter is in these parts")
    opt = loop.make_optimizer(trained, args.lr, args.weight_decay)
    gen = torch.Generator().manual_seed(args.seed)
    step = 0
    if resumed:
        step = resumed["step"]
        opt.load_state_dict(resumed["optimizer"])
        gen.set_state(resumed["sampler"])
        loop.truncate_metrics(run, step)
        print(f"resumed {run} at step {step}")

    from tqdm import tqdm

    bar = tqdm(total=args.steps, initial=step, disable=not args.progress)
    t_last, tokens_done = time.time(), 0
    stop = min(args.steps, step + args.stop_after) if args.stop_after else args.steps
    while step < stop:
        for g in opt.param_groups:
            g["lr"] = loop.lr_at(step, args.lr, args.warmup, args.steps)
        pick = windows[torch.randint(len(windows), (args.batch,), generator=gen)]
        ids, actions = train_clips.ids[pick].to(device), train_clips.actions[pick].to(device)
        rewards = train_clips.rewards[pick].to(device)
        with loop.autocast(device, args.dtype):
            losses = sequence_losses(trm, layout, ids, actions, rewards)
        loss = losses["ce"] + args.reward_weight * losses.get("reward_mse", 0.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(trm.parameters(), args.grad_clip)
        opt.step()
        step += 1
        tokens_done += ids.numel()
        bar.update(1)

        if step % args.log_every == 0 or step == args.steps:
            now = time.time()
            record = {
                "step": step,
                "lr": opt.param_groups[0]["lr"],
                "loss": loss.item(),
                "grad_norm": grad_norm.item(),
                "tokens_per_s": tokens_done / (now - t_last),
                **{k: v.item() for k, v in losses.items()},
            }
            if step % args.eval_every == 0 or step == args.steps:
                record |= validate(trm, layout, val_clips, device, args.batch)
            t_last, tokens_done = time.time(), 0
            bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
            loop.log_metrics(run, record)
        if step % args.ckpt_every == 0 or step == stop:
            loop.save_run(run, model, opt, step, {"sampler": gen.get_state(), "args": vars(args)})
            loop.plot_losses(run, ["ce", "reward_mse", "val_ce", "val_reward_mse"])
    bar.close()
    if args.export and step == args.steps:
        if args.export_tokenizer:
            model.tokenizer = same_ids_tokenizer(model.tokenizer, checkpoint.load(args.export_tokenizer).tokenizer)
        checkpoint.save(model.eval(), args.export)
        print(f"exported {args.export}")
    return run / "checkpoint"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--tokenizer",
        default=None,
        help=f"trained tokenizer checkpoint (frozen); default: --init's own, or {DEFAULT_TOKENIZER} for a fresh model",
    )
    p.add_argument("--run", default="runs/transformer", help="run folder (checkpoint, metrics, loss.png)")
    p.add_argument("--export", default=None, help="also save the final model here (e.g. models/default)")
    p.add_argument(
        "--export-tokenizer",
        default=None,
        help="export with this tokenizer's decoders (a train_tokenizer --decoders-only run of --tokenizer)",
    )
    p.add_argument("--preset", default="tiny", choices=list(PRESETS))
    p.add_argument("--init", default=None, help="start from one of our checkpoints (fine-tuning)")
    p.add_argument("--init-official", default=None, help="start from a published iVideoGPT folder")
    p.add_argument(
        "--max-positions",
        type=int,
        default=None,
        help="the transformer's positions (default: the preset's or --init's); the server re-anchors a "
        "session when they are full, so a model trained on clips of 2 + F frames serves 2 + F per anchor",
    )
    p.add_argument("--action-dim", type=int, default=None, help="new action dim (new zero-initialised layer)")
    p.add_argument("--reward-head", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument(
        "--train-only",
        nargs="+",
        default=None,
        metavar="PREFIX",
        help="fine-tune only the transformer parameters named so (e.g. layers.3 norm reward_head lm_head): "
        "the backward pass stops at the first of them (about 3x faster steps on a CPU)",
    )
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--n-future", type=int, default=12, help="future frames per clip")
    p.add_argument("--stride", type=int, default=8, help="frames between the starts of tokenized windows")
    p.add_argument(
        "--repeat",
        type=int,
        nargs="+",
        default=None,
        metavar="N",
        help="how many times each --data folder's windows count when batches are drawn (one per folder; "
        "default 1 each): weights a small collection such as a planner's recorded episodes",
    )
    p.add_argument(
        "--tokenize-dtype",
        default="bf16",
        choices=list(loop.DTYPES),
        help="the future encoder's dtype for the targets; saved in the model's config, observed frames are encoded so",
    )
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--reward-weight", type=float, default=1.0)
    loop.add_run_arguments(p)
    args = p.parse_args(argv)
    loop.check_run_arguments(p, args)
    if args.repeat and (len(args.repeat) != len(args.data) or min(args.repeat) < 0 or sum(args.repeat) == 0):
        p.error(f"--repeat: one count >= 0 per --data folder ({len(args.data)}), not all zero; got {args.repeat}")
    return args


def main(argv: list[str] | None = None) -> None:
    print(f"checkpoint: {train(parse_args(argv))}")


if __name__ == "__main__":
    main()
