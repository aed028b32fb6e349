"""Train the compressive tokenizer: ``python -m training.train_tokenizer``.

Published recipe (thuml/iVideoGPT's tokenizer training): L1 reconstruction of the context and the future frames plus
the two codebooks' VQ losses; clips are c context frames and ``--n-future`` frames drawn at
random from the rest of a ``--horizon`` window. Perceptual (LPIPS) and GAN losses exist
behind flags and are off by default, as in the published 64x64 runs. Two additions for short
CPU runs: codes unused for ``--restart-every`` steps are re-seeded from encoder outputs (the
published quantiser has no restarts; without them most of a codebook stays dead early on), and
an MSE term beside L1 (``--mse-weight``; PSNR is MSE, and the L1-only runs stayed blurry).

The run folder is resumable: re-running the same command continues from its checkpoint.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ivideogpt import checkpoint
from ivideogpt.config import PRESETS, preset
from ivideogpt.model import WorldModel
from ivideogpt.tokenizer import CompressiveTokenizer
from training import loop
from training.data import ClipSampler, TokenizerBatch, load_split

# what turns frames into token ids: frozen by --decoders-only, so the ids (and a transformer
# trained on them) stay valid while the decoders keep improving
ENCODER_PARTS = ("encoder.", "cond_encoder.", "quant_conv.", "quant_linear.", "quantize.", "dynamics_quantize.")


class PatchDiscriminator(nn.Module):
    """A small hinge-loss patch discriminator (used only with ``--gan-weight`` > 0)."""

    def __init__(self, channels: int = 64, depth: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for i in range(depth):
            c_out = channels * 2**i
            layers += [nn.utils.parametrizations.spectral_norm(nn.Conv2d(c_in, c_out, 4, 2, 1)), nn.LeakyReLU(0.2)]
            c_in = c_out
        layers.append(nn.Conv2d(c_in, 1, 3, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * 2 - 1)


def build_model(args: argparse.Namespace) -> WorldModel:
    if args.init:
        return checkpoint.load(args.init)
    if args.init_official:
        return checkpoint.load_official(args.init_official)
    return WorldModel(preset(args.preset))


def reconstruction_losses(
    tok: CompressiveTokenizer, batch: TokenizerBatch, lpips: nn.Module | None, mse: bool = False
) -> dict[str, torch.Tensor]:
    out = tok(batch.context, batch.future)
    losses = {
        "l1_context": F.l1_loss(out.context_recon.float(), batch.context),
        "l1_future": F.l1_loss(out.future_recon.float(), batch.future),
        "vq": out.vq_loss.float(),
    }
    if mse:
        losses["mse"] = F.mse_loss(out.context_recon.float(), batch.context) + F.mse_loss(
            out.future_recon.float(), batch.future
        )
    if lpips is not None:
        fake = torch.cat([out.context_recon, out.future_recon], 1).flatten(0, 1).float() * 2 - 1
        real = torch.cat([batch.context, batch.future], 1).flatten(0, 1) * 2 - 1
        losses["perceptual"] = lpips(fake, real).mean()
    losses["_recon"] = torch.cat([out.context_recon, out.future_recon], 1)
    losses["_ids"] = (out.context_ids, out.future_ids)
    return losses


@torch.no_grad()
def restart_dead_codes(tok: CompressiveTokenizer, batch: TokenizerBatch, usage: list[torch.Tensor], seed: int) -> int:
    """Re-seed codes unused since the last restart with this batch's encoder outputs."""
    z_ctx, feats = tok._context_latent(batch.context)
    z_fut = tok._future_latent(batch.future, feats)
    g = torch.Generator().manual_seed(seed)
    restarted = 0
    for quantizer, z, used in ((tok.quantize, z_ctx, usage[0]), (tok.dynamics_quantize, z_fut, usage[1])):
        dead = (used == 0).nonzero().squeeze(1)
        if len(dead) == 0:
            continue
        z = z.reshape(-1, z.shape[-1]).float()
        pick = torch.randint(len(z), (len(dead),), generator=g)
        noise = torch.randn(len(dead), z.shape[1], generator=g) * z.std() * 0.01
        quantizer.embedding.weight.data[dead] = (z[pick] + noise).to(quantizer.embedding.weight.dtype)
        restarted += len(dead)
    return restarted


