"""ModelRunner: the eight entry points the engine calls, eager or exported TorchScript, and the token step.

One artifact format, two runtimes: ``from_model`` wraps a ``WorldModel``'s modules as they
are; ``training.export`` writes the same modules as TorchScript into a model repository (one
folder per module with ``1/model.pt``, the model config beside them); ``from_repository``
loads that repository back. The engine cannot tell them apart.

``execute`` runs one scheduled token step (``StepBatch``) over the KV cache pool: embeddings,
the transformer's decode step, the heads, and sampling, one draw per row from the row's own
generator, so a row's sample never depends on its batch neighbours.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from concurrent.futures import Executor, wait
from pathlib import Path

import torch
from torch import nn

from ivideogpt.config import ModelConfig
from ivideogpt.engine.batch import StepBatch, StepOutput
from ivideogpt.engine.config import EngineConfig
from ivideogpt.engine.kv_cache import BlockTable, KVCachePool
from ivideogpt.engine.tokenizer_steps import ContextDecode, ContextEncode, FutureDecode, FutureEncode
from ivideogpt.engine.transformer_steps import (
    TransformerDecode,
    TransformerEmbed,
    TransformerHeads,
    TransformerPrefill,
)
from ivideogpt.int8_linear import int8_transformer
from ivideogpt.model import WorldModel
from ivideogpt.sampling import draw_uniforms, sample_tokens
from ivideogpt.tokens import TokenLayout
from ivideogpt.transformer import AttentionMetadata, WorldModelTransformer

CONFIG_FILE = "ivideogpt_config.json"
MODULES = (
    "context_encode",
    "context_decode",
    "future_encode",
    "future_decode",
    "transformer_embed",
    "transformer_prefill",
    "transformer_decode",
    "transformer_heads",
)


def module_folder(name: str) -> str:
    return f"ivideogpt_{name}"


class ModelRunner:
    def __init__(self, cfg: ModelConfig, modules: dict[str, nn.Module], device: torch.device, dtype: torch.dtype):
        missing = set(MODULES) - set(modules)
        if missing:
            raise ValueError(f"model runner lacks modules: {', '.join(sorted(missing))}")
        self.cfg, self.modules, self.device, self.dtype = cfg, modules, device, dtype
        self.layout = TokenLayout.from_config(cfg)
        self.pool: KVCachePool | None = None
        self.pixel_dtype, self.batched_pixels = dtype, False  # ``set_pixel_decoding``

    def allocate_cache(self, cache_bytes: int, block_size: int) -> KVCachePool:
        """The KV cache the transformer steps read and write: ``cache_bytes`` of ``block_size``-token blocks."""
        self.pool = KVCachePool(self.cfg.transformer, cache_bytes, block_size, self.device, self.dtype)
        return self.pool

    @property
    def kv(self) -> KVCachePool:
        if self.pool is None:
            raise RuntimeError("no KV cache: allocate_cache first")
        return self.pool

    @classmethod
    def from_model(
        cls, model: WorldModel, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> ModelRunner:
        model = model.to(device, dtype).eval()
        tok, trm = model.tokenizer, model.transformer
        modules: dict[str, nn.Module] = {
            "context_encode": ContextEncode(tok),
            "context_decode": ContextDecode(tok),
            "future_encode": FutureEncode(tok, model.cfg.future_encode_dtype),
            "future_decode": FutureDecode(tok),
            "transformer_embed": TransformerEmbed(trm),
            "transformer_prefill": TransformerPrefill(trm),
            "transformer_decode": TransformerDecode(trm),
            "transformer_heads": TransformerHeads(trm),
        }
        return cls(model.cfg, modules, torch.device(device), dtype)

    @classmethod
    def from_repository(
        cls, path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> ModelRunner:
        path = Path(path)
        cfg_file = path / CONFIG_FILE
        if not cfg_file.is_file():
            raise FileNotFoundError(f"{path} is no exported model repository: no {CONFIG_FILE}")
        cfg = ModelConfig.from_json(cfg_file.read_text())
        modules = {}
        for name in MODULES:
            f = path / module_folder(name) / "1" / "model.pt"
            if not f.is_file():
                raise FileNotFoundError(f"{path}: missing {f.relative_to(path)}")
            modules[name] = torch.jit.load(str(f), map_location=device).to(dtype).eval()
        return cls(cfg, modules, torch.device(device), dtype)

    def configured(self, config: EngineConfig) -> ModelRunner:
        """This runner with the options of ``config`` that change how it computes: int8 weights, pixel decoding."""
        runner = self.with_int8_weights() if config.int8_weights() else self
        runner.set_pixel_decoding(config.pixel_torch_dtype(), config.batched_pixels)
        return runner

    def with_int8_weights(self) -> ModelRunner:
        """This runner with its transformer on weight-only int8 products (``ivideogpt.int8_linear``), run
        eagerly; the tokenizer modules stay as they are (eager or TorchScript). The weights are read back
        from the transformer modules, so an exported repository serves int8 as well as a checkpoint."""
        trm = WorldModelTransformer(self.cfg.transformer)
        wanted = trm.state_dict()
        weights = {}
        for name in ("transformer_embed", "transformer_decode", "transformer_heads"):
            weights.update({k: v for k, v in self.modules[name].state_dict().items() if k in wanted})
        missing = sorted(set(wanted) - set(weights))
        if missing:
            raise ValueError(f"transformer modules lack weights: {', '.join(missing)}")
        trm.load_state_dict(weights)
        trm = int8_transformer(trm.to(self.device, self.dtype).eval())
        modules = {
            **self.modules,
            "transformer_embed": TransformerEmbed(trm),
            "transformer_prefill": TransformerPrefill(trm),
            "transformer_decode": TransformerDecode(trm),
            "transformer_heads": TransformerHeads(trm),
        }
        return ModelRunner(self.cfg, modules, self.device, self.dtype)

    def parameter_count(self) -> int:
        """Parameters of the eight modules (int8 weights included), each shared tensor counted once."""
        unique = {p.data_ptr(): p.numel() for m in self.modules.values() for p in m.parameters()}
        for m in self.modules.values():
            unique.update({b.data_ptr(): b.numel() for n, b in m.named_buffers() if n.endswith("weight_int8")})
        return sum(unique.values())

    # tokenizer
    def encode_context(self, frames: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Frames [B, c, 3, H, W] -> context ids [B, c, G] and the encoder features an observed frame needs."""
        ids, *features = self.modules["context_encode"](frames)
        return ids, list(features)

    def decode_context(self, ids: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        frames, *features = self.modules["context_decode"](ids)
        return frames.clamp(0, 1), list(features)

    def encode_future(self, frames: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
        """Observed frames [B, n, 3, H, W] and their contexts' encoder features -> future ids [B, n, F] in [0, Vf)."""
        return self.modules["future_encode"](frames, *features)

    def decode_future(self, ids: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
        return self.modules["future_decode"](ids, *features)

    # transformer
    def embed(self, ids: torch.Tensor, actions: torch.Tensor | None = None, with_action: torch.Tensor | None = None):
        n = ids.shape[0]
        width = max(self.cfg.transformer.action_dim, 1)
        if actions is None:
            actions = torch.zeros(n, width, device=self.device, dtype=self.dtype)
            with_action = torch.zeros(n, dtype=torch.bool, device=self.device)
        elif with_action is None:
            with_action = torch.ones(n, dtype=torch.bool, device=self.device)
        return self.modules["transformer_embed"](ids, actions.to(self.dtype), with_action)

    def prefill(self, x: torch.Tensor, k_slot: torch.Tensor, v_slot: torch.Tensor, start: int) -> torch.Tensor:
        start_t = torch.tensor([start], device=self.device)
        return self.modules["transformer_prefill"](x, k_slot, v_slot, start_t)

    def prefill_slot(self, x: torch.Tensor, table: BlockTable, start: int) -> torch.Tensor:
        """Append embeddings x [T, D] to the slot of ``table`` after its first ``start`` tokens."""
        return self.prefill(x[None], *self.kv.slot_views(table), start)

    def decode(self, x: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        m, cache = meta, self.kv.cache
        args = (m.positions, cache.k, cache.v, m.write, m.rows, m.slots, m.window, m.mask, m.forks)
        return self.modules["transformer_decode"](x, *args)

    def heads(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.modules["transformer_heads"](hidden)

    def set_pixel_decoding(self, dtype: torch.dtype, batched: bool) -> None:
        """How predicted frames become pixels (``EngineConfig.pixel_dtype``, ``batched_pixels``). A ``dtype``
        other than the runner's: the future decoder runs on a copy of its weights in that dtype (the anchor's
        features cast to it). ``batched``: the K frames an imagine's forks finish together decode in one call
        (each frame then depends on its batch to the last bits)."""
        if dtype != self.dtype:
            self.modules["future_decode"] = copy.deepcopy(self.modules["future_decode"]).to(dtype)
        self.pixel_dtype, self.batched_pixels = dtype, batched

    # the engine's work
    @torch.inference_mode()  # also on the pixel thread, whose own grad mode would be on
    def decode_frame(self, features: list[torch.Tensor], raw_tokens: torch.Tensor) -> torch.Tensor:
        """One frame's pixels [3, H, W] (float, CPU) from its sampled ids and its anchor's decoder features.

        Batch 1: pixel decoding is compute bound, and per-frame decoding keeps a frame's bits
        the same whatever else is decoded.
        """
        return self.decode_frames(features, raw_tokens[None], batched=False)[0]

    @torch.inference_mode()
    def decode_frames(
        self, features: list[torch.Tensor], raw_tokens: torch.Tensor, batched: bool | None = None
    ) -> torch.Tensor:
        """Frames [K, 3, H, W] (float, CPU) of K rows' sampled ids [K, F] on one anchor: one frame per call,
        or all K in one where ``batched`` (default: ``set_pixel_decoding``'s)."""
        lay = self.layout
        future = (raw_tokens.to(self.device) - lay.future_offset).clamp(0, lay.future_codebook_size - 1)
        if self.pixel_dtype != self.dtype:
            features = [f.to(self.pixel_dtype) for f in features]
        if self.batched_pixels if batched is None else batched:
            rows = [f.expand(future.shape[0], *f.shape[1:]) for f in features]
            return self.decode_future(future[:, None], rows)[:, 0].float().cpu()
        return torch.stack([self.decode_future(ids[None, None], features)[0, 0].float().cpu() for ids in future])

    def execute(self, batch: StepBatch, lanes: Sequence[Executor] = ()) -> StepOutput:
        """One token step: every row's token in, every sampling row's next token and every row's reward out.

        With ``lanes`` the rows split into ``len(lanes) + 1`` contiguous parts computed side by side, the
        first on this thread, each other on its lane (``EngineConfig.token_lanes``). Every kernel works
        row by row and every row samples from its own uniform, so a row's result does not depend on the
        split beyond the products' last bits, as it does not depend on its batch neighbours.
        """
        uniforms = [None if g.params.greedy else draw_uniforms(g.generators) for g in batch.sampling]
        n = batch.n_rows
        lanes = lanes if n > len(lanes) else ()
        cuts = [n * i // (len(lanes) + 1) for i in range(len(lanes) + 2)]
        futures = [
            lane.submit(self._execute_rows, batch, uniforms, cuts[i + 1], cuts[i + 2]) for i, lane in enumerate(lanes)
        ]
        try:
            parts = [self._execute_rows(batch, uniforms, cuts[0], cuts[1])]
        finally:  # the lanes write the KV cache: none may still run when this step ends
            wait(futures)
        parts += [f.result() for f in futures]
        tokens = torch.cat([p[0] for p in parts])
        rewards = torch.cat([p[1] for p in parts]) if self.cfg.transformer.reward_head else None
        return StepOutput(tokens, rewards)

    @torch.inference_mode()  # also on a lane's thread, whose own grad mode would be on
    def _execute_rows(
        self, batch: StepBatch, uniforms: list[torch.Tensor | None], lo: int, hi: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows [lo, hi) of a token step -> their sampled tokens [hi - lo] (0 where a row does not sample), rewards."""
        device = self.device
        sessions, forks = batch.rows_between(lo, hi)
        rows = slice(lo, hi)
        x = self.embed(batch.ids[rows].to(device), batch.actions[rows].to(device), batch.with_action[rows].to(device))
        hidden = self.decode(x, self.kv.metadata(hi - lo, sessions, forks))
        logits, rewards = self.heads(hidden)
        logits = logits.cpu()
        lay = self.layout
        allowed = (lay.future_offset, lay.future_offset + lay.future_codebook_size)
        tokens = torch.zeros(hi - lo, dtype=torch.long)
        for group, drawn in zip(batch.sampling, uniforms, strict=True):
            picked = [i for i, row in enumerate(group.rows) if lo <= row < hi]
            if not picked:
                continue
            local = [group.rows[i] - lo for i in picked]
            u = drawn if drawn is None or len(picked) == len(group.rows) else drawn[picked]
            if local == list(range(hi - lo)):  # one group holding every row in order (a lone session, say)
                tokens = sample_tokens(logits, group.params, u, allowed)
            else:
                index = torch.tensor(local)
                tokens[index] = sample_tokens(logits[index], group.params, u, allowed)
        return tokens, rewards.cpu()
