"""Every gateway setting, read from the environment (``IVIDEOGPT_*``) so one image runs anywhere."""

from __future__ import annotations

import hashlib
import uuid
from functools import cached_property
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IVIDEOGPT_", extra="ignore")

    # what to serve
    model_repository: str = Field(
        "model_repository", description="exported model repository (TorchScript + config) the local engine serves"
    )
    model_dir: str | None = Field(
        None, description="serve this checkpoint (config.json + model.safetensors) eagerly instead of model_repository"
    )
    backend: Literal["local", "triton"] = Field(
        "local", description="local: engine in this process; triton: sessions on a Triton server"
    )
    triton_url: str | None = Field(None, description="Triton gRPC address for the triton backend")
    device: str = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    weights: Literal["float32", "int8"] = Field(
        "float32",
        description="int8: the transformer's products on weight-only int8 weights with per-channel scales (CPU; "
        "faster decode steps of large models, frames no longer bit-equal to float32's; docs/SETTINGS.md)",
    )
    pixel_dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="bfloat16: predicted frames' pixels decoded on bf16 weights (docs/SETTINGS.md)"
    )
    batched_pixels: bool = Field(
        False, description="decode an imagine's K frames of one step in one call (frames equal within 1e-5)"
    )
    token_lanes: int | None = Field(
        None,
        ge=1,
        description="a token step of 16 rows or more (a plan's or an imagine's forks) runs in this many parts side "
        "by side while no frame waits for its pixels, each on its own thread (default: by model size, "
        "docs/SETTINGS.md)",
    )
    cache_bytes: int = Field(1 << 30, description="KV cache budget of the local engine")
    torch_threads: int | None = Field(
        None,
        ge=1,
        description="intra-op threads of each of the local engine's two threads (default: by model size, "
        "docs/SETTINGS.md); frames depend on it to the last bit, so replicas sharing sessions must agree",
    )
    worker_threads: int = Field(
        64, ge=1, description="requests in the engine at once (each waits in a thread; the engine batches them)"
    )
    engine_idle_s: float = Field(600.0, description="engine evicts a session idle this long (history stays)")
    engine_timeout_s: float = Field(
        120.0, gt=0, description="a create, step, observe, imagine or plan running longer than this in the engine: 504"
    )

    # admission control (in front of the engine, counted in predicted frames)
    max_engine_frames: int = Field(
        128, ge=1, description="frames in the engine at once (steps, imagines, context frames of creates)"
    )
    max_queued_frames: int = Field(512, ge=0, description="frames waiting for the engine; beyond: 429 overloaded")
    queue_timeout_s: float = Field(10.0, gt=0, description="a request waits this long for the engine, then 429")
    send_timeout_s: float = Field(
        10.0, gt=0, description="a streamed frame the client does not take in this time ends the streaming"
    )
    drain_s: float = Field(10.0, ge=0, description="SIGTERM: in-flight requests get this long to finish")

    # where to listen (the CLI flags override these)
    host: str = "127.0.0.1"
    port: int = 8000
    grpc_port: int | None = None
    public_url: str | None = Field(None, description="this replica's address as other replicas reach it")
    replica_id: str = Field(default_factory=lambda: uuid.uuid4().hex[:12])

    # sessions that survive
    redis_url: str | None = Field(
        None,
        validation_alias=AliasChoices("IVIDEOGPT_REDIS_URL", "REDIS_URL"),
        description="unset: in-memory registry (one replica, sessions die with it)",
    )
    redis_prefix: str = "ivideogpt:"
    redis_max_connections: int = Field(128, ge=1, description="Redis connection pool size of this replica")
    redis_pool_timeout_s: float = Field(
        5.0, gt=0, description="wait this long for a free Redis connection, then 429 overloaded"
    )
    redis_timeout_s: float = Field(2.0, gt=0, description="connect and reply timeout of every Redis command")
    session_ttl_s: float = Field(3600.0, description="a session expires this long after its last request")
    lease_ttl_s: float = Field(10.0, description="a replica's hold on a session while it serves a request")
    lease_wait_s: float = Field(5.0, description="how long a request waits for another replica's lease")
    forward: bool = Field(True, description="send REST steps/imagines to the live replica that holds the session")
    heartbeat_s: float = Field(2.0, description="replica heartbeat period (alive for 3 periods)")

    # auth and limits
    api_keys: str = Field("", description="comma-separated API keys; empty: open service")
    max_body_bytes: int = 8 << 20
    max_horizon: int = Field(32, description="actions per step request")
    max_imagine_sequences: int = Field(64, description="K of an imagine request")
    max_imagine_frames: int = Field(512, description="K x horizon of an imagine request (and of a plan's iteration)")
    max_plan_frames: int = Field(4096, ge=1, description="population x horizon x iterations of a plan request")
    max_sessions_per_key: int = 64
    max_gif_frames: int = Field(1024, ge=1, description="frames of a POST /v1/render/gif request")

    @cached_property
    def keys(self) -> dict[str, str]:
        """key id (a hash: raw keys are never stored) -> key."""
        raw = [k.strip() for k in self.api_keys.split(",") if k.strip()]
        return {key_id(k): k for k in raw}

    def address(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"


def key_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16] if key else "anonymous"
