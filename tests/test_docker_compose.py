"""docker-compose.yml, its CPU override, the Dockerfiles and the Prometheus and Grafana files they
mount, checked without a Docker engine (there is none on our machines).

``docker-compose config`` (Debian's docker-compose 1.29: it validates against the compose
spec schema and resolves paths with no engine running) and ``promtool`` must be installed;
.ci/run installs both.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from gateway_helpers import REPO

COMPOSE = REPO / "docker-compose.yml"
CPU_OVERRIDE = REPO / "docker-compose.cpu.yml"
GPU_SERVICES = {"redis", "triton", "gateway", "prometheus", "grafana"}
CPU_SERVICES = {"redis", "gateway-cpu", "prometheus", "grafana"}


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} not found: .ci/run installs it (apt-get install -y docker-compose prometheus)"
    return path


def compose_config(*files: Path) -> dict:
    """What compose makes of the files (validated, merged, paths absolute)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    cmd = [tool("docker-compose"), "--project-directory", str(REPO)]
    for f in files:
        cmd += ["-f", str(f)]
    out = subprocess.run([*cmd, "config"], capture_output=True, text=True, cwd=REPO, env=env)
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


def active(config: dict, profiles: tuple[str, ...] = ()) -> dict[str, dict]:
    """The services that `up` starts: no profile, or an enabled one (the compose spec's rule)."""
    return {
        name: svc
        for name, svc in config["services"].items()
        if not svc.get("profiles") or set(svc["profiles"]) & set(profiles)
    }


def wants_gpu(svc: dict) -> bool:
    devices = svc.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    return any("gpu" in d.get("capabilities", []) for d in devices)


def check_dependencies(services: dict[str, dict]) -> None:
    """Every dependency starts too, waits for health, and has a healthcheck to wait for."""
    for name, svc in services.items():
        for dep, cond in svc.get("depends_on", {}).items():
            assert dep in services, f"{name} depends on {dep}, which does not start"
            assert cond["condition"] == "service_healthy", f"{name} -> {dep}: {cond}"
            assert "healthcheck" in services[dep], f"{dep} has no healthcheck for {name} to wait on"


@pytest.fixture(scope="module")
def gpu_stack() -> dict:
    return compose_config(COMPOSE)


@pytest.fixture(scope="module")
def cpu_stack() -> dict:
    return compose_config(COMPOSE, CPU_OVERRIDE)


def test_gpu_stack(gpu_stack: dict):
    services = active(gpu_stack)
    assert set(services) == GPU_SERVICES
    check_dependencies(services)
    assert all("healthcheck" in s for s in services.values())
    assert [n for n, s in services.items() if wants_gpu(s)] == ["triton"]
    env = services["gateway"]["environment"]
    assert env["IVIDEOGPT_BACKEND"] == "triton"
    assert env["IVIDEOGPT_TRITON_URL"] == "triton:8001"
    assert env["IVIDEOGPT_REDIS_URL"].startswith("redis://redis:6379")
    assert set(services["gateway"]["depends_on"]) == {"redis", "triton"}
    assert set(gpu_stack["volumes"]) == {"redis-data", "prometheus-data", "grafana-data"}


def test_cpu_override_runs_the_local_backend_without_triton(cpu_stack: dict):
    services = active(cpu_stack)
    assert set(services) == CPU_SERVICES
    check_dependencies(services)
    assert not [n for n, s in services.items() if wants_gpu(s)]
    gateway = services["gateway-cpu"]
    assert gateway["environment"]["IVIDEOGPT_BACKEND"] == "local"
    assert "gateway" in gateway["networks"]["default"]["aliases"]  # Prometheus' target name
    assert _published(gateway) == _published(active(compose_config(COMPOSE))["gateway"])


def _published(svc: dict) -> set[int]:
    return {int(str(p["published"]) if isinstance(p, dict) else str(p).split(":")[0]) for p in svc.get("ports", [])}


def test_published_ports_are_in_the_readme(gpu_stack: dict, cpu_stack: dict):
    ports = set().union(*(_published(s) for s in [*active(gpu_stack).values(), *active(cpu_stack).values()]))
    assert ports == {8000, 50051, 8001, 8002, 9090, 3000}
    readme = (REPO / "README.md").read_text()
    docker = readme[readme.index("## Docker") :]
    docker = docker[: docker.find("\n## ", 1) if "\n## " in docker[1:] else len(docker)]
    for port in ports:
        assert re.search(rf"\b{port}\b", docker), f"port {port} is not in the README's Docker section"


def bind_mounts(svc: dict) -> dict[Path, str]:
    """Host path -> container path of a service's bind mounts (compose prints short or long syntax)."""
    out = {}
    for volume in svc.get("volumes", []):
        if isinstance(volume, dict):
            source, target = volume["source"], volume["target"]
        else:
            source, target = volume.split(":")[:2]
        if source.startswith("/"):  # named volumes are names; compose made bind sources absolute
            out[Path(source)] = target
    return out


def test_bind_mounts_exist(gpu_stack: dict, cpu_stack: dict):
    for stack in (gpu_stack, cpu_stack):
        for name, svc in stack["services"].items():
            for source in bind_mounts(svc):
                assert source.exists(), f"{name} mounts {source}, which does not exist"
                assert source.is_relative_to(REPO), f"{name} mounts {source} from outside the repository"


