"""Record every bit a fixed set of rollouts produces, to prove a refactor left the engine's output alone.

    .venv/bin/python scripts/rollout_fingerprint.py --out before.npz            # on the old tree
    .venv/bin/python scripts/rollout_fingerprint.py --out after.npz --compare before.npz

Runs the shipped model (``models/default`` eagerly and ``model_repository/`` as TorchScript)
through the engine's public API: a session crossing two re-anchors, sessions stepping side by
side with an imagine (batched token steps: session rows and fork groups in one batch), greedy
sampling, a restore, re-decoded frames, and bfloat16. It stores the sampled tokens, the rewards
and the frames as raw float32 bytes. Bits depend on the machine (CPU kernels) and the thread
count: compare two records made on one machine with the same settings, as the benchmarks do.

One exception: the rewards of sessions that step side by side come out of a reward head run
over however many rows the racing threads put into one batch, and a matrix product's last bit
depends on its row count; those (``side*``) are compared within 1e-5 (relative and absolute).
Their tokens and frames are compared bit for bit like everything else.
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ivideogpt.engine import EngineConfig, RolloutEngine  # noqa: E402
from ivideogpt.sampling import SamplingParams  # noqa: E402


def readme_context() -> torch.Tensor:
    """The README's curl example's two context frames, uint8 [2, 3, 64, 64]."""
    frames = [np.asarray(Image.open(REPO / "docs" / "examples" / f"context{i}.png").convert("RGB")) for i in (0, 1)]
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous()


def random_context(seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def acts(seed: int, *shape: int) -> torch.Tensor:
    return torch.rand(*shape, 4, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def record(engine: RolloutEngine, tag: str, out: dict[str, np.ndarray]) -> None:
    def put(name: str, value: torch.Tensor | list) -> None:
        out[f"{tag}/{name}"] = np.asarray(value.detach().float().numpy() if torch.is_tensor(value) else value)

    # the README's session, then on past two re-anchors (22 frames per anchor), then an imagine with frames
    sid = engine.open(readme_context(), SamplingParams(seed=0))
    first = engine.step(sid, torch.ones(2, 4))
    put("readme/frames", first.frames)
    put("readme/rewards", first.rewards)
    long = engine.step(sid, acts(1, 48))
    put("long/frames", long.frames)
    put("long/rewards", long.rewards)
    imagined = engine.imagine(sid, acts(2, 6, 3), return_frames=True)
    put("long/imagine_frames", imagined.frames)
    put("long/imagine_rewards", imagined.rewards)
    history = engine.history(sid)
    put("long/tokens", [s.tokens for s in history.steps])
    put("long/reanchors", history.reanchors)
    put("long/recorded", engine.recorded_frames(sid, 40, 50))
    streamed = [r.frame for r in engine.step_stream(sid, acts(3, 3))]
    put("long/streamed", torch.stack(streamed))

    # a restore from the history continues like the original
    twin = engine.restore(history)
    put("restore/frames", engine.step(twin, acts(3, 3)).frames)
    engine.close(twin)

    # four sessions side by side with an imagine: session rows and fork groups share token steps
    sids = [engine.open(random_context(10 + i), SamplingParams(seed=i, greedy=i == 3)) for i in range(4)]
    for i, s in enumerate(sids[1:], start=1):  # at different lengths
        engine.step(s, acts(20 + i, i), return_frames=False)
    results: dict[str, object] = {}

    def step(i: int) -> None:
        results[f"side{i}"] = engine.step(sids[i], acts(30 + i, 6))

    def imagine() -> None:
        results["imagine"] = engine.imagine(sids[0], acts(40, 16, 4), return_frames=True)

    threads = [threading.Thread(target=step, args=(i,)) for i in range(4)] + [threading.Thread(target=imagine)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, s in enumerate(sids):
        put(f"side{i}/frames", results[f"side{i}"].frames)
        put(f"side{i}/rewards", results[f"side{i}"].rewards)
        put(f"side{i}/tokens", [r.tokens for r in engine.history(s).steps])
        engine.close(s)
    put("side/imagine_frames", results["imagine"].frames)
    put("side/imagine_rewards", results["imagine"].rewards)
    engine.close(sid)


def same(name: str, ref: np.lib.npyio.NpzFile, out: dict[str, np.ndarray]) -> bool:
    if name not in out or name not in ref.files or ref[name].shape != out[name].shape:
        return False
    if name.split("/")[1].startswith("side") and name.endswith("rewards"):  # batch-dependent in the last bit
        return bool(np.allclose(ref[name], out[name], rtol=1e-5, atol=1e-5))
    return ref[name].tobytes() == out[name].tobytes()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="write the record here (.npz)")
    parser.add_argument("--compare", help="a record to compare with: every array bit for bit")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    out: dict[str, np.ndarray] = {}
    config = EngineConfig(cache_bytes=64 << 20, threads=1)
    for tag, make in (
        ("eager", lambda c: RolloutEngine.from_checkpoint(REPO / "models" / "default", c)),
        ("torchscript", lambda c: RolloutEngine.from_repository(REPO / "model_repository", c)),
    ):
        engine = make(config)
        try:
            record(engine, tag, out)
        finally:
            engine.shutdown()
    bf16_config = EngineConfig(cache_bytes=64 << 20, dtype="bfloat16")
    bf16 = RolloutEngine.from_checkpoint(REPO / "models" / "default", bf16_config)
    try:
        sid = bf16.open(readme_context(), SamplingParams(seed=0))
        step = bf16.step(sid, acts(1, 5))
        out["bf16/frames"], out["bf16/rewards"] = step.frames.float().numpy(), step.rewards.float().numpy()
        out["bf16/imagine"] = bf16.imagine(sid, acts(2, 4, 2)).rewards.float().numpy()
    finally:
        bf16.shutdown()
    np.savez_compressed(args.out, **out)
    print(f"{len(out)} arrays, {sum(a.nbytes for a in out.values())} bytes -> {args.out}")
    if args.compare:
        ref = np.load(args.compare)
        differ = [k for k in sorted(set(ref.files) | set(out)) if not same(k, ref, out)]
        if differ:
            sys.exit(f"{len(differ)} of {len(out)} arrays differ: {', '.join(differ)}")
        print(f"identical to {args.compare}: all {len(out)} arrays")


if __name__ == "__main__":
    main()
