"""Control-plane benchmark: CPU seconds of the launcher and the analysis on large grids (no run executes).

    python -m bench.control_plane [--runs 10000] [--dry-run-runs 1000] [--code ROOT ...] [--results-md FILE]

Measured, each as the CPU time (user + system) of one subprocess, the best of ``--repeats``:

- ``jobs/launch.py --help``;
- ``--status`` over ``--runs`` finished records, first without the run-id index (it resolves the grid and, where the
  code writes one, writes the index), then with it (what a launch that produced the records leaves behind);
- ``--dry-run`` of a grid of ``--dry-run-runs`` runs without records;
- ``python -m analysis.tables`` over the ``--runs`` records (no figures).

The records are written once, from one real record of the test fixtures with each run's resolved config and id, so
their size and shape are a real run's. ``--code`` names checkouts of the suite to measure against the same records
(default: this one); run ids do not depend on the checkout as long as resolution is the same. CPU seconds, not wall
time: the machine may be shared, and CPU time is what one idle core would spend.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = min((REPO / "tests/fixtures/records/base2novel").glob("*/record.json"))  # any synthetic fixture record
DATASETS = ("caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101", "fgvc_aircraft", "sun397",
            "dtd", "eurosat", "ucf101")
SECTION = "## Control plane"


def write_grid(folder: Path, name: str, runs: int) -> Path:
    """A grid of ``runs`` CoOp base-to-novel runs (datasets x seeds; ``runs`` is rounded up to a multiple of 10)."""
    seeds = max(1, -(-runs // len(DATASETS)))
    datasets = list(DATASETS[:runs]) if runs < len(DATASETS) else list(DATASETS)
    text = (f"name: {name}\nbase:\n  method: coop\n  backbone: ViT-B-16\n  pretrained: openai\n"
            f"  data_root: {folder / 'data'}\n  results_dir: {folder / 'results'}\n  protocol: base2novel\n"
            f"  shots: 16\ngrid:\n  dataset: {json.dumps(datasets)}\n  seed: {json.dumps(list(range(1, seeds + 1)))}\n"
            "executor: {kind: inline}\n")
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


def write_records(grid_path: Path) -> int:
    """A finished record per run of the grid (the template record with the run's config and id)."""
    from frozen_clip import atomic
    from jobs.grid import load_grid
    template = json.loads(TEMPLATE.read_text())
    grid = load_grid(grid_path)
    for spec in grid.runs:
        record = copy.deepcopy(template)
        record["run_id"], record["config"] = spec.run_id, spec.config
        run = spec.resolved.run
        atomic.write_json(Path(run.results_dir) / run.name / spec.run_id / "record.json", record)
    return len(grid.runs)


def cpu_seconds(command: list[str], cwd: Path) -> tuple[float, int]:
    """CPU seconds (user + system) of one subprocess, and its exit code."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} (in {cwd}) exited {proc.returncode}: {proc.stderr[-2000:]}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), proc.returncode


def measure(code: Path, work: Path, big: Path, small: Path, repeats: int, log: Callable[[str], None]
            ) -> dict[str, float]:
    """The rows of one checkout (see the module docstring)."""
    launch = [sys.executable, str(code / "jobs/launch.py")]
    index = big.parent / "results" / big.stem / ".index.json"
    out: dict[str, float] = {}

    def best(key: str, command: list[str], before: Callable[[], None] = lambda: None) -> None:
        times = []
        for _ in range(repeats):
            before()
            times.append(cpu_seconds(command, code)[0])
        out[key] = min(times)
        log(f"  {code}: {key}: {out[key]:.2f} s")

    best("help", [*launch, "--help"])
    best("status_cold", [*launch, "--grid", str(big), "--status"], lambda: index.unlink(missing_ok=True))
    cpu_seconds([*launch, "--grid", str(big), "--status"], code)  # leaves the index where the code writes one
    best("status", [*launch, "--grid", str(big), "--status"])
    best("dry_run", [*launch, "--grid", str(small), "--dry-run"])
    best("tables", [sys.executable, "-m", "analysis.tables", str(big.parent / "results" / big.stem), "--no-plots",
                    "--out", str(work / "analysis")])
    return out


ROWS = [("help", "`jobs/launch.py --help`", 0.5),
        ("status_cold", "`--status`, {runs} finished records, no run-id index", None),
        ("status", "`--status`, {runs} finished records", 2.0),
        ("dry_run", "`--dry-run`, {dry} runs", 3.0),
        ("tables", "`python -m analysis.tables`, {runs} records", 15.0)]


def table(results: dict[str, Any]) -> str:
    """The Markdown table: one row per command, one column per checkout."""
    labels = list(results["codes"])
    lines = ["| command | target | " + " | ".join(f"{label} (CPU s)" for label in labels) + " |",
             "|---|---|" + "---|" * len(labels)]
    for key, text, target in ROWS:
        cells = [f"{results['codes'][label][key]:.2f}" for label in labels]
        lines.append(f"| {text.format(runs=results['runs'], dry=results['dry_run_runs'])} | "
                     f"{'-' if target is None else f'<= {target:g}'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def section(results: dict[str, Any]) -> str:
    return (f"{SECTION}\n\nGenerated by `python -m bench.control_plane` on {results['date']} ({results['machine']}). "
            "CPU seconds (user + system) of one subprocess, best of "
            f"{results['repeats']}; {results['runs']} records written from one real fixture record with each run's "
            "config and id. `--status` with the run-id index is what follows a launch (the launch writes the index); "
            "without it the launcher resolves the grid first.\n\n" + table(results) + "\n")


def write_section(path: Path, text: str, section: str = SECTION) -> None:
    """Replace (or append) a benchmark's section (headed ``section``) of the results file."""
    old = path.read_text() if path.exists() else ""
    start = old.find(section)
    if start >= 0:
        end = old.find("\n## ", start + len(section))
        old = old[:start].rstrip() + "\n\n" + (old[end + 1:] if end >= 0 else "")
    path.write_text(old.rstrip() + "\n\n" + text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.control_plane", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=10000, help="finished records for --status and the analysis")
    p.add_argument("--dry-run-runs", type=int, default=1000, help="runs of the --dry-run grid")
    p.add_argument("--code", nargs="+", default=[str(REPO)], metavar="[LABEL=]ROOT",
                   help="checkouts of the suite to measure (default: this one)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", type=Path, default=None, help="write the numbers as JSON")
    p.add_argument("--results-md", type=Path, default=None, help="replace this benchmark's section of a results file")
    return p.parse_args(argv)


def run(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="fcs-control-plane-"))
    try:
        big, small = write_grid(work, "records", args.runs), write_grid(work, "dry", args.dry_run_runs)
        count = write_records(big)
        log(f"wrote {count} records under {work / 'results'}")
        codes = {}
        for item in args.code:
            label, _, root = item.rpartition("=")
            codes[label or Path(root).name] = measure(Path(root).resolve(), work, big, small, args.repeats, log)
        return {"date": dt.datetime.now().isoformat(timespec="seconds"), "runs": count,
                "dry_run_runs": args.dry_run_runs, "repeats": args.repeats, "codes": codes,
                "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = run(args)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    if args.results_md:
        write_section(args.results_md, section(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
