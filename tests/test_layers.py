"""The suite's top-level packages form layers: each imports only the packages allowed below it, and nothing cycles.

Every ``.py`` file of the packages is parsed (never imported), and every import counts, at module level or inside a
function (a lazy import is still a dependency, only a later one). The layers, bottom to top:

``frozen_clip``
    the runner library: backbone, method interface, trainer, fast paths, seeding, image reading, feature caching.
    Imports no other suite package: it reads any split through small structural types (``ImageItem``, ``Split``).
``protocols``
    datasets in the CoOp layout, few-shot sampling, split manifests, protocols, metrics, image checks. Uses
    ``frozen_clip`` for errors, atomic writes, config suggestions and image decoding (so a checked image is one
    the runner can read).
``world``
    the built-in procedural world and the pretraining of its tiny CLIP; writes datasets that ``protocols`` reads.
    ``protocols.datasets`` finds the generator by module name (``WORLD_MODULE``, a string), as an optional
    plugin; that lookup is not an import and is not counted.
``adapters``, ``baselines``
    the methods, side by side; they import ``frozen_clip`` only (a dataset's prompt template reaches a method
    through its ``MethodContext``; CoOp's templates live in ``baselines.templates``).
``jobs``
    configs, grids, the run's orchestration, executors and state; may import everything above (methods are
    registered by module name and imported on first use). Only the command-line entry points import ``jobs.cli``.
``analysis``
    reads records into tables; imports from ``jobs`` only, and only modules whose imports stay free of
    torch (:data:`HEAVY`), so tables can be built where torch is not installed.
``bench``
    benchmarks of the whole suite; may import every package.

The command line (``jobs.cli`` with its scripts ``jobs/launch.py`` and ``jobs/run.py``, and ``python -m
analysis.recipes``: :data:`COMMAND_LINE`) sits on top of every layer: it lives in ``jobs`` for its users' sake (``python jobs/launch.py``), may import any package
(a launch ends by writing the analysis), and nothing but its scripts imports it.
"""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

#: package -> the packages it may import (the layers below it that it needs)
ALLOWED: dict[str, frozenset[str]] = {
    "frozen_clip": frozenset(),
    "protocols": frozenset({"frozen_clip"}),
    "world": frozenset({"frozen_clip", "protocols"}),
    "adapters": frozenset({"frozen_clip"}),
    "baselines": frozenset({"frozen_clip"}),
    "jobs": frozenset({"frozen_clip", "protocols", "world", "adapters", "baselines"}),
    "analysis": frozenset({"jobs"}),
    "bench": frozenset({"frozen_clip", "protocols", "world", "adapters", "baselines", "jobs", "analysis"}),
}
PACKAGES = tuple(ALLOWED)

#: third-party modules that ``analysis`` must not reach, directly or through the modules it imports
HEAVY = frozenset({"torch", "torchvision", "open_clip"})

#: the modules that may import ``jobs.cli`` (the command-line scripts); library modules must not
CLI_ENTRY_POINTS = frozenset({"jobs.run", "jobs.launch"})
#: the command line: the top layer, which may import every package (``analysis.recipes`` writes the recipe cards
#: from the method classes themselves, so it imports the methods, and torch, unlike the rest of ``analysis``)
COMMAND_LINE = CLI_ENTRY_POINTS | {"jobs.cli", "analysis.recipes"}

#: (importing module, imported module) pairs that break a rule above today and are being removed; each must still
#: occur (a fixed one is taken off this list), and no other may appear.
KNOWN_VIOLATIONS: frozenset[tuple[str, str]] = frozenset({
    # ``python -m analysis.tables --grid G`` lists the grid's runs that have no record: their run ids need the grid
    # resolved, which imports the methods (torch); everything else the analysis does is torch-free
    ("analysis.records", "jobs.grid"),
})


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@lru_cache(maxsize=None)
def _files() -> dict[str, Path]:
    """Module name -> file, for every module of the packages."""
    return {_module_name(path): path for package in PACKAGES for path in sorted((REPO / package).rglob("*.py"))}


