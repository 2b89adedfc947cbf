"""Command-line entry points: ``jobs/launch.py`` (a grid) and ``jobs/run.py`` (one run).

Exit codes: 0 success; 2 bad input (config or data), reported as one clear message before anything runs;
1 a run failed for another reason (its record holds the traceback); 130 / 143 interrupted by SIGINT (Ctrl-C) /
SIGTERM: every running run is stopped within seconds, keeps its last checkpoint, and the same command resumes it.

Only this module (with its two scripts) is the command line; no library module imports it. What the parser and
``--status`` need is imported at module level and is light (no torch): resolving a grid (:mod:`jobs.config`, the
methods) and executing runs are imported where they are used.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from frozen_clip.errors import SuiteError
from jobs.grid import Grid, GridPlan, RunSpec, expand_grid, resolve_plan
from jobs.rawconfig import merge, parse_overrides
from jobs.runfolder import read_record, read_run_config, run_dir


class Progress:
    """The launcher's progress: a line per finished run and, for runs executed in this process (``inline``), a line
    per epoch with the run's loss, epoch time and ETA and an ETA for the grid; on a terminal a tqdm bar over the runs
    whose postfix shows the current epoch instead.

    ``methods``: the method of each pending run, in the order they run. Called with ``(spec, outcome)`` when a run
    ends; :meth:`log` takes a run's log lines (``RUN_ID: message``)."""

    def __init__(self, methods: Sequence[str]) -> None:
        self.methods, self.total, self.finished = list(methods), len(methods), 0
        self.seconds: dict[str, list[float]] = {}  # per method, the wall time of its finished runs
        self.run_start = time.monotonic()
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=self.total, desc="runs", unit="run")

    def __call__(self, spec: RunSpec, outcome: Any) -> None:
        self.finished += 1
        self.run_start = time.monotonic()
        if outcome.status == "done":
            self.seconds.setdefault(spec.config["method"]["name"], []).append(outcome.seconds)
        detail = f" ({outcome.detail})" if outcome.detail else ""
        line = (f"[{self.finished}/{self.total}] {outcome.status:7s} {spec.run_id} {describe(spec)} "
                f"{outcome.seconds:.1f}s{detail}")
        if self.bar is not None:
            self.bar.update(1)
            self.bar.write(line)
        else:
            print(line, flush=True)

    def log(self, line: str) -> None:
        """A run's log line: epoch lines are shown (with the grid's ETA), the rest stays in the run's log.txt."""
        _run_id, _, message = line.partition(": ")
        match = EPOCH_LINE.match(message)
        if not match or self.finished >= self.total:
            return
        fraction = int(match.group(1)) / max(int(match.group(2)), 1)
        left = grid_seconds_left(self.methods[self.finished:], fraction, time.monotonic() - self.run_start,
                                 self.seconds)
        eta = "" if left is None else f"; grid ETA {_duration(left)}"
        if self.bar is not None:
            self.bar.set_postfix_str(f"{message}{eta}", refresh=True)
        else:
            print(f"  [{self.finished + 1}/{self.total}] {message}{eta}", flush=True)


def grid_seconds_left(methods_left: Sequence[str], fraction: float, elapsed: float,
                      seconds: dict[str, list[float]]) -> float | None:
    """Seconds until the grid ends: the run under way (``methods_left[0]``, ``fraction`` of its epochs done in
    ``elapsed`` s) and the runs after it. A run is estimated by the mean time of the finished runs of its method;
    the method under way, before any of its runs finished, by its pace so far; a method not seen yet by the mean
    of the methods' estimates (so a few fast zero-shot runs do not make a HeBA grid look nearly done). None before
    any estimate exists."""
    per_method = {method: sum(times) / len(times) for method, times in seconds.items() if times}
    current = methods_left[0]
    if current not in per_method and fraction > 0:
        per_method[current] = elapsed / fraction
    if not per_method:
        return None
    unseen = sum(per_method.values()) / len(per_method)
    return (max(per_method.get(current, unseen) - elapsed, 0.0)
            + sum(per_method.get(method, unseen) for method in methods_left[1:]))


def _duration(seconds: float) -> str:
    """``3m10s`` or ``42s``."""
    whole = round(seconds)
    return f"{whole // 60}m{whole % 60:02d}s" if whole >= 60 else f"{whole}s"


