"""The ``slurm`` executor: configuration, code snapshot, checkpoint/requeue bookkeeping and status (no cluster
needed), then end to end against a real Slurm cluster (``bash .ci/slurm-up.sh``, ``MaxArraySize=4``): a grid as one
job array with submit-and-exit and ``--status``, a larger grid split into arrays that fit with ``--wait``, runs packed
into array tasks, refusals and an unreachable controller as one line, a job cancelled mid-training reported failed
and completed by ``--retry-failed``, and jobs requeued by Slurm or by submitit's timeout/preemption path resuming to
metrics identical to an uninterrupted run.

The cluster tests are skipped only when ``sinfo`` is not on PATH; with ``FCS_REQUIRE_SLURM=1`` (CI) they fail
instead, and they fail whenever the cluster is not idle.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from frozen_clip.errors import ConfigError
from jobs.cli import launch_main
from jobs.config import resolve
from jobs.execute import RunExecution
from jobs.runfolder import read_record, run_dir
from jobs.grid import RunSpec
from jobs.slurm import (REQUEUES_NAME, SNAPSHOT_PACKAGES, SlurmConfig, SlurmRun, executor_parameters, make_executor,
                        plan_arrays, read_cluster_limits, scheduler_states, snapshot_code)
from jobs.state import from_scheduler, state_of
from tests.conftest import base_run, write_dataset

REPO = Path(__file__).resolve().parent.parent
REQUIRE_SLURM = os.environ.get("FCS_REQUIRE_SLURM") == "1"


def launch(*args: str) -> tuple[int, str]:
    """``jobs/launch.py`` in this process; returns (exit code, stdout + stderr)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = launch_main([str(a) for a in args])
    return code, out.getvalue()


def write_grid(path: Path, base: dict, axes: dict | None = None, **executor) -> Path:
    grid = {"name": path.stem, "base": base, "grid": axes or {},
            "executor": {"kind": "slurm", "cpus_per_task": 1, "mem_gb": 1, "timeout_min": 10, **executor}}
    path.write_text(yaml.safe_dump(grid))
    return path


def folders(results: Path, name: str) -> list[Path]:
    return sorted(p for p in (results / name).iterdir() if p.is_dir() and not p.name.startswith("."))


def strip_times(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in entry.items() if k != "time_s"} for entry in history]


# -- no cluster needed -----------------------------------------------------------------------------------------------
def test_config_from_block_and_command_line(tmp_path):
    from jobs.cli import executor_block
    from jobs.executors import parse_executor
    from jobs.grid import load_grid
    data = tmp_path / "data"
    grid_file = tmp_path / "g.yaml"
    grid_file.write_text(yaml.safe_dump({"name": "g", "base": base_run(data, tmp_path / "r"),
                                         "executor": {"kind": "local", "runs_per_gpu": 2}}))
    grid = load_grid(grid_file)
    args = type("Args", (), {"executor": "slurm", "workers": None, "executor_opt": [
        "partition=gpu", "timeout_min=30", "gpus_per_node=1", "array_parallelism=8", "max_requeues=5",
        "additional_parameters.mail-type=END", "submitit.slurm_exclude=node3", "setup=[module load cuda]"]})()
    cfg = parse_executor(executor_block(grid, args), "t")  # the local-only runs_per_gpu is dropped, with a note
    assert isinstance(cfg, SlurmConfig) and cfg.partition == "gpu" and cfg.max_requeues == 5
    params = executor_parameters(cfg, "fcs-g", ["cd /code"])
    assert params == {"name": "fcs-g", "timeout_min": 30, "cpus_per_task": 4, "gpus_per_node": 1,
                      "slurm_partition": "gpu", "slurm_array_parallelism": 8,
                      "slurm_setup": ["cd /code", "module load cuda"],
                      "slurm_additional_parameters": {"mail-type": "END"}, "slurm_exclude": "node3"}
    code, out = launch("--grid", grid_file, "--executor", "slurm", "--executor-opt", "partitoin=gpu", "--dry-run")
    assert code == 2 and "executor.partitoin" in out and "did you mean 'partition'" in out
    code, out = launch("--grid", grid_file, "--executor", "slurm", "--executor-opt", "max_requeues=-1", "--dry-run")
    assert code == 2 and "max_requeues must be >= 0" in out
    code, out = launch("--grid", grid_file, "--executor", "slurm", "--executor-opt", "gpus_per_node=two", "--dry-run")
    assert code == 2 and "executor.gpus_per_node" in out and "expected an integer" in out
    code, out = launch("--grid", grid_file, "--executor", "slurm", "--dry-run")
    assert code == 0 and "ignoring the grid's local settings ['runs_per_gpu']" in out and "1 to run" in out


