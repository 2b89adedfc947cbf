"""Registry-wide tests: every registered method, whoever added it, is checked here with no list of methods in any
test file. For each method: the contract is filled in, its config round-trips through the grid grammar, its
recipe resolves on every protocol it declares, a short run on the built-in world finishes on every declared
protocol, a run killed mid-way resumes to identical metrics, and the analysis names its runs by its display name.
Defaults are pinned per recipe version (``tests/fixtures/method_defaults.json``): a changed default without a bumped
``info.recipe_version`` fails, because it would change the meaning of existing run ids."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from frozen_clip.configtools import build, to_dict
from frozen_clip.contract import PROTOCOL_NAMES, card, defaults
from frozen_clip.method import check_method_class
from jobs.config import canonical_config, resolve, run_id_of, run_label
from jobs.rawconfig import set_dotted
from jobs.registry import METHODS

REPO = Path(__file__).resolve().parent.parent
DEFAULTS_FILE = Path(__file__).resolve().parent / "fixtures" / "method_defaults.json"
METHOD_NAMES = METHODS.in_order()
WORLD = {"backbone": "tiny-world", "pretrained": "world", "data_root": "builtin", "dataset": "world_hues"}
TARGETS = {"cross_dataset": ["world_objects"], "domain_generalization": ["world_hues_outline"]}
#: images per class (train, val, test) of the small instance of the built-in world the runs use: the generator and
#: the datasets of ``data_root: builtin``, with fewer images, so that ~60 runs take minutes, not a quarter hour
SMALL_WORLD = (4, 2, 6)


def declared(name: str) -> tuple[str, ...]:
    return METHODS.get(name).info.capabilities.protocols


def world_raw(name: str, protocol: str | None = None) -> dict:
    """A config of ``name`` on the built-in world with its ``info.tiny_world_overrides`` (default: its first declared
    protocol)."""
    protocol = protocol or declared(name)[0]
    raw = {**WORLD, "method": {"name": name}, "protocol": protocol,
           **({"targets": TARGETS[protocol]} if protocol in TARGETS else {})}
    for key, value in METHODS.get(name).info.tiny_world_overrides.items():
        set_dotted(raw, key, value, f"{name}: info.tiny_world_overrides")
    return raw


def world_config(name: str, protocol: str, results: Path, long: bool = False, **extra) -> dict:
    """A short run of ``name`` on the built-in world with its ``info.tiny_world_overrides``: 2 shots, at most 2 epochs
    of batch 4 (training-free methods keep their 0 epochs). ``long``: enough epochs of batch 2 that a kill after the first checkpoint lands before the
    end (epochs on cached features take milliseconds, hence more of them)."""
    cls = METHODS.get(name)
    epochs = cls.recipe(protocol, WORLD["dataset"], 2, cls.Config()).get("epochs", 1)
    if long:
        epochs = min(epochs, 40 if cls.info.capabilities.feature_training else 6)
        batch = 2
    else:
        epochs, batch = min(epochs, 2), 4
    optim = {"eval_batch_size": 256, **({"epochs": epochs, "batch_size": batch} if epochs else {})}
    cfg = {**WORLD, "method": {"name": name}, "protocol": protocol, "shots": 2, "seed": 1,
           "results_dir": str(results), "optim": optim, **extra}
    for key, value in cls.info.tiny_world_overrides.items():
        set_dotted(cfg, key, value, f"{name}: info.tiny_world_overrides")
    if protocol in TARGETS:
        cfg["targets"] = TARGETS[protocol]
    return cfg


def run_command(cfg: dict, tmp: Path) -> list[str]:
    path = tmp / f"config-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(cfg))
    return [sys.executable, str(REPO / "jobs/run.py"), "--config", str(path)]


def record_of(results: Path) -> dict:
    found = list(results.glob("*/*/record.json"))
    assert len(found) == 1, found
    return json.loads(found[0].read_text())


# -- the contract ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", METHOD_NAMES)
def test_contract_is_filled_in(name):
    cls = METHODS.get(name)
    check_method_class(name, cls)  # every option has a source, info.name matches, capabilities are consistent
    described = json.loads(json.dumps(card(cls)))  # JSON-ready: it goes into every record
    assert described["display"] and described["name"] == name
    assert set(described["options"]) == {f.name for f in dataclasses.fields(cls.Config)}
    assert all(option["display"] and option["source"] for option in described["options"].values())
    for factor, options in cls.info.factors.items():
        assert set(options) <= set(described["options"]), f"factor {factor!r} names unknown options"


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_exact_speed_switches_name_their_official_path(name):
    """Every option left out of the run id (an exact speed switch) declares the value that turns it off, and that
    value is a valid config: the step benchmark and the equivalence tests build the official path from it."""
    from frozen_clip.contract import fast_path_switches
    cls = METHODS.get(name)
    switches = fast_path_switches(cls.Config)
    assert set(getattr(cls.Config, "UNHASHED_FIELDS", ())) <= set(switches)
    official = build(cls.Config, {**to_dict(cls.Config()), **switches}, "test")  # validated as any config
    assert all(getattr(official, k) != getattr(cls.Config(), k) for k in switches)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_progress_and_status_lines_use_the_display_name(name):
    config = resolve(world_raw(name), "test").config
    label = run_label(config)
    assert label.startswith(METHODS.get(name).info.display + " ") and " world_hues " in label


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_config_round_trips_through_the_grid_grammar(name):
    cls = METHODS.get(name)
    config = cls.Config()
    assert build(cls.Config, to_dict(config), "test") == config
    resolved = resolve(world_raw(name), "test")
    again = resolve(resolved.config, "test")  # a resolved config is itself a valid config with the same id
    assert again.run_id == resolved.run_id and again.config == resolved.config
    assert run_id_of(resolved.config) == resolved.run_id


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_recipe_resolves_on_every_declared_protocol_and_refuses_the_others(name):
    from frozen_clip.configtools import to_dict_values
    from frozen_clip.errors import ConfigError
    from frozen_clip.optim import OptimConfig
    cls = METHODS.get(name)
    optim_fields = {f.name for f in dataclasses.fields(OptimConfig)}
    for protocol in PROTOCOL_NAMES:
        raw = world_raw(name, protocol)  # with the tiny world's settings (its 3/4 blocks)
        if protocol in declared(name):
            recipe = cls.recipe(protocol, WORLD["dataset"], 16, cls.Config())
            assert set(recipe) <= optim_fields, f"recipe keys {set(recipe) - optim_fields} are not OptimConfig fields"
            resolved = resolve(raw, "test")
            assert all(resolved.config["optim"][k] == v for k, v in to_dict_values(recipe).items())
        else:
            with pytest.raises(ConfigError, match="does not support protocol"):
                resolve(raw, "test")


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_resolution_refuses_exactly_the_backbones_the_method_cannot_be_built_on(name, tiny_world_clip):
    """``check_backbone`` runs when a config is resolved (before any run of a grid); on the tiny world's 3/4-block
    CLIP, with the method's defaults and with its tiny-world settings, resolution accepts a config exactly when the
    method can then be built on the loaded backbone."""
    from frozen_clip.errors import ConfigError
    from frozen_clip.method import MethodContext
    cls = METHODS.get(name)
    for protocol in declared(name):
        for overrides in ({}, dict(cls.info.tiny_world_overrides)):
            raw = {**WORLD, "method": name, "protocol": protocol,
                   **({"targets": TARGETS[protocol]} if protocol in TARGETS else {})}
            for key, value in overrides.items():
                set_dotted(raw, key, value, "test")
            try:
                resolved = resolve(raw, "test")
            except ConfigError as err:
                assert "on backbone tiny-world" in str(err), err
                refused = True
            else:
                refused = False
            context = MethodContext(dataset=WORLD["dataset"], template="a photo of a {}.", protocol=protocol,
                                    shots=2, seed=1, epochs=1)
            config = build(cls.Config, {k[len("method."):]: v for k, v in overrides.items()
                                        if k.startswith("method.")}, "test")
            try:
                cls(tiny_world_clip, ["red", "green", "blue"], config, context)
            except ConfigError:
                assert refused, f"{name} {protocol} {overrides}: the build refused what resolution accepted"
            else:
                assert not refused, f"{name} {protocol} {overrides}: resolution refused what the build accepts"
                assert resolved.method_name == name


@pytest.fixture(scope="module")
def tiny_world_clip():
    from frozen_clip.backbone import load_backbone
    return load_backbone("tiny-world", "world")


# -- run ids ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", METHOD_NAMES)
def test_a_new_option_at_its_default_keeps_run_ids(name):
    """Ids hash options that differ from their defaults only: a config written before an option existed (the
    option absent) and one naming it at its default get one id; another value gets another id. On ViT-B/16 (the
    backbone the defaults are for; resolving it reads no weights)."""
    resolved = resolve({**world_raw(name), "method": {"name": name}, "backbone": "ViT-B-16", "pretrained": "openai"},
                       "test")
    method = dict(resolved.config["method"])
    canonical = canonical_config(resolved.config)["method"]
    assert canonical == {"name": name, "recipe_version": METHODS.get(name).info.recipe_version}
    field = next(f for f in dataclasses.fields(METHODS.get(name).Config) if f.name not in
                 getattr(METHODS.get(name).Config, "UNHASHED_FIELDS", ()))
    older = {**resolved.config, "method": {k: v for k, v in method.items() if k != field.name}}
    assert run_id_of(older) == resolved.run_id


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_changed_default_needs_a_recipe_version_bump(name):
    """A default differs from the one pinned for the same recipe version: bump ``info.recipe_version`` and
    regenerate the pin (``python -m tests.test_method_registry``). New methods are not pinned yet."""
    pinned = json.loads(DEFAULTS_FILE.read_text())
    if name not in pinned:
        return  # a method added after the pin: nothing to compare against (the pin is regenerated on a bump)
    cls = METHODS.get(name)
    current = json.loads(json.dumps(to_dict_defaults(cls)))
    if pinned[name]["recipe_version"] == cls.info.recipe_version:
        assert pinned[name]["defaults"] == current, (
            f"{name}: defaults changed under recipe version {cls.info.recipe_version}; bump info.recipe_version")
    else:
        assert cls.info.recipe_version > pinned[name]["recipe_version"], f"{name}: recipe_version went backwards"


def to_dict_defaults(cls: type) -> dict:
    from frozen_clip.configtools import to_dict_values
    return to_dict_values(defaults(cls.Config))


# -- runs on the built-in world -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_world(tmp_path_factory) -> Path:
    """The built-in world's datasets these runs use, generated with :data:`SMALL_WORLD` images per class."""
    from world import generate as world
    keys = [WORLD["dataset"], *(t for targets in TARGETS.values() for t in targets)]
    return world.generate_world(tmp_path_factory.mktemp("small_world") / "root", per_class=SMALL_WORLD,
                                datasets=keys)


