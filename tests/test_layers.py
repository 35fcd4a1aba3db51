"""The parts import only downwards and no module imports itself back through others.

Layers, bottom first: the `cocoedit` package's own modules (telemetry, loopback) <- protos <- rewards
<- actors <- learner <- cluster <- bench. Every import counts, at module level or inside a function or
an `if TYPE_CHECKING:` block: a deferred upward import is still a joint that points the wrong way.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("cocoedit", "protos", "rewards", "actors", "learner", "cluster", "bench")


def module_name(path: Path, root: Path) -> str:
    """cocoedit.<part>.<module> of a file under root (the package's own modules are cocoedit.<module>)."""
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts if parts[0] == "cocoedit" else ["cocoedit", *parts])


def layer(module: str) -> int:
    part = module.split(".")[1] if module.count(".") else ""
    return LAYERS.index(part) if part in LAYERS[1:] else 0


def project_modules(root: Path) -> dict[str, Path]:
    files = [p for part in LAYERS for p in (root / part).rglob("*.py") if "_pb2" not in p.name]
    return {module_name(p, root): p for p in files}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The project modules `path` imports (a `from pkg import name` of a submodule names the submodule)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name.startswith("cocoedit"):
                found.add(name)
    return found


def violations(root: Path) -> list[str]:
    """Every upward import and every import cycle of the tree at `root`, as sentences."""
    modules = project_modules(root)
    graph = {m: imports_of(p, set(modules)) - {m} for m, p in modules.items()}
    problems = [
        f"{src} (layer {LAYERS[layer(src)]}) imports {dst} (layer {LAYERS[layer(dst)]}), which is above it"
        for src, targets in sorted(graph.items())
        for dst in sorted(targets)
        if layer(dst) > layer(src)
    ]
    problems += [f"import cycle: {' -> '.join(c)}" for c in cycles(graph)]
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected group of modules (Tarjan), as a closed path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    out = []
    for group in groups:  # walk inside the group from its first module back to it
        path, members = [group[0]], set(group)
        while True:
            nxt = sorted(graph[path[-1]] & members)
            step = next((w for w in nxt if w == group[0]), None) or next(w for w in nxt if w not in path)
            path.append(step)
            if step == group[0]:
                break
        out.append(path)
    return out


def test_the_project_imports_only_downwards_without_cycles() -> None:
    problems = violations(ROOT)
    assert problems == [], "\n".join(problems)


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_an_upward_import_is_reported(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "rewards/__init__.py": "",
            "rewards/client.py": "def f():\n    from cocoedit.cluster.telemetry import record\n",
            "cluster/__init__.py": "",
            "cluster/telemetry.py": "from cocoedit.rewards import client\n",
        },
    )
    assert violations(root) == [
        "cocoedit.rewards.client (layer rewards) imports cocoedit.cluster.telemetry (layer cluster), which is above it",
        "import cycle: cocoedit.cluster.telemetry -> cocoedit.rewards.client -> cocoedit.cluster.telemetry",
    ]


def test_a_cycle_inside_one_part_is_reported(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "learner/__init__.py": "",
            "learner/learner.py": "from cocoedit.learner import checkpoint\n",
            "learner/checkpoint.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from cocoedit.learner.learner import Learner\n",
            "learner/losses.py": "import cocoedit.learner.checkpoint\n",
        },
    )
    assert violations(root) == [
        "import cycle: cocoedit.learner.checkpoint -> cocoedit.learner.learner -> cocoedit.learner.checkpoint"
    ]
