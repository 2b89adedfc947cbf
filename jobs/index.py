"""The run-id index of a grid's results folder: the run id of each raw run config, without resolving it again.

A run id needs resolution (:func:`jobs.config.resolve`: the method's config dataclass and recipe, the backbone's
canonical name), which imports every method, torch and open_clip. Whenever the launcher resolves a grid (a launch,
``--dry-run``, ``--status`` where torch is importable) it writes ``<results_dir>/<name>/.index.json``: for each raw
run config of the expansion (the grid's run after axes, variants and command-line overrides), the hash of that raw
config -> its run id and a short label. ``--status`` then reads the ids from the index instead of resolving.

The index also keeps the recipe version of each method of the grid (``info.recipe_version``), so that ``--status``
can tell, without importing the methods, how many finished runs in the folder were made under an older recipe
(:func:`older_recipe_runs`): a changed default bumps the version, which changes every run id of the method, so such
runs are not runs of the grid any more, but their folders stay.

An entry is valid only under the same :func:`code_fingerprint`: a hash of the source files that decide run ids (the
config resolver, the optimiser and fast-path settings, the backbone resolver, the dataset and protocol catalogues,
the method registry and every module of the packages that hold registered methods) and of the open_clip version.
Editing any of them invalidates the whole index, which the next resolution rewrites.

Standard library only; finding the method packages reads :data:`jobs.registry.METHODS`' targets without importing
them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from frozen_clip import atomic
from jobs.runfolder import REPO_ROOT, read_record, read_status

if TYPE_CHECKING:  # pragma: no cover - typing only
    from jobs.grid import Grid, GridPlan

INDEX_NAME = ".index.json"
INDEX_VERSION = 1
# the suite's files that decide how a raw config resolves to a run id (besides the methods' packages)
ID_SOURCES = ("jobs/config.py", "jobs/registry.py", "frozen_clip/configtools.py", "frozen_clip/optim.py",
              "frozen_clip/fastpaths.py", "frozen_clip/backbone.py", "protocols/datasets.py", "protocols/protocols.py")
ASSETS = "frozen_clip/assets"  # bundled backbones: their names resolve through their folders


@dataclass(frozen=True)
class RunEntry:
    """What ``--status`` needs of one run: its id, its folder and a short label."""

    run_id: str
    folder: Path
    label: str


def method_package_files() -> list[Path]:
    """The ``.py`` files of every package that holds a registered method (found without importing them)."""
    from jobs.registry import METHODS
    files: set[Path] = set()
    for name in METHODS.names():
        package = METHODS.target(name).split(":")[0].split(".")[0]
        spec = importlib.util.find_spec(package)
        if spec is None:
            continue
        roots = list(spec.submodule_search_locations or [])
        for root in roots:
            files.update(Path(root).rglob("*.py"))
        if not roots and spec.origin:
            files.add(Path(spec.origin))
    return sorted(files)


def code_fingerprint(root: Path = REPO_ROOT) -> str:
    """A hash of everything that decides run ids (see the module docstring)."""
    digest = hashlib.sha256()
    files = [root / rel for rel in ID_SOURCES] + method_package_files()
    for path in files:
        digest.update(str(path.relative_to(root) if path.is_relative_to(root) else path).encode() + b"\0")
        digest.update((path.read_bytes() if path.is_file() else b"<absent>") + b"\0")
    for path in sorted((root / ASSETS).rglob("*")):
        if path.is_file():
            digest.update(f"{path.relative_to(root)} {path.stat().st_size}".encode() + b"\0")
    digest.update(f"open_clip {_version('open_clip_torch')}".encode())
    return digest.hexdigest()[:16]


def _version(distribution: str) -> str | None:
    from importlib import metadata
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def raw_key(raw: dict[str, Any]) -> str:
    """The hash of one raw run config (its canonical JSON)."""
    return hashlib.sha256(json.dumps(raw, sort_keys=True, default=repr).encode()).hexdigest()[:24]


def describe_config(config: dict[str, Any]) -> str:
    """A short human label of a resolved run config (:func:`jobs.config.run_label`; the config was resolved, so the
    method is imported)."""
    from jobs.config import run_label
    return run_label(config)


def _read(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / INDEX_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and data.get("version") == INDEX_VERSION else {}


def save(plan: "GridPlan", grid: "Grid", fingerprint: str | None = None) -> None:
    """Record the run id of every raw run of ``plan`` (resolved into ``grid``) in the grid's index, keeping the
    entries of other expansions (other overrides) written under the same code."""
    if len(grid.raw_ids) != len(plan.raws):
        raise ValueError("the grid was not resolved from this plan")
    fingerprint = fingerprint or code_fingerprint()
    folder = plan.results_dir
    old = _read(folder)
    same_code = old.get("fingerprint") == fingerprint
    runs = dict(old.get("runs") or {}) if same_code else {}
    recipes = dict(old.get("recipes") or {}) if same_code else {}
    labels = {spec.run_id: describe_config(spec.config) for spec in grid.runs}
    for raw_run, run_id in zip(plan.raws, grid.raw_ids):
        runs[raw_key(raw_run.raw)] = [run_id, labels[run_id]]
    recipes.update(current_recipes(grid))
    if same_code and runs == old.get("runs") and recipes == old.get("recipes"):
        return
    payload = {"version": INDEX_VERSION, "fingerprint": fingerprint, "runs": runs, "recipes": recipes}
    atomic.write_text(folder / INDEX_NAME, json.dumps(payload, separators=(",", ":")) + "\n")


def current_recipes(grid: "Grid") -> dict[str, int]:
    """The recipe version of every method of a resolved grid (its methods are imported)."""
    from jobs.registry import METHODS
    names = {spec.config["method"]["name"] for spec in grid.runs}
    return {name: METHODS.get(name).info.recipe_version for name in sorted(names)}


def recipes(folder: Path, fingerprint: str | None = None) -> dict[str, int]:
    """The recipe versions the index of ``folder`` holds under the current code ({} without a valid index)."""
    data = _read(folder)
    if not data or data.get("fingerprint") != (fingerprint or code_fingerprint()):
        return {}
    return {k: int(v) for k, v in (data.get("recipes") or {}).items()}


@dataclass(frozen=True)
class OlderRuns:
    """Finished runs in a grid's results folder that are not runs of the grid as it resolves today."""

    older_recipe: dict[str, list[int]]  # method -> the older recipe versions of its finished runs, one per run
    older_layout: int  # finished records without a method card: made before run ids left defaults out