def test_snapshot_is_keyed_by_content_and_importable(tmp_path):
    source = tmp_path / "src"
    (source / "pkg").mkdir(parents=True)
    (source / "pkg" / "__init__.py").write_text("VALUE = 1\n")
    (source / "pkg" / "__pycache__").mkdir()
    (source / "pkg" / "__pycache__" / "x.pyc").write_bytes(b"cache")
    first = snapshot_code(tmp_path / "snaps", source, ["pkg"])
    assert snapshot_code(tmp_path / "snaps", source, ["pkg"]) == first  # unchanged code: the same snapshot
    (source / "pkg" / "__init__.py").write_text("VALUE = 2\n")
    second = snapshot_code(tmp_path / "snaps", source, ["pkg"])
    assert second != first and (first / "pkg" / "__init__.py").read_text() == "VALUE = 1\n"
    assert not (second / "pkg" / "__pycache__").exists()
    import tomllib
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert sorted(SNAPSHOT_PACKAGES) == sorted(packages)  # the snapshot holds every package the suite installs
    real = snapshot_code(tmp_path / "snaps")  # the suite itself: a job started there imports the snapshot
    assert json.loads((real / "SNAPSHOT.json").read_text())["files"] > 20
    out = subprocess.run([sys.executable, "-c", "import jobs; print(jobs.__file__)"], cwd=real, text=True,
                         capture_output=True, env={**os.environ, "PYTHONPATH": str(real)}, check=True)
    assert Path(out.stdout.strip()).resolve().is_relative_to(real.resolve())


