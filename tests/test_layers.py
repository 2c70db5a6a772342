"""The import rule of docs/ARCHITECTURE.md: layers import downward only, no cycles, nothing imports the
CLI, the product never imports research. Read from the source (ast), lazy imports inside functions
included: a lazy import is still a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# layer of each module, lowest first; see docs/ARCHITECTURE.md. A sub-package is a layer; the top-level
# modules are the base (errors, config, hashing), the registry and the retrain orchestration.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("errors", "config", "hashing", "procs", "threads")),
    ("data", ("data",)),
    ("model", ("model",)),
    ("train", ("train",)),
    ("evaluation", ("evaluation",)),
    ("registry", ("registry",)),
    ("serving", ("serving",)),
    ("orchestration", ("retrain",)),
    ("cli", ("cli",)),
]
RANK = {name: i for i, (name, _) in enumerate(LAYERS)}


def layer_of(module: str) -> str:
    rest = module.removeprefix("hrnn_core.")
    head = rest.split(".")[0]
    for name, prefixes in LAYERS:
        if head in prefixes:
            return name
    raise AssertionError(f"{module} has no layer in tests/test_layers.py LAYERS (and docs/ARCHITECTURE.md)")


def modules() -> dict[str, Path]:
    out = {}
    for f in sorted((REPO / "hrnn_core").rglob("*.py")):
        parts = f.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = f
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """hrnn_core/research modules ``name`` imports (``from hrnn_core import x`` resolves to x)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known)
    return {m for m in found if m.split(".")[0] in ("hrnn_core", "research") and m != "hrnn_core"}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(name, path, set(mods)) - {name} for name, path in mods.items()}


def test_every_module_has_a_layer_and_imports_point_down() -> None:
    upward = []
    for mod, deps in graph().items():
        if mod == "hrnn_core":
            continue
        for dep in deps:
            if dep.startswith("research"):
                upward.append(f"{mod} -> {dep} (the product never imports research)")
            elif RANK[layer_of(dep)] > RANK[layer_of(mod)]:
                upward.append(f"{mod} ({layer_of(mod)}) -> {dep} ({layer_of(dep)})")
    assert not upward, "imports against the layer order:\n" + "\n".join(sorted(upward))


def test_nothing_imports_the_cli() -> None:
    users = sorted(
        m for m, deps in graph().items() if m != "hrnn_core" and layer_of(m) != "cli" and any(d.startswith("hrnn_core.cli") for d in deps)
    )
    assert not users, f"modules importing hrnn_core.cli: {users}"
    for folder in ("dags", "bento"):
        for f in (REPO / folder).rglob("*.py"):
            assert "hrnn_core.cli" not in f.read_text(), f


def test_no_import_cycles() -> None:
    g = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in g.get(v, ()):
            if w not in g:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in g:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"