EPOCH_LINE = re.compile(r"epoch (\d+)/(\d+):")
"""The trainer's per-epoch log line (``epoch 3/10: loss 1.1188 lr 0.0543 (1.0s, ETA 8s)``)."""


def describe(spec: RunSpec) -> str:
    """A short human label of a run."""
    from jobs.index import describe_config
    return describe_config(spec.config)


def remember_ids(plan: GridPlan, grid: Grid) -> None:
    """Record the grid's run ids in its results folder's index (:mod:`jobs.index`), for ``--status``."""
    from jobs import index
    if grid.runs:
        index.save(plan, grid)


def status_entries(plan: GridPlan) -> list[Any]:
    """The runs of the grid for ``--status`` (:class:`jobs.index.RunEntry`): from the run-id index when it holds this
    expansion under the current code; else by resolving (and rewriting the index); where resolution cannot import
    the suite (no torch), a results folder without run folders means every run is missing."""
    from jobs import index
    entries = index.lookup(plan)
    if entries is not None:
        return entries
    try:
        grid = resolve_plan(plan)
    except ImportError as err:
        if list(index.run_folders(plan.results_dir)):
            raise SuiteError(f"--status: the run ids of {plan.path} are not in {plan.results_dir / index.INDEX_NAME} "
                             f"for this code, and computing them needs the suite's methods, which cannot be imported "
                             f"here ({err}); run `python jobs/launch.py --grid {plan.path} --dry-run` once where "
                             "torch is installed") from None
        return [index.RunEntry("-" * 16, raw.results_dir / ("-" * 16), _raw_label(raw.raw)) for raw in plan.raws]
    remember_ids(plan, grid)
    return [index.RunEntry(spec.run_id, run_dir(spec.resolved), describe(spec)) for spec in grid.runs]


def _raw_label(raw: dict[str, Any]) -> str:
    """A label of an unresolved run config (values not given show as ``?``)."""
    method = raw.get("method")
    name = method.get("name", "?") if isinstance(method, dict) else method
    return (f"{name} {raw.get('dataset', '?')} {raw.get('protocol', '?')} shots={raw.get('shots', '?')} "
            f"seed={raw.get('seed', '?')}")


def print_status(plan: GridPlan) -> int:
    """``--status``: one line per run from the records on disk (and sacct for submitted runs), then counts."""
    from jobs.inputs import changed_inputs
    from jobs.state import run_states
    entries = status_entries(plan)
    states = run_states([entry.folder for entry in entries])
    changed = changed_inputs(entry.folder for entry, state in zip(entries, states) if state.status == "done")
    counts: dict[str, int] = {}
    lines = []
    for entry, state in zip(entries, states):
        counts[state.status] = counts.get(state.status, 0) + 1
        reason = state.reason or changed.get(entry.folder, "")
        if state.status in ("running", "failed"):
            reason = " ".join(filter(None, [reason, scheduler_note(entry.folder, state.status, reason)]))
        lines.append(f"{state.status:8s} {entry.run_id} {entry.label}" + (f"  {reason}" if reason else ""))
    print("\n".join(lines))
    summary = ", ".join(f"{counts[k]} {k}" for k in ("done", "running", "queued", "failed", "missing") if k in counts)
    print(f"{plan.name}: {len(entries)} runs: {summary}")
    if changed:
        print(f"{plan.name}: {len(changed)} finished runs were made from inputs that changed since (images rewritten or "
              "weights replaced; see above): their records are kept; `--rerun-changed` runs them again")
    print_older_runs(plan, entries)
    return 0


def scheduler_note(folder: Any, status: str, reason: str) -> str:
    """For a run submitted to Slurm: ``[slurm job 12_3]`` (unless ``reason`` names the job), and for a failed one
    where the job's log is."""
    from jobs.state import read_submission
    submission = read_submission(folder)
    if not submission or submission.get("executor") != "slurm" or not submission.get("job_id"):
        return ""
    job_id = str(submission["job_id"])
    note = "" if job_id in reason.split() or f"job {job_id}:" in reason else f"[slurm job {job_id}]"
    if status == "failed" and submission.get("log_folder"):
        note += f" log: {submission['log_folder']}/{job_id}_0_log.err (.out)"
    return note.strip()


