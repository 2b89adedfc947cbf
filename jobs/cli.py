"""Command-line entry points: ``jobs/launch.py`` (a grid) and ``jobs/run.py`` (one run).

Exit codes: 0 success; 2 bad input (config or data), reported as one clear message before anything runs;
1 a run failed for another reason (its record holds the traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from frozen_clip.errors import ConfigError, SuiteError
from jobs.config import parse_overrides, resolve
from jobs.grid import Grid, RunSpec, load_grid


def _progress_printer(total: int):
    """Per-run progress: a tqdm bar on a terminal, plain log lines otherwise."""
    counter = {"n": 0}
    bar = None
    if sys.stderr.isatty():
        from tqdm import tqdm
        bar = tqdm(total=total, desc="runs", unit="run")

    def report(spec: RunSpec, outcome: Any) -> None:
        counter["n"] += 1
        label = describe(spec)
        detail = f" ({outcome.detail})" if outcome.detail else ""
        line = f"[{counter['n']}/{total}] {outcome.status:7s} {spec.run_id} {label} {outcome.seconds:.1f}s{detail}"
        if bar is not None:
            bar.update(1)
            bar.write(line)
        else:
            print(line, flush=True)
    return report


def describe(spec: RunSpec) -> str:
    """A short human label of a run."""
    cfg = spec.config
    return f"{cfg['method']['name']} {cfg['dataset']} {cfg['protocol']} shots={cfg['shots']} seed={cfg['seed']}"


def run_states(grid: Grid) -> list[tuple[RunSpec, Any]]:
    """The state of every run: records and locks on disk, and for submitted runs what the scheduler knows
    (one ``sacct`` call; a job cancelled before it wrote a record is ``failed``, reason ``cancelled``)."""
    from jobs.execute import run_dir
    from jobs.state import read_submission, state_of
    folders = [run_dir(spec.resolved) for spec in grid.runs]
    job_ids = [str(sub.get("job_id")) for sub in map(read_submission, folders)
               if sub and sub.get("executor") == "slurm" and sub.get("job_id")]
    scheduler = None
    if job_ids:
        from jobs.slurm import scheduler_states
        scheduler = scheduler_states(job_ids)
    return [(spec, state_of(folder, scheduler)) for spec, folder in zip(grid.runs, folders)]


def print_status(grid: Grid) -> int:
    """``--status``: one line per run from the records on disk (and sacct for submitted runs), then counts."""
    rows = run_states(grid)
    counts: dict[str, int] = {}
    for spec, state in rows:
        counts[state.status] = counts.get(state.status, 0) + 1
        reason = f"  {state.reason}" if state.reason else ""
        print(f"{state.status:8s} {spec.run_id} {describe(spec)}{reason}")
    summary = ", ".join(f"{counts[k]} {k}" for k in ("done", "running", "queued", "failed", "missing") if k in counts)
    print(f"{grid.name}: {len(rows)} runs: {summary}")
    return 0


def preflight(specs: list[RunSpec]) -> None:
    """Check the data of every run (split files, images) before anything runs; raises :class:`SuiteError`."""
    from jobs.data import Manifests, resolve_data_root
    checked: set[tuple[str, ...]] = set()
    for spec in specs:
        run = spec.resolved.run
        key = (run.data_root, run.dataset, run.protocol, *run.targets, str(run.shots), str(run.seed), run.sampling)
        if key in checked:
            continue
        checked.add(key)
        Manifests(spec.resolved, resolve_data_root(run.data_root)).preflight()


def results_table(grid: Grid) -> str:
    """Mean over seeds of each run's summary numbers, per method and dataset."""
    import pandas as pd
    from jobs.execute import read_record, run_dir
    rows = []
    for spec in grid.runs:
        record = read_record(run_dir(spec.resolved))
        if not record or record.get("status") != "done":
            continue
        cfg = record["config"]
        rows.append({"method": cfg["method"]["name"], "dataset": cfg["dataset"], "protocol": cfg["protocol"],
                     "shots": cfg["shots"], "seed": cfg["seed"], **record.get("summary", {})})
    if not rows:
        return "(no finished runs)"
    frame = pd.DataFrame(rows)
    keys = ["protocol", "dataset", "method", "shots"]
    numeric = [c for c in frame.columns if c not in keys + ["seed"]]
    table = frame.groupby(keys, sort=False)[numeric].mean().round(2)
    table["seeds"] = frame.groupby(keys, sort=False)["seed"].count()
    return table.to_string()