def _resolve(name: str) -> str:
    """The suite module an imported name refers to (``pkg.mod.attr`` -> ``pkg.mod``)."""
    modules = _files()
    while name not in modules and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


@lru_cache(maxsize=None)
def _imports(module: str) -> frozenset[str]:
    """Every module ``module`` imports, anywhere in the file: suite modules resolved, others by their top name."""
    path = _files()[module]
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the importing module's package
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            found.add(_resolve(name) if top in ALLOWED else top)
    return frozenset(found)


def _suite_edges() -> set[tuple[str, str]]:
    """(importing module, imported module) for every import between the suite's modules."""
    return {(module, target) for module in _files() for target in _imports(module)
            if target.split(".")[0] in ALLOWED}


def _reaches_heavy(module: str, seen: frozenset[str] = frozenset()) -> bool:
    if module in seen:
        return False
    for target in _imports(module):
        if target in HEAVY:
            return True
        if target in _files() and _reaches_heavy(target, seen | {module}):
            return True
    return False


def _violations() -> set[tuple[str, str]]:
    found = set()
    for module, target in _suite_edges():
        source, dest = module.split(".")[0], target.split(".")[0]
        if source != dest and dest not in ALLOWED[source] and module not in COMMAND_LINE:
            found.add((module, target))
        if target == "jobs.cli" and module not in CLI_ENTRY_POINTS:
            found.add((module, target))
        if source == "analysis" and dest != "analysis" and module not in COMMAND_LINE and _reaches_heavy(target):
            found.add((module, target))
    return found


def test_the_allowed_map_is_acyclic() -> None:
    order: list[str] = []
    remaining = dict(ALLOWED)
    while remaining:
        ready = [p for p, below in remaining.items() if below <= set(order)]
        assert ready, f"the allowed imports cycle among {sorted(remaining)}"
        order += ready
        for package in ready:
            del remaining[package]
    assert all(p in ALLOWED for below in ALLOWED.values() for p in below)


def test_every_package_imports_only_the_layers_below_it() -> None:
    found = _violations()
    unexpected = sorted(found - KNOWN_VIOLATIONS)
    assert not unexpected, "imports across layers that the layer map does not allow:\n" + "\n".join(
        f"  {module} imports {target}" for module, target in unexpected)


def test_known_violations_still_occur() -> None:
    """A violation that is fixed leaves :data:`KNOWN_VIOLATIONS`, so it cannot come back unnoticed."""
    fixed = sorted(KNOWN_VIOLATIONS - _violations())
    assert not fixed, f"no longer violated, remove from KNOWN_VIOLATIONS: {fixed}"


def test_no_cycle_between_packages() -> None:
    """Package-level import graph (known violations aside, the command line on top of it) is acyclic."""
    graph: dict[str, set[str]] = {p: set() for p in PACKAGES}
    for module, target in _suite_edges() - KNOWN_VIOLATIONS:
        source, dest = module.split(".")[0], target.split(".")[0]
        if source != dest and module not in COMMAND_LINE:
            graph[source].add(dest)
    state: dict[str, str] = {}

    def visit(package: str, path: tuple[str, ...]) -> None:
        if state.get(package) == "done":
            return
        assert state.get(package) != "open", f"import cycle: {' -> '.join((*path, package))}"
        state[package] = "open"
        for dest in sorted(graph[package]):
            visit(dest, (*path, package))
        state[package] = "done"
    for package in PACKAGES:
        visit(package, ())


def test_the_parser_sees_imports_inside_functions() -> None:
    """Imports inside functions count: the scan finds the lazy import of the world by the data-root module."""
    assert "world.generate" in _imports("jobs.data")
    assert "frozen_clip.seeding" in _imports("world.generate")