def print_older_runs(plan: GridPlan, entries: list[Any]) -> None:
    """The finished runs in the grid's folder made under an older recipe of their method (or the older layout):
    not runs of the grid any more (their ids changed), kept, and not counted above."""
    from jobs import index
    current = index.recipes(plan.results_dir)
    older = index.older_recipe_runs(plan.results_dir, {entry.run_id for entry in entries}, current)
    for method, versions in sorted(older.older_recipe.items()):
        now = current[method]
        print(f"{plan.name}: {len(versions)} finished runs of {method} were made under an older recipe "
              f"(version {', '.join(str(v) for v in sorted(set(versions)))}; now {now}): kept in {plan.results_dir}, "
              "not counted above; a launch reruns them under the current recipe")
    if older.older_layout:
        print(f"{plan.name}: {older.older_layout} finished runs have records of the older layout (run ids that hashed "
              f"every option): `python -m jobs.migrate_ids {plan.results_dir}` renames them to their current ids")


def preflight(specs: list[RunSpec], where: str) -> None:
    """Check the results folders and the data of every run (split files, images) before anything runs; raises
    :class:`SuiteError` prefixed with ``where`` (the grid file)."""
    from jobs.data import Manifests, check_image_paths, resolve_data_root
    from jobs.runfolder import check_writable_folder
    try:
        for folder in sorted({str(run_dir(spec.resolved).parent) for spec in specs}):
            check_writable_folder(folder, "results folder (results_dir/name)")
        checked: set[tuple[str, ...]] = set()
        images: dict[Any, set[str]] = {}  # per image ledger (results folder): every image of every run, checked once
        listed: set[str] = set()  # manifests whose images are in `images` already
        for spec in specs:
            run = spec.resolved.run
            key = (run.data_root, run.dataset, run.protocol, *run.targets, str(run.shots), str(run.seed),
                   run.sampling)
            if key in checked:
                continue
            checked.add(key)
            manifests = Manifests(spec.resolved, resolve_data_root(run.data_root))
            images.setdefault(manifests.ledger, set()).update(manifests.image_paths(listed))
        for ledger, paths in images.items():
            check_image_paths(paths, ledger)
    except SuiteError as err:
        raise type(err)(f"{where}: {err}") from None


def grid_summary(specs: Sequence[RunSpec]) -> list[str]:
    """One line per method: ``HeBA: 26 configurations x 11 datasets x 3 seeds = 858 runs`` (the product when the
    grid is complete in them, else the counts and the number of runs)."""
    from jobs.config import variant_label
    by_method: dict[str, list[dict[str, Any]]] = {}
    for spec in specs:
        label = variant_label(spec.config)
        by_method.setdefault(label.split(" [")[0], []).append(
            {"variant": label, "dataset": spec.config["dataset"], "seed": spec.config["seed"],
             "shots": spec.config["shots"], "protocol": spec.config["protocol"]})
    lines = []
    for method, runs in by_method.items():
        counts = [(len({r[key] for r in runs}), noun) for key, noun in
                  (("variant", "configuration"), ("protocol", "protocol"), ("dataset", "dataset"),
                   ("shots", "shot setting"), ("seed", "seed"))]
        shown = [(n, noun) for n, noun in counts if n > 1 or noun in ("configuration", "dataset", "seed")]
        parts = [f"{n} {noun}{'s' if n != 1 else ''}" for n, noun in shown]
        product = 1
        for n, _ in counts:
            product *= n
        total = f"{len(runs)} run{'s' if len(runs) != 1 else ''}"
        lines.append(f"{method}: {' x '.join(parts)} = {total}" if product == len(runs)
                     else f"{method}: {', '.join(parts)}; {total}")
    return lines


