"""The docs and the packaging stay true: the README's test command is what CI runs, the repository
stands on its own, docs/API.md names every metric and error code, one version, the SDK's ranges."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
from gateway_helpers import REPO

from training.data import load_episodes


def readme_commands() -> list[str]:
    """The README's indented one-line commands before its first section: the newcomer's two."""
    intro = (REPO / "README.md").read_text().split("\n## ", 1)[0]
    return [line[4:] for line in intro.splitlines() if line.startswith("    ") and line.strip()]


def test_readme_test_command_is_what_ci_runs() -> None:
    commands = readme_commands()
    assert len(commands) == 2 and "python -m server" in commands[0], commands
    test_command = commands[1]
    assert "scripts/test-setup" in test_command and "pytest" in test_command
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert test_command in ci, f".ci/run does not run the README's test command {test_command!r}"


def test_test_setup_is_an_executable_shell_script() -> None:
    script = REPO / "scripts" / "test-setup"
    assert script.stat().st_mode & 0o111, "scripts/test-setup is not executable"
    subprocess.run(["bash", "-n", str(script)], check=True)  # parses
    text = script.read_text()
    for need in ("redis-server", "docker-compose", "prometheus", "promtool", "chromium", "chromedriver", ".venv"):
        assert need in text, f"scripts/test-setup does not provide {need}"


def tracked_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return [REPO / p for p in out.splitlines()]


# a path above the repository, or the section numbers of notes that live there (spelt so as not to match here)
OUTSIDE = r"\.\./" + "shared" + r"|\bNOTES" + r" (section )?\d"


def test_the_repository_stands_on_its_own() -> None:
    """No pointer outside the repository, and every relative link of a markdown file resolves."""
    text_suffixes = {".md", ".py", ".toml", ".yml", ".yaml", ".txt", ".cfg", ".proto", ".sh", ""}
    outside = []
    for path in tracked_files():
        if path.suffix not in text_suffixes or not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if re.search(OUTSIDE, text):
            outside.append(str(path.relative_to(REPO)))
        if path.suffix == ".md":
            for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
                if "://" not in target and not (path.parent / target).exists():
                    outside.append(f"{path.relative_to(REPO)} -> {target}")
    assert not outside, outside


def test_api_doc_lists_every_metric() -> None:
    from server.metrics import Metrics

    registry = Metrics().registry
    names = {f.name + ("_total" if f.type == "counter" else "") for f in registry.collect()}
    doc = (REPO / "docs" / "API.md").read_text()
    missing = sorted(n for n in names if f"`{n}`" not in doc and f"`{n}{{" not in doc)
    assert len(names) >= 15 and not missing, f"docs/API.md lacks {missing}"


def test_api_doc_lists_every_error_code() -> None:
    source = "\n".join(p.read_text() for p in (REPO / "server").rglob("*.py") if "proto_gen" not in p.parts)
    codes = set(re.findall(r'ApiError\(\s*\d{3},\s*"([a-z_]+)"', source))  # raised errors
    codes |= set(re.findall(r'\d{3}: "([a-z_]+)"', source))  # HTTP errors mapped to codes
    codes |= set(re.findall(r'status_code, "([a-z_]+)"\)', source))  # and their fallback
    table = (REPO / "docs" / "API.md").read_text().split("## Errors", 1)[1].split("\n## ", 1)[0]
    missing = sorted(c for c in codes if f"`{c}`" not in table)
    assert len(codes) >= 14 and not missing, f"docs/API.md's error table lacks {missing}"


def test_one_version_from_the_package_metadata() -> None:
    from server.app import create_app
    from server.settings import Settings

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert version("ivideogpt-serve") == pyproject
    assert create_app(Settings()).version == pyproject  # the OpenAPI schema's and /docs' version
    sdk = tomllib.loads((REPO / "clients" / "python" / "pyproject.toml").read_text())["project"]["version"]
    assert sdk == pyproject, "the gateway and the SDK share one version number (CHANGELOG.md)"
    assert f"## {pyproject} (" in (REPO / "CHANGELOG.md").read_text(), "CHANGELOG.md has no section for this version"


def test_the_sdk_declares_ranges_and_the_gateway_pins() -> None:
    sdk = tomllib.loads((REPO / "clients" / "python" / "pyproject.toml").read_text())["project"]
    for dep in sdk["dependencies"] + sdk["optional-dependencies"]["mp4"]:
        assert "==" not in dep and ">=" in dep, f"SDK dependency {dep!r}: a compatible range, not a pin"
    gateway = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    own = f"{gateway['name']}["  # `pip install .` takes the gateway's extra along: its pins are the gateway's
    deps = [d for d in gateway["dependencies"] if not d.startswith(own)]
    for extra in (d[len(own) : d.index("]")] for d in gateway["dependencies"] if d.startswith(own)):
        deps += gateway["optional-dependencies"][extra]
    assert any(d.startswith("fastapi==") for d in deps), "`pip install .` must install what the gateway serves with"
    for dep in deps:
        assert "==" in dep, f"gateway dependency {dep!r}: an exact pin"


def test_training_guide_conversion_writes_data_the_trainers_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    guide = (REPO / "docs" / "TRAINING.md").read_text()
    code = re.search(r"```python\n(.*?)```", guide, re.S).group(1)
    rng = np.random.default_rng(0)

    def my_episodes(split: str):  # what the guide leaves to the reader: episodes of a 7-dof robot
        for _ in range(3 if split == "train" else 1):
            t = 14
            rewards = rng.uniform(0, 1, t).astype(np.float32)
            rewards[0] = 0
            frames = rng.integers(0, 255, (t, 64, 64, 3), dtype=np.uint8)
            yield {"frames": frames, "actions": rng.uniform(-1, 1, (t, 7)), "rewards": rewards, "success": False}

    monkeypatch.chdir(tmp_path)
    exec(code, {"my_episodes": my_episodes})
    episodes = load_episodes(tmp_path / "data" / "mine")
    assert len(episodes) == 3 and episodes[0].frames.shape == (14, 64, 64, 3) and episodes[0].actions.shape == (14, 7)
    assert len(load_episodes(tmp_path / "data" / "mine-heldout")) == 1
    check = re.search(r'```bash\n(python -c "from training\.data.*?)\n```', guide, re.S).group(1)
    r = subprocess.run(["bash", "-c", check.replace("python ", f"{sys.executable} ", 1)], capture_output=True)
    assert r.returncode == 0 and b"3 episodes (14, 64, 64, 3) (14, 7)" in r.stdout, r.stderr