def test_arrays_fit_the_cluster_and_share_array_parallelism():
    """Every task in exactly one array of at most MaxArraySize tasks; arrays that may run at the same time (those not
    waiting for one another) together run at most array_parallelism tasks, and use all of it where there are tasks."""
    for n, size, parallelism in [(1254, 1001, 256), (10, 4, 2), (10, 4, 1), (10, 4, 256), (9, 4, 5), (5, 4, 5),
                                 (5000, 1001, 3), (1, 4, 8), (6, 4, 2)]:
        parts = plan_arrays(n, size, parallelism)
        assert [i for part in parts for i in part.tasks] == list(range(n))
        assert len(parts) == -(-n // size) and all(1 <= len(part.tasks) <= size for part in parts)
        chains: dict[int, list[int]] = {}  # first array of a chain -> its arrays, each waiting for the one before
        for index, part in enumerate(parts):
            assert part.after is None or part.after < index
            first = index if part.after is None else next(f for f, chain in chains.items() if chain[-1] == part.after)
            chains.setdefault(first, []).append(index)
        at_once = sum(max(parts[i].parallelism for i in chain) for chain in chains.values())
        assert at_once == min(parallelism, n), (n, size, parallelism, parts)


def test_dry_run_shows_the_arrays_the_resources_and_what_cannot_work(tmp_path):
    """``--dry-run --executor slurm`` of the README's grid: how many arrays of which sizes (MaxArraySize from the
    cluster where one answers), what each task requests, and the warning that its ViT-B/16 runs get no GPU; on a small
    grid, the expected time per run from an earlier record of the same method and dataset; a time limit inside the
    signal's lead time is refused."""
    code, out = launch("--grid", REPO / "grids/ablations.yaml", "--executor", "slurm", "--dry-run",
                       "--executor-opt", "runs_per_task=2", "--executor-opt", "partition=gpu")
    assert code == 0, out
    arrays = re.search(r"^slurm: 1254 runs as 627 array tasks \(2 run\(s\) per task\) in (\d+) job array\(s\): .*"
                       r"MaxArraySize (\d+)", out, re.M)
    assert arrays and int(arrays.group(1)) == -(-627 // int(arrays.group(2))), out
    assert "each task requests partition gpu, 0 GPU(s), 4 CPU(s), memory (the default per CPU), time limit 120 min" in out
    assert re.search(r"^warning: no GPU requested .* ViT-B-16-quickgelu", out, re.M), out
    code, out = launch("--grid", REPO / "grids/ablations.yaml", "--executor", "slurm", "--dry-run",
                       "--executor-opt", "gpus_per_node=1")
    assert code == 0 and "no GPU requested" not in out
    data = write_dataset(tmp_path / "data", "oxford_pets", 6)
    grid = write_grid(tmp_path / "t.yaml", base_run(data, tmp_path / "r", method="zeroshot"), {"seed": [1, 2]})
    code, out = launch("--grid", grid, "--executor", "inline", "--no-analysis", "seed=1")
    assert code == 0, out
    code, out = launch("--grid", grid, "--dry-run")
    assert "slurm: expected time per run, from 1 earlier record(s): zeroshot on oxford_pets" in out, out
    assert "(1 pending)" in out and "no earlier record" not in out
    code, out = launch("--grid", grid, "--dry-run", "--executor-opt", "timeout_min=2")
    assert code == 2 and "timeout_min=2 leaves no time to run" in out and "set timeout_min >= 3" in out, out


def test_staged_weights_are_found_offline_and_the_dry_run_says_what_to_stage(tmp_path, monkeypatch):
    """A grid of ViT-B/16 runs: ``--dry-run`` names the command that stages its weights until the cache holds them
    (here put where the Hugging Face hub's own cache layout keeps a download: no network in tests); a grid of the
    suite's own backbones has nothing to stage."""
    from frozen_clip.weights import download_of, missing_offline
    from jobs.stage_weights import main as stage_main
    monkeypatch.delenv("FCS_WEIGHTS_CACHE", raising=False)
    data = write_dataset(tmp_path / "data", "oxford_pets", 6)
    results = tmp_path / "results"
    grid = write_grid(tmp_path / "vit.yaml", base_run(data, results, method="zeroshot", backbone="ViT-B/16",
                                                      pretrained="openai"), gpus_per_node=1)
    code, out = launch("--grid", grid, "--dry-run")
    assert code == 0 and f"the weights of ViT-B-16-quickgelu (openai) are not staged in {results / '.weights'}" \
        in out and f"python -m jobs.stage_weights --grid {grid}" in out, out
    download = download_of("ViT-B-16-quickgelu", "openai")
    assert missing_offline([download], results / ".weights") == [download]
    repo = results / ".weights" / f"models--{download.hf_repo.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("0" * 40) / download.filename).write_bytes(b"weights")
    assert missing_offline([download], results / ".weights") == []
    code, out = launch("--grid", grid, "--dry-run")
    assert code == 0 and "not staged" not in out, out
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert stage_main(["--grid", str(write_grid(tmp_path / "tiny.yaml", base_run(data, results)))]) == 0
    assert "no backbone to download" in out.getvalue()


def resolved_spec(data: Path, results: Path, **overrides) -> RunSpec:
    resolved = resolve(base_run(data, results, **overrides), "test")
    RunExecution(resolved).write_config()
    return RunSpec(resolved.run_id, resolved.config, resolved)


def test_checkpoint_requeues_a_fresh_instance_holding_only_the_config_path(tmp_path):
    import cloudpickle
    spec = resolved_spec(tmp_path / "data", tmp_path / "r")
    config_path = str(run_dir(spec.resolved) / "config.yaml")
    job = SlurmRun((config_path,), str(tmp_path), 3)
    job.training_state = list(range(100_000))  # whatever a job holds in memory must not travel with the requeue
    delayed = job.checkpoint()
    fresh = delayed.function
    assert fresh is not job and isinstance(fresh, SlurmRun) and not delayed.args and not delayed.kwargs
    assert vars(fresh) == {"config_paths": (config_path,), "workdir": str(tmp_path), "max_requeues": 3}
    assert len(cloudpickle.dumps(delayed)) < 2_000
    events = json.loads((run_dir(spec.resolved) / REQUEUES_NAME).read_text())["events"]
    assert [e["event"] for e in events] == ["checkpoint"]


def test_requeues_beyond_the_bound_fail_the_run_with_the_reason(tmp_path, monkeypatch):
    spec = resolved_spec(tmp_path / "data", tmp_path / "r")
    folder = run_dir(spec.resolved)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "3")
    result = SlurmRun((str(folder / "config.yaml"),), str(tmp_path), 2)()
    assert result.startswith("failed")
    state = state_of(folder)
    assert state.status == "failed" and "requeued 3 times, more than executor.max_requeues=2" in state.reason
    assert not (folder / "log.txt").exists()  # nothing was executed
    assert json.loads((folder / REQUEUES_NAME).read_text())["requeues"] == 3


def test_status_of_submitted_runs(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "submitted.json").write_text(json.dumps({"executor": "slurm", "job_id": "7_2"}))
    assert state_of(folder).status == "queued" and state_of(folder).reason == "7_2"  # from disk alone
    assert state_of(folder, {"7_2": "PENDING"}).status == "queued"
    assert state_of(folder, {"7_2": "RUNNING"}).status == "running"
    cancelled = state_of(folder, {"7_2": "CANCELLED by 0"})
    assert cancelled.status == "failed" and cancelled.reason.startswith("cancelled")
    assert from_scheduler("7_2", "TIMEOUT").reason == "slurm job 7_2 ended TIMEOUT without a record"
    # a failed record older than the submission: the resubmitted run is queued; a newer one: failed
    (folder / "record.json").write_text(json.dumps({"status": "failed", "failure": {"reason": "boom"}}))
    os.utime(folder / "submitted.json", (1_000, 1_000))
    os.utime(folder / "record.json", (2_000, 2_000))
    assert state_of(folder).status == "failed" and state_of(folder).reason == "boom"
    (folder / "submitted.json").write_text(json.dumps({"executor": "slurm", "job_id": "8_0"}))
    os.utime(folder / "submitted.json", (3_000, 3_000))
    assert state_of(folder).status == "queued"
    (folder / "submitted.json").write_text(json.dumps({"executor": "slurm", "job_id": "8_0", "cancelled_at": "t"}))
    assert state_of(folder).status == "failed" and "cancelled" in state_of(folder).reason


def test_status_names_the_slurm_job_and_the_log_of_a_failed_run(tmp_path):
    from jobs.cli import scheduler_note, status_command
    folder = tmp_path / "run"
    folder.mkdir()
    assert scheduler_note(folder, "running", "") == ""  # never submitted to Slurm
    (folder / "submitted.json").write_text(json.dumps({"executor": "slurm", "job_id": "7_2", "log_folder": "/l/7_2"}))
    assert scheduler_note(folder, "running", "") == "[slurm job 7_2]"
    assert scheduler_note(folder, "running", "7_2 starting") == ""  # the reason names it already
    assert scheduler_note(folder, "failed", "boom") == "[slurm job 7_2] log: /l/7_2/7_2_0_log.err (.out)"
    args = type("Args", (), {"grid": "g y.yaml", "overrides": ["seed=1", "method.init=zero"]})()
    assert status_command(args) == "python jobs/launch.py --grid 'g y.yaml' --status seed=1 method.init=zero"


# -- against a real cluster ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def slurm() -> None:
    """A running, idle Slurm cluster (skip only when Slurm is absent and not required)."""
    if shutil.which("sinfo") is None:
        if REQUIRE_SLURM:
            pytest.fail("FCS_REQUIRE_SLURM=1 but sinfo is not on PATH (bring Slurm up with .ci/slurm-up.sh)")
        pytest.skip("no Slurm here (sinfo not on PATH); `bash .ci/slurm-up.sh` brings one up")
    deadline = time.time() + 30
    while True:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.split() and set(out.stdout.split()) == {"idle"}:
            return
        if time.time() > deadline:
            pytest.fail(f"the Slurm cluster is not idle: sinfo -> {out.stdout.strip()!r} {out.stderr.strip()!r}")
        time.sleep(0.5)


@pytest.fixture()
def cleanup_jobs():
    """Job ids to scancel at the end of a test, whatever happened."""
    ids: list[str] = []
    yield ids
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True)


