"""The package's layers, read from its own imports: every module imports only from its own layer
or the layers below it (function-level imports count), no import cycle, no module over 400 lines,
and one unpickler for every pickle the tool reads."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import negmerge_cli

PACKAGE = Path(negmerge_cli.__file__).parent
# Lowest first. Sibling layers of one rank (the two model families; convert and report) never import
# each other.
LAYERS = {
    "core": 0,
    "results": 1,
    "checkpoint": 2,
    "arithmetic": 3,
    "training": 4,
    "clip": 5, "classifier": 5,
    "convert": 6, "report": 6,
    "stages": 7,
    "demo": 8,
    "cli": 9,
}
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def _imports(name: str, path: Path) -> set[str]:
    """Every negmerge_cli module ``name`` imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("negmerge_cli") and not node.level:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in MODULES else _resolve(node.module))
        elif isinstance(node, ast.Import):
            found.update(_resolve(a.name) for a in node.names if a.name.startswith("negmerge_cli"))
    found.discard(name)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def test_every_package_is_in_a_layer():
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    top_modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__"}
    assert packages == set(LAYERS), "a package without a layer (or a layer without a package)"
    assert not top_modules, f"flat top-level modules belong in a layer: {sorted(top_modules)}"


def test_no_import_reaches_a_layer_above_or_a_sibling():
    wrong = []
    for source, targets in GRAPH.items():
        here = _layer(source)
        for target in targets:
            there = _layer(target)
            if here and there and here != there and LAYERS[there] >= LAYERS[here]:
                wrong.append(f"{source} -> {target}")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycle():
    """Depth-first search over the whole graph; a back edge is a cycle."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(GRAPH.get(module, ())):
            if state.get(target) == 1:
                cycles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)


def test_no_module_is_over_400_lines():
    long = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def test_one_unpickler_and_no_torch_load():
    """Every pickle goes through core/safe_pickle.py; torch.load / torch.jit.load never see user files."""
    own_unpickler = re.compile(r"Unpickler|(?<![\w.])pickle\.loads?\(|\btorch\.(jit\.)?load\(")
    offenders = [f"{name}: {found.group(0)}" for name, path in MODULES.items()
                 if name != "negmerge_cli.core.safe_pickle" and (found := own_unpickler.search(path.read_text()))]
    assert not offenders, offenders