@pytest.fixture(scope="module")
def world_runs(tmp_path_factory, small_world):
    """``(method, protocol) -> record`` of short runs on the small world, each run once: in this process (the runner's
    own entry, :func:`jobs.executors.execute_run`: a subprocess per run would spend most of its time importing
    torch), except the ``long`` references of the kill-and-resume test, which run through jobs/run.py as the killed
    and resumed runs do, so that all three run under the same process settings."""
    from tests.conftest import execute_resolved
    root = tmp_path_factory.mktemp("world_runs")
    done: dict[tuple[str, str], dict] = {}

    def get(name: str, protocol: str, long: bool = False) -> dict:
        if (name, protocol, long) not in done:
            results = root / f"{name}-{protocol}-{long}"
            cfg = world_config(name, protocol, results, long, data_root=str(small_world))
            if long:
                proc = subprocess.run(run_command(cfg, root), capture_output=True, text=True, timeout=900)
                assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
                done[(name, protocol, long)] = record_of(results)
            else:
                done[(name, protocol, long)] = execute_resolved(resolve(cfg, f"{name} {protocol}"))
        return done[(name, protocol, long)]
    return get


@pytest.mark.slow
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_short_run_on_every_declared_protocol(name, world_runs):
    for protocol in declared(name):
        record = world_runs(name, protocol)
        assert record["status"] == "done"
        assert record["method_card"]["display"] == METHODS.get(name).info.display
        expected = {"base2novel": {"base", "novel"}, "fewshot": {"test"}}.get(
            protocol, {"source", *TARGETS.get(protocol, [])})
        assert set(record["metrics"]) == expected
        assert all(0.0 <= m["accuracy"] <= 100.0 for m in record["metrics"].values())