def results_table(grid: Grid) -> str:
    """Mean ± standard deviation over seeds of each run's summary numbers, per variant (the method's display name
    and the options it sets off their defaults, ``HeBA [bottleneck ratio=8]``) and dataset: variants are never
    averaged together. A variant run on several datasets also gets an ``average`` row: per seed the mean over its
    datasets (base-to-novel: the HM of the mean base and mean novel accuracy, as the papers' Average), then mean ±
    std over the seeds. The std is the population std (the analysis tables' convention)."""
    import pandas as pd
    from jobs.config import variant_label
    rows, done = [], []
    for spec in grid.runs:
        record = read_record(run_dir(spec.resolved))
        if not record or record.get("status") != "done":
            continue
        cfg = record["config"]
        done.append(spec)
        rows.append({"method": variant_label(spec.config), "dataset": cfg["dataset"], "protocol": cfg["protocol"],
                     "shots": cfg["shots"], "seed": cfg["seed"], **record.get("summary", {})})
    if not rows:
        return "(no finished runs)"
    for row, label in zip(rows, _distinct_labels(done, [row["method"] for row in rows])):
        row["method"] = label
    frame = pd.DataFrame(rows)
    keys = ["protocol", "dataset", "method", "shots"]
    numeric = [c for c in frame.columns if c not in keys + ["seed"]]
    frame = pd.concat([frame, _dataset_averages(frame, numeric)], ignore_index=True)
    groups = frame.groupby(keys, sort=False)
    means, stds = groups[numeric].mean(), groups[numeric].std(ddof=0)
    seeds = groups["seed"].count()
    table = means.copy().astype(object)
    for column in numeric:
        table[column] = [_mean_std(m, s, n) for m, s, n in zip(means[column], stds[column], seeds)]
    table["seeds"] = seeds
    return table.to_string()


AVERAGE_ROW = "average"
"""The ``dataset`` of the end table's rows that average a variant over its datasets."""


def _dataset_averages(frame: "pd.DataFrame", numeric: list[str]) -> "pd.DataFrame":
    """Per variant run on several datasets and per seed, the mean over those datasets (one row per seed, dataset
    :data:`AVERAGE_ROW`); ``hm`` is recomputed from the averaged ``base`` and ``novel``."""
    import pandas as pd
    from protocols.metrics import harmonic_mean
    variants = ["protocol", "method", "shots"]
    several = frame.groupby(variants, sort=False)["dataset"].transform("nunique") > 1
    if not several.any():
        return frame.iloc[0:0]
    average = frame[several].groupby(variants + ["seed"], sort=False)[numeric].mean().reset_index()
    if {"base", "novel", "hm"} <= set(numeric):
        average["hm"] = [harmonic_mean(b, n) for b, n in zip(average["base"], average["novel"])]
    average["dataset"] = AVERAGE_ROW
    return pd.DataFrame(average)


def _mean_std(mean: float, std: float, n: int) -> str:
    """``81.88 ± 0.42`` over ``n`` seeds (the mean alone for one seed or a missing value)."""
    import pandas as pd
    if pd.isna(mean):
        return "-"
    return f"{mean:.2f}" if n < 2 or pd.isna(std) else f"{mean:.2f} ± {std:.2f}"


def _distinct_labels(specs: Sequence[RunSpec], labels: list[str]) -> list[str]:
    """``labels`` (variant labels of ``specs``), each extended by the settings that tell apart configurations sharing
    it within a dataset, e.g. ``MMA [layers=[2,3]] (lr=0.015)`` for variants that differ in ``optim.*`` only, so no
    row of the end table pools configurations as if they were seeds."""
    from jobs.grid import _flatten
    skip = {"seed", "name", "results_dir", "data_root", "device", "num_workers", "fast"}
    flat = [{k: json.dumps(v, sort_keys=True) for k, v in _flatten(spec.config).items() if k not in skip}
            for spec in specs]
    groups: dict[tuple, list[int]] = {}
    for i, (spec, label) in enumerate(zip(specs, labels)):
        groups.setdefault((label, spec.config["dataset"], spec.config["protocol"], spec.config["shots"]), []).append(i)
    out = list(labels)
    for members in groups.values():
        keys = sorted({k for i in members for k in flat[i]})
        differing = [k for k in keys if len({flat[i].get(k) for i in members}) > 1]
        for i in members if differing else ():
            settings = ", ".join(f"{k.rpartition('.')[2]}={flat[i].get(k)}" for k in differing)
            out[i] = f"{labels[i]} ({settings})"
    return out


def write_analysis(grid: Grid) -> str | None:
    """Write the LaTeX tables and figures of the grid's results; returns the path of their index."""
    from analysis.tables import analyse, write_outputs
    result = analyse([grid.results_dir])
    if result.frame.empty:
        return None
    return str(write_outputs(result, grid.results_dir / "analysis", log=lambda line: None))


