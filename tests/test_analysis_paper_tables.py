"""The tables as a paper prints them (issue: one-factor ablations, the papers' layouts, honest statistics).

Two synthetic record sets, written with full method configs and cards (``tests/synthetic_records.py``):

- the acceptance grid on the built-in world: a HeBA one-factor grid (bottleneck ratio, init, heterogeneity), two
  RMAdapter rungs, zero-shot CLIP and CoOp, on two world datasets x 3 seeds;
- 11 CoOp datasets x 12 methods (every registered method and Tip-Adapter-F) x 3 seeds, plus a HeBA ratio ablation.

Every table is checked for display names (no option or dataset key outside ``\\label``), captions free of
implementation notes (they are in ``notes.md``), and ``tables_preview.tex`` (two columns, the CVPR page) is compiled
with pdflatex when it is on PATH (CI installs it) and must give no ``Overfull \\hbox``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from analysis.latex import COLUMN_WIDTH_PT, TEXT_WIDTH_PT, estimated_width, fit_width
from analysis.stats import harmonic_mean, holm
from analysis.tables import analyse, write_outputs
from jobs.registry import METHODS, method_card
from tests.synthetic_records import COOP_DATASETS, method_config, write_grid, write_record

WORLD = ("world_hues", "world_objects")
IMPLEMENTATION_WORDS = ("ddof", "parse_test_res", "GUESS", "specs/", ".py", "§", "np.std", "Dassl")


def _heba(**options):
    return method_config("heba", **options)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """The acceptance grid, analysed: one folder of tables."""
    root = tmp_path_factory.mktemp("world")
    configs = [(method_config("zeroshot"), 60.0), (method_config("coop", ctx_init="a photo of a"), 64.0),
               (_heba(), 70.0), (_heba(bottleneck_ratio=2), 69.0), (_heba(bottleneck_ratio=8), 71.0),
               (_heba(init="zero"), 68.0), (_heba(init="kaiming_all"), 69.5),
               (_heba(visual_adapter="linear"), 69.0), (_heba(text_adapter="conv1d"), 70.5),
               (method_config("rmadapter"), 68.0),
               (method_config("rmadapter", reconstruction=False, consistency=False), 66.0)]
    write_grid(root / "results", configs, WORLD, [1, 2, 3], backbone="tiny-world")
    out = root / "analysis"
    write_outputs(analyse([root / "results"]), out, plots=False, log=lambda _: None)
    return out


@pytest.fixture(scope="module")
def twelve(tmp_path_factory) -> Path:
    """11 datasets x 12 methods x 3 seeds, and HeBA at bottleneck ratio 2 and 8 (a one-factor ablation)."""
    root = tmp_path_factory.mktemp("twelve")
    configs = [(method_config(name), 62.0 + 1.5 * i) for i, name in enumerate(METHODS.in_order())]
    configs += [(method_config("tip_adapter", finetune=True), 70.0),
                (_heba(bottleneck_ratio=8), 62.0 + 1.5 * METHODS.in_order().index("heba") + 3.0),
                (_heba(bottleneck_ratio=2), 62.0 + 1.5 * METHODS.in_order().index("heba"))]
    write_grid(root / "results", configs, COOP_DATASETS, [1, 2, 3])
    out = root / "analysis"
    write_outputs(analyse([root / "results"]), out, plots=False, log=lambda _: None)
    return out


def _rows(tex: str) -> list[list[str]]:
    body = tex.split("\\midrule", 1)[1].split("\\bottomrule")[0]
    return [[c.strip() for c in line.strip()[:-2].split(" & ")] for line in body.split("\n")
            if line.strip().endswith("\\\\") and not line.strip().startswith("\\")]


def _visible(tex: str) -> str:
    """The text a reader sees: everything but ``\\label{...}``."""
    return re.sub(r"\\label\{[^}]*\}", "", tex)


def _raw_keys() -> set[str]:
    """Option keys and value keys with an underscore (``bottleneck_ratio``, ``kaiming_all``) and dataset keys."""
    keys = set(COOP_DATASETS) | set(WORLD)
    for name in METHODS.in_order():
        for option, entry in method_card(name)["options"].items():
            keys |= {k for k in [option, *entry["values"]] if "_" in k}
    return keys


def _caption(tex: str) -> str:
    """The argument of the first ``\\caption{...}`` (braces matched)."""
    start = tex.index("\\caption{") + len("\\caption{")
    depth = 1
    for i, char in enumerate(tex[start:], start):
        depth += {"{": 1, "}": -1}.get(char, 0) if tex[i - 1] != "\\" else 0
        if depth == 0:
            return tex[start:i]
    raise AssertionError("unclosed caption")


def _escaped(key: str) -> str:
    """A key as it would appear in LaTeX text (``bottleneck\\_ratio``)."""
    return key.replace("_", "\\_")


def _compile(out: Path, tmp_path: Path) -> str | None:
    """pdflatex's log of ``tables_preview.tex``, or None without pdflatex."""
    engine = shutil.which("pdflatex")
    if engine is None:
        print("no pdflatex on PATH: width estimates checked only")
        return None
    for path in out.glob("*.tex"):
        shutil.copy(path, tmp_path / path.name)
    proc = subprocess.run([engine, "-interaction=nonstopmode", "-halt-on-error", "tables_preview.tex"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    return (tmp_path / "tables_preview.log").read_text(errors="replace")


# ------------------------------------------------------------------------------------------ the world grid

def test_one_table_per_factor_with_every_cell_filled(world):
    names = {p.stem for p in world.glob("ablation_*.tex")}
    assert names == {"ablation_heba_base2novel_bottleneck-ratio", "ablation_heba_base2novel_init",
                     "ablation_heba_base2novel_heterogeneity", "ablation_rmadapter_base2novel_reconstruction-branch",
                     *(f"ablation_heba_base2novel_{f}_datasets" for f in ("bottleneck-ratio", "init",
                                                                          "heterogeneity")),
                     "ablation_rmadapter_base2novel_reconstruction-branch_datasets"}
    ratio = _rows((world / "ablation_heba_base2novel_bottleneck-ratio.tex").read_text())
    assert [r[0] for r in ratio] == ["2", "4 (paper)", "8"]
    for name in names:
        for row in _rows((world / f"{name}.tex").read_text()):
            blanks = [cell for cell in row if cell == "--"]  # only the default row's own difference
            assert len(blanks) == ("(paper)" in " ".join(row) and "datasets" not in name), (name, row)
    heterogeneity = _rows((world / "ablation_heba_base2novel_heterogeneity.tex").read_text())
    default = [r for r in heterogeneity if r[1].endswith("(paper)")]
    assert [r[:2] for r in default] == [["conv", "linear (paper)"]]
    assert len(heterogeneity) == 3  # the default and the two one-option levels, no empty cross of them


def test_an_ablation_cell_holds_the_other_options_at_their_defaults(world):
    """The ratio-8 row is exactly the runs at ratio 8 with every other option at its default."""
    numbers = pd.read_csv(world / "ablation_heba_base2novel_bottleneck-ratio.csv")
    per_seed = pd.read_csv(world / "ablation_heba_base2novel_bottleneck-ratio_per_seed.csv")
    rows = per_seed[(per_seed["bottleneck_ratio"] == 8) & (per_seed["metric"] == "base")]
    assert len(rows) == len(WORLD) * 3  # 2 datasets x 3 seeds: no other configuration pooled in
    base = rows.groupby("dataset")["value"].mean().mean()
    novel = per_seed[(per_seed["bottleneck_ratio"] == 8) & (per_seed["metric"] == "novel")] \
        .groupby("dataset")["value"].mean().mean()
    cell = numbers[(numbers["bottleneck_ratio"] == 8) & (numbers["metric"] == "hm")]["mean"].item()
    assert cell == pytest.approx(harmonic_mean(base, novel))


def test_tables_use_display_names_and_short_captions(world, twelve):
    raw = _raw_keys()
    for out in (world, twelve):
        for path in out.glob("*.tex"):
            if path.name == "tables_preview.tex":
                continue
            text = _visible(path.read_text())
            found = sorted(k for k in raw if _escaped(k) in text)
            assert not found, (path.name, found)
            caption = _caption(text)
            assert not [w for w in IMPLEMENTATION_WORDS if w in caption], (path.name, caption)
            assert len(re.findall(r"[.;] [A-Z*]", caption)) <= 2, (path.name, caption)  # one to three sentences
            assert "1 seeds" not in caption and "dataset(s)" not in caption
    notes = (world / "notes.md").read_text()
    assert "ddof = 0" in notes and "RMAdapter has no official code" in notes
    assert "WorldHues" in (world / "base2novel.tex").read_text()


def test_world_preview_fits_the_cvpr_page(world, tmp_path):
    preview = (world / "tables_preview.tex").read_text()
    assert "twocolumn" in preview and "textwidth=6.875in" in preview and "columnsep=0.375in" in preview
    assert all(f"\\input{{{p.name}}}" in preview for p in world.glob("*.tex") if p.name != "tables_preview.tex")
    log = _compile(world, tmp_path)
    if log is not None:
        assert "Overfull \\hbox" not in log, re.findall(r"Overfull.*", log)


def test_ablation_significance_against_the_default_with_holm(world):
    numbers = pd.read_csv(world / "significance_ablation_heba_base2novel.csv")
    assert set(numbers["config"]) == {"bottleneck_ratio=2", "bottleneck_ratio=8", "init=zero", "init=kaiming_all",
                                      "visual_adapter=linear", "text_adapter=conv1d"}
    assert list(numbers["p_holm"]) == pytest.approx(holm(list(numbers["p_sign_flip"])))
    tex = (world / "significance_ablation_heba_base2novel.tex").read_text()
    assert "Holm" in tex and "default configuration" in tex
    per_seed = pd.read_csv(world / "ablation_heba_base2novel_bottleneck-ratio_per_seed.csv")
    hm = per_seed[per_seed["metric"] == "hm"].pivot_table(index=["dataset", "seed"], columns="bottleneck_ratio",
                                                            values="value")
    eight = numbers[numbers["config"] == "bottleneck_ratio=8"].iloc[0]
    assert eight["mean_diff"] == pytest.approx((hm[8] - hm[4]).mean())
    assert eight["n_pairs"] == len(WORLD) * 3


def test_method_significance_is_against_zero_shot(world):
    numbers = pd.read_csv(world / "significance.csv")
    assert set(numbers["b"]) == {"Zero-shot CLIP"}
    assert set(numbers["a"]) == {"CoOp", "HeBA", "RMAdapter"}  # each method's default configuration
    assert list(numbers["p_holm"]) == pytest.approx(holm(list(numbers["p_sign_flip"])))


# ---------------------------------------------------------------------------------------- 11 x 12 methods

def test_main_base2novel_table_is_full_width_with_hm_per_dataset(twelve, tmp_path):
    tex = (twelve / "base2novel.tex").read_text()
    assert tex.startswith("\\begin{table*}")
    rows = _rows(tex)
    assert len(rows) == 12 and len(rows[0]) == 1 + 11 + 1  # method, 11 datasets, Average
    assert rows[0][0] == "Zero-shot CLIP" and "Tip-Adapter-F" in [r[0] for r in rows]
    hm = [float(re.sub(r"\\\w+\{|\}|\*", "", r[-1])) for r in rows]
    best = [r[-1] for r in rows if r[-1].startswith("\\textbf")]
    second = [r[-1] for r in rows if r[-1].startswith("\\underline")]
    assert len(best) == 1 and len(second) == 1 and float(best[0][8:-1].rstrip("*")) == max(hm)
    tests = pd.read_csv(twelve / "significance.csv")  # the stars are the significance table's verdicts
    starred = {r[0] for r in rows if r[-1].rstrip("}").endswith("*")}
    assert starred == set(tests[tests["significant"] & (tests["protocol"] == "base2novel")]["a"]) and starred
    assert "Zero-shot CLIP" not in starred and "significantly" in _caption(tex)
    for dataset in ("Average", "ImageNet", "OxfordPets", "FGVCAircraft", "UCF101"):
        sub = (twelve / f"base2novel_{dataset}.tex").read_text()
        assert sub.startswith("\\begin{table}") and len(_rows(sub)) == 12
    log = _compile(twelve, tmp_path)
    if log is not None:
        assert "Overfull \\hbox" not in log, re.findall(r"Overfull.*", log)


def test_ablation_marks_significant_levels_after_holm(twelve):
    rows = {r[0]: r for r in _rows((twelve / "ablation_heba_base2novel_bottleneck-ratio.tex").read_text())}
    assert rows["8"][4].endswith("*") and not rows["2"][4].endswith("*") and rows["4 (paper)"][4] == "--"
    numbers = pd.read_csv(twelve / "significance_ablation_heba_base2novel.csv").set_index("config")
    assert bool(numbers.loc["bottleneck_ratio=8", "significant"]) and numbers.loc["bottleneck_ratio=8", "n_pairs"] == 33
    assert not bool(numbers.loc["bottleneck_ratio=2", "significant"])


def test_width_estimates_pick_the_float(twelve):
    """What ``to_latex`` decides without a LaTeX engine: the main table needs the text width, a sub-table fits a
    column."""
    result = analyse([twelve.parent / "results"], tables=["base2novel"])
    main, sub = result.tables["base2novel"], result.tables["base2novel_ImageNet"]
    assert fit_width(main)[0] == "table*" and estimated_width(main, "small", 3.0, 0.8) <= TEXT_WIDTH_PT
    assert fit_width(sub)[0] == "table" and estimated_width(sub, "small", 3.0, 0.8) <= COLUMN_WIDTH_PT
    assert estimated_width(main) > COLUMN_WIDTH_PT


def test_transfer_tables_fit_with_ten_and_four_targets(tmp_path):
    """Cross-dataset (ImageNet -> the 10 other datasets) and DG (-> the 4 ImageNet shifts) as CoCoOp / MaPLe print
    them, for every method that scores unseen classes."""
    unseen = [name for name in METHODS.in_order() if method_card(name)["capabilities"]["unseen_classes"]]
    for protocol, targets in (("cross_dataset", COOP_DATASETS[1:]),
                              ("domain_generalization", ("imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"))):
        for i, name in enumerate(unseen):
            for seed in (1, 2, 3):
                write_record(tmp_path / "results", method_config(name), "imagenet", seed, 60.0 + i, grid=protocol,
                             protocol=protocol, targets=targets)
    out = tmp_path / "analysis"
    write_outputs(analyse([tmp_path / "results"]), out, plots=False, log=lambda _: None)
    for name, n_targets in (("cross_dataset", 10), ("dg", 4)):
        tex = (out / f"{name}.tex").read_text()
        rows = _rows(tex)
        assert len(rows) == len(unseen) and len(rows[0]) == 1 + 1 + n_targets + 1  # method, source, targets, Average
        assert "ImageNet (source)" in tex and "Average" in tex
    log = _compile(out, tmp_path)
    if log is not None:
        assert "Overfull \\hbox" not in log, re.findall(r"Overfull.*", log)


def test_notes_say_which_precision_and_checkpoint_made_the_numbers(tmp_path):
    """notes.md names the choices behind a method's numbers that are not the official code's: the precision they
    computed in (here fp32 on a CPU for CoOp, officially fp16) and a released checkpoint they evaluated."""
    import json
    results = tmp_path / "results"
    write_grid(results, [(method_config("zeroshot"), 60.0), (method_config("coop"), 64.0)], WORLD, [1, 2])
    note = "computed in fp32 on a CPU; the official code runs in fp16 on a GPU"
    for path in results.rglob("record.json"):
        record = json.loads(path.read_text())
        if record["config"]["method"]["name"] == "coop":
            record["env"]["precision_note"] = note
            record["config"]["method"]["checkpoint"] = "/ckpt/coop/model.pth.tar-50"
            path.write_text(json.dumps(record))
    out = tmp_path / "analysis"
    write_outputs(analyse([results]), out, plots=False, log=lambda _: None)
    notes = (out / "notes.md").read_text()
    assert f"CoOp: {note}." in notes
    assert "CoOp: evaluated from the released checkpoint(s) model.pth.tar-50." in notes
    assert "/ckpt/coop" not in notes and "Zero-shot CLIP: computed" not in notes
