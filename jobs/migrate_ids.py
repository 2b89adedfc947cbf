"""Rename run folders made before run ids left defaults out (DESIGN.md, "Run ids"), so that relaunching a grid
finds and resumes them: ``python -m jobs.migrate_ids results/<grid> [more folders] [--dry-run]``.

A run folder of the older layout is named by the id of its full config (every option hashed). For each folder under
the given roots that holds a ``record.json`` or ``config.yaml`` and is named by that older id, the folder is renamed
to the current id of the same config and the record's ``run_id`` is rewritten atomically. Folders already named by
their current id, and folders whose config no longer resolves (a method that is not registered), are left as they
are and listed. Nothing is deleted; a folder whose new name is taken is left in place and reported.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Iterator

from frozen_clip import atomic
from jobs.config import legacy_run_id, run_id_of


def run_folders(roots: list[Path]) -> Iterator[Path]:
    """Folders ``<root>/<grid>/<run_id>`` or ``<root>/<run_id>`` holding a record or a config."""
    for root in roots:
        for marker in sorted({*root.glob("*/record.json"), *root.glob("*/*/record.json"),
                              *root.glob("*/config.yaml"), *root.glob("*/*/config.yaml")}):
            yield marker.parent


def folder_config(folder: Path) -> dict[str, Any] | None:
    """The run's resolved config from its record (or its config.yaml when no record was written)."""
    record = folder / "record.json"
    if record.exists():
        try:
            return json.loads(record.read_text()).get("config")
        except json.JSONDecodeError:
            pass
    config = folder / "config.yaml"
    if config.exists():
        import yaml
        return yaml.safe_load(config.read_text())
    return None


def migrate(roots: list[Path], dry_run: bool = False) -> list[str]:
    """Rename older-layout run folders under ``roots``; returns one line per folder looked at that was not current."""
    report = []
    for folder in dict.fromkeys(run_folders(roots)):
        config = folder_config(folder)
        if not isinstance(config, dict):
            report.append(f"skipped {folder}: no readable config")
            continue
        try:
            new_id, old_id = run_id_of(config), legacy_run_id(config)
        except Exception as err:  # an unregistered method, a config of an unknown shape
            report.append(f"skipped {folder}: {type(err).__name__}: {err}")
            continue
        if folder.name == new_id:
            continue
        if folder.name != old_id:
            report.append(f"skipped {folder}: named neither by its current id {new_id} nor by its older id")
            continue
        target = folder.parent / new_id
        if target.exists():
            report.append(f"kept {folder}: {target} exists already")
            continue
        report.append(f"{'would rename' if dry_run else 'renamed'} {folder} -> {target.name}")
        if not dry_run:
            folder.rename(target)
            record_path = target / "record.json"
            if record_path.exists():
                record = json.loads(record_path.read_text())
                record["run_id"] = new_id
                atomic.write_json(record_path, record)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.migrate_ids", description=__doc__.split("\n\n")[0],
                                     epilog="example: python -m jobs.migrate_ids results/ablations --dry-run")
    parser.add_argument("roots", nargs="+", type=Path, help="results folders (results/<grid>, or results)")
    parser.add_argument("--dry-run", action="store_true", help="print what would be renamed, rename nothing")
    args = parser.parse_args(argv)
    missing = [str(r) for r in args.roots if not r.is_dir()]
    if missing:
        print(f"error: not a folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    for line in migrate(args.roots, args.dry_run):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
