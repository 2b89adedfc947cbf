"""Inputs that pass validation but could mean something else are given one documented meaning that the record
states: shots beyond what a class has (Dassl's sampler takes every image of such a class), ``shots: 0`` (every
training image); and the small things a lab notices in its result folders (permissions, log headers, which code made
a record)."""

from __future__ import annotations

from pathlib import Path

from jobs.config import resolve
from tests.conftest import base_run, execute_resolved

REPO = Path(__file__).resolve().parent.parent


def test_shots_beyond_a_class_are_stated_in_the_record(data_root, tmp_path):
    record = execute_resolved(resolve(base_run(data_root, tmp_path / "res", method="zeroshot", shots=16), "t"))
    # 6 classes x 8 training images; base2novel fits on the 3 base classes
    assert record["shots_per_class"] == {"requested": 16, "min": 8, "max": 8, "short_classes": 3}
    log = next((tmp_path / "res").glob("*/*/log.txt")).read_text()
    assert "3 classes have fewer than 16 training images (as few as 8)" in log


def test_shots_zero_means_every_training_image(data_root, tmp_path):
    record = execute_resolved(resolve(base_run(data_root, tmp_path / "res", method="zeroshot", shots=0), "t"))
    assert record["shots_per_class"] == {"requested": 0, "min": 8, "max": 8, "short_classes": 0}


def test_records_follow_the_umask_and_say_what_code_made_them(data_root, tmp_path):
    """A lab shares result folders: a record is as readable as any file the user creates (umask), not 0600; the
    log starts with what the run is; the record says which code made it, also outside a git checkout."""
    import subprocess
    import sys
    script = ("import os, sys; os.umask(0o022); from frozen_clip import atomic; from pathlib import Path; "
              "atomic.write_json(Path(sys.argv[1]), {'a': 1}); os.umask(0o077); "
              "atomic._umask.cache_clear(); atomic.write_text(Path(sys.argv[2]), 'x')")
    shared, private = tmp_path / "shared.json", tmp_path / "private.txt"
    subprocess.run([sys.executable, "-c", script, str(shared), str(private)], check=True, cwd=REPO)
    assert shared.stat().st_mode & 0o777 == 0o644
    assert private.stat().st_mode & 0o777 == 0o600

    record = execute_resolved(resolve(base_run(data_root, tmp_path / "res", method="zeroshot"), "t"))
    folder = next((tmp_path / "res").glob("*/*/record.json")).parent
    assert (folder / "record.json").stat().st_mode & 0o044  # group/other may read under the usual umask
    header = (folder / "log.txt").read_text().splitlines()[:2]
    assert header[0] == f"=== run {record['run_id']}: Zero-shot CLIP oxford_pets base2novel shots=4 seed=1"
    assert "code: git " in header[1] or "code: frozen-clip-suite " in header[1]
    assert record["env"]["code"]


def test_code_version_outside_a_git_checkout(monkeypatch):
    from jobs import runfolder
    monkeypatch.setattr(runfolder, "git_sha", lambda: None)
    assert runfolder.code_version().startswith("frozen-clip-suite ")


# -- errors that used to come late or as tracebacks: one line naming the file, exit code 2, nothing run ------------

def run_cli(args: list[str], cwd: Path) -> "subprocess.CompletedProcess[str]":
    import subprocess
    import sys
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_a_broken_model_config_json_is_named(tmp_path):
    broken = tmp_path / "model.json"
    broken.write_text('{"embed_dim": 8, ')
    proc = run_cli([str(REPO / "jobs/run.py"), "method=zeroshot", "dataset=world_hues", f"backbone={broken}",
                    "pretrained=none", f"results_dir={tmp_path / 'res'}"], tmp_path)
    assert proc.returncode == 2 and f"model config {broken} cannot be read as JSON" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "res").exists()


def test_damaged_weights_are_named_when_the_grid_is_resolved(tmp_path):
    from frozen_clip.backbone import resolve_backbone
    weights = tmp_path / "w.safetensors"
    data = Path(resolve_backbone("tiny-world", "world").weights_file).read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    proc = run_cli([str(REPO / "jobs/run.py"), "method=zeroshot", "dataset=world_hues", "backbone=tiny-world",
                    f"pretrained={weights}", f"results_dir={tmp_path / 'res'}"], tmp_path)
    assert proc.returncode == 2 and f"weights file {weights} is damaged or not a safetensors file" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "res").exists()


def test_a_results_dir_that_is_a_file_is_refused_before_any_run(data_root, tmp_path):
    import yaml
    blocker = tmp_path / "results-file"
    blocker.write_text("not a folder")
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump({"name": "g", "base": base_run(data_root, blocker, method="zeroshot"),
                                    "executor": {"kind": "inline"}}))
    proc = run_cli([str(REPO / "jobs/launch.py"), "--grid", str(grid), "--no-analysis"], tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"results folder (results_dir/name) {blocker / 'g'}: {blocker} is not a folder" in proc.stderr
    assert "Traceback" not in proc.stderr and blocker.read_text() == "not a folder"


def test_an_unopenable_lock_file_is_one_clear_failure(data_root, tmp_path):
    from jobs.executors import execute_run
    from jobs.grid import RunSpec
    from jobs.runfolder import run_dir
    resolved = resolve(base_run(data_root, tmp_path / "res", method="zeroshot"), "t")
    (run_dir(resolved) / ".lock").mkdir(parents=True)  # a folder where the lock file goes
    outcome = execute_run(RunSpec(resolved.run_id, resolved.config, resolved))
    assert outcome.status == "failed" and outcome.user_error
    assert f"cannot open the run's lock file {run_dir(resolved) / '.lock'}" in outcome.detail
