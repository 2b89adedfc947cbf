"""The CLI end to end on the fixture records: every table, figure and index.md; numbers checked against values
computed here directly from the JSON files; the LaTeX checked structurally and, when an engine exists, compiled."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import build, compare
from analysis.latex import bold_cells, check_latex, to_latex
from analysis.reference import load_reference
from analysis.plots import DPI
from analysis.stats import harmonic_mean, holm
from analysis.tables import analyse, main

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "tests" / "fixtures" / "records"
HEBA_ABLATIONS = {f"ablation_heba_base2novel_{study}{wide}" for study in ("bottleneck-ratio", "init",
                                                                          "cross-bottleneck-ratio-init")
                  for wide in ("", "_datasets")}
EXPECTED_TABLES = {"base2novel", *(f"base2novel_{d}" for d in ("Average", "Caltech101", "OxfordPets", "EuroSAT")),
                   *HEBA_ABLATIONS, "ablation_rmadapter_base2novel_reconstruction-branch",
                   "ablation_rmadapter_base2novel_reconstruction-branch_datasets", "kshot", "kshot_Caltech101",
                   "kshot_EuroSAT", "cross_dataset", "dg", "cost", "reproduction_gap", "significance",
                   "significance_ablation_heba_base2novel", "significance_ablation_rmadapter_base2novel"}


# ------------------------------------------------------------------------------------------ independent values

def _raw_done() -> list[dict]:
    """Finished records straight from the JSON files (one per run id)."""
    runs = {}
    for path in sorted(RECORDS.rglob("record.json")):
        record = json.loads(path.read_text())
        if record["status"] == "done":
            runs[record["run_id"]] = record
    return list(runs.values())


def _runs(method: str, protocol: str, dataset: str | None = None, **options) -> list[dict]:
    return [r for r in _raw_done() if r["config"]["method"]["name"] == method and r["config"]["protocol"] == protocol
            and (dataset is None or r["config"]["dataset"] == dataset)
            and all(r["config"]["method"].get(k) == v for k, v in options.items())]


def _acc(runs: list[dict], split: str) -> list[float]:
    return [r["metrics"][split]["accuracy"] for r in sorted(runs, key=lambda r: r["config"]["seed"])]


def _fmt(values: list[float]) -> str:
    """Mean and population std as the tables print them (the std in script size)."""
    return f"{np.mean(values):.2f}{{\\scriptsize$\\pm${np.std(values):.2f}}}"


def _plain(cell: str) -> str:
    """A cell without its bold or underline."""
    for mark in ("\\textbf{", "\\underline{"):
        if cell.startswith(mark):
            return cell[len(mark):-1]
    return cell


def _rows(tex: str) -> list[list[str]]:
    """Data rows of a generated table, cells split, the blanked group label filled forward."""
    body = tex.split("\\endlastfoot")[1] if "\\endlastfoot" in tex else tex.split("\\midrule", 1)[1]
    rows, group = [], ""
    for line in body.split("\n"):
        line = line.rstrip()
        if not line.endswith("\\\\") or line.lstrip().startswith("\\"):
            continue
        cells = [c.strip() for c in line[:-2].split(" & ")]
        group = cells[0] or group
        rows.append([group, *cells[1:]])
    return rows


def _row(tex: str, *labels: str) -> list[str]:
    matches = [r for r in _rows(tex) if r[: len(labels)] == list(labels)]
    assert len(matches) == 1, (labels, matches)
    return matches[0]


# ------------------------------------------------------------------------------------------------ the CLI run

@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("analysis")
    proc = subprocess.run([sys.executable, "-m", "analysis.tables", str(RECORDS), "--out", str(folder)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == str(folder / "index.md")
    assert str(folder / "base2novel.tex") in lines
    assert "1 failed" in proc.stderr and "FAILED" in proc.stderr
    return folder


def _tex(out: Path, name: str) -> str:
    return (out / f"{name}.tex").read_text()


def test_every_table_is_written_with_csv_and_per_seed_values(out):
    assert {p.stem for p in out.glob("*.tex")} - {"tables_preview"} == EXPECTED_TABLES
    for name in EXPECTED_TABLES:
        assert (out / f"{name}.csv").stat().st_size > 0
    for name in ("base2novel", "kshot", "cross_dataset", "dg", "ablation_heba_base2novel_bottleneck-ratio"):
        per_seed = pd.read_csv(out / f"{name}_per_seed.csv")
        assert {"seed", "metric", "value", "run_id"} <= set(per_seed.columns)
    records = pd.read_csv(out / "records.csv")
    assert {"method.name", "method.bottleneck_ratio", "optim.lr", "acc.base", "cost.trainable_params"} <= \
        set(records.columns)
    assert len(pd.read_csv(out / "failed_runs.csv")) == 1


def test_latex_is_sound_and_compiles_when_an_engine_exists(out, tmp_path):
    """Always checked structurally; compiled as well when pdflatex or lualatex is on PATH, with no overfull box on
    the two-column page."""
    for name in EXPECTED_TABLES:
        tex = _tex(out, name)
        assert check_latex(tex) == [], name
        assert tex.count("\\toprule") >= 1 and "\\bottomrule" in tex
        if name != "reproduction_gap" and not name.startswith("significance_ablation"):
            assert bold_cells(tex), f"{name}: no bold cell"
    engine = shutil.which("pdflatex") or shutil.which("lualatex")
    if engine is None:
        print("no LaTeX engine on PATH: structural check only")
        return
    for path in out.glob("*.tex"):
        shutil.copy(path, tmp_path / path.name)
    proc = subprocess.run([engine, "-interaction=nonstopmode", "-halt-on-error", "tables_preview.tex"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert (tmp_path / "tables_preview.pdf").stat().st_size > 0
    assert "Overfull \\hbox" not in (tmp_path / "tables_preview.log").read_text(errors="replace")


def test_base2novel_cells_match_the_records(out):
    tex = _tex(out, "base2novel_Caltech101")
    numbers = pd.read_csv(out / "base2novel.csv")
    mma = {d: _runs("mma", "base2novel", d) for d in ("caltech101", "oxford_pets", "eurosat")}
    base = _acc(mma["caltech101"], "base")
    assert len(base) == 3
    row = [_plain(c) for c in _row(tex, "MMA")]
    assert row[1] == _fmt(base) and row[2] == _fmt(_acc(mma["caltech101"], "novel"))
    hm = harmonic_mean(np.mean(base), np.mean(_acc(mma["caltech101"], "novel")))
    assert row[3].startswith(f"{hm:.2f}{{\\scriptsize$\\pm$")
    assert _plain(_row(_tex(out, "base2novel"), "MMA")[1]) == f"{hm:.2f}"  # the main table: HM, Caltech101 first
    cell = numbers[(numbers["dataset"] == "caltech101") & (numbers["method"] == "MMA")].set_index("metric")
    assert cell.loc["base", "mean"] == pytest.approx(np.mean(base)) and cell.loc["base", "n"] == 3
    assert cell.loc["hm", "mean"] == pytest.approx(hm)


def test_average_row_is_the_hm_of_the_averaged_base_and_novel(out):
    tex = _tex(out, "base2novel_Average")
    mma = [_runs("mma", "base2novel", d) for d in ("caltech101", "oxford_pets", "eurosat")]
    base = np.mean([np.mean(_acc(r, "base")) for r in mma])
    novel = np.mean([np.mean(_acc(r, "novel")) for r in mma])
    per_dataset_hm = np.mean([harmonic_mean(np.mean(_acc(r, "base")), np.mean(_acc(r, "novel"))) for r in mma])
    row = [_plain(cell) for cell in _row(tex, "MMA")]
    assert row[1].startswith(f"{base:.2f}{{") and row[2].startswith(f"{novel:.2f}{{")
    assert row[3].startswith(f"{harmonic_mean(base, novel):.2f}{{")
    assert _plain(_row(_tex(out, "base2novel"), "MMA")[-1]).rstrip("*") == f"{harmonic_mean(base, novel):.2f}"
    assert abs(harmonic_mean(base, novel) - per_dataset_hm) > 1e-3  # the two conventions differ here
    assert "HM of the averaged base and novel" in (out / "notes.md").read_text() or \
        "mean base and mean novel" in (out / "notes.md").read_text()


def test_best_cells_are_bold_and_second_best_underlined_per_column(out):
    for name in ("base2novel", "base2novel_Average", "base2novel_Caltech101", "base2novel_EuroSAT"):
        rows = _rows(_tex(out, name))
        for col in range(1, len(rows[0])):
            values = [float(_plain(r[col]).split("{")[0].rstrip("*")) if r[col] != "--" else -1 for r in rows]
            ranked = sorted(set(values), reverse=True)
            for r, v in zip(rows, values):
                assert r[col].startswith("\\textbf{") == (v == ranked[0]), (name, col, r)
                assert r[col].startswith("\\underline{") == (len(ranked) > 1 and v == ranked[1]), (name, col, r)


def test_heba_ablation_is_one_table_per_factor_around_the_default(out):
    """The fixture grid crosses bottleneck ratio {2, 4, 8} x init {official, zero}: the ratio table holds the
    runs at init official, the init table those at ratio 4, and the cross lists every configuration."""
    numbers = pd.read_csv(out / "ablation_heba_base2novel_bottleneck-ratio.csv")
    tex = _tex(out, "ablation_heba_base2novel_bottleneck-ratio")
    runs = {d: _runs("heba", "base2novel", d, bottleneck_ratio=8, init="official") for d in ("caltech101", "eurosat")}
    assert len(runs["caltech101"]) == 1 and len(runs["eurosat"]) == 2  # one run of the grid never launched
    base = np.mean([np.mean(_acc(r, "base")) for r in runs.values()])
    novel = np.mean([np.mean(_acc(r, "novel")) for r in runs.values()])
    cell = numbers[numbers["bottleneck_ratio"] == 8].set_index("metric")
    assert cell.loc["hm", "mean"] == pytest.approx(harmonic_mean(base, novel))
    assert cell.loc["hm", "n"] == 1  # only seed 1 has both datasets
    assert _plain(_row(tex, "8")[3]) == f"{harmonic_mean(base, novel):.2f} $^\\dagger$"  # a mean; † fewer seeds
    assert [r[0] for r in _rows(tex)] == ["2", "4 (paper)", "8"]
    per_seed = pd.read_csv(out / "ablation_heba_base2novel_bottleneck-ratio_per_seed.csv")
    eight = per_seed[(per_seed["bottleneck_ratio"] == 8) & (per_seed["metric"] == "base")
                     & (per_seed["dataset"] != "Average")]
    assert len(eight) == 3  # the ratio-8 runs at init official only: the zero-init ones are not averaged in
    init = _rows(_tex(out, "ablation_heba_base2novel_init"))
    assert [r[0] for r in init] == ["official (Kaiming on up) (paper)", "zero up"]
    cross = _rows(_tex(out, "ablation_heba_base2novel_cross-bottleneck-ratio-init"))
    assert len(cross) == 6 and {(r[0], r[1]) for r in cross} >= {("8", "zero up"), ("2", "zero up")}
    assert "OxfordPets left out" in tex and "init=zero is not an identity adapter" in (out / "notes.md").read_text()


def test_ablation_axes_can_be_rows_or_columns():
    frame = analyse([RECORDS], tables=[]).frame
    heba = frame[(frame["method.name"] == "heba") & (frame["protocol"] == "base2novel")]
    pivot = build.ablation_table(heba, rows=["method.init"], cols=["method.bottleneck_ratio"])
    assert list(pivot.cells.columns) == ["init", "bottleneck ratio 2", "bottleneck ratio 4", "bottleneck ratio 8"]
    assert "pools" not in pivot.caption  # both varied options are axes: nothing pooled
    flipped = build.ablation_table(heba, rows=["method.bottleneck_ratio"], cols=["method.init"], metric="novel")
    assert list(flipped.cells["bottleneck ratio"]) == ["2", "4", "8"]
    pooled = build.ablation_table(heba, rows=["method.bottleneck_ratio"])
    assert "Each cell pools 2 configurations of init" in pooled.caption  # and the caption says so
    transposed = pivot.numbers[(pivot.numbers["metric"] == "hm")].set_index(["init", "bottleneck_ratio"])["mean"]
    assert transposed.loc[("official", 8)] == pytest.approx(
        flipped.numbers[(flipped.numbers["metric"] == "hm")].set_index(["bottleneck_ratio", "init"])["mean"]
        .loc[(8, "official")])
    rm = frame[frame["method.name"] == "rmadapter"]
    switches = build.ablation_table(rm, rows=["method.reconstruction", "method.consistency"], protocol="base2novel")
    assert check_latex(to_latex(switches)) == []


def test_kshot_cells_match_the_records(out):
    tex = _tex(out, "kshot_EuroSAT")
    runs = [r for r in _runs("heba", "fewshot", "eurosat") if r["config"]["shots"] == 4]
    header = [line for line in tex.split("\n") if line.startswith("Method & ")][0]
    assert "0-shot & 1-shot & 2-shot & 4-shot & 8-shot & 16-shot" in header
    column = header.rstrip(" \\").split(" & ").index("4-shot")
    assert _plain(_row(tex, "HeBA")[column]) == _fmt(_acc(runs, "test"))
    assert "averaged over the 2 datasets" in _tex(out, "kshot")


def test_transfer_tables_match_the_records(out):
    runs = _runs("rmadapter", "cross_dataset")
    averages = [np.mean([r["metrics"][t]["accuracy"] for t in r["config"]["targets"]]) for r in runs]
    assert _plain(_row(_tex(out, "cross_dataset"), "RMAdapter")[-1]) == _fmt(averages)
    dg = _row(_tex(out, "dg"), "MMA")
    assert _plain(dg[4]) == _fmt(_acc(_runs("mma", "domain_generalization"), "imagenet_a"))
    assert "ImageNet (source)" in _tex(out, "dg") and "papers average 10 targets" in (out / "notes.md").read_text()


def test_cost_table_reports_parameters_time_and_memory(out):
    tex = _tex(out, "cost")
    heba = _row(tex, "base-to-novel", "HeBA")  # the default configuration; the ablation's runs are not here
    assert heba[2] == "87,158,016" and heba[-1] == "9"
    assert _row(tex, "base-to-novel", "MMA")[2] == "674,560"
    times = [r["cost"]["time_train_s"] for r in _runs("mma", "base2novel")]
    assert _row(tex, "base-to-novel", "MMA")[3] == f"{np.mean(times):.1f}{{\\scriptsize$\\pm${np.std(times):.1f}}}"
    assert "Peak memory (MiB)" in tex and "Train images/s" in tex


def test_reproduction_gap_uses_the_reference_with_trust_tags(out):
    gap = pd.read_csv(out / "reproduction_gap.csv")
    row = gap[(gap["method"] == "MMA") & (gap["paper_dataset"] == "Caltech101") & (gap["paper_metric"] == "base")]
    assert len(row) == 1
    row = row.iloc[0]
    base = _acc(_runs("mma", "base2novel", "caltech101"), "base")
    assert row["paper_value"] == 98.40 and row["trust"] == "RECALLED+CHECKED"
    assert row["delta"] == pytest.approx(np.mean(base) - 98.40)
    assert bool(row["within_seed_range"]) == (min(base) - 0.005 <= 98.40 <= max(base) + 0.005)
    assert row["source"].startswith("RECALLED")
    verified = gap[(gap["protocol"] == "domain_generalization") & (gap["paper_dataset"] == "Average(V2,S,A,R)")]
    assert set(verified["trust"]) >= {"VERIFIED"}
    assert "VERIFIED" in _tex(out, "reproduction_gap")


def test_significance_pairs_runs_by_dataset_and_seed(out):
    sig = pd.read_csv(out / "significance.csv")
    assert set(sig[sig["protocol"] == "base2novel"]["b"]) == {"Zero-shot CLIP"}  # the default baseline
    for _, family in sig.groupby("protocol"):  # Holm within each protocol's comparisons
        assert list(family["p_holm"]) == pytest.approx(holm(list(family["p_sign_flip"])))
    frame = analyse([RECORDS], tables=[]).frame
    sig = compare.significance_table(frame, pairs=[("heba", "mma")]).numbers
    row = sig[(sig["protocol"] == "base2novel") & (sig["a"] == "HeBA") & (sig["b"] == "MMA")].iloc[0]
    diffs = []
    for dataset in ("caltech101", "oxford_pets", "eurosat"):
        heba = {r["config"]["seed"]: r["summary"]["hm"] for r in
                _runs("heba", "base2novel", dataset, bottleneck_ratio=4, init="official")}
        mma = {r["config"]["seed"]: r["summary"]["hm"] for r in _runs("mma", "base2novel", dataset)}
        diffs += [heba[s] - mma[s] for s in sorted(set(heba) & set(mma))]
    assert row["n_pairs"] == len(diffs) == 9
    assert row["mean_diff"] == pytest.approx(np.mean(diffs))
    assert row["ci_low"] <= row["mean_diff"] <= row["ci_high"]
    chosen = compare.significance_table(frame, pairs=[("rmadapter", "heba")])
    assert list(chosen.numbers["protocol"]) == ["base2novel"]
    against_mma = compare.significance_table(frame, baseline="mma").numbers
    assert set(against_mma[against_mma["protocol"] == "base2novel"]["b"]) == {"MMA"}


def test_figures_are_written_as_pdf_and_png(out):
    import matplotlib.image as mpimg

    figures = out / "figures"
    stems = {p.stem for p in figures.glob("*.png")}
    assert {"kshot_accuracy", "accuracy_vs_cost", "base_vs_novel", "ablation_heba_base2novel_bottleneck-ratio",
            "ablation_heba_base2novel_init", "ablation_rmadapter_base2novel_reconstruction-branch"} <= stems
    for stem in stems:
        assert (figures / f"{stem}.pdf").read_bytes()[:4] == b"%PDF"
        assert mpimg.imread(figures / f"{stem}.png").shape[0] > 200
    factor = mpimg.imread(figures / "ablation_heba_base2novel_bottleneck-ratio.png")
    assert factor.shape[1] <= 3.4 * DPI  # one column (3.25 in) wide at the saved resolution


def test_index_lists_problems_tables_and_figures(out):
    index = (out / "index.md").read_text()
    assert "FAILED" in index and "OutOfMemoryError" in index and "DUPLICATE" in index
    for title in ("Base-to-novel generalisation", "Few-shot accuracy vs shots", "Cross-dataset transfer",
                  "Domain generalisation", "Reproduction gap", "Paired significance tests"):
        assert f"## {title}" in index
    assert "](figures/kshot_accuracy.png)" in index and "| **" in index


def test_cli_subset_filters_and_errors(tmp_path, capsys):
    assert main([str(RECORDS), "--out", str(tmp_path), "--tables", "base2novel", "--no-plots",
                 "--where", "method.init=official", "method.reconstruction=true"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1] == str(tmp_path / "index.md")
    assert not (tmp_path / "kshot.tex").exists() and not (tmp_path / "figures").exists()
    tex = (tmp_path / "base2novel.tex").read_text()
    assert "zero\\_up" not in tex and "reconstruction=False" not in tex
    assert main([str(tmp_path / "missing_dir")]) == 2
    assert main([str(RECORDS), "--out", str(tmp_path), "--tables", "base2novel", "--where", "no.such=1"]) == 2


def test_cli_reports_a_folder_of_failed_runs_only(tmp_path, capsys):
    failed = next(p for p in RECORDS.rglob("record.json") if json.loads(p.read_text())["status"] == "failed")
    target = tmp_path / "results" / "g" / failed.parent.name / "record.json"
    target.parent.mkdir(parents=True)
    shutil.copy(failed, target)
    assert main([str(tmp_path / "results"), "--no-plots"]) == 0
    index = tmp_path / "results" / "analysis" / "index.md"
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(index)
    assert "OutOfMemoryError" in index.read_text() and "Skipped (no matching records)" in index.read_text()
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2


def test_cli_lists_the_runs_of_a_grid_without_records(tmp_path, capsys):
    grid = tmp_path / "tiny.yaml"
    grid.write_text("name: tiny\nbase:\n  method: coop\n  dataset: dtd\n  protocol: fewshot\n  shots: 2\n"
                    "grid:\n  seed: [1, 2]\n")
    assert main([str(RECORDS), "--out", str(tmp_path / "out"), "--tables", "cost", "--no-plots",
                 "--grid", str(grid)]) == 0
    missing = pd.read_csv(tmp_path / "out" / "missing_runs.csv")
    assert list(missing["state"]) == ["missing", "missing"] and set(missing["seed"]) == {1, 2}
    assert "missing `" in (tmp_path / "out" / "index.md").read_text()
    grid.write_text("name: tiny\nbase:\n  method: no_such_method\n  dataset: dtd\n")
    assert main([str(RECORDS), "--out", str(tmp_path / "out"), "--grid", str(grid)]) == 2
    assert "no_such_method" in capsys.readouterr().err


# ----------------------------------------------------------------------- the papers' Average convention (MMA)

def _record(method: str, dataset: str, seed: int, base: float, novel: float) -> dict:
    config = {"method": {"name": method}, "dataset": dataset, "name": "synthetic", "backbone": "ViT-B-16-quickgelu",
              "pretrained": "openai", "protocol": "base2novel", "targets": [], "shots": 16, "seed": seed,
              "optim": {"name": "sgd", "lr": 0.0015, "epochs": 5}}
    run_id = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    split = {"n_images": 1000, "n_classes": 50}
    return {"schema_version": 1, "run_id": run_id, "status": "done", "failure": None, "config": config,
            "metrics": {"base": {"accuracy": base, **split}, "novel": {"accuracy": novel, **split}},
            "summary": {"base": base, "novel": novel, "hm": harmonic_mean(base, novel)}, "aux_losses": {},
            "history": [], "cost": {"trainable_params": 674560, "time_train_s": 60.0},
            "env": {"device": "cuda"}, "started_at": "2026-11-24T00:00:00+00:00",
            "finished_at": "2026-11-24T00:01:00+00:00"}


@pytest.fixture()
def mma_paper_records(tmp_path) -> Path:
    """MMA's 11 per-dataset base/novel numbers from the reference CSV, as 3 seeds (value − 0.3, value, + 0.3)."""
    key = {"ImageNet": "imagenet", "Caltech101": "caltech101", "OxfordPets": "oxford_pets",
           "StanfordCars": "stanford_cars", "Flowers102": "oxford_flowers", "Food101": "food101",
           "FGVCAircraft": "fgvc_aircraft", "SUN397": "sun397", "DTD": "dtd", "EuroSAT": "eurosat",
           "UCF101": "ucf101"}
    reference = load_reference()
    mma = reference[(reference["method"] == "MMA") & (reference["protocol"] == "base2novel")]
    wide = mma[mma["dataset"].isin(list(key))].pivot_table(index="dataset", columns="metric", values="value")
    assert len(wide) == 11
    for dataset, row in wide.iterrows():
        for seed, offset in ((1, -0.3), (2, 0.0), (3, 0.3)):
            record = _record("mma", key[dataset], seed, row["base"] + offset, row["novel"] + offset)
            folder = tmp_path / "results" / "synthetic" / record["run_id"]
            folder.mkdir(parents=True)
            (folder / "record.json").write_text(json.dumps(record))
    return tmp_path / "results"


