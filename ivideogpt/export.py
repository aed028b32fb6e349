"""Export a model's serving entry points as TorchScript: the files ``RolloutEngine.from_repository`` serves.

Writes one folder per entry point of ``ModelRunner`` (``ivideogpt_<module>/1/model.pt``) and
the model's config (``ivideogpt_config.json``) beside them, so the artifact alone describes the
model; ``export`` also says each module's inputs and outputs (``TensorSpec``), from which
``python -m training.export`` writes the Triton configs of the same folders. The tokenizer
modules are traced (their control flow depends only on shapes); the transformer modules are
scripted. Exporting the same model twice gives byte-identical files, from any checkout, when
``PYTHONHASHSEED`` is fixed (TorchScript orders class constants by string hash; the CLI pins it)
and the debug records that name absolute source paths are dropped (``drop_debug_records``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ivideogpt.engine.kv_cache import SessionRow
from ivideogpt.engine.runner import CONFIG_FILE, MODULES, ModelRunner, module_folder
from ivideogpt.model import WorldModel


@dataclass(frozen=True)
class TensorSpec:
    """An input or output of an exported module: name, dtype, dims (-1 where the size varies)."""

    name: str
    dtype: torch.dtype
    dims: tuple[int, ...]


ModuleSpecs = dict[str, tuple[list[TensorSpec], list[TensorSpec]]]  # module -> (inputs, outputs)


def _spec(name: str, t: torch.Tensor, variable: tuple[int, ...] = (0,)) -> TensorSpec:
    dims = tuple(-1 if i in variable else d for i, d in enumerate(t.shape))
    return TensorSpec(name, t.dtype, dims)


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


@torch.inference_mode(False)
def export_modules(model: WorldModel, out: str | Path) -> ModuleSpecs:
    """Script/trace every entry point of ``model`` into ``out``; returns each module's inputs and outputs."""
    out = Path(out)
    torch.manual_seed(0)  # example inputs are fixed, so the files are too
    model = model.float().eval()
    runner = ModelRunner.from_model(model)
    cfg, lay = model.cfg, model.layout
    tok, trm = cfg.tokenizer, cfg.transformer
    c, r = tok.context_length, tok.resolution

    with torch.no_grad():
        frames = torch.rand(1, c, tok.in_channels, r, r)
        ids, encoder_features = runner.encode_context(frames)
        recon, features = runner.decode_context(ids)
        # two frames per context: the cross-attention's per-context repeat is traced (one frame needs none)
        observed = torch.rand(1, 2, tok.in_channels, r, r)
        observed_ids = runner.encode_future(observed, encoder_features)
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
    encoder_specs = [_spec(f"ENCODER_FEATURE_{i}", f) for i, f in enumerate(encoder_features)]
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
    modules: dict[str, tuple[list[TensorSpec], list[TensorSpec], tuple]] = {
        "context_encode": ([_spec("FRAMES", frames)], [_spec("IDS", ids), *encoder_specs], (frames,)),
        "context_decode": ([_spec("IDS", ids)], [_spec("FRAMES", recon), *feature_specs], (ids,)),
        "future_encode": (
            [_spec("FRAMES", observed, (0, 1)), *encoder_specs],
            [_spec("IDS", observed_ids, (0, 1))],
            (observed, *encoder_features),
        ),
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
    specs: ModuleSpecs = {}
    for name in MODULES:
        inputs, outputs, example = modules[name]
        specs[name] = (inputs, outputs)
        module = runner.modules[name]
        with warnings.catch_warnings():  # the tokenizer's shape checks are constants by design
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            compiled = torch.jit.trace(module, example, check_trace=False) if example else torch.jit.script(module)
        folder = out / module_folder(name) / "1"
        folder.mkdir(parents=True, exist_ok=True)
        torch.jit.save(compiled, str(folder / "model.pt"))
        drop_debug_records(folder / "model.pt")
    (out / CONFIG_FILE).write_text(cfg.to_json() + "\n")
    return specs
