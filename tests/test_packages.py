"""The package boundaries: the library (ivideogpt/) is the model, the engine and the export, and imports
no serving stack; no module of ours imports, even lazily, one that imports it back; no engine file is
more than about 300 lines."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("ivideogpt", "ivideogpt_triton", "server", "training")
SERVING_STACK = ("fastapi", "starlette", "uvicorn", "redis", "tritonclient", "grpc", "httpx", "msgpack")


def test_the_library_imports_no_serving_stack() -> None:
    """Every module of ivideogpt/ imported in a fresh interpreter: none of the serving stack comes along."""
    code = f"""
import importlib, json, pkgutil, sys
import ivideogpt
names = [m.name for m in pkgutil.walk_packages(ivideogpt.__path__, "ivideogpt.")]
for name in names:
    importlib.import_module(name)
stack = {SERVING_STACK!r}
print(json.dumps([len(names), sorted(m for m in sys.modules if m.split(".")[0] in stack)]))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True, text=True).stdout
    imported, serving = json.loads(out)
    assert imported >= 20, "the walk found too few modules: it no longer covers the library"
    assert serving == [], f"the library imports the serving stack: {serving}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, known: set[str]) -> set[str]:
    """Our modules that ``path`` imports anywhere (module level or inside a function)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n in known}
    return found


def test_no_import_cycles() -> None:
    files = [p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py") if "static" not in p.parts]
    modules = {module_name(p): p for p in files}
    graph = {name: imports(path, set(modules)) - {name} for name, path in modules.items()}
    cycles, state = [], dict.fromkeys(graph, 0)  # 0 unseen, 1 on the path, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state[nxt] == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif state[nxt] == 0:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for name in sorted(graph):
        if state[name] == 0:
            visit(name, [name])
    assert len(graph) >= 60 and not cycles, " ; ".join(" -> ".join(c) for c in cycles)


def test_no_engine_file_is_over_300_lines() -> None:
    lengths = {p.name: len(p.read_text().splitlines()) for p in (REPO / "ivideogpt" / "engine").glob("*.py")}
    assert len(lengths) >= 8 and max(lengths.values()) <= 300, lengths