@torch.no_grad()
def evaluate_psnr(tok: CompressiveTokenizer, batch: TokenizerBatch) -> tuple[float, float]:
    """PSNR of context and future reconstructions on a fixed held-out batch (fp32, eval mode)."""
    was_training = tok.training
    tok.eval()
    out = tok(batch.context, batch.future)
    tok.train(was_training)

    def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
        mse = (x.clamp(0, 1) - y).pow(2).flatten(2).mean(-1)
        return float((-10 * torch.log10(mse.clamp_min(1e-10))).mean())

    return psnr(out.context_recon, batch.context), psnr(out.future_recon, batch.future)


def train(args: argparse.Namespace) -> Path:
    loop.seed_everything(args.seed)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    run = Path(args.run)
    run.mkdir(parents=True, exist_ok=True)

    train_eps, heldout_eps = load_split(args.data, args.heldout_fraction)

    resumed = loop.resume_state(run)
    model = checkpoint.load(run / "checkpoint") if resumed else build_model(args)
    model = model.to(device).train()
    tok = model.tokenizer
    c = tok.cfg.context_length
    freeze = args.freeze_codebooks if args.freeze_codebooks is not None else bool(args.init or args.init_official)
    freeze = freeze or args.decoders_only
    for name, p in tok.named_parameters():
        frozen = (freeze and "quantize" in name) or (args.decoders_only and name.startswith(ENCODER_PARTS))
        p.requires_grad = not frozen
    params = [(n, p) for n, p in tok.named_parameters() if p.requires_grad]
    opt = loop.make_optimizer(params, args.lr, args.weight_decay)

    lpips = torch.jit.load(args.lpips, map_location=device).eval() if args.perceptual_weight > 0 else None
    disc = PatchDiscriminator().to(device) if args.gan_weight > 0 else None
    disc_opt = torch.optim.AdamW(disc.parameters(), lr=args.lr) if disc is not None else None

    sampler = ClipSampler(train_eps, c, seed=args.seed)
    fixed = ClipSampler(heldout_eps, c, seed=1234).tokenizer_batch(16, args.horizon, args.n_future)
    step = 0
    if resumed:
        step = resumed["step"]
        opt.load_state_dict(resumed["optimizer"])
        sampler.set_state(resumed["sampler"])
        if disc is not None and "disc" in resumed:
            disc.load_state_dict(resumed["disc"])
            disc_opt.load_state_dict(resumed["disc_opt"])
        loop.truncate_metrics(run, step)
        print(f"resumed {run} at step {step}")

    usage = [torch.zeros(tok.cfg.context_codebook_size), torch.zeros(tok.cfg.future_codebook_size)]
    from tqdm import tqdm

    if step == 0 and args.restart_every and not freeze:  # seed both codebooks from data
        first = sampler.tokenizer_batch(args.batch, args.horizon, args.n_future)
        restart_dead_codes(tok, TokenizerBatch(first.context.to(device), first.future.to(device)), usage, args.seed)
    bar = tqdm(total=args.steps, initial=step, disable=not args.progress)
    t_last, frames_done = time.time(), 0
    stop = min(args.steps, step + args.stop_after) if args.stop_after else args.steps
    while step < stop:
        for g in opt.param_groups:
            g["lr"] = loop.lr_at(step, args.lr, args.warmup, args.steps)
        batch = sampler.tokenizer_batch(args.batch, args.horizon, args.n_future)
        batch = TokenizerBatch(batch.context.to(device), batch.future.to(device))
        with loop.autocast(device, args.dtype):
            losses = reconstruction_losses(tok, batch, lpips, mse=args.mse_weight > 0)
            loss = losses["l1_context"] + losses["l1_future"] + losses["vq"]
            if args.mse_weight > 0:
                loss = loss + args.mse_weight * losses["mse"]
            if lpips is not None:
                loss = loss + args.perceptual_weight * losses["perceptual"]
            if disc is not None and step >= args.gan_start:
                fake = losses["_recon"].flatten(0, 1)
                losses["gan_g"] = -disc(fake.float()).mean()
                loss = loss + args.gan_weight * losses["gan_g"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_([p for _, p in params], args.grad_clip)
        opt.step()
        if disc is not None and step >= args.gan_start:  # hinge loss for the discriminator
            real = torch.cat([batch.context, batch.future], 1).flatten(0, 1)
            fake = losses["_recon"].detach().flatten(0, 1).float()
            d_loss = F.relu(1 - disc(real)).mean() + F.relu(1 + disc(fake)).mean()
            disc_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            disc_opt.step()
            losses["gan_d"] = d_loss
        ctx_ids, fut_ids = losses["_ids"]
        usage[0] += torch.bincount(ctx_ids.flatten().cpu(), minlength=len(usage[0]))
        usage[1] += torch.bincount(fut_ids.flatten().cpu(), minlength=len(usage[1]))
        step += 1
        frames_done += batch.context.shape[0] * (batch.context.shape[1] + batch.future.shape[1])
        bar.update(1)

        if step % args.log_every == 0 or step == args.steps:
            now = time.time()
            record = {
                "step": step,
                "lr": opt.param_groups[0]["lr"],
                "loss": loss.item(),
                "grad_norm": float(grad_norm),
                "frames_per_s": frames_done / (now - t_last),
                **{k: v.item() for k, v in losses.items() if not k.startswith("_")},
            }
            t_last, frames_done = now, 0
            bar.set_postfix(loss=f"{record['loss']:.4f}", fps=f"{record['frames_per_s']:.1f}")
            if step % args.eval_every == 0 or step == args.steps:
                record["psnr_context"], record["psnr_future"] = evaluate_psnr(tok, fixed)
                record["codes_used_context"] = int((usage[0] > 0).sum())
                record["codes_used_future"] = int((usage[1] > 0).sum())
            loop.log_metrics(run, record)
        if args.restart_every and step % args.restart_every == 0:
            if not freeze and step < args.steps * 0.8:  # leave the last steps to settle
                restarted = restart_dead_codes(tok, batch, usage, args.seed + step)
                if restarted:
                    bar.write(f"step {step}: re-seeded {restarted} dead codes")
            usage = [u.zero_() for u in usage]
        if step % args.ckpt_every == 0 or step == stop:
            extra = {"sampler": sampler.state(), "args": vars(args)}
            if disc is not None:
                extra |= {"disc": disc.state_dict(), "disc_opt": disc_opt.state_dict()}
            loop.save_run(run, model, opt, step, extra)
            loop.plot_losses(run, ["l1_context", "l1_future", "vq"])
    bar.close()
    return run / "checkpoint"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="runs/tokenizer", help="run folder (checkpoint, metrics, loss.png)")
    p.add_argument("--preset", default="tiny", choices=list(PRESETS))
    p.add_argument("--init", default=None, help="start from one of our checkpoints (fine-tuning)")
    p.add_argument("--init-official", default=None, help="start from a published iVideoGPT folder")
    p.add_argument(
        "--freeze-codebooks",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="freeze both codebooks (default: on when fine-tuning, as the paper does)",
    )
    p.add_argument(
        "--decoders-only",
        action="store_true",
        help="train only the decoders (with --init): every token id stays the same, so this can run beside "
        "the transformer's training on the same tokenizer (train_transformer --export-tokenizer)",
    )
    p.add_argument("--steps", type=int, default=3600)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--horizon", type=int, default=12, help="window the future frames are drawn from")
    p.add_argument("--n-future", type=int, default=4, help="random future frames per clip")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--restart-every", type=int, default=100, help="dead-code restart period (0: off)")
    p.add_argument(
        "--mse-weight",
        type=float,
        default=10.0,
        help="weight of an MSE term beside L1 (PSNR is MSE: +1 dB context PSNR in 200 steps on CPU runs)",
    )
    p.add_argument("--perceptual-weight", type=float, default=0.0)
    p.add_argument("--lpips", default=None, help="local TorchScript LPIPS module (never downloaded)")
    p.add_argument("--gan-weight", type=float, default=0.0)
    p.add_argument("--gan-start", type=int, default=0)
    loop.add_run_arguments(p)
    args = p.parse_args(argv)
    if args.perceptual_weight > 0 and not args.lpips:
        p.error("--perceptual-weight needs --lpips PATH (a local TorchScript LPIPS; nothing is downloaded)")
    if args.decoders_only and not (args.init or args.init_official):
        p.error("--decoders-only fine-tunes a trained tokenizer: pass --init CHECKPOINT")
    loop.check_run_arguments(p, args)
    return args


def main(argv: list[str] | None = None) -> None:
    print(f"checkpoint: {train(parse_args(argv))}")


if __name__ == "__main__":
    main()
