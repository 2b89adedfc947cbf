"""Run-config resolution, run ids, grid expansion, and the clear errors (exit code 2) for bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from frozen_clip.errors import ConfigError
from frozen_clip.optim import OptimConfig, lr_at
from jobs.config import parse_overrides, resolve
from jobs.grid import load_grid
from tests.conftest import base_run

REPO = Path(__file__).resolve().parent.parent


def test_run_id_ignores_where_results_go(data_root, tmp_path):
    a = resolve(base_run(data_root, tmp_path / "a"), "t")
    b = resolve(base_run(tmp_path / "elsewhere", tmp_path / "b", name="other"), "t")
    assert a.run_id == b.run_id
    c = resolve(base_run(data_root, tmp_path / "a", seed=2), "t")
    assert c.run_id != a.run_id
    again = resolve(a.config, "t")  # resolving a resolved config is idempotent (local executor relies on it)
    assert again.run_id == a.run_id and again.config == a.config


def test_coop_context_follows_the_official_config_of_the_protocol(data_root, tmp_path):
    """4 tokens from "a photo of a" on base-to-novel (vit_b16_ctxv1), 16 random tokens on few-shot; explicit values
    win on every protocol."""
    from baselines.coop import CoOp
    from frozen_clip.backbone import load_backbone
    from frozen_clip.method import MethodContext
    from tests.conftest import GOLDEN_BACKBONE
    clip = load_backbone(GOLDEN_BACKBONE, "golden")
    for protocol, method, (n_ctx, prefix) in [
            ("base2novel", {}, (4, "a photo of a")), ("fewshot", {}, (16, " ".join(["X"] * 16))),
            ("fewshot", {"ctx_init": "a photo of a"}, (4, "a photo of a")), ("base2novel", {"ctx_init": ""}, (4, "X X X X")),
            ("base2novel", {"ctx_init": "", "n_ctx": 8}, (8, " ".join(["X"] * 8)))]:
        resolved = resolve({**base_run(data_root, tmp_path, protocol=protocol), "method": {"name": "coop", **method}},
                           "t")
        context = MethodContext(dataset="oxford_pets", template="a photo of a {}.", protocol=protocol, shots=4, seed=1,
                                epochs=1)
        coop = CoOp(clip, ["a", "b"], resolved.method_config, context)
        assert (coop.n_ctx, coop.prompt_prefix) == (n_ctx, prefix), (protocol, method)
        assert CoOp.protocol_settings(resolved.method_config, protocol)["n_ctx"] == n_ctx


def test_method_recipe_then_user_overrides(data_root, tmp_path):
    resolved = resolve(base_run(data_root, tmp_path, optim={"lr": 0.05}), "t")
    assert resolved.optim.lr == 0.05 and resolved.optim.warmup_epochs == 1  # CoOp recipe kept where not set
    assert resolved.config["method"] == {"name": "coop", "n_ctx": None, "ctx_init": None, "csc": False,
                                         "class_token_position": "end", "init_std": 0.02, "truncate_text": True,
                                         "shared_prefix": True}


@pytest.mark.parametrize("override,message", [
    ({"datset": "oxford_pets"}, "unknown key 'datset'; did you mean 'dataset'"),
    ({"method": {"name": "coop", "n_ctxx": 4}}, "unknown key 'method.n_ctxx'; did you mean 'n_ctx'"),
    ({"optim": {"lr": "fast"}}, "optim.lr: expected a number"),
    ({"shots": 1.5}, "shots: expected an integer"),
    ({"method": "copo"}, "unknown method 'copo'; did you mean 'coop'"),
    ({"dataset": "oxford_pet"}, "did you mean 'oxford_pets'"),
    ({"backbone": "ViT-B-61"}, "unknown backbone"),
    ({"protocol": "base2new"}, "not one of"),
    ({"method": {"name": "coop", "csc": True}}, "impossible combination"),
    ({"method": "linear_probe"}, "impossible combination"),
    ({"method": {"name": "coop", "class_token_position": "left"}}, "method.class_token_position"),
    ({"optim": {"epochs": 2, "warmup_epochs": 3}}, "warmup_epochs"),
    ({"optim": [0.01]}, "optim must be a mapping of optimiser settings"),
    ({"fast": "on"}, "fast must be a mapping of speed switches"),
])
def test_bad_configs_name_the_key(data_root, tmp_path, override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve({**base_run(data_root, tmp_path), **override}, "grid.yaml")


def test_overrides_grammar():
    assert parse_overrides(["method.init=zero", "seed=3", "optim.lr=0.01", "targets=[a, b]"]) == {
        "method": {"init": "zero"}, "seed": 3, "optim": {"lr": 0.01}, "targets": ["a", "b"]}
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["seed"])


def write_grid(path: Path, data_root: Path, results: Path, **extra) -> Path:
    grid = {"name": "g", "base": {**base_run(data_root, results), "method": "zeroshot"},
            "grid": {"seed": [1, 2], "dataset": ["oxford_pets", "caltech101"]}, **extra}
    path.write_text(yaml.safe_dump(grid))
    return path


def test_grid_expansion_variants_and_pinning(data_root, tmp_path):
    path = write_grid(tmp_path / "g.yaml", data_root, tmp_path / "res",
                      variants=[{"method": "zeroshot"}, {"method": "coop", "method.ctx_init": "a photo of a"}])
    grid = load_grid(path)
    assert len(grid.runs) == 8 and len({r.run_id for r in grid.runs}) == 8
    assert {r.config["method"]["name"] for r in grid.runs} == {"zeroshot", "coop"}
    pinned = load_grid(path, parse_overrides(["seed=2"]))
    assert len(pinned.runs) == 4 and {r.config["seed"] for r in pinned.runs} == {2}


@pytest.mark.parametrize("mutate,message", [
    (lambda g: g.update(executr={"kind": "local"}), "unknown top-level key 'executr'"),
    (lambda g: g["grid"].update({"method.bogus": [1]}), "method.bogus"),
    (lambda g: g["grid"].update({"dataset": ["oxford_pets", "nope"]}), "unknown dataset 'nope'"),
    (lambda g: g["base"].update(shots="many"), "shots: expected an integer"),
    (lambda g: g.update(name="../outside"), "name '../outside' must be one folder name under results_dir"),
    (lambda g: g.update(name="a/b"), "name 'a/b' must be one folder name"),
    (lambda g: g["grid"].update(name=["ok", ".hidden"]), "name '.hidden' must be one folder name"),
    (lambda g: g.update(executor={"kind": "local", "threads_per_run": -1}), "threads_per_run must be null"),
    (lambda g: g.update(executor={"kind": "local", "threads_per_run": 0}), "threads_per_run must be null"),
    (lambda g: g.update(executor={"kind": "local", "gpus": [0, -1]}), "gpus must be GPU indices >= 0"),
    (lambda g: g["base"].update(shots=-2), "shots must be >= 0"),
])
def test_launch_rejects_bad_grids_with_exit_2(data_root, tmp_path, mutate, message):
    grid = {"name": "bad", "base": {**base_run(data_root, tmp_path / "res"), "method": "zeroshot"},
            "grid": {"seed": [1]}}
    mutate(grid)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(grid))
    proc = subprocess.run([sys.executable, str(REPO / "jobs/launch.py"), "--grid", str(path)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert str(path) in proc.stderr and message in proc.stderr
    assert proc.stderr.count("error:") == 1
    assert not (tmp_path / "res").exists()  # nothing ran, nothing written


def test_a_key_given_twice_in_a_grid_file_is_an_error_naming_both_lines(data_root, tmp_path):
    path = write_grid(tmp_path / "dup.yaml", data_root, tmp_path / "res")
    text = path.read_text().replace("  method: zeroshot\n", "  method: zeroshot\n  seed: 1\n  seed: 2\n", 1)
    assert text != path.read_text()
    path.write_text(text)
    proc = subprocess.run([sys.executable, str(REPO / "jobs/launch.py"), "--grid", str(path), "--dry-run"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert f"{path}: key 'seed' is given twice in one mapping (lines" in proc.stderr
    assert not (tmp_path / "res").exists()


@pytest.mark.parametrize("text,value", [("1e-3", 0.001), ("5E-4", 0.0005), ("+2e2", 200.0), ("1.5e-3", 0.0015),
                                        ("-3e0", -3.0), ("0.01", 0.01), ("'1e-3'", "1e-3"), ("1e", "1e"),
                                        ("12", 12), ("run1e5", "run1e5")])
def test_numbers_read_as_yaml_1_2_reads_them(data_root, tmp_path, text, value):
    """PyYAML (YAML 1.1) reads ``1e-3`` as a string; grids, run configs and overrides read it as a float."""
    from jobs.rawconfig import load_yaml
    assert load_yaml(f"v: {text}") == {"v": value}
    assert parse_overrides([f"optim.lr={text}"]) == {"optim": {"lr": value}}


def test_exponent_learning_rates_resolve_from_files_and_overrides(data_root, tmp_path):
    path = write_grid(tmp_path / "lr.yaml", data_root, tmp_path / "res")
    text = path.read_text()
    assert "  optim:\n" in text
    path.write_text(text.replace("  optim:\n", "  optim:\n    lr: 1e-3\n", 1))
    grid = load_grid(path, parse_overrides(["method=coop"]))
    assert {spec.resolved.optim.lr for spec in grid.runs} == {0.001}
    grid = load_grid(path, parse_overrides(["method=coop", "optim.lr=5e-4"]))
    assert {spec.resolved.optim.lr for spec in grid.runs} == {0.0005}


def test_every_problem_of_a_grid_is_listed_before_anything_runs(tmp_path):
    """Options a backbone cannot take (adapted layers it lacks, a bottleneck ratio that does not divide a width)
    fail when the grid is resolved, all at once, grouped by reason, before the first run: not at run time after
    other runs of the grid have executed."""
    grid = {"name": "mixed", "base": {"dataset": "world_hues", "backbone": "tiny-world", "pretrained": "world",
                                      "results_dir": str(tmp_path / "res")},
            "grid": {"seed": [1, 2]},
            "variants": [{"method": "zeroshot"}, {"method": "mma"},
                         {"method": "heba", "method.bottleneck_ratio": [4, 5]},
                         {"method": "clip_lora", "method.layers": [[7]]}],
            "executor": {"kind": "inline"}}
    path = tmp_path / "mixed.yaml"
    path.write_text(yaml.safe_dump(grid))
    proc = subprocess.run([sys.executable, str(REPO / "jobs/launch.py"), "--grid", str(path)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert f"{path}: 3 problem(s) in 6 of 10 runs; nothing ran:" in proc.stderr
    assert "mma on backbone tiny-world: method.layers: [5, 6, 7, 8, 9, 10, 11, 12] exceeds the 3 blocks" in proc.stderr
    assert "method.bottleneck_ratio (the text tower's attn_in width): 5 must be a positive divisor" in proc.stderr
    assert "method.layers: block 7 does not exist in the text tower (3 blocks)" in proc.stderr
    assert proc.stderr.count("(and 1 more runs)") == 3 and proc.stderr.count("error:") == 1
    assert not (tmp_path / "res").exists()


def test_backbone_shapes_are_read_without_building_the_model():
    from frozen_clip.backbone import backbone_shape, resolve_backbone
    shape = backbone_shape(resolve_backbone("ViT-B/16", "openai"))
    assert (shape.text.layers, shape.text.width, shape.text.mlp_width) == (12, 512, 2048)
    assert (shape.visual.layers, shape.visual.width, shape.visual.mlp_width, shape.embed_dim) == (12, 768, 3072, 512)
    assert backbone_shape(resolve_backbone("RN50", "openai")) is None  # not a transformer image tower: no check
    tiny = backbone_shape(resolve_backbone("tiny-world", "world"))
    assert (tiny.text.layers, tiny.visual.layers, tiny.text.width, tiny.visual.width) == (3, 4, 64, 128)


def test_print_config_of_one_run_is_yaml_with_the_origin_of_every_value(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "jobs/run.py"), "--print-config", "method=clip_lora",
                           "dataset=dtd", "optim.lr=1e-3", f"results_dir={tmp_path / 'res'}"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (config,) = list(yaml.safe_load_all(proc.stdout))
    assert config["method"]["name"] == "clip_lora" and config["optim"]["lr"] == 0.001 and len(config["run_id"]) == 16
    lines = proc.stdout.splitlines()
    assert '  lr: 0.001  # command line' in lines
    assert ('  batch_size: 32  # recipe: base2novel, dtd, 16 shots (no official value: no base2novel code in the '
            'official repository; few-shot run_utils.py:30)') in lines
    assert '  r: 2  # method default: --r' in lines
    assert 'seed: 1  # default' in lines
    assert not (tmp_path / "res").exists()  # nothing ran


def test_print_config_of_a_grid_names_file_and_command_line_origins(data_root, tmp_path, capsys):
    from jobs import cli
    path = write_grid(tmp_path / "g.yaml", data_root, tmp_path / "res",
                      variants=[{"method": "zeroshot"}, {"method": "heba", "method.bottleneck_ratio": 8}])
    assert cli.launch_main(["--grid", str(path), "--print-config", "seed=2"]) == 0
    out = capsys.readouterr().out
    documents = list(yaml.safe_load_all(out))
    assert len(documents) == 4 and {d["seed"] for d in documents} == {2}
    heba = [d for d in documents if d["method"]["name"] == "heba"]
    assert {d["dataset"] for d in heba} == {"oxford_pets", "caltech101"}
    assert "seed: 2  # command line" in out and "  bottleneck_ratio: 8  # grid file" in out
    assert ("  lr: 0.0075  # recipe: base2novel, oxford_pets, 4 shots (official code: "
            "configs/trainers/HeBA/base2new.yaml:17)") in out
    assert "# run 3/4: HeBA [bottleneck ratio=8]" in out
    assert not (tmp_path / "res").exists()


def test_every_shipped_grid_validates():
    grids = sorted((REPO / "grids").glob("*.yaml"))
    assert grids, "no grid files shipped"
    for path in grids:
        grid = load_grid(path)
        assert grid.runs, path
        first = path.read_text().splitlines()[0]
        assert first.startswith("#") and "jobs/launch.py" in first, f"{path}: first line must be the launch command"


@pytest.mark.parametrize("cfg,expected", [
    # measured with Dassl's scheduler classes
    (OptimConfig(lr=0.0015, epochs=5), [1.5e-3, 1.357e-3, 9.82e-4, 5.18e-4, 1.43e-4]),
    (OptimConfig(lr=0.0035, epochs=5, warmup_epochs=1), [1e-5, 3.5e-3, 3.166e-3, 2.291e-3, 1.209e-3]),
    (OptimConfig(lr=0.002, epochs=10, warmup_epochs=1),
     [1e-5, 2e-3, 1.95e-3, 1.81e-3, 1.59e-3, 1.31e-3, 1e-3, 6.91e-4, 4.12e-4, 1.91e-4]),
])
def test_dassl_schedules(cfg, expected):
    got = [lr_at(cfg, epoch, 0, 1) for epoch in range(1, cfg.epochs + 1)]
    assert got == pytest.approx(expected, rel=2e-3)
