"""Export a checkpoint as TorchScript into a Triton model repository.

    python -m training.export CHECKPOINT --out model_repository/

Writes one folder per serving entry point (``ivideogpt_<module>/1/model.pt`` +
``config.pbtxt``, platform ``pytorch_libtorch``, ``<NAME>__<index>`` tensors) and the model's
config (``ivideogpt_config.json``) beside them, so the artifact alone describes the model, and
the stateful ``ivideogpt_rollout`` model (Triton Python backend: our engine over these files,
one session per sequence; see ``ivideogpt.triton_rollout``).
The engine loads the same files (``RolloutEngine.from_repository``): one artifact format,
two runtimes. The tokenizer modules are traced (their control flow depends only on
shapes); the transformer modules are scripted. Exporting the same checkpoint twice gives
byte-identical files, from any checkout (the command pins PYTHONHASHSEED, see ``main``, and
drops the debug records that name absolute source paths, see ``drop_debug_records``).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ivideogpt.checkpoint import load
from ivideogpt.engine.kv_cache import SessionRow
from ivideogpt.engine.runner import CONFIG_FILE, MODULES, ModelRunner, module_folder
from ivideogpt.model import WorldModel
from ivideogpt.triton_protocol import MODEL_NAME as ROLLOUT_MODEL
from ivideogpt.triton_protocol import config_pbtxt as rollout_config_pbtxt

TRITON_TYPES = {torch.float32: "TYPE_FP32", torch.int64: "TYPE_INT64", torch.bool: "TYPE_BOOL"}


@dataclass
class TensorSpec:
    name: str
    dtype: torch.dtype
    dims: tuple[int, ...]  # -1 where the size varies


def _spec(name: str, t: torch.Tensor, variable: tuple[int, ...] = (0,)) -> TensorSpec:
    dims = tuple(-1 if i in variable else d for i, d in enumerate(t.shape))
    return TensorSpec(name, t.dtype, dims)


def config_pbtxt(name: str, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> str:
    def block(specs: list[TensorSpec], index_from: int = 0) -> str:
        rows = []
        for i, s in enumerate(specs):
            dims = ", ".join(str(d) for d in s.dims)
            rows.append(
                f'  {{ name: "{s.name}__{i + index_from}" data_type: {TRITON_TYPES[s.dtype]} dims: [ {dims} ] }}'
            )
        return ",\n".join(rows)

    return (
        f'name: "{name}"\n'
        'platform: "pytorch_libtorch"\n'
        "max_batch_size: 0\n"
        f"input [\n{block(inputs)}\n]\n"
        f"output [\n{block(outputs)}\n]\n"
        "instance_group [ { kind: KIND_GPU count: 1 } ]\n"
        'parameters: { key: "INFERENCE_MODE" value: { string_value: "true" } }\n'
    )


def drop_debug_records(path: Path) -> None:
    """Rewrite a TorchScript file without its ``*.debug_pkl`` records.

    They map code to Python source lines by absolute path (this checkout's and torch's
    install), so with them two checkouts export different bytes; TorchScript loads without
    them (its errors then name no Python source line).
    """
    reader = torch._C.PyTorchFileReader(str(path))
    records = [(n, reader.get_record(n)) for n in reader.get_all_records() if not n.endswith(".debug_pkl")]
    del reader
    writer = torch._C.PyTorchFileWriter(str(path))
    for name, data in records:
        writer.write_record(name, data, len(data))
    writer.write_end_of_file()


ROLLOUT_MODEL_PY = '''"""Triton Python-backend entry point of the stateful rollout model: ivideogpt.triton_rollout."""

from ivideogpt.triton_rollout import TritonPythonModel

__all__ = ["TritonPythonModel"]
'''


def write_rollout_model(out: Path, action_dim: int, session_ttl_s: float) -> Path:
    folder = out / ROLLOUT_MODEL
    (folder / "1").mkdir(parents=True, exist_ok=True)
    (folder / "1" / "model.py").write_text(ROLLOUT_MODEL_PY)
    (folder / "config.pbtxt").write_text(rollout_config_pbtxt(action_dim, session_ttl_s))
    return folder


@torch.inference_mode(False)
def export(model: WorldModel, out: str | Path, session_ttl_s: float = 3600.0) -> Path:
    """Script/trace every entry point of ``model`` and write the repository into ``out``."""
    out = Path(out)
    torch.manual_seed(0)  # example inputs are fixed, so the files are too
    model = model.float().eval()
    runner = ModelRunner.from_model(model)
    cfg, lay = model.cfg, model.layout
    tok, trm = cfg.tokenizer, cfg.transformer
    c, r = tok.context_length, tok.resolution

    with torch.no_grad():
        frames = torch.rand(1, c, tok.in_channels, r, r)
        ids = runner.encode_context(frames)
        recon, features = runner.decode_context(ids)
        future = torch.zeros(1, 1, lay.future_tokens, dtype=torch.long)
        frame = runner.decode_future(future, features)
        tokens = torch.tensor([lay.sdf_id, lay.future_offset])
        actions = torch.zeros(2, max(trm.action_dim, 1))
        with_action = torch.tensor([True, False])
        x = runner.embed(tokens, actions, with_action)
        slot_bytes = 2 * trm.n_layers * trm.hidden_size * 4 * (trm.max_positions + 16)
        pool = runner.allocate_cache(slot_bytes, block_size=16)  # one session's slot
        table = pool.allocate_slot()
        k_slot, v_slot = pool.slot_views(table)
        hidden_prefill = runner.prefill(x[None], k_slot, v_slot, 0)
        meta = pool.metadata(1, [SessionRow(0, table.start, 2)], [])
        hidden = runner.decode(x[:1], meta)
        logits, rewards = runner.heads(hidden)

    feature_specs = [_spec(f"FEATURE_{i}", f) for i, f in enumerate(features)]
    cache = pool.cache
    decode_inputs = (
        meta.positions,
        cache.k,
        cache.v,
        meta.write,
        meta.rows,
        meta.slots,
        meta.window,
        meta.mask,
        meta.forks,
    )
    decode_names = (
        "POSITIONS",
        "POOL_K",
        "POOL_V",
        "WRITE",
        "SESSION_ROWS",
        "SESSION_SLOTS",
        "WINDOW",
        "SESSION_MASK",
        "FORKS",
    )
    decode_variable = {
        "POSITIONS": (0,),
        "POOL_K": (2,),
        "POOL_V": (2,),
        "WRITE": (0,),
        "SESSION_ROWS": (0,),
        "SESSION_SLOTS": (0,),
        "WINDOW": (),
        "SESSION_MASK": (0, 3),
        "FORKS": (0,),
    }
    specs: dict[str, tuple[list[TensorSpec], list[TensorSpec], tuple]] = {
        "context_encode": ([_spec("FRAMES", frames)], [_spec("IDS", ids)], (frames,)),
        "context_decode": ([_spec("IDS", ids)], [_spec("FRAMES", recon), *feature_specs], (ids,)),
        "future_decode": (
            [_spec("IDS", future), *feature_specs],
            [_spec("FRAMES", frame)],
            (future, *features),
        ),
        "transformer_embed": (
            [_spec("IDS", tokens), _spec("ACTIONS", actions), _spec("WITH_ACTION", with_action)],
            [_spec("EMBEDS", x)],
            (),
        ),
        "transformer_prefill": (
            [
                _spec("EMBEDS", x[None], (1,)),
                _spec("K_SLOT", k_slot, ()),
                _spec("V_SLOT", v_slot, ()),
                TensorSpec("START", torch.int64, (1,)),
            ],
            [_spec("HIDDEN", hidden_prefill, (1,))],
            (),
        ),
        "transformer_decode": (
            [
                _spec("EMBEDS", x[:1]),
                *[_spec(n, t, decode_variable[n]) for n, t in zip(decode_names, decode_inputs, strict=True)],
            ],
            [_spec("HIDDEN", hidden)],
            (),
        ),
        "transformer_heads": ([_spec("HIDDEN", hidden)], [_spec("LOGITS", logits), _spec("REWARDS", rewards)], ()),
    }

    out.mkdir(parents=True, exist_ok=True)
    for name in MODULES:
        inputs, outputs, example = specs[name]
        module = runner.modules[name]
        with warnings.catch_warnings():  # the tokenizer's shape checks are constants by design
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            compiled = torch.jit.trace(module, example, check_trace=False) if example else torch.jit.script(module)
        folder = out / module_folder(name)
        (folder / "1").mkdir(parents=True, exist_ok=True)
        torch.jit.save(compiled, str(folder / "1" / "model.pt"))
        drop_debug_records(folder / "1" / "model.pt")
        (folder / "config.pbtxt").write_text(config_pbtxt(module_folder(name), inputs, outputs))
    (out / CONFIG_FILE).write_text(cfg.to_json() + "\n")
    write_rollout_model(out, trm.action_dim, session_ttl_s)
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
