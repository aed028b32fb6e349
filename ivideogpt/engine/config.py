"""Engine settings (the model's own shapes come from its checkpoint config, not from here)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

SMALL_MODEL_PARAMETERS = 50_000_000  # tiny: 7.9M; the published 64x64 models: 250M and more


@dataclass
class EngineConfig:
    device: str = "cpu"
    dtype: str = "float32"  # or "bfloat16"
    # "int8": the transformer's products on weight-only int8 weights with per-channel scales
    # (``ivideogpt.int8_linear``; CPU; frames differ from fp32's, within the bounds its tests state)
    weights: str = "float32"
    # predicted frames' pixels: "bfloat16" runs the future decoder on bf16 weights (faster on CPUs with
    # bf16 support; frames within the PSNR its tests state); batched_pixels decodes an imagine's K
    # frames of one step in one call (frames equal the one-by-one path's within 1e-5)
    pixel_dtype: str = "float32"
    batched_pixels: bool = False
    # KV cache budget; each session reserves one contiguous slot of max_positions tokens
    cache_bytes: int = 1 << 30
    block_size: int = 16  # tokens per cache block
    session_ttl_s: float = 600.0  # idle sessions are evicted after this
    max_horizon: int = 64  # actions per step/imagine request
    max_imagine: int = 256  # sequences per imagine request
    max_plan_frames: int = 16384  # population x horizon x iterations of a plan
    max_batch_rows: int = 512  # rows in one token step
    # a token step of at least ``lane_rows`` rows, while no frame waits for its pixels, splits its rows into
    # ``token_lanes`` parts run side by side, each on its own thread (the extra ones with ``threads`` intra-op
    # threads too): a K=32 plan's rows then use the core the idle pixel thread leaves; every row gets the same
    # token, its floats equal up to the last bits. 0 = by model size (``lanes``)
    token_lanes: int = 0
    lane_rows: int = 16
    # intra-op threads of each of the engine's two threads (token steps, pixel decoding);
    # 0 = by model size (``intra_op_threads``)
    threads: int = 0

    def torch_dtype(self) -> torch.dtype:
        dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        if self.dtype not in dtypes:
            raise ValueError(f"dtype must be one of {', '.join(dtypes)}, got {self.dtype!r}")
        return dtypes[self.dtype]

    def pixel_torch_dtype(self) -> torch.dtype:
        """The future decoder's dtype: ``pixel_dtype``, or the engine's own where that is not float32."""
        if self.pixel_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"pixel_dtype must be float32 or bfloat16, got {self.pixel_dtype!r}")
        return torch.bfloat16 if self.pixel_dtype == "bfloat16" else self.torch_dtype()

    def int8_weights(self) -> bool:
        """Whether the transformer runs on int8 weights (``weights``, checked here: the engine asks first)."""
        if self.weights not in ("float32", "int8"):
            raise ValueError(f"weights must be float32 or int8, got {self.weights!r}")
        return self.weights == "int8"

    def lanes(self, parameters: int) -> int:
        """``token_lanes``, checked (the engine asks first), or for 0: two for a small model on two cores or more,
        whose token and pixel threads take half the cores each (``intra_op_threads``), so a rewards-only step can
        use the pixel thread's idle half; one for a large model, whose threads both take all the cores."""
        if self.token_lanes < 0 or self.lane_rows < 2:
            raise ValueError(f"token_lanes must be >= 0 and lane_rows >= 2, got {self.token_lanes}, {self.lane_rows}")
        if self.token_lanes:
            return self.token_lanes
        return 2 if parameters < SMALL_MODEL_PARAMETERS and torch.get_num_threads() >= 2 else 1

    def intra_op_threads(self, parameters: int) -> int:
        """``threads``, or for 0: half of torch's threads (one per core) for a small model, all for a large one.

        A small model's token steps are dispatch bound and gain nothing from a second intra-op
        thread (``tiny``: a frame took 1.6x longer with two than with one on 2 cores), so the
        token thread and the pixel thread take half the cores each and run side by side. A
        large model's batched steps and convolutions scale with threads (``oxe-64`` on 2 cores:
        32 sessions' steps 1.3x faster with two, even with both threads busy), so both threads
        get all the cores.
        """
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0, got {self.threads}")
        if self.threads:
            return self.threads
        cores = torch.get_num_threads()
        return max(1, cores // 2) if parameters < SMALL_MODEL_PARAMETERS else cores


def use_intra_op_threads(n: int) -> None:
    """Give the calling thread ``n`` intra-op threads, for good.

    torch keeps the count per thread, but a thread initialises it lazily from the process-wide
    value at its first parallel op; read it first so that later initialisation cannot undo ours.
    """
    torch.get_num_threads()
    torch.set_num_threads(n)
