"""Run a real Triton server on a CPU machine: the ``tritonserver`` 2.51 bundled in nvidia-pytriton.

    python -m ivideogpt_triton.server --model-repository model_repository [--grpc-port 8001]

That build carries only the Python backend, which is what serves ``ivideogpt_rollout`` (the
TorchScript folders need the full Triton image on a GPU host, see docs/TRITON.md). Two traps
met on these machines are handled here: the backend stub must load *this* interpreter's
libpython (LD_LIBRARY_PATH), and it finds our packages only with this venv's bin first on PATH.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROLLOUT_MODEL = "ivideogpt_rollout"


def bundled_triton() -> Path:
    """The pytriton package folder that holds ``tritonserver`` (the ``triton`` extra installs it)."""
    try:
        import pytriton
    except ImportError as exc:
        raise RuntimeError("no tritonserver here: pip install -e '.[triton]' (nvidia-pytriton==0.7.0)") from exc
    return Path(pytriton.__file__).parent / "tritonserver"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _backend_dir(root: Path, dest: Path) -> Path:
    """A backend folder with the stub of this Python version beside the Python backend library."""
    python = dest / "python"
    python.mkdir(parents=True, exist_ok=True)
    for f in ("libtriton_python.so", "triton_python_backend_utils.py"):
        shutil.copy2(root / "backends" / "python" / f, python / f)
    stub = root / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}"
    shutil.copy2(stub / "triton_python_backend_stub", python / "triton_python_backend_stub")
    return dest


class TritonServer:
    """A tritonserver process on loopback ports; ``stop`` sends SIGTERM (Triton's clean shutdown)."""

    def __init__(
        self,
        model_repository: str | Path,
        models: tuple[str, ...] = (ROLLOUT_MODEL,),
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        log_file: str | Path | None = None,
    ):
        self.model_repository = Path(model_repository).resolve()
        self.models = models
        self.http_port = http_port or free_port()
        self.grpc_port = grpc_port or free_port()
        self.metrics_port = metrics_port or free_port()
        self.log_file = Path(log_file) if log_file else None
        self.process: subprocess.Popen | None = None
        self._workdir = tempfile.TemporaryDirectory(prefix="tritonserver-")

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def command(self) -> list[str]:
        root = bundled_triton()
        backends = _backend_dir(root, Path(self._workdir.name) / "backends")
        cmd = [
            str(root / "bin" / "tritonserver"),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={backends}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            "--http-address=127.0.0.1",
            "--grpc-address=127.0.0.1",
            "--model-control-mode=explicit",
            "--exit-on-error=true",
        ]
        return cmd + [f"--load-model={m}" for m in self.models]

    def environment(self) -> dict[str, str]:
        import pytriton

        libs = Path(pytriton.__file__).parents[1] / "nvidia_pytriton.libs"
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = ":".join(
            p for p in (sysconfig.get_config_var("LIBDIR"), str(libs), env.get("LD_LIBRARY_PATH")) if p
        )
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
        return env

    def start(self, timeout_s: float = 120.0) -> TritonServer:
        out = open(self.log_file, "wb") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(self.command(), env=self.environment(), stdout=out, stderr=subprocess.STDOUT)
        self.wait_ready(timeout_s)
        return self

    def wait_ready(self, timeout_s: float) -> None:
        import urllib.error
        import urllib.request

        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        url = f"http://127.0.0.1:{self.http_port}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tritonserver exited with {self.process.returncode}{self._log_hint()}")
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"tritonserver not ready after {timeout_s:.0f} s{self._log_hint()}")

    def _log_hint(self) -> str:
        if self.log_file and self.log_file.is_file():
            return ":\n" + self.log_file.read_text(errors="replace")[-3000:]
        return ""

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._workdir.cleanup()

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-repository", default="model_repository")
    parser.add_argument("--model", action="append", help=f"model to load (repeatable; default {ROLLOUT_MODEL})")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    args = parser.parse_args(argv)
    server = TritonServer(
        args.model_repository, tuple(args.model or (ROLLOUT_MODEL,)), args.http_port, args.grpc_port, args.metrics_port
    )
    server.process = subprocess.Popen(server.command(), env=server.environment())
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    try:
        server.process.wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