def submitted_job(folder: Path) -> str:
    return json.loads((folder / "submitted.json").read_text())["job_id"]


def record_status(folder: Path) -> str | None:
    """The status in a run folder's record (None without a readable one)."""
    return (read_record(folder) or {}).get("status")


def job_report(folder: Path) -> str:
    """What a run folder holds after its jobs: record status and failure, requeue events, the tail of every job log.
    Put in assertion messages, so that a failure in a cluster test says what the jobs did."""
    lines = [f"== {folder}"]
    record = read_record(folder)
    if record is not None:
        lines.append(f"record: {record['status']} {(record.get('failure') or {}).get('reason', '')}")
    else:
        lines.append("record: none")
    if (folder / REQUEUES_NAME).exists():
        events = json.loads((folder / REQUEUES_NAME).read_text())["events"]
        lines.append("events: " + ", ".join(f"{e['event']}@{e['job_id']}:{e.get('restart_count', '')}" for e in events))
    for log in sorted(folder.parent.glob(".submitit/*/*_log.*")):
        lines.append(f"-- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-12:]))
    return "\n".join(lines)


def release_requeued() -> None:
    """Requeued jobs wait ~2 minutes (BeginTime) before Slurm restarts them; start them now instead."""
    out = subprocess.run(["squeue", "-h", "-r", "-t", "PD", "-o", "%i %r"], capture_output=True, text=True)
    for line in out.stdout.splitlines():
        job_id, _, reason = line.partition(" ")
        if reason.strip() == "BeginTime":
            subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], capture_output=True)