def older_recipe_runs(folder: Path, current_ids: set[str], versions: dict[str, int]) -> OlderRuns:
    """The finished runs under ``folder`` whose id is not in ``current_ids`` and that were made under an older
    recipe version of their method (``versions``: method -> current version), or under the older layout.

    Reads only the records of folders that are not runs of the grid: nothing for a grid whose folder holds only
    its own runs."""
    older: dict[str, list[int]] = {}
    layout = 0
    for run_folder in run_folders(folder):
        if run_folder.name in current_ids or read_status(run_folder) != "done":
            continue
        record = read_record(run_folder) or {}
        card = record.get("method_card")
        method = ((record.get("config") or {}).get("method") or {}).get("name")
        if not isinstance(card, dict):
            layout += 1
        elif method in versions and int(card.get("recipe_version", 1)) < versions[method]:
            older.setdefault(method, []).append(int(card.get("recipe_version", 1)))
    return OlderRuns(older, layout)


def lookup(plan: "GridPlan", fingerprint: str | None = None) -> list[RunEntry] | None:
    """The runs of ``plan`` (deduplicated by id, in expansion order) from the index, or None unless every raw run of
    the plan is in an index written under the current code."""
    data = _read(plan.results_dir)
    if not data or data.get("fingerprint") != (fingerprint or code_fingerprint()):
        return None
    runs = data.get("runs") or {}
    entries: list[RunEntry] = []
    seen: set[str] = set()
    for raw_run in plan.raws:
        found = runs.get(raw_key(raw_run.raw))
        if not found:
            return None
        run_id, label = found
        if run_id not in seen:
            seen.add(run_id)
            entries.append(RunEntry(run_id, raw_run.results_dir / run_id, label))
    return entries


def run_folders(folder: Path) -> Iterable[Path]:
    """The run folders (16 hex characters) under a grid's results folder."""
    if not folder.is_dir():
        return []
    return [p for p in folder.iterdir() if len(p.name) == 16 and p.is_dir()
            and all(c in "0123456789abcdef" for c in p.name)]
