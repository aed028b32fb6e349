"""Export a checkpoint into a Triton model repository.

    python -m training.export CHECKPOINT --out model_repository/

Writes the TorchScript entry points (``ivideogpt.export``: ``ivideogpt_<module>/1/model.pt``
and ``ivideogpt_config.json``, what ``RolloutEngine.from_repository`` serves), each with its
``config.pbtxt`` for Triton's libtorch backend (``<NAME>__<index>`` tensors), and the stateful
``ivideogpt_rollout`` model (Triton's Python backend: our engine over those files, one session
per sequence; ``ivideogpt_triton.model``). Exporting the same checkpoint twice gives
byte-identical files, from any checkout (this command pins PYTHONHASHSEED, see ``main``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ivideogpt.checkpoint import load
from ivideogpt.engine.runner import MODULES, module_folder
from ivideogpt.export import export_modules
from ivideogpt.model import WorldModel
from ivideogpt_triton.config import module_config, rollout_config
from ivideogpt_triton.protocol import MODEL_NAME as ROLLOUT_MODEL

ROLLOUT_MODEL_PY = '''"""Triton Python-backend entry point of the stateful rollout model: ivideogpt_triton.model."""

from ivideogpt_triton.model import TritonPythonModel

__all__ = ["TritonPythonModel"]
'''


def export(model: WorldModel, out: str | Path, session_ttl_s: float = 3600.0) -> Path:
    """The whole repository for ``model`` in ``out``: TorchScript modules, their configs, the rollout model."""
    out = Path(out)
    for name, (inputs, outputs) in export_modules(model, out).items():
        (out / module_folder(name) / "config.pbtxt").write_text(module_config(module_folder(name), inputs, outputs))
    folder = out / ROLLOUT_MODEL
    (folder / "1").mkdir(parents=True, exist_ok=True)
    (folder / "1" / "model.py").write_text(ROLLOUT_MODEL_PY)
    (folder / "config.pbtxt").write_text(rollout_config(model.cfg.transformer.action_dim, session_ttl_s))
    return out


def main(argv: list[str] | None = None) -> None:
    if os.environ.get("PYTHONHASHSEED") != "0":
        # TorchScript writes a class's constants in string-hash order: fix the hash seed so
        # that two exports of one checkpoint are byte-identical
        args = sys.argv[1:] if argv is None else argv
        os.execve(
            sys.executable, [sys.executable, "-m", "training.export", *args], {**os.environ, "PYTHONHASHSEED": "0"}
        )
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="our checkpoint folder (config.json + model.safetensors)")
    parser.add_argument("--out", default="model_repository", help="model repository to write into")
    parser.add_argument(
        "--session-ttl-s", type=float, default=3600.0, help="idle sessions of ivideogpt_rollout are freed after this"
    )
    args = parser.parse_args(argv)
    path = export(load(args.checkpoint), args.out, args.session_ttl_s)
    names = [module_folder(m) for m in MODULES] + [ROLLOUT_MODEL]
    print(f"exported {args.checkpoint} into {path}: {', '.join(names)}")


if __name__ == "__main__":
    main()