@pytest.mark.slurm
def test_grid_as_one_array_submit_and_exit_status_and_records(slurm, tmp_path, cleanup_jobs):
    data = write_dataset(tmp_path / "data", "oxford_pets", 6)
    results = tmp_path / "results"
    grid = write_grid(tmp_path / "arr.yaml", base_run(data, results), {"method": ["zeroshot", "coop"],
                                                                        "seed": [1, 2]}, array_parallelism=2)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(REPO / "jobs/launch.py"), "--grid", str(grid),
                           "--executor-opt", "submitit.slurm_comment=fcs-test", "--executor-opt",
                           "additional_parameters.begin=now"], capture_output=True, text=True, timeout=120)
    launch_s = time.perf_counter() - start
    assert proc.returncode == 0, proc.stdout + proc.stderr
    array_id = re.search(r"Slurm job array (\d+) \(\1_0 \.\. \1_3, at most 2 at a time\)", proc.stdout).group(1)
    job_ids = [f"{array_id}_{i}" for i in range(4)]
    cleanup_jobs.extend(job_ids)
    code, status = launch("--grid", grid, "--status")  # the launcher has exited; most of the array is still queued
    assert code == 0 and status.count("queued ") >= 2, (launch_s, status)
    deadline = time.time() + 10  # sacct lists every task, pending ones collapsed as N_[2-3%2] and expanded
    while set(scheduler_states(job_ids)) != set(job_ids):
        assert time.time() < deadline, scheduler_states(job_ids)
        time.sleep(0.2)
    seen: set[str] = set()
    deadline = time.time() + 150
    while True:
        code, status = launch("--grid", grid, "--status")
        seen |= set(re.findall(r"^(\w+) +[0-9a-f]{16}", status, re.M))
        if "4 runs: 4 done" in status:
            break
        assert time.time() < deadline and "failed" not in status, status
        time.sleep(0.3)
    assert {"queued", "running", "done"} <= seen
    records = [json.loads((f / "record.json").read_text()) for f in folders(results, "arr")]
    assert len(records) == 4 and all(r["status"] == "done" for r in records)
    submissions = sorted((json.loads((f / "submitted.json").read_text()) for f in folders(results, "arr")),
                         key=lambda s: s["array_index"])
    assert [s["job_id"] for s in submissions] == job_ids and [s["array_index"] for s in submissions] == list(range(4))
    script = (results / "arr" / ".submitit" / array_id / f"{array_id}_submission.sh").read_text()
    for flag in ("--array=0-3%2", "--cpus-per-task=1", "--comment=fcs-test", "--begin=now", "--job-name=fcs-arr"):
        assert f"#SBATCH {flag}\n" in script
    snapshot = Path(submissions[0]["code"])
    assert snapshot.parent.resolve() == (results / ".snapshots").resolve() and f"cd {snapshot}\n" in script
    for folder in folders(results, "arr"):  # every job ran the snapshot, once, without requeue
        events = json.loads((folder / REQUEUES_NAME).read_text())["events"]
        assert [(e["event"], e["code"]) for e in events] == [("start", str(snapshot))]
    spans = sorted((r["started_at"], r["finished_at"]) for r in records)  # at most array_parallelism at once
    assert max(sum(s <= t < e for s, e in spans) for t, _ in spans) <= 2