def write_analysis(grid: Grid) -> str | None:
    """Write the LaTeX tables and figures of the grid's results; returns the path of their index."""
    from analysis.tables import analyse, write_outputs
    result = analyse([grid.results_dir])
    if result.frame.empty:
        return None
    return str(write_outputs(result, grid.results_dir / "analysis", log=lambda line: None))


def launch_main(argv: list[str] | None = None) -> int:
    """``python jobs/launch.py --grid FILE [--executor ...] [--dry-run] [--status] [overrides...]``."""
    parser = argparse.ArgumentParser(prog="jobs/launch.py", description="Launch (or inspect) a grid of runs.")
    parser.add_argument("--grid", required=True, help="grid YAML file")
    parser.add_argument("--executor", choices=["inline", "local", "slurm"], help="override the grid's executor")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and what would run; run nothing")
    parser.add_argument("--status", action="store_true", help="show the state of every run from the records")
    parser.add_argument("--workers", type=int, help="local executor: number of worker slots")
    parser.add_argument("--executor-opt", action="append", default=[], metavar="KEY=VALUE",
                        help="set a key of the executor block, e.g. partition=gpu timeout_min=240 "
                             "additional_parameters.mail-type=END submitit.slurm_exclude=node3 (repeatable)")
    parser.add_argument("--retry-failed", action="store_true",
                        help="rerun only the failed runs (default: failed and missing runs)")
    parser.add_argument("--cancel", action="store_true", help="scancel the grid's queued and running Slurm jobs")
    parser.add_argument("--wait", action="store_true", help="slurm: block until the submitted jobs have ended")
    parser.add_argument("--no-analysis", action="store_true", help="do not write LaTeX tables at the end")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. seed=1 method.init=zero")
    args = parser.parse_args(argv)
    try:
        grid = load_grid(args.grid, parse_overrides(args.overrides))
        if args.status:
            return print_status(grid)
        if args.cancel:
            return cancel_grid(grid)
        return _launch(grid, args)
    except SuiteError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def executor_block(grid: Grid, args: argparse.Namespace) -> dict[str, Any]:
    """The grid's ``executor:`` block with the command line applied (``--executor``, ``--workers``,
    ``--executor-opt``). When ``--executor`` names another kind than the file, the file's settings that the chosen
    kind does not have (e.g. ``runs_per_gpu`` for slurm) are dropped, with a note."""
    from jobs.config import merge
    from jobs.executors import executor_fields
    block = dict(grid.executor)
    if args.executor and args.executor != block.get("kind", "local"):
        known = executor_fields(args.executor)
        dropped = sorted(k for k in block if k not in known)
        if dropped:
            print(f"note: --executor {args.executor}: ignoring the grid's {block.get('kind', 'local')} settings "
                  f"{dropped}")
        block = {k: v for k, v in block.items() if k in known}
    if args.executor:
        block["kind"] = args.executor
    if args.workers is not None:
        block["workers"] = args.workers
    return merge(block, parse_overrides(args.executor_opt, "--executor-opt"))


