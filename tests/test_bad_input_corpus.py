"""A corpus of bad inputs, each launched against a results folder that already holds a finished run: the launch must
exit with code 2, name the file or key (and what was expected), start no run, and leave the finished record as it
was. Grid files, command-line overrides, data roots, backbones and weights, results folders.

Each case is a function ``(case) -> argv`` that breaks one thing in a copy of a valid setup (:class:`Case`), and the
text the error must contain. The launches run in this process (``jobs.cli.launch_main``), so the corpus costs
seconds, not a subprocess per case.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from jobs import cli
from tests.conftest import LAYOUTS, base_run, write_dataset


@dataclass
class Case:
    """A copy of a valid setup: a data root, a results folder with one finished run, and a grid file."""

    tmp: Path
    data: Path
    results: Path
    grid: dict[str, Any]

    @property
    def grid_path(self) -> Path:
        return self.tmp / "corpus.yaml"

    def write(self, text: str | None = None) -> str:
        self.grid_path.write_text(yaml.safe_dump(self.grid, sort_keys=False) if text is None else text)
        return str(self.grid_path)

    def argv(self, *extra: str) -> list[str]:
        return ["--grid", self.write(), "--no-analysis", *extra]

    def base(self, **changes: Any) -> "Case":
        self.grid["base"].update(changes)
        return self

    def split_file(self) -> Path:
        folder, _, split_file = LAYOUTS["oxford_pets"]
        return self.data / folder / split_file

    def image(self) -> Path:
        folder, image_dir, _ = LAYOUTS["oxford_pets"]
        return sorted((self.data / folder / image_dir).rglob("*.png"))[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path, dict[str, Any]]:
    """A data root and a results folder in which the valid grid's run is finished."""
    root = tmp_path_factory.mktemp("corpus")
    data = write_dataset(root / "data", "oxford_pets", 6)
    results = root / "results"
    grid = {"name": "corpus", "base": {**base_run(data, results, method="zeroshot"), "shots": 2},
            "executor": {"kind": "inline"}}
    (root / "corpus.yaml").write_text(yaml.safe_dump(grid))
    assert cli.launch_main(["--grid", str(root / "corpus.yaml"), "--no-analysis"]) == 0
    return data, results, grid


def snapshot(results: Path) -> dict[str, str]:
    """Every file of every run folder under ``results`` (records, logs, configs, checkpoints) -> hash of its bytes.
    The shared caches are left out: checking the data writes split manifests and the verified-images ledger."""
    runs = [p for p in results.rglob("*") if p.is_dir() and len(p.name) == 16 and p.parent.parent == results]
    return {str(f.relative_to(results)): hashlib.sha256(f.read_bytes()).hexdigest()
            for run in runs for f in sorted(run.rglob("*")) if f.is_file()}


def yaml_text(case: Case, old: str, new: str) -> str:
    text = yaml.safe_dump(case.grid, sort_keys=False)
    assert old in text, text
    return text.replace(old, new, 1)


def heba(case: Case, **options: Any) -> Case:
    return case.base(method={"name": "heba", **options})


