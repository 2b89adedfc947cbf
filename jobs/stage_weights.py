"""Stage the pretrained weights a grid needs into a shared cache, on a login node with internet:
``python -m jobs.stage_weights --grid G [--cache DIR] [overrides...]``.

Compute nodes usually have no internet, so the ``slurm`` executor checks before submitting that every backbone of
the pending runs loads offline from this cache, and its jobs read it with the Hugging Face hub offline. The cache is
``--cache``, else ``$FCS_WEIGHTS_CACHE``, else ``<results folder>/.weights`` (beside the code snapshots, on the
filesystem the nodes share); the Slurm executor's ``weights_cache`` setting picks the same default.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from frozen_clip.errors import SuiteError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from frozen_clip.weights import Download
    from jobs.grid import RunSpec


def weights_cache(results_dir: Path, configured: str | None = None) -> Path:
    """The shared weights cache of a grid whose results go to ``results_dir`` (see the module docstring)."""
    chosen = configured or os.environ.get("FCS_WEIGHTS_CACHE")
    return Path(chosen).resolve() if chosen else Path(results_dir).resolve().parent / ".weights"


def grid_downloads(specs: Iterable["RunSpec"]) -> list["Download"]:
    """The distinct pretrained weights the runs download (backbones that are local files or assets need none)."""
    from frozen_clip.weights import download_of
    pairs = dict.fromkeys((spec.config["backbone"], spec.config.get("pretrained")) for spec in specs)
    return [d for d in (download_of(arch, tag) for arch, tag in pairs) if d is not None]


def main(argv: list[str] | None = None) -> int:
    from frozen_clip.weights import stage
    from jobs.grid import expand_grid, resolve_plan
    from jobs.rawconfig import parse_overrides
    parser = argparse.ArgumentParser(prog="python -m jobs.stage_weights", description=__doc__.split("\n\n")[0],
                                     epilog="example (on the login node): python -m jobs.stage_weights --grid "
                                            "grids/ablations.yaml")
    parser.add_argument("--grid", required=True, help="grid YAML file")
    parser.add_argument("--cache", help="the shared cache folder (default: $FCS_WEIGHTS_CACHE, else "
                                        "<results folder>/.weights)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, as for jobs/launch.py")
    args = parser.parse_args(argv)
    try:
        grid = resolve_plan(expand_grid(args.grid, parse_overrides(args.overrides)))
        cache = weights_cache(grid.results_dir, args.cache)
        downloads = grid_downloads(grid.runs)
        if not downloads:
            print(f"{grid.name}: no backbone to download (every one is a local file or a suite asset)")
            return 0
        for download in downloads:
            print(f"{download.label}: {stage(download, cache)}", flush=True)
    except SuiteError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{grid.name}: {len(downloads)} backbone(s) staged in {cache} (listed in {cache / 'STAGED.json'}); "
          + ("the slurm executor finds them there by default" if not args.cache else
             f"give the slurm executor weights_cache: {cache}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
