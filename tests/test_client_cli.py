"""The ``ivideogpt`` console script, run as a subprocess against a gateway it started itself (``ivideogpt serve``)."""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from gateway_helpers import REPO, free_port, model_dir
from PIL import Image

CLI = str(Path(sys.executable).parent / "ivideogpt")


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=300, cwd=cwd)


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IVIDEOGPT_") and k != "REDIS_URL"}
    env["IVIDEOGPT_MODEL_DIR"] = str(model_dir(tmp_path_factory.mktemp("model")))
    log = tmp_path_factory.mktemp("log") / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [CLI, "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "ivideogpt serve: not ready in time"
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def test_models(url: str) -> None:
    r = run("models", "--url", url)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["models"][0]["action_dim"] == 4


def test_rollout_writes_a_gif_with_context_and_predicted_frames(url: str, tmp_path: Path) -> None:
    r = run("rollout", "--url", url, "--steps", "8", "--seed", "1", "--out", "x.gif", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "2 context + 8 predicted frames" in r.stdout
    gif = Image.open(tmp_path / "x.gif")
    assert gif.format == "GIF" and gif.n_frames == 10 and gif.size == (256, 256)

    # own context files and actions (.csv), msgpack transport: same seed and actions, same GIF
    actions = np.random.default_rng(1).uniform(-1, 1, (8, 4)).astype(np.float32)
    np.savetxt(tmp_path / "a.csv", actions, delimiter=",", fmt="%.9g")
    ctx = [tmp_path / "c0.png", tmp_path / "c1.png"]
    with httpx.Client() as http:
        frames = http.get(f"{url}/v1/sample_context", headers={"Accept": "application/json"}).json()["frames"]
    for path, b64 in zip(ctx, frames, strict=True):
        path.write_bytes(base64.b64decode(b64))
    r = run(
        "rollout", "--url", url, "--context", *map(str, ctx), "--actions", "a.csv", "--seed", "1",
        "--transport", "msgpack", "--chunk", "3", "--out", "y.gif", "-q", cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "y.gif").read_bytes() == (tmp_path / "x.gif").read_bytes()


def test_plan_prints_the_plan_as_json(url: str, tmp_path: Path) -> None:
    """``ivideogpt plan --context a.png b.png --horizon 5``: the issue's command, on the README's two frames."""
    ctx = [REPO / "docs" / "examples" / f"context{i}.png" for i in (0, 1)]
    args = ["plan", "--url", url, "--context", *map(str, ctx), "--horizon", "5", "--population", "8"]
    r = run(*args, "--iterations", "2", "--seed", "3")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert np.asarray(plan["actions"]).shape == (5, 4) and len(plan["predicted_rewards"]) == 5
    assert plan["imagined_frames"] == 2 * 8 * 5 + 5 and len(plan["iterations"]) == 2
    assert np.all(np.abs(plan["actions"]) <= 1)
    again = run(*args, "--iterations", "2", "--seed", "3", "--transport", "msgpack")
    assert json.loads(again.stdout) == plan  # seeded: the same plan, whichever transport
    r = run(*args, "--iterations", "2", "--elites", "9")
    assert r.returncode == 1 and "InvalidRequest: elites:" in r.stderr, r.stderr


def test_bench_prints_latency_and_frames_per_second(url: str) -> None:
    r = run("bench", "--url", url, "--sessions", "2", "--steps", "2", "--imagine", "2", "--requests", "6", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["requests"] == 6 and out["errors"] == {} and set(out["ops"]) == {"step", "imagine"}
    steps, imagines = out["ops"]["step"]["requests"], out["ops"]["imagine"]["requests"]
    assert steps + imagines == 6 and out["frames"] == steps * 2 + imagines * 2 * 2 and out["frames_per_s"] > 0
    assert 0 < out["ops"]["step"]["p50_ms"] <= out["ops"]["step"]["p99_ms"]
    r = run("bench", "--url", url, "--sessions", "1", "--steps", "1", "--requests", "2", "-q")
    assert r.returncode == 0 and "p99" in r.stdout and "frames/s" in r.stdout, r.stderr


def test_errors_are_one_line(url: str, tmp_path: Path) -> None:
    r = run("rollout", "--url", url, "--steps", "2", "--out", "x.webm", cwd=tmp_path)
    assert r.returncode == 1 and "write a .gif or an .mp4" in r.stderr
    np.save(tmp_path / "bad.npy", np.zeros((2, 3), np.float32))
    r = run("rollout", "--url", url, "--actions", str(tmp_path / "bad.npy"), "--out", "x.gif", cwd=tmp_path)
    assert r.returncode == 1 and "InvalidRequest: actions:" in r.stderr, r.stderr


def test_every_option_says_what_it_does() -> None:
    from ivideogpt_client.cli import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, parser in commands.items():
        if name == "serve":  # its flags are the gateway's own (python -m server --help)
            continue
        bare = [a.option_strings for a in parser._actions if a.option_strings and not a.help]
        assert not bare, f"ivideogpt {name}: {bare} have no help"


def test_no_gateway_gives_a_hint(capsys: pytest.CaptureFixture) -> None:
    from ivideogpt_client.cli import main

    assert main(["models", "--url", f"http://127.0.0.1:{free_port()}"]) == 1
    err = capsys.readouterr().err
    assert "ConnectError" in err and "hint:" in err and "`ivideogpt serve`" in err


def test_mp4_without_the_extra_fails_before_the_rollout(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    from ivideogpt_client.cli import main

    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # as if the [mp4] extra were not installed
    # no gateway at this address: an error about the extra, not the connection, shows the check came first
    assert main(["rollout", "--url", f"http://127.0.0.1:{free_port()}", "--out", str(tmp_path / "x.mp4")]) == 1
    err = capsys.readouterr().err
    assert "imageio-ffmpeg" in err and "ConnectError" not in err
    assert not (tmp_path / "x.mp4").exists()