#: (case id, how to break the setup -> argv, what the message must contain)
CASES: list[tuple[str, Callable[[Case], list[str]], str]] = [
    # grid files: structure
    ("top-level-typo", lambda c: (c.grid.update(executr={}), c.argv())[1], "unknown top-level key 'executr'"),
    ("base-not-mapping", lambda c: (c.grid.update(base=3), c.argv())[1], "base"),
    ("variants-not-list", lambda c: (c.grid.update(variants={"method": "coop"}), c.argv())[1],
     "variants must be a list"),
    ("yaml-syntax", lambda c: ["--grid", c.write("name: x\nbase: [unclosed\n")], "not valid YAML"),
    ("grid-is-list", lambda c: ["--grid", c.write("- method: coop\n")], "must be a mapping"),
    ("grid-missing", lambda c: ["--grid", str(c.tmp / "absent.yaml")], "does not exist"),
    ("duplicate-key", lambda c: ["--grid", c.write(yaml_text(c, "  seed: 1\n", "  seed: 1\n  seed: 2\n"))],
     "key 'seed' is given twice in one mapping"),
    ("name-parent", lambda c: (c.grid.update(name="../outside"), c.argv())[1], "must be one folder name"),
    ("name-slash", lambda c: (c.grid.update(name="a/b"), c.argv())[1], "must be one folder name"),
    ("name-hidden", lambda c: (c.grid.update(name=".hidden"), c.argv())[1], "must be one folder name"),
    ("name-not-string", lambda c: (c.grid.update(name=["x"]), c.argv())[1], "name"),
    # grid files: run keys and values
    ("unknown-run-key", lambda c: c.base(shot=4).argv(), "shot"),
    ("unknown-method", lambda c: c.base(method="hebba").argv(), "hebba"),
    ("unknown-dataset", lambda c: c.base(dataset="oxford_pet").argv(), "oxford_pet"),
    ("unknown-backbone", lambda c: c.base(backbone="ViT-Q/99").argv(), "unknown backbone 'ViT-Q/99'"),
    ("unknown-pretrained-tag", lambda c: c.base(backbone="ViT-B-16", pretrained="opneai").argv(),
     "unknown pretrained tag 'opneai'"),
    ("shots-string", lambda c: c.base(shots="many").argv(), "shots: expected an integer"),
    ("shots-negative", lambda c: c.base(shots=-1).argv(), "shots must be >= 0"),
    ("seed-string", lambda c: c.base(seed="one").argv(), "seed"),
    ("protocol-unknown", lambda c: c.base(protocol="base-to-novel").argv(), "protocol"),
    ("sampling-unknown", lambda c: c.base(sampling="random").argv(), "sampling"),
    ("precision-unknown", lambda c: c.base(precision="fp8").argv(), "precision"),
    ("targets-unknown", lambda c: c.base(protocol="cross_dataset", targets=["nope"]).argv(), "nope"),
    ("optim-not-mapping", lambda c: c.base(optim=[0.1]).argv(), "optim must be a mapping"),
    ("optim-lr-string", lambda c: c.base(optim={"lr": "fast"}).argv(), "optim.lr"),
    ("optim-unknown-key", lambda c: c.base(optim={"learning_rate": 0.1}).argv(), "learning_rate"),
    ("optim-warmup", lambda c: c.base(method="coop", optim={"epochs": 2, "warmup_epochs": 3}).argv(),
     "warmup_epochs"),
    ("fast-not-mapping", lambda c: c.base(fast="on").argv(), "fast must be a mapping"),
    ("fast-unknown-key", lambda c: c.base(fast={"turbo": True}).argv(), "fast.turbo"),
    ("fast-augment-views", lambda c: c.base(fast={"augment_views": 0}).argv(), "augment_views"),
    ("method-option-typo", lambda c: heba(c, bottleneck=4).argv(), "bottleneck"),
    ("method-value-typo", lambda c: heba(c, init="kaiming_al").argv(), "init"),
    ("heba-ratio-zero", lambda c: heba(c, bottleneck_ratio=0).argv(), "bottleneck_ratio"),
    ("heba-ratio-not-divisor", lambda c: heba(c, bottleneck_ratio=5).argv(),
     "method.bottleneck_ratio (the text tower's attn_in width): 5 must be a positive divisor"),
    ("heba-layers-beyond", lambda c: heba(c, text_layers=[1, 9]).argv(), "method.text_layers: [1, 9] exceeds"),
    ("mma-default-layers", lambda c: c.base(method="mma").argv(), "mma on backbone"),
    ("rmadapter-default-layers", lambda c: c.base(method="rmadapter").argv(), "rmadapter on backbone"),
    ("maple-default-depth", lambda c: c.base(method="maple").argv(), "method.prompt_depth=9 exceeds"),
    ("clip-lora-layers", lambda c: c.base(method={"name": "clip_lora", "layers": [9]}).argv(),
     "method.layers: block 9 does not exist"),
    ("linear-probe-novel", lambda c: c.base(method="linear_probe").argv(), "does not support protocol 'base2novel'"),
    ("tip-adapter-xd", lambda c: c.base(method="tip_adapter").argv(), "does not support protocol"),
    # executors
    ("executor-kind", lambda c: (c.grid.update(executor={"kind": "cluster"}), c.argv())[1], "kind"),
    ("executor-workers", lambda c: (c.grid.update(executor={"kind": "local", "workers": 0}), c.argv())[1],
     "workers must be >= 1"),
    ("executor-threads", lambda c: (c.grid.update(executor={"kind": "local", "threads_per_run": -1}), c.argv())[1],
     "threads_per_run must be null"),
    ("executor-gpus", lambda c: (c.grid.update(executor={"kind": "local", "gpus": [-1]}), c.argv())[1],
     "gpus must be GPU indices"),
    ("executor-unknown-key", lambda c: (c.grid.update(executor={"kind": "local", "wrkers": 2}), c.argv())[1],
     "wrkers"),
    # command-line overrides
    ("override-no-equals", lambda c: c.argv("seed"), "must look like key=value"),
    ("override-unknown-key", lambda c: c.argv("shotz=2"), "shotz"),
    ("override-bad-yaml", lambda c: c.argv("shots=[1"), "cannot parse"),
    ("override-layers", lambda c: c.argv("method=mma", "method.layers=[99]"), "method.layers: [99] exceeds"),
    ("override-name", lambda c: c.argv("name=../x"), "must be one folder name"),
    ("override-dataset", lambda c: c.argv("dataset=nope"), "nope"),
    ("executor-opt-workers", lambda c: c.argv("--executor", "local", "--executor-opt", "workers=0"), "workers"),
    ("executor-opt-unknown", lambda c: c.argv("--executor-opt", "bogus=1"), "bogus"),
    # data roots (checked for every run before the first one starts)
    # (a new seed: a run to do, whose data the launch checks; the finished seed-1 run needs nothing)
    ("data-root-missing", lambda c: c.base(data_root=str(c.tmp / "no-data")).argv("seed=2"), "no-data"),
    ("dataset-folder-missing", lambda c: (shutil.rmtree(c.split_file().parent), c.argv("seed=2"))[1],
     "oxford_pets"),
    ("split-file-broken", lambda c: (c.split_file().write_text("{broken"), c.argv("seed=2"))[1],
     LAYOUTS["oxford_pets"][2]),
    ("split-file-missing", lambda c: (c.split_file().unlink(), c.argv("seed=2"))[1], LAYOUTS["oxford_pets"][2]),
    ("image-missing", lambda c: (c.image().unlink(), c.argv("seed=2"))[1], "missing or unreadable"),
    ("image-corrupt", lambda c: (c.image().write_bytes(b"not a png at all"), c.argv("seed=2"))[1],
     "missing or unreadable"),
    # backbones, weights, results folders
    ("model-config-broken", lambda c: ((c.tmp / "m.json").write_text("{"),
                                       c.base(backbone=str(c.tmp / "m.json"), pretrained="none").argv())[1],
     "cannot be read as JSON"),
    ("model-config-missing", lambda c: c.base(backbone=str(c.tmp / "absent.json"), pretrained="none").argv(),
     "does not exist"),
    ("weights-missing", lambda c: c.base(pretrained=str(c.tmp / "absent.safetensors")).argv(), "absent.safetensors"),
    ("weights-truncated", lambda c: ((c.tmp / "w.safetensors").write_bytes(b"\x10" + b"\x00" * 7 + b"{}"),
                                     c.base(pretrained=str(c.tmp / "w.safetensors")).argv())[1],
     "is damaged or not a safetensors file"),
    ("results-dir-is-file", lambda c: ((c.tmp / "file").write_text("x"),
                                       c.base(results_dir=str(c.tmp / "file")).argv())[1], "file is not a folder"),
    ("results-subfolder-is-file", lambda c: ((c.results / "corpus2").write_text("x"),
                                             c.grid.update(name="corpus2"), c.argv())[2], "corpus2 is not a folder"),
    # several problems: all listed at once
    ("two-problems", lambda c: (c.grid.update(grid={"seed": [1, 2]},
                                              variants=[{"method": "mma"}, {"method": "maple"}]), c.argv())[1],
     "2 problem(s) in 4 of 4 runs"),
]


