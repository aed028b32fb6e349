"""Schemathesis against our OpenAPI schema (examples, coverage, fuzzing, stateful via the links from
POST /v1/sessions): no input may produce a 5xx."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from gateway_helpers import Gateway

from conftest import Gateways


@pytest.fixture(scope="module")
def gw(gateways: Gateways, model_path: Path) -> Iterator[Gateway]:
    env = {
        "IVIDEOGPT_MODEL_DIR": str(model_path),
        "IVIDEOGPT_API_KEYS": "fuzz-key",
        "IVIDEOGPT_MAX_HORIZON": "2",  # keep each generated step cheap
        "IVIDEOGPT_MAX_IMAGINE_SEQUENCES": "2",
        "IVIDEOGPT_MAX_IMAGINE_FRAMES": "4",
        "IVIDEOGPT_MAX_PLAN_FRAMES": "8",  # and each plan
    }
    with gateways.private(env) as g:
        yield g


def test_schemathesis_finds_no_server_error(gw: Gateway, tmp_path: Path) -> None:
    cli = Path(sys.executable).parent / "schemathesis"
    cmd = [str(cli), "run", f"{gw.url}/openapi.json", "--checks", "not_a_server_error"]
    cmd += ["--max-examples", "25", "--seed", "7", "--generation-database", "none", "--no-color"]
    cmd += ["--header", "X-API-Key: fuzz-key", "--request-timeout", "60"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    assert "passed" in out and "Tested: 14" in out, out[-3000:]