def dockerignore() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    patterns = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
    assert not [p for p in patterns if p.startswith("!")], "exceptions: the check below does not model them"
    return patterns


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves ``path`` (or a folder above it) out of the build context."""
    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        for prefix in prefixes:
            if fnmatch.fnmatchcase(prefix, pattern):
                return True
            if pattern.startswith("**/") and fnmatch.fnmatchcase(Path(prefix).name, pattern[3:]):
                return True
    return False


def copy_sources(dockerfile: Path) -> list[str]:
    """The context paths of every COPY/ADD (both forms), not those from another stage."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    sources = []
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].upper() not in ("COPY", "ADD"):
            continue
        args = [w for w in words[1:] if not w.startswith("--")]
        if any(w.startswith("--from") for w in words[1:]):
            continue
        if args and args[0].startswith("["):
            args = json.loads(" ".join(args))
        sources += args[:-1]
    return sources


def test_dockerfiles_copy_files_that_exist_and_are_in_the_context(gpu_stack: dict, cpu_stack: dict):
    builds = {
        (svc["build"]["context"], svc["build"]["dockerfile"])
        for stack in (gpu_stack, cpu_stack)
        for svc in stack["services"].values()
        if "build" in svc
    }
    assert {Path(d).name for _, d in builds} == {"gateway.Dockerfile", "triton.Dockerfile"}
    patterns = dockerignore()
    for context, name in builds:
        context = Path(context)
        dockerfile = context / name
        assert dockerfile.is_file(), dockerfile
        sources = copy_sources(dockerfile)
        assert sources, f"{name} copies nothing"
        for src in sources:
            assert (context / src).exists(), f"{name}: COPY {src}: no such path in {context}"
            assert not ignored(src, patterns), f"{name}: COPY {src} is excluded by .dockerignore"


def test_dockerfiles_pin_their_bases_and_install_what_the_issue_asks():
    gateway = (REPO / "docker" / "gateway.Dockerfile").read_text()
    triton = (REPO / "docker" / "triton.Dockerfile").read_text()
    assert "FROM python:3.11-slim" in gateway
    assert "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in gateway
    assert re.search(r"^USER (?!root)\S+", gateway, re.M)
    assert re.search(r"^HEALTHCHECK .*\n?.*/healthz", gateway, re.M)
    assert '"python", "-m", "server", "--host", "0.0.0.0"' in gateway
    assert "FROM nvcr.io/nvidia/tritonserver:24.10-py3" in triton
    assert "--model-repository=/models" in triton and "COPY model_repository /models" in triton
    assert "--grpc-port=8001" in triton and "--metrics-port=8002" in triton  # compose's URL and scrape target
    for stack in (compose_config(COMPOSE), compose_config(COMPOSE, CPU_OVERRIDE)):
        for name, svc in stack["services"].items():
            if "build" not in svc:
                tag = svc["image"].rsplit(":", 1)
                assert len(tag) == 2 and tag[1] != "latest", f"{name}: pin the image ({svc['image']})"


def test_triton_image_code_runs_on_its_python_310():
    """The Triton image's Python backend is Python 3.10: what it imports must parse there."""
    files = [
        f
        for package in ("ivideogpt", "ivideogpt_triton", "model_repository")
        for f in sorted((REPO / package).rglob("*.py"))
    ]
    assert files
    only_311 = re.compile(
        r"\bimport tomllib\b|\bfrom datetime import [^\n]*\bUTC\b|\bdatetime\.UTC\b|\bStrEnum\b|"
        r"\btyping import [^\n]*\bSelf\b|\bExceptionGroup\b|\bTaskGroup\b"
    )
    for path in files:
        source = path.read_text()
        ast.parse(source, filename=str(path), feature_version=(3, 10))
        assert not only_311.search(source), f"{path.relative_to(REPO)} uses a Python 3.11 name"


def test_prometheus_config_is_valid_and_scrapes_compose_services(gpu_stack: dict):
    path = REPO / "docker" / "prometheus" / "prometheus.yml"
    out = subprocess.run([tool("promtool"), "check", "config", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    config = yaml.safe_load(path.read_text())
    scraped = {t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    assert scraped == {"gateway:8000", "triton:8002"}  # the gateway's REST port, Triton's metrics port
    assert bind_mounts(gpu_stack["services"]["prometheus"]) == {path: "/etc/prometheus/prometheus.yml"}


def test_grafana_provisioning_matches_the_mounts_and_the_dashboards(gpu_stack: dict):
    grafana = REPO / "docker" / "grafana"
    mounts = bind_mounts(gpu_stack["services"]["grafana"])
    assert mounts[grafana / "provisioning"] == "/etc/grafana/provisioning"
    datasources = [
        d
        for f in (grafana / "provisioning" / "datasources").glob("*.yml")
        for d in yaml.safe_load(f.read_text())["datasources"]
    ]
    assert [(d["type"], d["url"]) for d in datasources] == [("prometheus", "http://prometheus:9090")]
    providers = [
        p
        for f in (grafana / "provisioning" / "dashboards").glob("*.yml")
        for p in yaml.safe_load(f.read_text())["providers"]
    ]
    assert [p["options"]["path"] for p in providers] == [mounts[grafana / "dashboards"]]
    home = gpu_stack["services"]["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (grafana / "dashboards" / Path(home).relative_to(mounts[grafana / "dashboards"])).is_file()
    uids = set()
    for path in (grafana / "dashboards").glob("*.json"):
        stack = list(json.loads(path.read_text())["panels"])
        while stack:
            panel = stack.pop()
            stack.extend(panel.get("panels", []))
            uids |= {t["datasource"]["uid"] for t in panel.get("targets", [])}
            if "datasource" in panel:
                uids.add(panel["datasource"]["uid"])
    assert uids == {d["uid"] for d in datasources}
