"""The Grafana dashboards against the real thing: promtool parses every PromQL expression, every
gateway metric they name is on a live gateway's /metrics, and a real Prometheus scraping that
gateway answers a dashboard query with data.

Needs ``promtool`` and ``prometheus`` (Debian's ``prometheus`` package; .ci/run installs it).
Triton is not started here: its ``nv_*`` names are checked against ``TRITON_METRICS`` below.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml
from gateway_helpers import REPO, Gateway, actions, context, free_port, png_b64
from prometheus_client.parser import text_string_to_metric_families

from conftest import Gateways

DASHBOARDS = sorted((REPO / "docker" / "grafana" / "dashboards").glob("*.json"))

# What tritonserver 2.51 (NGC 24.10, the image of docker/triton.Dockerfile) exposes on its
# metrics port: the first block read from a running 2.51 server (nvidia-pytriton's bundled
# build, a Python-backend model loaded, one request served), the second the GPU metrics that
# only GPU builds report (Triton's docs/user_guide/metrics.md, "GPU Metrics").
TRITON_METRICS = frozenset(
    {
        "nv_inference_request_success",
        "nv_inference_request_failure",
        "nv_inference_count",
        "nv_inference_exec_count",
        "nv_inference_request_duration_us",
        "nv_inference_queue_duration_us",
        "nv_inference_compute_input_duration_us",
        "nv_inference_compute_infer_duration_us",
        "nv_inference_compute_output_duration_us",
        "nv_inference_pending_request_count",
        "nv_cpu_utilization",
        "nv_cpu_memory_total_bytes",
        "nv_cpu_memory_used_bytes",
        "nv_pinned_memory_pool_total_bytes",
        "nv_pinned_memory_pool_used_bytes",
    }
    | {
        "nv_gpu_utilization",
        "nv_gpu_memory_total_bytes",
        "nv_gpu_memory_used_bytes",
        "nv_gpu_power_usage",
        "nv_gpu_power_limit",
        "nv_energy_consumption",
    }
)

# Grafana's interval variables, replaced by a duration so that Prometheus can read the query.
GRAFANA_VARIABLES = {"$__rate_interval": "30s", "$__interval": "30s", "$__range": "5m"}

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}
_KEYWORDS |= {"inf", "nan"}


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} not found: apt-get install -y prometheus (.ci/run installs it)"
    return path


def targets() -> list[tuple[str, str]]:
    """(panel title, expression with Grafana's variables replaced) of every dashboard query."""
    out = []
    for path in DASHBOARDS:
        stack = list(json.loads(path.read_text())["panels"])
        while stack:
            panel = stack.pop()
            stack.extend(panel.get("panels", []))  # panels inside collapsed rows
            for target in panel.get("targets", []):
                expr = target["expr"]
                for var, value in GRAFANA_VARIABLES.items():
                    expr = expr.replace(var, value)
                out.append((f"{path.name}: {panel['title']}", expr))
    return out


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords or labels."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    s = re.sub(r"\{[^}]*\}", "", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", "", s)  # range durations
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", s)  # grouping labels
    s = re.sub(r"\b\d+(?:\.\d+)?(?:[eE][-+]?\d+)?\b", "0", s)  # numbers (1e-9 is no identifier)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", s):
        if s[m.end() :].lstrip().startswith("(") or m.group().lower() in _KEYWORDS:
            continue  # a function call or an operator
        names.add(m.group())
    return names


@pytest.fixture(scope="module")
def gw(gateways: Gateways, model_path: Path) -> Gateway:
    return gateways.shared({"IVIDEOGPT_MODEL_DIR": str(model_path)}, grpc=True)


@pytest.fixture(scope="module")
def session(gw: Gateway):
    """One open session that has stepped, observed, imagined and planned, so every labelled series exists."""
    with httpx.Client(base_url=gw.url, timeout=60.0) as c:
        frames = [png_b64(f) for f in context(0)]
        r = c.post("/v1/sessions", json={"context_frames": frames, "sampling": {"seed": 0}})
        assert r.status_code == 201, r.text
        sid = r.json()["session_id"]
        assert c.post(f"/v1/sessions/{sid}/step", json={"actions": actions(0, 2)}).status_code == 200
        imagine = {"action_sequences": [actions(1, 2), actions(2, 2)]}
        assert c.post(f"/v1/sessions/{sid}/imagine", json=imagine).status_code == 200
        observe = {"frames": frames[:1], "actions": actions(3, 1)}
        assert c.post(f"/v1/sessions/{sid}/observe", json=observe).status_code == 200
        plan = {"horizon": 2, "population": 4, "iterations": 1}
        assert c.post(f"/v1/sessions/{sid}/plan", json=plan).status_code == 200
        assert c.get("/v1/sessions/unknown").status_code == 404
        yield c, sid