@pytest.mark.slurm
def test_cancel_retry_requeue_and_timeout_resume_to_identical_metrics(slurm, tmp_path, cleanup_jobs):
    """Four copies of one run (results_dir is not part of the run id): A uninterrupted; B requeued by Slurm
    (``scontrol requeue``: killed and restarted); C signalled as on timeout/preemption (``USR2``: submitit calls
    ``checkpoint()`` and requeues); D cancelled mid-training (``scancel``), shown failed with the reason, then
    completed by ``--retry-failed``. B, C, D resume from their checkpoints and end with A's metrics and history.
    E (another run) is cancelled while queued with ``--cancel``, then rerun with ``--retry-failed --wait``."""
    data = write_dataset(tmp_path / "data", "oxford_pets", 6, counts=(16, 4, 5))
    # Long enough (a few seconds) that an interrupt sent at the first checkpoint lands mid-training: with too few
    # epochs a job could finish between the poll seeing its checkpoint and the interrupt reaching it.
    run = {"shots": 16, "optim": {"epochs": 300, "batch_size": 2}}
    grids = {name: write_grid(tmp_path / f"{name}.yaml", base_run(data, tmp_path / name, **run), max_requeues=2)
             for name in "DBCA"}
    grids["E"] = write_grid(tmp_path / "E.yaml", base_run(data, tmp_path / "E", method="zeroshot"))
    for name, grid in grids.items():
        code, out = launch("--grid", grid)
        assert code == 0, out
    folder = {name: folders(tmp_path / name, name)[0] for name in grids}
    cleanup_jobs.extend(submitted_job(folder[name]) for name in grids)
    code, out = launch("--grid", grids["E"], "--cancel")
    assert code == 0 and "cancelled 1 jobs" in out
    interrupt = {"B": ["scontrol", "requeue"], "C": ["scancel", "--signal=USR2"], "D": ["scancel"]}
    retried = False
    seen_failed: set[str] = set()  # runs whose record read failed at some poll (reported if the test fails later)
    deadline = time.time() + 150
    # until every run is done: a record that exists is not enough, because a run's folder can hold a failed record
    # while a requeued or retried job of it still runs (the job report says which, should the deadline pass)
    while not all(record_status(folder[n]) == "done" for n in "ABCD"):
        seen_failed |= {n for n in "ABCD" if record_status(folder[n]) == "failed"}
        assert time.time() < deadline, f"failed records seen: {sorted(seen_failed)}\n" + "\n".join(
            job_report(folder[n]) for n in "ABCD")
        for name in list(interrupt):
            if (folder[name] / "checkpoints" / "last.pt").exists():  # mid-training: interrupt it
                assert not (folder[name] / "record.json").exists()
                subprocess.run([*interrupt.pop(name), submitted_job(folder[name])], check=True)
        release_requeued()
        if not interrupt and not retried:  # only once B, C, D are interrupted: a status call is slow to poll with
            code, status = launch("--grid", grids["D"], "--status")
            if "1 runs: 1 failed" in status:
                assert re.search(r"^failed +[0-9a-f]{16} .*cancelled \(slurm job \d+: CANCELLED", status, re.M)
                code, out = launch("--grid", grids["D"], "--retry-failed")
                assert code == 0 and "1 to run" in out, out
                cleanup_jobs.append(submitted_job(folder["D"]))
                retried = True
        time.sleep(0.1)
    records = {n: json.loads((folder[n] / "record.json").read_text()) for n in "ABCD"}
    report = f"failed records seen: {sorted(seen_failed)}\n" + "\n".join(job_report(folder[n]) for n in "ABCD")
    assert retried, "D finished before its cancellation took effect\n" + report
    for name in "BCD":
        assert records[name]["cost"]["resumed_from_epoch"] >= 1, f"{name}\n{report}"
        assert "resumed from" in (folder[name] / "log.txt").read_text()
        assert records[name]["metrics"] == records["A"]["metrics"], name
        assert strip_times(records[name]["history"]) == strip_times(records["A"]["history"]), name
    requeues = {n: json.loads((folder[n] / REQUEUES_NAME).read_text()) for n in "ABCD"}
    assert requeues["A"]["requeues"] == 0 and requeues["B"]["requeues"] == 1 and requeues["C"]["requeues"] == 1
    assert [e["event"] for e in requeues["C"]["events"]] == ["start", "checkpoint", "start"]
    assert len({e["job_id"] for e in requeues["D"]["events"]}) == 2  # cancelled job, then the retry's job
    code, status = launch("--grid", grids["E"], "--status")
    assert re.search(r"^failed +[0-9a-f]{16} .*cancelled", status, re.M) and not (folder["E"] / "log.txt").exists()
    code, out = launch("--grid", grids["E"], "--retry-failed", "--wait", "--no-analysis")  # blocks until done
    assert code == 0 and "1 to run" in out and "1 done" in out and "novel" in out, out  # then the results table
    assert json.loads((folder["E"] / "record.json").read_text())["status"] == "done"