def launch_main(argv: list[str] | None = None) -> int:
    """``python jobs/launch.py --grid FILE [--executor ...] [--dry-run] [--status] [overrides...]``."""
    from jobs.executors import EXECUTORS
    parser = argparse.ArgumentParser(
        prog="jobs/launch.py", description="Launch (or inspect) a grid of runs.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  python jobs/launch.py --grid grids/quickstart.yaml              # minutes on a laptop CPU\n"
               "  python jobs/launch.py --grid grids/ablations.yaml --dry-run --executor slurm\n"
               "  python jobs/launch.py --grid grids/ablations.yaml --status\n"
               "  python jobs/launch.py --grid grids/ablations.yaml --print-config seed=1 method.bottleneck_ratio=8")
    parser.add_argument("--grid", required=True, help="grid YAML file")
    parser.add_argument("--executor", choices=EXECUTORS.names(), help="override the grid's executor")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and what would run; run nothing")
    parser.add_argument("--status", action="store_true", help="show the state of every run from the records")
    parser.add_argument("--print-config", action="store_true",
                        help="print every run's resolved config as YAML, each value with its origin; run nothing")
    parser.add_argument("--workers", type=int, help="local executor: number of worker slots")
    parser.add_argument("--executor-opt", action="append", default=[], metavar="KEY=VALUE",
                        help="set a key of the executor block, e.g. partition=gpu timeout_min=240 "
                             "additional_parameters.mail-type=END submitit.slurm_exclude=node3 (repeatable)")
    parser.add_argument("--retry-failed", action="store_true",
                        help="rerun only the failed runs (default: failed and missing runs)")
    parser.add_argument("--rerun-changed", action="store_true",
                        help="also rerun finished runs whose images or weights changed since they ran (their records "
                             "are moved aside as record.json.inputs-changed-<time>)")
    parser.add_argument("--cancel", action="store_true", help="scancel the grid's queued and running Slurm jobs")
    parser.add_argument("--wait", action="store_true", help="slurm: block until the submitted jobs have ended")
    parser.add_argument("--no-analysis", action="store_true", help="do not write LaTeX tables at the end")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. seed=1 method.init=zero")
    args = parser.parse_args(argv)
    try:
        with interrupts_as_exceptions():
            plan = expand_grid(args.grid, parse_overrides(args.overrides))
            if args.status:
                return print_status(plan)
            grid = resolve_plan(plan)
            if args.print_config:
                return print_grid_configs(plan, grid, parse_overrides(args.overrides))
            if args.cancel:
                return cancel_grid(grid)
            return _launch(plan, grid, args)
    except SuiteError as err:
        print(f"error: {err}", file=sys.stderr)
        return getattr(err, "exit_code", 2)  # 2: bad input; a SchedulerError says 1 when Slurm is unreachable
    except Interrupted as err:
        command = " ".join(["python", "jobs/launch.py", *(argv if argv is not None else sys.argv[1:])])
        print(f"\ninterrupted by {err.signal_name}: running runs were stopped and keep their last checkpoint; "
              f"nothing finished was lost. Resume with: {command}", file=sys.stderr)
        return err.exit_code


class Interrupted(BaseException):
    """SIGINT or SIGTERM received (a BaseException, as KeyboardInterrupt: no ``except Exception`` swallows it)."""

    def __init__(self, signum: int) -> None:
        import signal
        super().__init__(signum)
        self.signal_name = signal.Signals(signum).name
        self.exit_code = 128 + signum


class interrupts_as_exceptions:
    """Within the block, SIGINT and SIGTERM raise :class:`Interrupted` in the main thread, so that ``finally``
    blocks run (locks released, run processes stopped) and the command line can say what happened; the previous
    handlers come back after it. SIGTERM would otherwise end the process at once, leaving its pool's runs going."""

    SIGNALS = ("SIGINT", "SIGTERM")

    def __enter__(self) -> "interrupts_as_exceptions":
        import signal
        import threading
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                signum = getattr(signal, name)
                self._previous[signum] = signal.signal(signum, self._raise)
        return self

    @staticmethod
    def _raise(signum: int, frame: Any) -> None:
        raise Interrupted(signum)

    def __exit__(self, *exc: Any) -> None:
        import signal
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def executor_block(grid: Grid, args: argparse.Namespace) -> dict[str, Any]:
    """The grid's ``executor:`` block with the command line applied (``--executor``, ``--workers``,
    ``--executor-opt``). When ``--executor`` names another kind than the file, the file's settings that the chosen
    kind does not have (e.g. ``runs_per_gpu`` for slurm) are dropped, with a note."""
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


