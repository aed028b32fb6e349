"""What a newcomer meets first, on a real gateway: the README's curl example run as written (only
the port changes), the start log, a body sent without a JSON content type; the settings' docs."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from gateway_helpers import REPO, Gateway
from PIL import Image

from conftest import Gateways
from ivideogpt import checkpoint


@pytest.fixture(scope="module")
def gw(gateways: Gateways, model_path: Path) -> Iterator[Gateway]:
    env = {"IVIDEOGPT_MODEL_DIR": str(model_path)}
    with gateways.private(env, grpc=True, log_level="info") as g:
        yield g


def test_readme_curl_example(gw: Gateway, tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    blocks = [b for b in re.findall(r"```bash\n(.*?)```", readme, re.S) if "curl" in b]
    assert blocks, "README has no curl example"
    script = blocks[0].replace("localhost:8000", f"127.0.0.1:{gw.port}")
    script = script.replace("docs/examples/", f"{REPO}/docs/examples/")
    r = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "step_index 2 rewards [" in r.stdout
    assert '"step_index":2' in r.stdout  # the GET after the step
    assert not list(tmp_path.iterdir()), "the example left files in the working directory"
    out = Path(re.search(r"predicted frames: (\S+)/frame0\.png", r.stdout).group(1))
    try:
        for i in range(2):
            assert np.asarray(Image.open(out / f"frame{i}.png")).shape == (64, 64, 3)
    finally:
        shutil.rmtree(out)


def test_start_log_names_the_model_and_the_addresses(gw: Gateway, model_path: Path) -> None:
    log = gw.log.read_text()
    millions = sum(p.numel() for p in checkpoint.load(model_path).parameters()) / 1e6
    started = (
        rf"model tiny \({millions:.1f}M parameters; checkpoint .*, eager\) in process on cpu, float32, \d+ intra-op"
    )
    assert re.search(started, log), log[:3000]
    assert f"REST and WebSocket on http://127.0.0.1:{gw.port}" in log
    assert f"gRPC listening on 127.0.0.1:{gw.grpc_port}" in log
    assert "deprecat" not in log.lower(), log  # uvicorn's legacy websockets implementation warns at every start


@pytest.mark.parametrize("content_type", [None, "application/x-www-form-urlencoded", "text/plain"])
def test_a_body_without_json_content_type_says_so(gw: Gateway, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    r = httpx.post(f"{gw.url}/v1/sessions", content=b'{"context_frames": []}', headers=headers)
    assert r.status_code == 415, r.text
    err = r.json()["error"]
    assert err["code"] == "unsupported_media_type" and err["field"] == "content-type"
    assert "Content-Type: application/json" in err["message"] and (content_type or "no Content-Type") in err["message"]
    # with the header, the same body reaches validation (and its error names the field)
    r = httpx.post(
        f"{gw.url}/v1/sessions", content=b'{"context_frames": []}', headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 422 and r.json()["error"]["field"].startswith("context_frames")


def _documented(value: object) -> str:
    """A default as docs/SETTINGS.md writes it."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{int(value)}`"
    if isinstance(value, float):
        return f"`{value:g}`"
    return f"`{value}`" if value != "" else "empty"


def test_settings_doc_lists_every_setting_with_its_default() -> None:
    from server.settings import Settings

    doc = (REPO / "docs" / "SETTINGS.md").read_text()
    for name, field in Settings.model_fields.items():
        var = f"IVIDEOGPT_{name.upper()}"
        rows = [line for line in doc.splitlines() if line.startswith("|") and f"`{var}`" in line]
        assert rows, f"docs/SETTINGS.md lacks {var}"
        if field.default_factory is None:
            default = rows[0].split("|")[2]
            assert _documented(field.default) in default, f"{var}: default {field.default!r}, documented {default!r}"
    readme = (REPO / "README.md").read_text()
    assert "docs/SETTINGS.md" in readme
