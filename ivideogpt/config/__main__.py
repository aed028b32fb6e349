"""``python -m ivideogpt.config --preset NAME``: a preset's JSON and its parameter counts.

Counting needs the model's modules, which import the config: this entry point sits above both,
so ``ivideogpt.config`` itself imports nothing of the model (no import cycle).
"""

from __future__ import annotations

import argparse

import torch

from ivideogpt.config import PRESETS, count_parameters, preset
from ivideogpt.tokenizer import CompressiveTokenizer
from ivideogpt.transformer import WorldModelTransformer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ivideogpt.config", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", choices=list(PRESETS))
    parser.add_argument("--context-length", type=int, default=None)
    parser.add_argument("--action-dim", type=int, default=None)
    parser.add_argument("--reward-head", action=argparse.BooleanOptionalAction, default=None)
    args = parser.parse_args(argv)
    cfg = preset(
        args.preset,
        context_length=args.context_length,
        action_dim=args.action_dim,
        reward_head=args.reward_head,
    )
    print(cfg.to_json())
    with torch.device("meta"):  # count parameters without allocating them
        tokenizer = CompressiveTokenizer(cfg.tokenizer)
        transformer = WorldModelTransformer(cfg.transformer)
    print(f"tokenizer: {count_parameters(tokenizer) / 1e6:.1f}M")
    print(f"transformer: {count_parameters(transformer) / 1e6:.1f}M")


if __name__ == "__main__":
    main()