def _launch(plan: GridPlan, grid: Grid, args: argparse.Namespace) -> int:
    from jobs.executors import get_executor, parse_executor
    from jobs.state import run_states
    where = str(grid.path) + (" (with --executor-opt)" if args.executor_opt else "")
    options = parse_executor(executor_block(grid, args), where)
    if args.rerun_changed and not args.dry_run:
        rerun_changed(grid)
    states = list(zip(grid.runs, run_states([run_dir(spec.resolved) for spec in grid.runs])))
    wanted = ("failed",) if args.retry_failed else ("failed", "missing")
    pending = [spec for spec, state in states if state.status in wanted]
    counts = {k: sum(state.status == k for _, state in states) for k in ("done", "queued", "running", "missing")}
    print(f"{grid.name}: {len(grid.runs)} runs, {counts['done']} already done, "
          + (f"{counts['queued'] + counts['running']} queued or running, " if counts["queued"] + counts["running"]
             else "")
          + (f"{counts['missing']} missing not retried (--retry-failed), " if args.retry_failed and counts["missing"]
             else "")
          + f"{len(pending)} to run (executor: {options.kind})")
    if args.dry_run:
        remember_ids(plan, grid)
        to_run = {spec.run_id for spec in pending}
        print("\n".join(f"  {'run ' if spec.run_id in to_run else f'{state.status:4s}'} {spec.run_id} {describe(spec)}"
                        for spec, state in states))
        print("\n".join(grid_summary(grid.runs)))
        for line in get_executor(options.kind).describe(grid, pending, options):
            print(line)
        return 0
    if not pending:
        print("Nothing to run: every run is already done." if counts["done"] == len(grid.runs)
              else "Nothing to run now.")
        remember_ids(plan, grid)
        _finish(grid, args)
        return 0
    preflight(pending, str(grid.path))
    remember_ids(plan, grid)  # after the checks: a launch refused for bad input writes nothing
    start = time.perf_counter()
    progress = Progress([spec.config["method"]["name"] for spec in pending])
    outcomes = get_executor(options.kind).submit(grid, pending, options, progress, args.wait)
    if outcomes is None:  # handed to a scheduler: --status follows the runs
        print(f"  records: {grid.results_dir}/<run id>/record.json")
        print(f"  follow: {status_command(args)}")
        return 0
    failed = [o for o in outcomes if o.status == "failed"]
    skipped = [o for o in outcomes if o.status == "skipped"]
    print(f"{len(outcomes) - len(failed)} of {len(outcomes)} runs finished in {time.perf_counter() - start:.1f}s"
          + (f" ({len(skipped)} of them by another launch of this grid or still running in one)" if skipped else "")
          + (f"; {len(failed)} failed" if failed else ""))
    for outcome in failed:
        print(f"  failed {outcome.run_id}: {outcome.detail}", file=sys.stderr)
    _finish(grid, args)
    if failed:
        return 2 if all(o.user_error for o in failed) else 1
    return 0


def status_command(args: argparse.Namespace) -> str:
    """The ``--status`` command of this launch: the same grid file and command-line overrides (they decide which
    runs the grid holds)."""
    import shlex
    return shlex.join(["python", "jobs/launch.py", "--grid", args.grid, "--status", *args.overrides])


def print_grid_configs(plan: GridPlan, grid: Grid, overrides: dict[str, Any]) -> int:
    """``--print-config``: each run's resolved config with the origin of every value (:mod:`jobs.printconfig`)."""
    from jobs.printconfig import print_configs
    raws: dict[str, dict[str, Any]] = {}
    for raw_run, run_id in zip(plan.raws, grid.raw_ids):
        raws.setdefault(run_id, raw_run.raw)
    print(print_configs(((spec.resolved, raws[spec.run_id]) for spec in grid.runs), overrides, "grid file"),
          end="")
    return 0


