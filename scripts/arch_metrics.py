"""The code's shape in numbers, for docs/ARCHITECTURE.md: import graph, layers, cycles, lines, TrainConfig fields.

    python scripts/arch_metrics.py [--repo DIR] [--layers]

A module is one ``.py`` file of the production tree (``app.py``, ``medadapt/``, ``trainers/``, ``eval/``); an import
is any ``import``/``from`` (top level or inside a function) that names another production module. A module's layer is
one above the highest layer it imports (a module that imports none is layer 1); modules in an import cycle share one
layer. Lines are all lines of the ``.py`` files (production: the tree above plus ``bench/`` and ``scripts/``; tests:
``tests/``).
"""
from __future__ import annotations

import argparse
import ast
from pathlib import Path

PACKAGES = ("medadapt", "trainers", "eval")


def module_name(repo: Path, path: Path) -> str:
    """``medadapt/serve/engine.py`` → ``medadapt.serve.engine`` (a package's ``__init__`` is the package)."""
    parts = list(path.relative_to(repo).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def production_modules(repo: Path) -> dict[str, Path]:
    """Every production module by dotted name."""
    files = [repo / "app.py"] + [p for pkg in PACKAGES for p in sorted((repo / pkg).rglob("*.py"))]
    return {module_name(repo, p): p for p in files if p.exists() and "__pycache__" not in p.parts}


def imported_names(path: Path, name: str) -> set[str]:
    """Dotted names a module imports (relative imports resolved against its package)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return found


def import_graph(repo: Path) -> dict[str, set[str]]:
    """Module → the production modules it imports (the longest matching name; never itself)."""
    modules = production_modules(repo)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for imported in imported_names(path, name):
            parts = imported.split(".")
            for i in range(len(parts), 0, -1):
                candidate = ".".join(parts[:i])
                if candidate in modules:
                    if candidate != name:
                        targets.add(candidate)
                    break
        graph[name] = targets
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components (each cycle is a component of more than one module)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def layers(graph: dict[str, set[str]]) -> dict[str, int]:
    """Each module's layer: 1 + the highest layer it imports (a cycle's modules share one)."""
    comps = strongly_connected(graph)  # Tarjan emits components in reverse topological order
    comp_of = {m: i for i, c in enumerate(comps) for m in c}
    layer_of_comp: dict[int, int] = {}
    for i, comp in enumerate(comps):
        below = [layer_of_comp[comp_of[t]] for m in comp for t in graph[m] if comp_of[t] != i]
        layer_of_comp[i] = 1 + max(below, default=0)
    return {m: layer_of_comp[comp_of[m]] for m in graph}


def lines(paths) -> int:
    """All lines of these files."""
    return sum(len(p.read_text(encoding="utf-8").splitlines()) for p in paths)


def train_config_fields(repo: Path) -> int:
    """Fields declared on ``TrainConfig`` (annotated class attributes), wherever the class lives in medadapt/."""
    for path in sorted((repo / "medadapt").rglob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ClassDef) and node.name == "TrainConfig":
                return sum(isinstance(b, ast.AnnAssign) for b in node.body)
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", default=str(Path(__file__).resolve().parents[1]))
    parser.add_argument("--layers", action="store_true", help="also list every module with its layer")
    args = parser.parse_args(argv)
    repo = Path(args.repo)
    graph = import_graph(repo)
    layer = layers(graph)
    cycles = [c for c in strongly_connected(graph) if len(c) > 1]
    prod = [p for p in production_modules(repo).values()]
    prod += sorted((repo / "bench").glob("*.py")) + sorted((repo / "scripts").glob("*.py"))
    tests = sorted((repo / "tests").rglob("*.py"))
    if args.layers:
        for m in sorted(graph, key=lambda m: (-layer[m], m)):
            print(f"{layer[m]:>2}  {m}")
    print(f"RESULT modules={len(graph)} layers={max(layer.values())} imports={sum(map(len, graph.values()))} "
          f"cycles={len(cycles)} prod_lines={lines(prod)} test_lines={lines(tests)} "
          f"trainconfig_fields={train_config_fields(repo)}")


if __name__ == "__main__":
    main()