def test_dashboards_exist_and_cover_the_service():
    assert DASHBOARDS, "no dashboard JSON under docker/grafana/dashboards"
    used = set().union(*(metric_names(e) for _, e in targets()))
    wanted = {
        "ivideogpt_active_sessions",
        "ivideogpt_step_latency_seconds_bucket",
        "ivideogpt_imagine_latency_seconds_bucket",
        "ivideogpt_observe_latency_seconds_bucket",
        "ivideogpt_plan_latency_seconds_bucket",
        "ivideogpt_frames_observed_total",
        "ivideogpt_plan_imagined_frames_total",
        "ivideogpt_time_to_first_frame_seconds_bucket",
        "ivideogpt_queue_wait_seconds_bucket",
        "ivideogpt_frames_generated_total",
        "ivideogpt_tokens_generated_total",
        "ivideogpt_batch_size",
        "ivideogpt_kv_cache_blocks_used",
        "ivideogpt_kv_cache_blocks_free",
        "ivideogpt_evictions_total",
        "ivideogpt_restores_total",
        "ivideogpt_requests_total",
        "nv_inference_request_success",
        "nv_inference_queue_duration_us",
        "nv_inference_compute_infer_duration_us",
    }
    assert wanted <= used, f"no panel shows {sorted(wanted - used)}"


def test_metric_name_extraction():
    expr = 'histogram_quantile(0.99, sum by (le, transport) (rate(a_bucket{status=~"4..|5.."}[30s]))) / 1e-9'
    assert metric_names(expr) == {"a_bucket"}
    assert metric_names("sum(rate(x_total[1m])) / clamp_min(sum by (model) (rate(y[1m])), 1e-9)") == {"x_total", "y"}


def test_every_expression_parses_with_promtool(tmp_path: Path):
    """promtool reads each expression as a recording rule: a parse error names the rule."""
    exprs = targets()
    rules = [{"record": f"dashboard:query_{i}", "expr": e} for i, (_, e) in enumerate(exprs)]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}, sort_keys=False))
    out = subprocess.run([tool("promtool"), "check", "rules", str(path)], capture_output=True, text=True)
    index = "\n".join(f"query_{i}: {title}: {e}" for i, (title, e) in enumerate(exprs))
    assert out.returncode == 0, f"{out.stdout}{out.stderr}\n{index}"
    assert f"SUCCESS: {len(rules)} rules found" in out.stdout


def test_dashboards_name_only_metrics_the_gateway_or_triton_expose(gw: Gateway, session):
    text = httpx.get(f"{gw.url}/metrics", timeout=10.0).text
    exposed = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
    assert "ivideogpt_step_latency_seconds_bucket" in exposed  # the step above made its series
    for title, expr in targets():
        names = metric_names(expr)
        assert names, f"{title}: no metric in {expr}"
        unknown = names - exposed - TRITON_METRICS
        assert not unknown, f"{title}: {sorted(unknown)} not on the gateway's /metrics nor Triton's"


def _query(prom: str, expr: str) -> list[dict]:
    r = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=10.0)
    assert r.status_code == 200, r.text
    return r.json()["data"]["result"]


def test_prometheus_scrapes_the_gateway_and_a_dashboard_query_has_data(gw: Gateway, session, tmp_path: Path):
    client, sid = session
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "gateway", "static_configs": [{"targets": [gw.url.removeprefix("http://")]}]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    cmd = [
        tool("prometheus"),
        f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    log = tmp_path / "prometheus.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    prom = f"http://127.0.0.1:{port}"
    by_title = {title.split(": ", 1)[1]: expr for title, expr in targets()}
    sessions, frames = by_title["Active sessions"], by_title["Frames / s"]
    try:
        deadline = time.monotonic() + 60.0
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"no data from Prometheus in time:\n{log.read_text()[-3000:]}"
            try:
                ready = httpx.get(f"{prom}/-/ready", timeout=2.0).status_code == 200
            except httpx.HTTPError:
                ready = False
            if ready:
                # a step between two scrapes makes the frame counter move
                assert client.post(f"/v1/sessions/{sid}/step", json={"actions": actions(3, 1)}).status_code == 200
                active, rate = _query(prom, sessions), _query(prom, frames)
                if active and rate and float(rate[0]["value"][1]) > 0:
                    break
            time.sleep(0.5)
        assert float(active[0]["value"][1]) >= 1
        up = _query(prom, 'up{job="gateway"}')
        assert up and up[0]["value"][1] == "1"
    finally:
        proc.terminate()
        proc.wait(30)
