"""Loading run records: flattening, schema checks, failed / invalid / duplicate records, missing runs."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import types
from pathlib import Path

import pandas as pd
import pytest

from analysis.records import apply_where, check_record, flatten, load_records, missing_from, missing_runs, \
    SchemaError, speed_switch, variant_axes, variant_labels

FIXTURES = Path(__file__).resolve().parent / "fixtures"
RECORDS = FIXTURES / "records"


def _make_records_module() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("make_records", FIXTURES / "make_records.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _raw_records() -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(RECORDS.rglob("record.json"))]


@pytest.fixture(scope="module")
def records():
    return load_records(RECORDS)


def test_every_fixture_record_is_accounted_for(records):
    raw = _raw_records()
    unique = {r["run_id"] for r in raw}
    assert len(records.done) + len(records.failed) == len(unique)
    assert len(records.duplicates) == len(raw) - len(unique) > 0
    assert records.problems == []
    assert set(records.done["protocol"]) == {"base2novel", "fewshot", "cross_dataset", "domain_generalization"}
    assert {"zeroshot", "coop", "mma", "heba", "rmadapter"} <= set(records.done["method.name"])


def test_failed_run_is_reported_with_its_reason(records):
    assert len(records.failed) == 1
    failed = records.failed.iloc[0]
    assert failed["method.name"] == "heba" and failed["dataset"] == "eurosat" and failed["seed"] == 2
    assert "OutOfMemoryError" in failed["failure.reason"]
    report = "\n".join(records.report())
    assert "FAILED" in report and failed["run_id"] in report and "1 failed" in report


def test_columns_are_flattened_with_dots_and_keep_python_values(records):
    frame = records.done
    for column in ("method.name", "method.bottleneck_ratio", "method.init", "optim.lr", "optim.batch_size",
                   "dataset", "protocol", "shots", "seed", "acc.base", "acc.novel", "acc.test", "summary.hm",
                   "cost.trainable_params", "cost.images_per_s", "aux.loss_ce", "env.versions.torch",
                   "record.path"):
        assert column in frame.columns, column
    heba = frame[(frame["method.name"] == "heba") & (frame["protocol"] == "base2novel")]
    assert set(heba["method.bottleneck_ratio"]) == {2, 4, 8}
    assert all(type(v) is int for v in heba["method.bottleneck_ratio"])
    coop = frame[frame["method.name"] == "coop"]
    assert coop["method.bottleneck_ratio"].isna().all()
    xd = frame[frame["protocol"] == "cross_dataset"].iloc[0]
    assert xd["targets"] == ("caltech101", "oxford_pets", "eurosat")
    assert len(records.per_class) > 0 and set(records.per_class.columns) == {"run_id", "split", "class", "accuracy"}


def test_flatten_nested_mappings_and_lists():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": []}) == {"a.b": 1, "a.c.d": (1, 2), "e": ()}


def _write(folder: Path, name: str, record: object) -> Path:
    path = folder / name / "record.json"
    path.parent.mkdir(parents=True)
    path.write_text(record if isinstance(record, str) else json.dumps(record))
    return path


def test_invalid_records_are_reported_not_dropped(tmp_path):
    good = json.loads(next(RECORDS.joinpath("base2novel").rglob("record.json")).read_text())
    _write(tmp_path, "good", good)
    _write(tmp_path, "truncated", json.dumps(good)[:200])
    _write(tmp_path, "future", {**good, "schema_version": 2, "run_id": "0" * 16})
    no_novel = json.loads(json.dumps(good))
    no_novel["run_id"] = "1" * 16
    del no_novel["metrics"]["novel"]
    _write(tmp_path, "no_novel", no_novel)
    _write(tmp_path, "bad_status", {**good, "run_id": "2" * 16, "status": "running"})
    _write(tmp_path, "bad_id", {**good, "run_id": "XYZ"})
    loaded = load_records(tmp_path)
    assert len(loaded.done) == 1
    messages = {Path(p.path).parent.name: p.message for p in loaded.problems}
    assert set(messages) == {"truncated", "future", "no_novel", "bad_status", "bad_id"}
    assert "JSONDecodeError" in messages["truncated"]
    assert "unknown schema_version 2" in messages["future"]
    assert "metrics['novel'] is missing" in messages["no_novel"]
    assert "status" in messages["bad_status"]
    assert "run_id" in messages["bad_id"]
    assert sum(line.startswith("INVALID") for line in loaded.report()) == 5


def test_check_record_accepts_failed_records_without_metrics():
    record = {"schema_version": 1, "run_id": "a" * 16, "status": "failed",
              "failure": {"reason": "ValueError: boom", "traceback": "..."},
              "config": {"method": {"name": "coop"}, "dataset": "dtd", "protocol": "fewshot", "shots": 4, "seed": 1}}
    check_record(record)
    with pytest.raises(SchemaError, match="failure.reason"):
        check_record({**record, "failure": None})


def test_a_done_record_beats_a_failed_copy_of_the_same_run(tmp_path):
    source = next(RECORDS.joinpath("fewshot").rglob("record.json"))
    done = json.loads(source.read_text())
    failed = {k: done[k] for k in ("schema_version", "run_id", "config", "started_at")}
    failed.update(status="failed", failure={"reason": "KeyboardInterrupt: preempted"},
                  finished_at="2099-01-01T00:00:00+00:00")
    _write(tmp_path / "a", done["run_id"], failed)
    _write(tmp_path / "b", done["run_id"], done)
    loaded = load_records([tmp_path / "a", tmp_path / "b"])
    assert len(loaded.done) == 1 and loaded.failed.empty
    assert len(loaded.duplicates) == 1 and "kept" in loaded.duplicates[0]


def test_missing_results_folder_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_records(tmp_path / "nope")


def test_where_keeps_runs_that_lack_the_column(records):
    frame = apply_where(records.done, {"method.init": "official", "protocol": "base2novel"})
    assert set(frame["protocol"]) == {"base2novel"}
    assert "zero" not in set(frame["method.init"].dropna())
    assert {"coop", "mma", "zeroshot"} <= set(frame["method.name"])
    with pytest.raises(KeyError):
        apply_where(records.done, {"method.no_such_option": 1})


def test_variant_axes_ignore_per_dataset_and_per_shot_recipes(records):
    fewshot = records.done[records.done["protocol"] == "fewshot"]
    assert fewshot.groupby("method.name")["optim.epochs"].nunique()["coop"] > 1  # CoOp: epochs depend on shots
    assert variant_axes(fewshot) == []
    b2n = records.done[records.done["protocol"] == "base2novel"]
    assert set(variant_axes(b2n)) == {"method.bottleneck_ratio", "method.init", "method.reconstruction",
                                      "method.consistency"}


def test_variant_axes_skip_exact_speed_switches():
    """Runs recorded before a speed switch existed lack its column (NaN); neither that nor a switched-off exact path
    is an ablation axis. A result-changing switch (fast.augment_views) and a hashed option still are."""
    nan = float("nan")
    frame = pd.DataFrame({
        "method.name": ["heba"] * 4 + ["mma"] * 2, "protocol": "base2novel", "dataset": "eurosat", "shots": 16,
        "seed": 1, "method.bottleneck_ratio": [4, 4, 4, 8, nan, nan],
        "method.text_buckets": [nan, 3, 1, 3, 3, nan], "method.share_text_prefix": [nan, True, False, True, True, nan],
        "fast.compile": [False, False, True, False, False, False], "fast.augment_views": [nan, nan, nan, 10, nan, nan],
    })
    assert set(variant_axes(frame)) == {"method.bottleneck_ratio", "fast.augment_views"}  # unset vs 10: an axis
    # a record from before fast.device_augment existed ran at its default (False): not an axis against False ...
    frame["fast.device_augment"] = [nan, False, False, False, nan, False]
    assert set(variant_axes(frame)) == {"method.bottleneck_ratio", "fast.augment_views"}
    frame.loc[1, "fast.device_augment"] = True  # ... but True is
    assert set(variant_axes(frame)) == {"method.bottleneck_ratio", "fast.augment_views", "fast.device_augment"}
    novel = pd.DataFrame({"method.name": "heba", "protocol": "base2novel", "dataset": "eurosat", "shots": 16,
                          "seed": 1, "method.novel_scale": [None, 0.5]})
    assert variant_axes(novel) == ["method.novel_scale"]
    assert list(variant_labels(novel)) == ["heba", "heba (novel_scale=0.5)"]
    assert speed_switch("fast.image_cache", ["heba"]) and not speed_switch("fast.augment_views", ["heba"])
    assert speed_switch("method.text_buckets", ["heba", "mma"]) and not speed_switch("method.init", ["heba"])
    assert not speed_switch("method.text_buckets", ["coop"])  # a method without the field: nothing to go by


def _heba_ablation_grid() -> dict[str, dict]:
    """The full expansion of the fixture's heba-ablations grid (as the grid loader would produce it)."""
    mr = _make_records_module()
    expected = {}
    for ratio in (2, 4, 8):
        for init in ("official", "zero"):
            for dataset in ("caltech101", "eurosat"):
                for seed in (1, 2):
                    method = {**mr.METHODS["heba"], "bottleneck_ratio": ratio, "init": init}
                    config = mr.make_config("heba-ablations", method, dataset, "base2novel", 16, seed)
                    expected[mr.run_id_of(config)] = config
    return expected


