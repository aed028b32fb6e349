"""``ivideogpt``: serve the gateway, list its model, roll out a GIF, load-test it.

    ivideogpt serve [--host H] [--port P] [--grpc-port G]        # the gateway (python -m server)
    ivideogpt models [--url U]
    ivideogpt rollout [--url U] [--context F ...] [--actions A.npy|.csv] [--steps N] [--seed S] [--out rollout.gif]
    ivideogpt plan [--url U] [--context F ...] [--horizon H] [--population K] [--iterations N] [--method cem|icem|mppi]
    ivideogpt bench [--url U] [--sessions N] [--steps H] [--imagine K] [--requests R] [--duration S]

``--url`` defaults to ``$IVIDEOGPT_URL`` (else http://127.0.0.1:8000), ``--api-key`` to ``$IVIDEOGPT_API_KEY``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

import httpx
import numpy as np
from PIL import Image
from tqdm import tqdm

from ivideogpt_client.client import DEFAULT_URL, WorldModelClient
from ivideogpt_client.errors import WorldModelError

NOT_RUNNING = (
    "is the gateway running? Start one with `ivideogpt serve` (or the README's first command), "
    "or point --url / $IVIDEOGPT_URL at yours"
)


def serve(argv: list[str]) -> int:
    """The gateway itself, imported only here: the SDK does not need it installed."""
    try:
        from server.__main__ import main as server_main
    except ImportError as exc:
        print(
            f"error: `ivideogpt serve` needs the gateway (the `server` package of ivideogpt-serve: "
            f"`pip install -e .` at the repository root): {exc}",
            file=sys.stderr,
        )
        return 2
    return server_main(argv)


def load_context(paths: list[str]) -> np.ndarray:
    """Image files (one frame each) and/or .npy files (uint8 [n, H, W, 3]) -> uint8 [c, H, W, 3]."""
    frames = []
    for p in paths:
        if p.endswith(".npy"):
            x = np.load(p)
            frames.extend(x if x.ndim == 4 else x[None])
        else:
            frames.append(np.asarray(Image.open(p).convert("RGB"), dtype=np.uint8))
    return np.stack(frames).astype(np.uint8)


def load_actions(path: str) -> np.ndarray:
    """A .npy or .csv (comma-separated, one action per row) -> float32 [n, action_dim]."""
    x = np.load(path) if path.endswith(".npy") else np.loadtxt(path, delimiter=",", ndmin=2)
    return np.asarray(x, dtype=np.float32).reshape(len(x), -1)


def rollout(args: argparse.Namespace) -> int:
    from ivideogpt_client.video import check_video_path, write_video

    check_video_path(args.out)
    with WorldModelClient(args.url, args.api_key, args.transport, args.timeout) as client:
        info = client.model()
        context = load_context(args.context) if args.context else client.sample_context(episode=args.episode)
        if args.actions:
            actions = load_actions(args.actions)
            steps = args.steps or len(actions)
            if steps > len(actions):
                raise SystemExit(f"error: --steps {steps} but {args.actions} holds {len(actions)} actions")
            actions = actions[:steps]
        else:  # seeded random actions in the model's action range
            steps = args.steps or 16
            actions = np.random.default_rng(args.seed).uniform(-1, 1, (steps, info["action_dim"])).astype(np.float32)
        chunk = max(1, min(args.chunk, info["max_horizon"]))
        frames, rewards = [], []
        sampling = {"temperature": args.temperature, "top_k": args.top_k, "greedy": args.greedy or None}
        session = client.session(context, seed=args.seed, **sampling)
        with session as s, tqdm(total=steps, unit="frame", desc="rollout", disable=args.quiet) as bar:
            for i in range(0, steps, chunk):
                f, r = s.step(actions[i : i + chunk])
                frames.append(f)
                rewards.append(r if r is not None else np.full(len(f), np.nan, np.float32))
                bar.update(len(f))
        predicted, rewards_all = np.concatenate(frames), np.concatenate(rewards)
        # the gateway draws the GIF: the same writer as the playground's download (POST /v1/render/gif)
        gif = client.render_gif(
            np.concatenate([context, predicted]), len(context), rewards_all, None, args.fps, args.scale
        )
    out = write_video(args.out, gif, args.fps)
    print(
        f"wrote {out}: {len(context)} context + {len(predicted)} predicted frames, mean reward {rewards_all.mean():.3f}"
    )
    return 0


def plan(args: argparse.Namespace) -> int:
    """Open a session on the context, plan from it, print the plan as JSON (and close the session)."""
    settings = {name: getattr(args, name) for name in ("horizon", "population", "iterations", "elites", "method")}
    settings.update(seed=args.seed, init_std=args.init_std, discount=args.discount)
    with WorldModelClient(args.url, args.api_key, args.transport, args.timeout) as client:
        context = load_context(args.context) if args.context else client.sample_context(episode=args.episode)
        greedy = None if args.sample else True  # one deterministic future per sequence: scores not left to luck
        with client.session(context, seed=args.seed, greedy=greedy) as s:
            result = s.plan(**settings)
    out = {
        "actions": result.actions.tolist(),
        "predicted_rewards": result.predicted_rewards.tolist(),
        "score": result.score,
        "imagined_frames": result.imagined_frames,
        "iterations": result.iterations,
    }
    print(json.dumps(out, indent=2))
    return 0


def models(args: argparse.Namespace) -> int:
    with WorldModelClient(args.url, args.api_key, args.transport, args.timeout) as client:
        print(json.dumps(client.models(), indent=2))
    return 0


def bench(args: argparse.Namespace) -> int:
    from ivideogpt_client.bench import BenchConfig, format_summary, run_bench

    cfg = BenchConfig(
        args.url, args.api_key, args.transport, args.sessions, args.steps, args.imagine, args.requests, args.duration
    )
    cfg.seed = args.seed
    with tqdm(total=cfg.requests, unit="req", desc="bench", disable=args.quiet or args.json) as bar:
        result = asyncio.run(run_bench(cfg, bar)).summary()
    print(json.dumps(result, indent=2) if args.json else format_summary(result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ivideogpt", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="start the gateway (same flags as python -m server)", add_help=False)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url", default=os.environ.get("IVIDEOGPT_URL", DEFAULT_URL), help="the gateway (default: %(default)s)"
    )
    common.add_argument("--api-key", default=os.environ.get("IVIDEOGPT_API_KEY"), help="when the gateway has keys")
    common.add_argument("--transport", choices=("json", "msgpack"), default="json", help="msgpack: raw arrays, no PNG")
    common.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("models", parents=[common], help="the served model: shapes, limits, sampling defaults")
    p.set_defaults(func=models)

    p = sub.add_parser("rollout", parents=[common], help="roll out a session and write an animated GIF or MP4")
    p.add_argument(
        "--context",
        nargs="+",
        metavar="FILE",
        help="context frames (images or .npy); default: held-out frames from the server",
    )
    p.add_argument("--episode", type=int, default=0, help="held-out episode for the default context")
    p.add_argument("--actions", metavar="FILE", help=".npy or .csv [n, action_dim]; default: seeded random in [-1, 1]")
    p.add_argument("--steps", type=int, help="frames to predict (default: all --actions, else 16)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (and random actions' seed)")
    p.add_argument("--temperature", type=float, help="sampling temperature > 0 (default: the model's)")
    p.add_argument("--top-k", type=int, help="sample among the k most likely tokens, 0: all (default: the model's)")
    p.add_argument("--greedy", action="store_true", help="the most likely token at every position (no sampling)")
    p.add_argument("--chunk", type=int, default=4, help="actions per step request")
    p.add_argument("--out", default="rollout.gif", help=".gif or .mp4 (MP4 needs the [mp4] extra)")
    p.add_argument("--fps", type=float, default=4.0, help="frames per second of the video (default: %(default)s)")
    p.add_argument("--scale", type=int, default=4, help="upscale factor of the 64x64 frames")
    p.set_defaults(func=rollout)

    p = sub.add_parser("plan", parents=[common], help="the best action sequence from a context, as JSON (CEM or MPPI)")
    p.add_argument("--context", nargs="+", metavar="FILE", help="context frames (images or .npy); default: held-out")
    p.add_argument("--episode", type=int, default=0, help="held-out episode for the default context")
    p.add_argument("--horizon", type=int, help="actions per sequence (default: the gateway's)")
    p.add_argument("--population", type=int, help="sequences per iteration")
    p.add_argument("--iterations", type=int, help="refits of the proposal")
    p.add_argument("--elites", type=int, help="CEM: sequences the proposal is refitted to")
    p.add_argument("--method", choices=("cem", "icem", "mppi"), help="cross-entropy method (default), iCEM or MPPI")
    p.add_argument("--init-std", type=float, help="the first population's spread")
    p.add_argument("--discount", type=float, help="a sequence scores sum_t discount^t reward_t")
    p.add_argument("--seed", type=int, default=0, help="the planner's and the session's seed")
    p.add_argument("--sample", action="store_true", help="sampled futures instead of the greedy ones")
    p.set_defaults(func=plan)

    p = sub.add_parser("bench", parents=[common], help="bounded load: p50/p99 latency and frames/s")
    p.add_argument("--sessions", type=int, default=4, help="sessions open at once (default: %(default)s)")
    p.add_argument("--steps", type=int, default=4, help="actions per step (and imagine horizon)")
    p.add_argument("--imagine", type=int, default=0, help="K: also imagine K sequences, every other request")
    p.add_argument("--requests", type=int, default=64, help="stop after this many requests")
    p.add_argument("--duration", type=float, default=60.0, help="or after this many seconds")
    p.add_argument("--seed", type=int, default=0, help="seed of the sessions' sampling and of the random actions")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:  # every flag goes to the gateway's own parser
        return serve(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except WorldModelError as err:
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        if isinstance(err.__cause__, httpx.ConnectError):
            print(f"hint: {NOT_RUNNING}", file=sys.stderr)
        return 1
    except (OSError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