def launch_process(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python jobs/launch.py ARGS`` as a user runs it (a separate process)."""
    return subprocess.run([sys.executable, str(REPO / "jobs/launch.py"), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


@pytest.mark.slurm
def test_grid_larger_than_max_array_size_goes_in_several_arrays_and_finishes(slurm, tmp_path, cleanup_jobs):
    """CI's Slurm sets MaxArraySize=4 (.ci/slurm-up.sh): a 10-run grid goes in as arrays the cluster accepts, the later
    lane's array waiting for the earlier one so that at most array_parallelism=2 run at once over all of them, and
    ``--wait`` sees every run finish."""
    max_array = read_cluster_limits().max_array_size
    assert max_array < 10, f"the test cluster's MaxArraySize is {max_array}: .ci/slurm-up.sh sets a small one"
    data = write_dataset(tmp_path / "data", "oxford_pets", 6)
    results = tmp_path / "results"
    grid = write_grid(tmp_path / "big.yaml", base_run(data, results, method="zeroshot"),
                      {"seed": list(range(1, 11))}, array_parallelism=2)
    proc = launch_process("--grid", grid, "--wait", "--no-analysis")
    runs = folders(results, "big")
    cleanup_jobs.extend(submitted_job(f) for f in runs if (f / "submitted.json").exists())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "10 runs, 0 already done, 10 to run" in proc.stdout and "10 done" in proc.stdout, proc.stdout
    submissions = [json.loads((f / "submitted.json").read_text()) for f in runs]
    arrays = sorted({s["array_job_id"] for s in submissions}, key=int)
    assert len(runs) == 10 and len(arrays) == -(-10 // max_array), proc.stdout
    assert all(record_status(f) == "done" for f in runs)
    scripts = [(results / "big" / ".submitit" / a / f"{a}_submission.sh").read_text() for a in arrays]
    sizes = [sum(s["array_job_id"] == a for s in submissions) for a in arrays]
    for script, size in zip(scripts, sizes):
        assert f"#SBATCH --array=0-{size - 1}%1\n" in script and "#SBATCH --job-name=fcs-big-zeroshot-oxford_pets\n" in script
        assert f"export FCS_WEIGHTS_CACHE={results / '.weights'}\n" in script and "export HF_HUB_OFFLINE=1\n" in script
    waiting = [re.search(r"#SBATCH --dependency=afterany:(\d+)", script) for script in scripts]
    assert [w.group(1) if w else None for w in waiting] == [None, None, *arrays[:len(arrays) - 2]], scripts
    records = [read_record(f) for f in runs]
    spans = sorted((r["started_at"], r["finished_at"]) for r in records)
    assert max(sum(s <= t < e for s, e in spans) for t, _ in spans) <= 2


@pytest.mark.slurm
def test_runs_packed_into_array_tasks(slurm, tmp_path, cleanup_jobs):
    """``runs_per_task: 2``: three runs in two array tasks; the first task runs its two runs one after the other, its
    log naming each run's variant. The launch prints where records go and the ``--status`` command with the
    command line's overrides, which then follows the runs to the end."""
    data = write_dataset(tmp_path / "data", "oxford_pets", 6)
    results = tmp_path / "results"
    grid = write_grid(tmp_path / "packed.yaml", base_run(data, results, method="zeroshot"), {"seed": [1, 2, 3]},
                      runs_per_task=2)
    proc = launch_process("--grid", grid, "shots=4")  # an override (here equal to the grid's value)
    runs = folders(results, "packed")
    cleanup_jobs.extend(submitted_job(f) for f in runs if (f / "submitted.json").exists())
    assert proc.returncode == 0 and "3 runs as 2 array tasks (2 runs per task)" in proc.stdout, proc.stdout
    assert f"records: {results / 'packed'}/<run id>/record.json" in proc.stdout
    follow = re.search(r"follow: (.*)", proc.stdout).group(1).split()
    assert follow == ["python", "jobs/launch.py", "--grid", str(grid), "--status", "shots=4"], proc.stdout
    deadline = time.time() + 150
    while "3 runs: 3 done" not in (status := launch(*follow[2:])[1]):
        assert time.time() < deadline and "failed" not in status, status
        time.sleep(0.5)
    submissions = [json.loads((f / "submitted.json").read_text()) for f in runs]
    tasks: dict[str, list[int]] = {}
    for submission in submissions:
        tasks.setdefault(submission["job_id"], []).append(submission["position_in_task"])
    assert sorted(sorted(p) for p in tasks.values()) == [[0], [0, 1]] and all(record_status(f) == "done" for f in runs)
    pair = next(job for job, positions in tasks.items() if len(positions) == 2)
    log = next((results / "packed" / ".submitit").glob(f"*/{pair}_0_log.out")).read_text()
    ran = dict(re.findall(r"fcs job \S+: run ([0-9a-f]{16}) (.+), restart 0", log))  # run id -> its label
    assert sorted(ran) == sorted(f.name for f, s in zip(runs, submissions) if s["job_id"] == pair), log
    assert all(re.fullmatch(r".* oxford_pets base2novel shots=4 seed=[123]", label) for label in ran.values()), ran


@pytest.mark.slurm
def test_scheduler_refusals_are_one_line_and_leave_nothing_behind(slurm, tmp_path):
    """A partition the cluster does not have (sbatch refuses: exit code 2), and a controller that does not answer (the
    client pointed at a port nothing listens on: exit code 1). Each is one line naming what Slurm said and what to
    check, without a traceback; no job files remain in .submitit/ and no run is marked submitted."""
    data = write_dataset(tmp_path / "data", "oxford_pets", 6)
    results = tmp_path / "results"
    grid = write_grid(tmp_path / "bad.yaml", base_run(data, results, method="zeroshot"), {"seed": [1, 2]})
    proc = launch_process("--grid", grid, "--executor-opt", "partition=nosuchpartition")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Invalid partition name specified" in proc.stderr, proc.stderr
    assert "check executor.partition" in proc.stderr
    conf = Path(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf")).read_text()
    unreachable = tmp_path / "unreachable.conf"  # the real cluster's settings, the controller's port closed
    unreachable.write_text(re.sub(r"(?m)^SlurmctldPort=.*\n", "", conf) + "SlurmctldPort=9\n")
    proc = launch_process("--grid", grid, env={"SLURM_CONF": str(unreachable)}, timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and "controller is not reachable" in proc.stderr, proc.stderr
    queued = folders(results, "bad")[0]  # as if submitted: --cancel must not mark it cancelled when scancel cannot act
    (queued / "submitted.json").write_text(json.dumps({"executor": "slurm", "job_id": "999999"}))
    proc = launch_process("--grid", grid, "--cancel", env={"SLURM_CONF": str(unreachable)}, timeout=60)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "not reachable" in proc.stderr, proc.stderr
    assert "cancelled_at" not in (queued / "submitted.json").read_text()
    (queued / "submitted.json").unlink()
    leftovers = [p for p in (results / "bad" / ".submitit").rglob("*")] if (results / "bad" / ".submitit").exists() else []
    assert leftovers == [] and not list(results.rglob("submitted.json"))
    # weights a compute node would have to download: refused before anything is submitted, with the command to run
    big = write_grid(tmp_path / "vit.yaml", base_run(data, results, method="zeroshot", backbone="ViT-B-16",
                                                     pretrained="openai"))
    proc = launch_process("--grid", big)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "ViT-B-16-quickgelu (openai) are not staged in" in proc.stderr
    assert f"run `python -m jobs.stage_weights --grid {big}` on this node first" in proc.stderr
    assert not list(results.rglob("submitted.json"))


@pytest.mark.slurm
def test_unknown_submitit_parameter_is_a_config_error(slurm, tmp_path):
    with pytest.raises(ConfigError, match="partitoin"):
        make_executor(SlurmConfig(submitit={"slurm_partitoin": "x"}), tmp_path / "%j", "t")


def test_cluster_tests_fail_instead_of_skipping_when_slurm_is_required_but_absent(tmp_path):
    """CI sets FCS_REQUIRE_SLURM=1: a missing cluster must turn the cluster tests red, not skip them."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__)),
               "-k", "unknown_submitit_parameter"]
    env = {**os.environ, "PATH": str(tmp_path)}  # no sinfo on PATH
    required = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env={**env, "FCS_REQUIRE_SLURM": "1"})
    assert required.returncode != 0 and "1 error" in required.stdout, required.stdout
    assert "FCS_REQUIRE_SLURM=1 but sinfo is not on PATH" in required.stdout