def test_missing_from_lists_missing_and_failed_runs(records):
    missing = missing_from(_heba_ablation_grid(), records)
    assert sorted(missing["state"]) == ["failed", "missing"]
    gone = missing[missing["state"] == "missing"].iloc[0]
    assert (gone["method.bottleneck_ratio"], gone["method.init"], gone["dataset"], gone["seed"]) == \
        (8, "official", "caltech101", 2)
    failed = missing[missing["state"] == "failed"].iloc[0]
    assert "OutOfMemoryError" in failed["reason"]


def test_missing_runs_expands_the_grid_through_jobs_grid(monkeypatch, tmp_path):
    """``missing_runs`` wiring, with ``jobs.grid`` stubbed (the real loader is tested with the grids)."""
    expected = _heba_ablation_grid()
    grid_file = tmp_path / "heba-ablations.yaml"
    grid_file.write_text("name: heba-ablations\n")
    seen = []

    def load_grid(path):
        seen.append(Path(path))
        runs = [types.SimpleNamespace(run_id=k, config=v) for k, v in expected.items()]
        return types.SimpleNamespace(name="heba-ablations", runs=runs)

    monkeypatch.setitem(sys.modules, "jobs.grid", types.SimpleNamespace(load_grid=load_grid))
    missing = missing_runs(grid_file, [RECORDS])
    assert seen == [grid_file]
    assert isinstance(missing, pd.DataFrame) and sorted(missing["state"]) == ["failed", "missing"]