def rerun_changed(grid: Grid) -> None:
    """``--rerun-changed``: move aside the records of finished runs whose inputs changed (:mod:`jobs.inputs`), so
    that this launch runs them again."""
    from jobs.inputs import changed_inputs, set_aside
    from jobs.runfolder import read_status
    folders = [run_dir(spec.resolved) for spec in grid.runs]
    changed = changed_inputs(folder for folder in folders if read_status(folder) == "done")
    for folder, reason in changed.items():
        print(f"rerunning {folder.name}: {reason} (old record: {set_aside(folder).name})")


def cancel_grid(grid: Grid) -> int:
    """``--cancel``: scancel the Slurm jobs of the grid's queued and running runs and mark their submissions
    cancelled (``--status`` then shows them failed, reason ``cancelled``; ``--retry-failed`` reruns them)."""
    import datetime as dt

    from frozen_clip import atomic
    from jobs.slurm import cancel_jobs
    from jobs.state import SUBMITTED_NAME, read_submission, run_states
    targets = []
    for spec, state in zip(grid.runs, run_states([run_dir(spec.resolved) for spec in grid.runs])):
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
            print(next_steps(grid, index))


def next_steps(grid: Grid, index: str) -> str:
    """What to do after a launch: read the tables, compile their preview; after a grid on the built-in world, how to
    go on to real data."""
    analysis = Path(index).parent
    lines = ["", "Next:", f"  open {index} (every table, its caption and notes)",
             f"  cd {analysis} && pdflatex tables_preview.tex   # the tables on a two-column paper page"]
    if any(spec.config.get("data_root") == "builtin" for spec in grid.runs):
        lines += ["  python -m protocols.verify_data /data/coop       # check a CoOp-layout data root first",
                  f"  python jobs/launch.py --grid {grid.path} data_root=/data/coop backbone=ViT-B-16 "
                  "pretrained=openai   # the same grid on real data",
                  "  python -m analysis.recipes --out recipes          # every method's recipe, each value sourced"]
    return "\n".join(lines)


def run_main(argv: list[str] | None = None) -> int:
    """``python jobs/run.py [--config FILE] key=value ...``: execute one run in this process."""
    parser = argparse.ArgumentParser(
        prog="jobs/run.py", description="Execute one run.", formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  python jobs/run.py method=coop dataset=world_hues backbone=tiny-world pretrained=world\n"
               "  python jobs/run.py method=heba dataset=dtd data_root=/data/coop seed=2\n"
               "  python jobs/run.py --print-config method=clip_lora dataset=dtd protocol=fewshot shots=4")
    parser.add_argument("--config", help="a run config YAML (e.g. a run folder's config.yaml)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config as YAML, each value with its origin; run nothing")
    parser.add_argument("overrides", nargs="*", help="key=value settings, e.g. method=coop dataset=world_shapes")
    args = parser.parse_args(argv)
    threads = os.environ.get("FCS_TORCH_THREADS")
    if threads:
        import torch
        torch.set_num_threads(int(threads))
    try:
        with interrupts_as_exceptions():
            from jobs.config import resolve
            raw = read_run_config(args.config) if args.config else {}
            raw = merge(raw, parse_overrides(args.overrides))
            resolved = resolve(raw, args.config or "command line")
            if args.print_config:
                from jobs.printconfig import print_configs
                print(print_configs([(resolved, raw)], parse_overrides(args.overrides), "run config"), end="")
                return 0
            spec = RunSpec(resolved.run_id, resolved.config, resolved)
            from jobs.runfolder import check_writable_folder
            check_writable_folder(run_dir(resolved).parent, "results folder (results_dir/name)")
            from jobs.executors import execute_run
            outcome = execute_run(spec, log=lambda line: print(line, flush=True))
    except SuiteError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Interrupted as err:
        print(f"interrupted by {err.signal_name}: the run keeps its last checkpoint; the same command resumes it",
              file=sys.stderr)
        return err.exit_code
    print(f"{outcome.status}: {spec.run_id} {describe(spec)}" + (f" ({outcome.detail})" if outcome.detail else ""))
    if outcome.status == "failed":
        print(f"error: {outcome.detail}", file=sys.stderr)
        return 2 if outcome.user_error else 1
    return 0
