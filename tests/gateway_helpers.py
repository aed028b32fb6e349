"""Shared by tests/test_server_*.py: a real gateway process on a free loopback port, test data, clients."""

from __future__ import annotations

import base64
import io
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "models" / "default"
REDIS_URL = "redis://127.0.0.1:6379/0"


def default_slot_bytes() -> int:
    """One session's KV slot (float32) of the shipped model: cache sizes in tests count sessions."""
    from ivideogpt.checkpoint import load_config
    from ivideogpt.engine.config import EngineConfig
    from ivideogpt.engine.kv_cache import KVCachePool

    return KVCachePool.slot_bytes(load_config(DEFAULT_MODEL).transformer, EngineConfig().block_size)


SLOT_BYTES = default_slot_bytes()


def model_dir(tmp: Path) -> Path:
    """The shipped model when it is there, else a random tiny checkpoint (same shapes)."""
    if (DEFAULT_MODEL / "config.json").is_file() and (DEFAULT_MODEL / "model.safetensors").is_file():
        return DEFAULT_MODEL
    import torch

    from ivideogpt.checkpoint import save
    from ivideogpt.config import preset
    from ivideogpt.model import WorldModel

    torch.manual_seed(0)
    return save(WorldModel(preset("tiny")), tmp / "tiny")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gateway:
    """``python -m server`` in a subprocess; ``url`` once /readyz answers 200."""

    def __init__(
        self,
        env: dict[str, str],
        grpc: bool = False,
        log: Path | None = None,
        ready: str = "/readyz",
        log_level: str = "warning",
    ):
        self.port = free_port()
        self.grpc_port = free_port() if grpc else None
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [
            sys.executable,
            "-m",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            log_level,
        ]
        if self.grpc_port:
            cmd += ["--grpc-port", str(self.grpc_port)]
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("IVIDEOGPT_") and k != "REDIS_URL"}
        full_env.update(env)
        full_env["IVIDEOGPT_PUBLIC_URL"] = self.url
        self.log = log
        out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 (lives as long as the process)
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=out, stderr=subprocess.STDOUT)
        self._wait_ready(ready)

    def _wait_ready(self, path: str, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log.read_text()[-3000:] if self.log else ""
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{tail}")
            try:
                if httpx.get(f"{self.url}{path}", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("gateway not ready in time")

    def kill(self) -> None:
        """SIGKILL: no shutdown hook runs, as when a machine dies."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


class RedisServer:
    """A redis-server of the test's own on a free loopback port, appending every write to disk (AOF) in
    ``folder``: a kill and a restart keep what was acknowledged, as a production Redis with AOF does."""

    def __init__(self, folder: Path):
        self.folder, self.port = folder, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        cmd = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--appendonly", "yes"]
        cmd += ["--dir", str(self.folder), "--save", ""]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def png_b64(frame: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(frame, "RGB").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def decode_png_b64(text: str) -> np.ndarray:
    img = Image.open(io.BytesIO(base64.b64decode(text)))
    assert img.format == "PNG"
    return np.asarray(img.convert("RGB"))


def context(seed: int, n: int = 2, size: int = 64) -> np.ndarray:
    """Smooth random frames (uint8 [n, H, W, 3]): a gradient plus a seed-dependent square."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    frames = []
    for i in range(n):
        f = np.stack([x * 4, y * 4, (x + y) * 2], axis=-1).astype(np.float32)
        cx, cy = rng.integers(8, size - 8, 2)
        f[cy - 6 : cy + 6, cx - 6 : cx + 6] = rng.integers(0, 255, 3) + i
        frames.append(np.clip(f, 0, 255).astype(np.uint8))
    return np.stack(frames)


def actions(seed: int, h: int, dim: int = 4) -> list[list[float]]:
    return np.random.default_rng(seed).uniform(-1, 1, (h, dim)).round(4).tolist()


def redis_prefix() -> str:
    return f"ivideogpt-test:{uuid.uuid4().hex[:12]}:"


def clear_redis(prefix: str) -> None:
    import redis

    r = redis.Redis.from_url(REDIS_URL)
    keys = list(r.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        r.delete(*keys)
    r.close()