def _launch(grid: Grid, args: argparse.Namespace) -> int:
    from jobs.executors import parse_executor, run_inline, run_local
    where = f"{grid.path}: executor" + (" (with command-line options)" if args.executor_opt else "")
    executor = parse_executor(executor_block(grid, args), where)
    states = run_states(grid)
    wanted = ("failed",) if args.retry_failed else ("failed", "missing")
    pending = [spec for spec, state in states if state.status in wanted]
    counts = {k: sum(state.status == k for _, state in states) for k in ("done", "queued", "running", "missing")}
    print(f"{grid.name}: {len(grid.runs)} runs, {counts['done']} already done, "
          + (f"{counts['queued'] + counts['running']} queued or running, " if counts["queued"] + counts["running"]
             else "")
          + (f"{counts['missing']} missing not retried (--retry-failed), " if args.retry_failed and counts["missing"]
             else "")
          + f"{len(pending)} to run (executor: {executor.kind})")
    if args.dry_run:
        for spec, state in states:
            mark = "run " if spec in pending else f"{state.status:4s}"
            print(f"  {mark} {spec.run_id} {describe(spec)}")
        return 0
    if not pending:
        print("Nothing to run: every run is already done." if counts["done"] == len(grid.runs)
              else "Nothing to run now.")
        _finish(grid, args)
        return 0
    preflight(pending)
    start = time.perf_counter()
    if executor.kind == "slurm":
        from jobs.slurm import submit_grid
        code = submit_grid(grid, pending, executor, args)
        if args.wait:
            _finish(grid, args)
        return code
    report = _progress_printer(len(pending))
    if executor.kind == "inline":
        outcomes = run_inline(pending, report)
    else:
        outcomes = run_local(pending, executor, report)
    failed = [o for o in outcomes if o.status == "failed"]
    print(f"{len(outcomes) - len(failed)} of {len(outcomes)} runs finished in {time.perf_counter() - start:.1f}s"
          + (f"; {len(failed)} failed" if failed else ""))
    for outcome in failed:
        print(f"  failed {outcome.run_id}: {outcome.detail}", file=sys.stderr)
    _finish(grid, args)
    if failed:
        return 2 if all(o.user_error for o in failed) else 1
    return 0


def cancel_grid(grid: Grid) -> int:
    """``--cancel``: scancel the Slurm jobs of the grid's queued and running runs and mark their submissions
    cancelled (``--status`` then shows them failed, reason ``cancelled``; ``--retry-failed`` reruns them)."""
    import datetime as dt

    from frozen_clip import atomic
    from jobs.execute import run_dir
    from jobs.slurm import cancel_jobs
    from jobs.state import SUBMITTED_NAME, read_submission
    targets = []
    for spec, state in run_states(grid):
        submission = read_submission(run_dir(spec.resolved))
        if state.status in ("queued", "running") and submission and submission.get("executor") == "slurm":
            targets.append((run_dir(spec.resolved), submission))
    if not targets:
        print(f"{grid.name}: no queued or running Slurm job to cancel")
        return 0
    cancel_jobs([str(sub["job_id"]) for _, sub in targets])
    when = dt.datetime.now(dt.timezone.utc).isoformat()
    for folder, submission in targets:
        atomic.write_json(folder / SUBMITTED_NAME, {**submission, "cancelled_at": when})
    print(f"{grid.name}: cancelled {len(targets)} jobs: {' '.join(str(sub['job_id']) for _, sub in targets)}")
    return 0


def _finish(grid: Grid, args: argparse.Namespace) -> None:
    print()
    print(results_table(grid))
    print(f"\nRecords: {grid.results_dir}/<run_id>/record.json")
    if not args.no_analysis:
        index = write_analysis(grid)
        if index:
            print(f"Tables and figures: {index}")


def run_main(argv: list[str] | None = None) -> int:
    """``python jobs/run.py [--config FILE] key=value ...``: execute one run in this process."""
    parser = argparse.ArgumentParser(prog="jobs/run.py", description="Execute one run.")
    parser.add_argument("--config", help="a run config YAML (e.g. a run folder's config.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value settings, e.g. method=coop dataset=world_shapes")
    args = parser.parse_args(argv)
    threads = os.environ.get("FCS_TORCH_THREADS")
    if threads:
        import torch
        torch.set_num_threads(int(threads))
    try:
        raw = read_run_config(args.config) if args.config else {}
        from jobs.config import merge
        raw = merge(raw, parse_overrides(args.overrides))
        resolved = resolve(raw, args.config or "command line")
        spec = RunSpec(resolved.run_id, resolved.config, resolved)
        from jobs.executors import execute_run
        outcome = execute_run(spec, log=lambda line: print(line, flush=True))
    except SuiteError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{outcome.status}: {spec.run_id} {describe(spec)}" + (f" ({outcome.detail})" if outcome.detail else ""))
    if outcome.status == "failed":
        print(f"error: {outcome.detail}", file=sys.stderr)
        return 2 if outcome.user_error else 1
    return 0


def read_run_config(path: str) -> dict[str, Any]:
    """A run config YAML file (e.g. a run folder's ``config.yaml``) as a mapping; :class:`ConfigError` if not."""
    import yaml
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"run config {path} does not exist")
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a run config must be a mapping")
    return data
