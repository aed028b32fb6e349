"""Rollout engine benchmarks: every figure against a baseline measured in the same run.

    python -m benchmarks.rollout [--quick] [--dtype bf16] [--write docs/benchmarks-history.md]

Prints one ``name: value`` line per figure. Uses the ``oxe-64`` preset (138M transformer,
114M tokenizer, random weights, 2 context frames, 16x16 context grid) unless a name says
``tiny``. Absolute times on shared CPUs vary between runs; the ratios are the result.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ivideogpt.checkpoint import load
from ivideogpt.config import preset
from ivideogpt.engine import EngineConfig, RolloutEngine
from ivideogpt.engine.tokenizer_steps import FutureEncode
from ivideogpt.int8_linear import int8_transformer
from ivideogpt.model import WorldModel
from ivideogpt.planning import PlanSpec
from ivideogpt.sampling import SamplingParams, draw_uniforms, sample_tokens
from ivideogpt.transformer import KVCache
from training.export import export
from training.loop import DTYPES, dtype_name

GOALS = {
    "speedup_vs_reprefill": ">= 2.2",
    "decode_vs_roofline": "<= 1.3",
    "speedup_32_sessions": ">= 5",
    "speedup_32_sessions_tiny": ">= 6",
    "speedup_imagine_k16": ">= 6",
    "imagine_memory_ratio": "<= 1.2",
    "tiny_frames_per_s_1_torchscript_median": ">= 30",
    "plan_ms_tiny_k32_h5": "<= 500",
    "plan_ms_tiny_k32_h5_lanes2": "<= 500",
    "plan_ms_tiny_k32_h5_icem_lanes2": "<= 500",
    "decode_int8_speedup": ">= 1.8",
}

SHIPPED_MODEL = Path(__file__).resolve().parents[1] / "models" / "default"


def timed(fn: Callable[[], object], repeat: int = 1) -> float:
    """Best of ``repeat`` wall-clock runs (seconds)."""
    best = math.inf
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def concurrently(calls: list[Callable[[], object]]) -> None:
    """Run the calls from one thread each (as concurrent clients would) and wait for all."""
    threads = [threading.Thread(target=call) for call in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


# the published algorithm, on the same model code


@torch.inference_mode()
def reprefill_rollout(
    model: WorldModel, context: torch.Tensor, actions: torch.Tensor, pixels: bool, dtype: torch.dtype
) -> torch.Tensor:
    """For every frame, a fresh prefill of the whole prefix, then 16 cached decode steps.

    context [B, c, 3, H, W], actions [B, h, A]; B rows as one batch (the published batching).
    """
    tok, trm, lay = model.tokenizer, model.transformer, model.layout
    b, h = actions.shape[:2]
    ids, _ = tok.encode_context(context)
    _, feats = tok.decode_context(ids) if pixels else (None, None)
    prefix = trm.embed(lay.context_sequence(ids))
    gens = [torch.Generator().manual_seed(i) for i in range(b)]
    sampling = SamplingParams()
    rewards = torch.zeros(b, h)
    for i in range(h):
        sdf = trm.embed_step(torch.full((b,), lay.sdf_id), actions[:, i].to(dtype))
        prefix = torch.cat([prefix, sdf[:, None]], dim=1)
        cache = KVCache.empty(trm.cfg, b, dtype=dtype)
        hidden = trm.prefill(prefix, cache)
        new = []
        for _ in range(lay.future_tokens):
            token = sample_tokens(trm.logits(hidden).float(), sampling, draw_uniforms(gens))
            new.append(token)
            hidden = trm.decode(token, cache)
        rewards[:, i] = trm.reward(hidden)
        new_ids = torch.stack(new, dim=1)
        prefix = torch.cat([prefix, trm.embed(new_ids)], dim=1)
        if pixels:
            future = (new_ids - lay.future_offset).clamp(0, lay.future_codebook_size - 1)
            for row in range(b):  # compute bound: no cheaper per frame in a batch
                tok.decode_future(future[row : row + 1, None], [f[row : row + 1] for f in feats])
    return rewards


# figures


def bandwidth_bytes_per_s() -> float:
    big = torch.ones(256 * 1024 * 1024 // 4)  # 256 MiB
    big.sum()
    return big.numel() * 4 / timed(big.sum, repeat=5)


def run(args: argparse.Namespace) -> dict[str, float]:
    dtype = DTYPES[args.dtype]
    quick = args.quick
    out: dict[str, float] = {}

    def report(name: str, value: float) -> None:
        out[name] = value
        goal = f"  (goal {GOALS[name]})" if name in GOALS else ""
        print(f"{name}: {value:.3g}{goal}", flush=True)

    torch.manual_seed(0)
    model = WorldModel(preset("oxe-64", action_dim=4, reward_head=True)).eval()
    cfg = model.cfg
    ctx = torch.rand(1, 2, 3, 64, 64)
    engine = RolloutEngine(model, EngineConfig(cache_bytes=4 << 30, dtype=args.dtype_name, max_imagine=64))
    trm, lay = model.transformer, model.layout  # the engine runs these very modules
    print(f"# oxe-64 engine: 2 threads x {engine.stats()['threads']} intra-op", flush=True)

    # 1. one session, 14 frames with pixels: engine vs re-prefill
    frames = 4 if quick else 14
    acts = torch.randn(1, frames, 4)
    sid = engine.open(ctx[0])
    t_engine = timed(lambda: engine.step(sid, acts[0]))
    engine.close(sid)
    t_published = timed(lambda: reprefill_rollout(model, ctx.to(dtype), acts, True, dtype))
    report("speedup_vs_reprefill", t_published / t_engine)
    if quick:
        print(f"# (quick: {frames} frames; the advantage grows with the number of frames)")

    # 2. batch-1 decode step vs the memory roofline
    weight_bytes = sum(p.numel() * p.element_size() for n, p in trm.named_parameters() if n != "embed.weight")
    bw = bandwidth_bytes_per_s()
    cache = KVCache.empty(trm.cfg, 1, dtype=dtype)
    with torch.inference_mode():
        trm.prefill(torch.randint(0, 8192, (1, lay.prelude_length)), cache)
        token = torch.tensor([lay.sdf_id])
        n = 5 if quick else 20
        t_step = timed(lambda: [trm.logits(trm.decode(token, cache)) for _ in range(n)]) / n
    report("decode_step_ms", 1000 * t_step)
    report("memory_bandwidth_gb_s", bw / 1e9)
    report("decode_vs_roofline", t_step / (weight_bytes / bw))

    # 2b. the same step on weight-only int8 weights, timed in turn with fp32's
    int8 = int8_transformer(trm)
    cache8 = KVCache.empty(trm.cfg, 1, dtype=dtype)
    with torch.inference_mode():
        int8.prefill(torch.randint(0, 8192, (1, lay.prelude_length)), cache8)
        steps = {"fp32": (trm, cache), "int8": (int8, cache8)}
        best = {name: math.inf for name in steps}
        for _ in range(2 if quick else 4):
            for name, (m, c) in steps.items():
                t = timed(lambda m=m, c=c: [m.logits(m.decode(token, c)) for _ in range(n)]) / n
                best[name] = min(best[name], t)
    report("decode_int8_step_ms", 1000 * best["int8"])
    report("decode_int8_speedup", best["fp32"] / best["int8"])
    diff, agreement = int8_agreement(model)
    report("int8_logit_max_abs_diff", diff)
    report("int8_greedy_agreement", agreement)
    shipped = load(SHIPPED_MODEL)
    diff, agreement = int8_agreement(shipped)
    report("int8_logit_max_abs_diff_tiny", diff)
    report("int8_greedy_agreement_tiny", agreement)
    del int8, cache8, shipped

    # 3. 32 concurrent sessions at different lengths vs one alone (tokens/s)
    def sessions_speedup(eng: RolloutEngine, n_frames: int, pixels: bool) -> float:
        a = torch.randn(n_frames, eng.cfg.transformer.action_dim)
        res = eng.cfg.tokenizer.resolution
        c = torch.rand(2, 3, res, res)
        one = eng.open(c)
        t_one = timed(lambda: eng.step(one, a, return_frames=pixels))
        eng.close(one)
        sids = [eng.open(c) for _ in range(32)]
        concurrently(  # bring the sessions to different lengths (batched, so it is quick)
            [lambda s=s, i=i: eng.step(s, torch.randn(i % 4, a.shape[1]), False) for i, s in enumerate(sids) if i % 4]
        )
        t_all = timed(lambda: concurrently([lambda s=s: eng.step(s, a, pixels) for s in sids]))
        for s in sids:
            eng.close(s)
        return (32 / t_all) / (1 / t_one)

    report("speedup_32_sessions", sessions_speedup(engine, 1 if quick else 2, pixels=False))
    if not quick:
        report("frames_speedup_32_sessions", sessions_speedup(engine, 1, pixels=True))

    # 4. pixel decoding of one future frame, fp32 vs bf16
    tok = model.tokenizer.float()
    with torch.inference_mode():
        ids, _ = tok.encode_context(ctx)
        _, feats = tok.decode_context(ids)
        fut = torch.randint(0, 8192, (1, 1, 16))
        f32 = tok.decode_future(fut, feats)
        t32 = timed(lambda: tok.decode_future(fut, feats), repeat=2 if quick else 5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            f16 = tok.decode_future(fut, feats)
            t16 = timed(lambda: tok.decode_future(fut, feats), repeat=2 if quick else 5)
    mse = (f32 - f16.float()).pow(2).mean().item()
    report("frame_decode_ms", 1000 * t32)
    report("frame_decode_ms_bf16", 1000 * t16)
    report("frame_decode_bf16_psnr_db", 10 * math.log10(1 / max(mse, 1e-12)))
    model.tokenizer.to(dtype)

    # 5. imagine K=16 x 5 frames, rewards only, vs the published algorithm on 16 rows
    k, h = 16, (2 if quick else 5)
    seqs = torch.randn(k, h, 4)
    sid = engine.open(ctx[0])
    t_imagine = timed(lambda: engine.imagine(sid, seqs))
    contexts = ctx.expand(k, -1, -1, -1, -1).to(dtype)
    t_batch = timed(lambda: reprefill_rollout(model, contexts, seqs, False, dtype))
    report("speedup_imagine_k16", t_batch / t_imagine)

    # 6. imagine memory: K=64 forks over one stored prefix
    engine.pool.reset_peak()
    engine.imagine(sid, torch.randn(64, 2, 4))
    peak = engine.pool.peak_used_blocks * engine.pool.bytes_per_block
    per_token = engine.pool.bytes_per_block / engine.pool.block_size
    ideal = (lay.prelude_length + 64 * 2 * lay.frame_stride) * per_token
    report("imagine_memory_ratio", peak / ideal)
    engine.close(sid)

    # 7. compressive layout: 16 tokens per future frame vs a full 16x16 grid per frame
    report("tokens_per_frame", lay.future_tokens)
    with torch.inference_mode():
        cache = KVCache.empty(trm.cfg, 1, dtype=dtype)
        trm.prefill(torch.randint(0, 8192, (1, lay.prelude_length)), cache)
        steps_small, steps_full = lay.frame_stride, cfg.tokenizer.context_tokens + 1
        steps_full_timed = steps_small * 3 if quick else steps_full  # quick: time a sample, scale
        t_small = timed(lambda: [trm.decode(token, cache) for _ in range(steps_small)])
        t_full = timed(lambda: [trm.decode(token, cache) for _ in range(steps_full_timed)])
        t_full *= steps_full / steps_full_timed
    report("step_cost_vs_256_tokens", t_full / t_small)
    engine.shutdown()

    # 8. tiny preset, end to end
    tiny = WorldModel(preset("tiny")).eval()
    teng = RolloutEngine(tiny, EngineConfig(cache_bytes=256 << 20, dtype=args.dtype_name))
    print(f"# tiny engine: 2 threads x {teng.stats()['threads']} intra-op", flush=True)
    report("speedup_32_sessions_tiny", sessions_speedup(teng, 2 if quick else 4, pixels=False))
    n = 8 if quick else 16
    one = teng.open(torch.rand(2, 3, 64, 64))
    t1 = timed(lambda: teng.step(one, torch.randn(n, 4)))
    teng.close(one)
    one = teng.open(torch.rand(2, 3, 64, 64))  # the same lengths, without pixels
    t_tokens = timed(lambda: teng.step(one, torch.randn(n, 4), return_frames=False))
    teng.close(one)
    report("tiny_frames_per_s_1", n / t1)
    report("tiny_frames_per_s_1_tokens_only", n / t_tokens)
    added = (t1 - t_tokens) / n
    report("tiny_pixels_ms_per_frame", 1000 * added)
    # one frame's pixels alone, timed on the engine's own pixel thread
    feats = tiny.tokenizer.decode_context(tiny.tokenizer.encode_context(torch.rand(1, 2, 3, 64, 64))[0])[1]
    ids = torch.randint(0, tiny.cfg.tokenizer.future_codebook_size, (1, 1, tiny.cfg.tokenizer.future_tokens))
    decode = teng.loop.pixels.submit(lambda: timed(lambda: teng.runner.decode_frame(feats, ids[0, 0]), repeat=20))
    decode = decode.result()
    report("tiny_pixel_decode_ms", 1000 * decode)
    report("tiny_pixels_hidden", 1 - added / decode)
    sids = [teng.open(torch.rand(2, 3, 64, 64)) for _ in range(32)]
    t32 = timed(lambda: concurrently([lambda s=s: teng.step(s, torch.randn(n // 4, 4)) for s in sids]))
    report("tiny_frames_per_s_32", 32 * (n // 4) / t32)
    teng.shutdown()

    # 9. the same tiny session on the exported TorchScript modules vs eager, interleaved
    with tempfile.TemporaryDirectory() as repo:
        export(tiny, repo)
        engines = {
            "eager": RolloutEngine(tiny, EngineConfig(cache_bytes=64 << 20, dtype=args.dtype_name)),
            "torchscript": RolloutEngine.from_repository(
                repo, EngineConfig(cache_bytes=64 << 20, dtype=args.dtype_name)
            ),
        }
        runs: dict[str, list[float]] = {name: [] for name in engines}
        for _ in range(4 if quick else 8):
            for name, eng in engines.items():
                sid = eng.open(torch.rand(2, 3, 64, 64))
                runs[name].append(timed(lambda e=eng, s=sid: e.step(s, torch.randn(n, 4))))
                eng.close(sid)
        for eng in engines.values():
            eng.shutdown()
    report("tiny_frames_per_s_1_torchscript", n / min(runs["torchscript"]))
    report("tiny_frames_per_s_1_torchscript_median", n / statistics.median(runs["torchscript"]))
    report("speedup_torchscript_vs_eager_tiny", min(runs["eager"]) / min(runs["torchscript"]))

    # 10. one plan request on the shipped model, exported with this code, as the gateway serves it
    for (method, lanes), ms in plan_ms(args.dtype_name, repeat=3 if quick else 7).items():
        report(
            "plan_ms_tiny_k32_h5"
            + ("" if method == "cem" else f"_{method}")
            + ("" if lanes == 1 else f"_lanes{lanes}"),
            ms,
        )

    # 11. the pixel options on the shipped model: bf16 pixels, batched imagine frames (each vs the default)
    for name, value in pixel_options(quick).items():
        report(name, value)

    # 12. one observed frame on the shipped model; its future encoder's emulated bf16 vs native bf16 here
    for name, value in observe_figures(repeat=3 if quick else 7).items():
        report(name, value)
    return out


@torch.inference_mode()
def observe_figures(repeat: int) -> dict[str, float]:
    """Milliseconds of one observe (a real frame encoded and fed to a session) on the shipped model, and
    the future encoder under native bf16 autocast vs its emulated bf16 (``EmulatedBF16``), one frame each: about
    1 on a CPU with bf16 instructions, several times on one without (AVX2)."""
    shipped = load(SHIPPED_MODEL)
    g = torch.Generator().manual_seed(0)
    context, frame = (torch.randint(0, 256, (n, 3, 64, 64), generator=g, dtype=torch.uint8) for n in (2, 1))
    action = torch.zeros(1, shipped.cfg.transformer.action_dim)
    eng = RolloutEngine(shipped, EngineConfig(cache_bytes=64 << 20))
    sid = eng.open(context)
    times = [timed(lambda: eng.observe(sid, frame, action)) for _ in range(repeat + 1)]  # the first one warms up
    eng.shutdown()
    tok = shipped.tokenizer
    features = tok.encode_context(context[None].float() / 255)[1]
    x = frame[None].float() / 255

    def native() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            tok.encode_future(x, features)

    emulated = FutureEncode(tok, "bfloat16")
    t_emulated = timed(lambda: emulated(x, *features), repeat=repeat)
    return {
        "observe_ms_tiny": 1000 * statistics.median(times[1:]),
        "future_encode_native_bf16_vs_emulated": timed(native, repeat=repeat) / t_emulated,
    }


@torch.inference_mode()
def int8_agreement(model: WorldModel) -> tuple[float, float]:
    """Weight-only int8 vs fp32 transformer on 4 random sequences (3 future frames): the largest logit
    difference and the fraction of positions whose greedy next token (argmax) agrees."""
    trm, lay = model.transformer, model.layout
    g = torch.Generator().manual_seed(0)
    ctx = torch.randint(0, lay.context_codebook_size, (4, lay.context_length, lay.context_tokens), generator=g)
    ids = lay.build(ctx, torch.randint(0, lay.future_codebook_size, (4, 3, lay.future_tokens), generator=g))
    acts = None
    if trm.cfg.action_dim:
        acts = torch.rand(4, lay.context_length + 3, trm.cfg.action_dim, generator=g) * 2 - 1
    dtype = next(trm.parameters()).dtype
    ref, _ = trm.float().forward_sequence(ids, lay, acts)
    got, _ = int8_transformer(trm).forward_sequence(ids, lay, acts)
    trm.to(dtype)
    return float((got - ref).abs().max()), float((got.argmax(-1) == ref.argmax(-1)).float().mean())


def pixel_options(quick: bool) -> dict[str, float]:
    """The pixel options against the default, on the shipped model: an imagine of K=16 x 2 frames with pixels,
    the three engines timed in turn; the bf16 frames' PSNR and the batched frames' largest difference."""
    shipped = load(SHIPPED_MODEL)
    options = {
        "default": EngineConfig(cache_bytes=64 << 20),
        "bf16": EngineConfig(cache_bytes=64 << 20, pixel_dtype="bfloat16"),
        "batched": EngineConfig(cache_bytes=64 << 20, batched_pixels=True),
    }
    engines = {name: RolloutEngine(shipped, config) for name, config in options.items()}
    seqs = torch.rand(16, 2, shipped.cfg.transformer.action_dim, generator=torch.Generator().manual_seed(0)) * 2 - 1
    context = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    sids = {name: eng.open(context) for name, eng in engines.items()}
    frames = {name: eng.imagine(sids[name], seqs, return_frames=True).frames for name, eng in engines.items()}
    best = {name: math.inf for name in engines}
    for _ in range(2 if quick else 4):
        for name, eng in engines.items():
            best[name] = min(best[name], timed(lambda e=eng, s=sids[name]: e.imagine(s, seqs, return_frames=True)))
    for eng in engines.values():
        eng.shutdown()
    mse = (frames["bf16"] - frames["default"]).pow(2).mean().item()
    return {
        "pixel_bf16_psnr_db_tiny": 10 * math.log10(1 / max(mse, 1e-12)),
        "imagine_frames_bf16_speedup_k16": best["default"] / best["bf16"],
        "imagine_frames_batched_max_diff": (frames["batched"] - frames["default"]).abs().max().item(),
        "imagine_frames_batched_speedup_k16": best["default"] / best["batched"],
    }


def plan_ms(
    dtype_name: str, repeat: int, runs: tuple[tuple[str, int], ...] = (("cem", 1), ("cem", 2), ("icem", 2))
) -> dict[tuple[str, int], float]:
    """Median milliseconds of one plan (K=32, horizon 5, 2 iterations, rewards only) on the shipped
    model's TorchScript export (written once from this checkout's code, so the figure measures it), for
    each (method, lanes) of ``runs``: its 32-row steps in ``lanes`` parts side by side. iCEM spends no
    imagine on the final mean (85 single-row token steps of CEM's 255)."""
    out = {}
    with tempfile.TemporaryDirectory() as repo:
        export(load(SHIPPED_MODEL), repo)
        for method, lanes in runs:
            spec = PlanSpec(horizon=5, population=32, iterations=2, method=method)
            config = EngineConfig(cache_bytes=64 << 20, dtype=dtype_name, token_lanes=lanes)
            eng = RolloutEngine.from_repository(repo, config)
            sid = eng.open(torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
            eng.plan(sid, spec)  # warm-up
            times = [timed(lambda e=eng, s=sid, p=spec: e.plan(s, p)) for _ in range(repeat)]
            eng.shutdown()
            out[method, lanes] = 1000 * statistics.median(times)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer frames and repeats (under 5 minutes on 2 cores)")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--write", default=None, help="append the results to this markdown file")
    args = parser.parse_args()
    args.dtype_name = dtype_name(args.dtype)
    desc = machine()
    print(f"# {desc}; dtype {args.dtype}; {'quick' if args.quick else 'full'} run", flush=True)
    start = time.perf_counter()
    results = run(args)
    print(f"# {time.perf_counter() - start:.0f} s", flush=True)
    if args.write:
        with open(args.write, "a") as f:
            f.write(f"\n### `python -m benchmarks.rollout{' --quick' if args.quick else ''} --dtype {args.dtype}`\n\n")
            f.write(f"{desc}; {time.strftime('%Y-%m-%d')}\n\n| figure | value | goal |\n|---|---|---|\n")
            for name, value in results.items():
                f.write(f"| `{name}` | {value:.3g} | {GOALS.get(name, '')} |\n")


if __name__ == "__main__":
    main()