@pytest.mark.parametrize("break_it,expected", [(b, e) for _, b, e in CASES], ids=[i for i, _, _ in CASES])
def test_bad_input_exits_2_naming_it_with_nothing_run_or_changed(finished, tmp_path, capsys, break_it, expected):
    data, results, grid = finished
    case = Case(tmp_path, tmp_path / "data", tmp_path / "results", copy.deepcopy(grid))
    shutil.copytree(data, case.data)
    shutil.copytree(results, case.results)
    case.base(data_root=str(case.data), results_dir=str(case.results))
    before = snapshot(case.results)
    assert before  # the finished run is there to be protected
    argv = break_it(case)
    capsys.readouterr()
    code = cli.launch_main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert expected in err, err
    assert err.count("error:") == 1 and "Traceback" not in err
    where = argv[argv.index("--grid") + 1]
    assert where in err or "command line" in err or "--executor-opt" in err, err  # names the file or the source
    assert snapshot(case.results) == before  # no run started, the finished record unchanged


def test_the_corpus_is_large_and_its_setup_valid(finished):
    assert len(CASES) >= 60 and len({i for i, _, _ in CASES}) == len(CASES)
    _, results, _ = finished
    (record,) = results.glob("corpus/*/record.json")
    assert json.loads(record.read_text())["status"] == "done"