@pytest.mark.slow
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_killed_run_resumes_to_identical_metrics(name, world_runs, small_world, tmp_path):
    protocol = declared(name)[0]
    reference = world_runs(name, protocol, long=True)
    results = tmp_path / "killed"
    cfg = world_config(name, protocol, results, True, data_root=str(small_world))
    proc = subprocess.Popen(run_command(cfg, tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    trains = reference["config"]["optim"]["epochs"] > 0
    deadline, killed_after = time.time() + 600, None
    while time.time() < deadline and proc.poll() is None:
        checkpoints = list(results.glob("*/*/checkpoints/last.pt"))
        logs = list(results.glob("*/*/log.txt"))
        if trains and checkpoints:
            killed_after = "checkpoint"
        elif not trains and logs and "fit split" in logs[0].read_text():
            killed_after = "setup"
        if killed_after:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait()
    assert killed_after, "the run ended before it could be killed"
    folder = next(results.glob("*/*/log.txt")).parent
    if (folder / "record.json").exists():
        pytest.fail("the kill landed after the record was written")  # the kill must interrupt the run
    resumed = subprocess.run(run_command(cfg, tmp_path), capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    record = json.loads((folder / "record.json").read_text())
    if trains:
        assert record["cost"]["resumed_from_epoch"] >= 1
    assert record["run_id"] == reference["run_id"]
    assert record["metrics"] == reference["metrics"]


@pytest.mark.slow
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_analysis_names_runs_by_display_name(name, world_runs, tmp_path):
    from analysis import methods
    from analysis.build import labelled
    from analysis.records import load_records
    record = world_runs(name, declared(name)[0])
    folder = tmp_path / "results" / "grid" / record["run_id"]
    folder.mkdir(parents=True)
    (folder / "record.json").write_text(json.dumps(record))
    methods._CARDS.clear()  # the names must come from the record's card
    frame = load_records(tmp_path / "results").done
    labels = set(labelled(frame)["label"])
    assert labels == {methods.run_display(frame.iloc[0].to_dict())}
    assert METHODS.get(name).info.display in next(iter(labels))


def write_pinned_defaults() -> None:
    """Regenerate ``tests/fixtures/method_defaults.json`` (after a deliberate recipe-version bump)."""
    pinned = {name: {"recipe_version": METHODS.get(name).info.recipe_version,
                     "defaults": to_dict_defaults(METHODS.get(name))} for name in METHOD_NAMES}
    DEFAULTS_FILE.write_text(json.dumps(json.loads(json.dumps(pinned)), indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    write_pinned_defaults()
    print(f"wrote {DEFAULTS_FILE}")