def test_mma_readme_average_row(mma_paper_records):
    """MMA README: base 83.20 / novel 76.80 -> HM 79.87 (HM of the averages; the mean of HMs would be 79.72)."""
    result = analyse([mma_paper_records], tables=["base2novel", "gap"])
    table = result.tables["base2novel_Average"]
    average = table.cells[(table.cells["Method"] == "MMA")].iloc[0]
    assert average["Base"].startswith("83.20 ±") and average["Novel"].startswith("76.80 ±")
    assert average["HM"].startswith("79.87 ±")
    numbers = result.tables["base2novel"].numbers.set_index(["dataset", "metric"])
    per_dataset_hm = numbers.xs("hm", level="metric").drop("Average")["mean"].mean()
    assert round(per_dataset_hm, 2) == 79.72
    gap = result.tables["reproduction_gap"].numbers
    readme = gap[(gap["paper_dataset"] == "Average") & (gap["paper_metric"] == "hm")].iloc[0]
    assert readme["paper_value"] == 79.87 and readme["trust"] == "VERIFIED"
    assert abs(readme["delta"]) < 0.01 and bool(readme["within_seed_range"])


def test_average_hm_on_two_datasets_is_not_the_mean_of_hms(tmp_path):
    """Two datasets whose means are exactly the README's 83.20 / 76.80."""
    root = tmp_path / "results"
    for dataset, base, novel in (("dtd", 80.0, 70.0), ("eurosat", 86.4, 83.6)):
        record = _record("mma", dataset, 1, base, novel)
        (root / "g" / record["run_id"]).mkdir(parents=True)
        (root / "g" / record["run_id"] / "record.json").write_text(json.dumps(record))
    table = analyse([root], tables=["base2novel"]).tables["base2novel_Average"]
    average = table.cells[table.cells["Method"] == "MMA"].iloc[0]
    assert (average["Base"], average["Novel"], average["HM"]) == ("83.20 ± 0.00", "76.80 ± 0.00", "79.87 ± 0.00")
    mean_of_hms = (harmonic_mean(80.0, 70.0) + harmonic_mean(86.4, 83.6)) / 2
    assert f"{mean_of_hms:.2f}" != "79.87"