def test_fixture_generator_is_deterministic(tmp_path, monkeypatch):
    mr = _make_records_module()
    monkeypatch.setattr(mr, "OUT", tmp_path / "records")
    mr.main()
    regenerated = sorted(p.relative_to(tmp_path / "records") for p in (tmp_path / "records").rglob("record.json"))
    committed = sorted(p.relative_to(RECORDS) for p in RECORDS.rglob("record.json"))
    assert regenerated == committed
    for rel in committed[:: max(1, len(committed) // 12)]:
        assert (tmp_path / "records" / rel).read_text() == (RECORDS / rel).read_text()
    shutil.rmtree(tmp_path / "records")


def test_missing_runs_with_a_real_grid_file(tmp_path):
    from jobs.grid import load_grid

    grid_file = tmp_path / "tiny.yaml"
    grid_file.write_text("name: tiny\nbase:\n  method: coop\n  dataset: caltech101\n  protocol: fewshot\n"
                         "  shots: 4\ngrid:\n  seed: [1, 2, 3]\n")
    runs = load_grid(grid_file).runs
    assert len(runs) == 3
    results = tmp_path / "results"
    done, failed = runs[0], runs[1]
    metrics = {"test": {"accuracy": 91.5, "n_images": 2465, "n_classes": 100}}
    for spec, status in ((done, "done"), (failed, "failed")):
        record = {"schema_version": 1, "run_id": spec.run_id, "status": status, "config": spec.config}
        if status == "done":
            record.update(failure=None, metrics=metrics, summary={"accuracy": 91.5}, history=[],
                          cost={"trainable_params": 8192})
        else:
            record.update(failure={"reason": "DataError: split file missing"}, metrics={})
        _write(results / "tiny", spec.run_id, record)
    missing = missing_runs(grid_file, [results]).set_index("seed")
    assert dict(missing["state"]) == {2: "failed", 3: "missing"}
    assert missing.loc[2, "reason"] == "DataError: split file missing"
