"""Command line: run records -> LaTeX tables, CSV, figures and an ``index.md``.

    python -m analysis.tables RESULTS_DIR [RESULTS_DIR ...] [--out DIR] [--tables NAME ...]
                              [--reference FILE] [--grid GRID.yaml] [--where KEY=VALUE ...] [--pairs A:B ...]
                              [--baseline METHOD] [--std {small,inline,none}] [--no-plots]

Writes into ``--out`` (default ``RESULTS_DIR/analysis``): ``<table>.tex`` (a LaTeX float to ``\\input``),
``<table>.csv`` (the numbers), ``<table>_per_seed.csv`` (the per-run values behind them), ``figures/*.pdf|png``,
``records.csv`` (the flattened records), ``notes.md`` (implementation notes and provenance, kept out of the
captions), ``tables_preview.tex`` (a two-column document with the CVPR page geometry that inputs every table) and
``index.md``. Prints every path it wrote; the last line is the path of ``index.md``. Failed, invalid and duplicate
records are listed in ``index.md`` and printed, never silently dropped; with ``--grid`` the runs of the grid that
have no finished record are listed too. ``analysis/tables.ipynb`` does the same interactively.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import pandas as pd

from analysis import build, compare
from analysis.latex import STD_STYLES, Table, standalone, to_latex, to_markdown
from analysis.records import Records, apply_where, load_records, missing_runs
from analysis.reference import DEFAULT_REFERENCE, load_reference

TABLES: tuple[str, ...] = ("base2novel", "ablations", "kshot", "cross_dataset", "dg", "cost", "gap", "significance")
"""Table families the CLI can produce (``--tables``); all by default, each skipped when no record fits it."""


@dataclass
class Analysis:
    """Records, the (filtered) frame of finished runs and the tables built from it."""

    records: Records
    frame: pd.DataFrame
    tables: dict[str, Table] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    missing: pd.DataFrame | None = None
    missing_error: str | None = None


def analyse(results_dirs: Sequence[Path | str], tables: Iterable[str] = TABLES,
            reference: Path | str | None = None, grid: Path | str | None = None,
            where: dict | None = None, pairs: Sequence[tuple[str, str]] | None = None,
            baseline: str = compare.BASELINE) -> Analysis:
    """Load the records and build the requested tables (nothing is written); ``baseline`` is the method (or label)
    the significance table compares every method with, ``pairs`` replace that by explicit pairs."""
    records = load_records(list(results_dirs))
    frame = apply_where(records.done, where) if where else records.done
    result = Analysis(records, frame)
    wanted = list(tables)
    unknown = [t for t in wanted if t not in TABLES]
    if unknown:
        raise ValueError(f"unknown table(s) {unknown}; choose from {list(TABLES)}")
    builders: dict[str, Callable[[], list[Table] | Table | None]] = {
        "base2novel": lambda: build.base2novel_tables(frame, baseline),
        "ablations": lambda: build.ablation_tables(frame),
        "kshot": lambda: build.kshot_tables(frame),
        "cross_dataset": lambda: build.transfer_table(frame, "cross_dataset"),
        "dg": lambda: build.transfer_table(frame, "domain_generalization"),
        "cost": lambda: build.cost_table(frame),
        "gap": lambda: compare.gap_table(frame, load_reference(reference)),
        "significance": lambda: compare.significance_tables(frame, pairs, baseline),
    }
    for name in wanted:
        built = builders[name]() if not frame.empty else None
        items = built if isinstance(built, list) else [built] if built is not None else []
        if not items:
            result.skipped.append(name)
        for table in items:
            result.tables[table.name] = table
    if grid is not None:
        try:
            result.missing = missing_runs(grid, list(results_dirs), records)
        except ImportError as err:
            result.missing_error = f"cannot expand the grid: {err}"
    return result


def write_outputs(result: Analysis, out: Path, plots: bool = True,
                  log: Callable[[str], None] = print, std: str = "small") -> Path:
    """Write every table (``.tex``, ``.csv``, ``_per_seed.csv``), ``notes.md`` (each table's implementation notes
    and provenance, kept out of the captions), ``tables_preview.tex``, figures, ``records.csv`` and ``index.md``;
    ``std`` sets how ``± std`` is printed (``analysis.latex.STD_STYLES``)."""
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def note(path: Path) -> None:
        written.append(path)
        log(str(path))

    for table in result.tables.values():
        (out / f"{table.name}.tex").write_text(to_latex(table, std) + "\n")
        note(out / f"{table.name}.tex")
        table.numbers.to_csv(out / f"{table.name}.csv", index=False)
        note(out / f"{table.name}.csv")
        if table.per_seed is not None:
            table.per_seed.to_csv(out / f"{table.name}_per_seed.csv", index=False)
            note(out / f"{table.name}_per_seed.csv")
    if result.tables:
        (out / "notes.md").write_text(notes_markdown(result.tables.values()))
        note(out / "notes.md")
        floats = [f"{t.name}.tex" for t in result.tables.values() if t.environment != "longtable"]
        long = [f"{t.name}.tex" for t in result.tables.values() if t.environment == "longtable"]
        (out / "tables_preview.tex").write_text(standalone(floats, long))
        note(out / "tables_preview.tex")
    result.frame.to_csv(out / "records.csv", index=False)
    note(out / "records.csv")
    if not result.records.failed.empty:
        result.records.failed.to_csv(out / "failed_runs.csv", index=False)
        note(out / "failed_runs.csv")
    if result.missing is not None:
        result.missing.to_csv(out / "missing_runs.csv", index=False)
        note(out / "missing_runs.csv")
    figures = make_figures(result.tables, out / "figures") if plots else []
    for path in figures:
        note(path)
    index = out / "index.md"
    index.write_text(index_markdown(result, out, figures))
    log(str(index))
    return index


def make_figures(tables: dict[str, Table], folder: Path) -> list[Path]:
    """Every figure the available tables support."""
    from analysis import plots  # lazy: matplotlib is only needed when figures are drawn

    paths: list[Path] = []
    if "kshot" in tables:
        paths += plots.plot_kshot(tables["kshot"], folder)
    for name, table in tables.items():
        if name.startswith("ablation_"):
            paths += plots.plot_ablation(table, folder)
    paths += plots.plot_tradeoff(tables, folder)
    if "base2novel" in tables:
        paths += plots.plot_base_novel(tables["base2novel"], folder)
    return paths


def notes_markdown(tables: Iterable[Table]) -> str:
    """``notes.md``: per table, the implementation notes and provenance its caption leaves out."""
    lines = ["# Notes on the tables", "",
             "Implementation notes and provenance of each table (the captions say only what is compared).", ""]
    groups: dict[tuple[str, ...], list[Table]] = {}
    for table in tables:  # tables with the same notes (the sub-tables of one layout) share one entry
        if table.notes:
            groups.setdefault(tuple(table.notes), []).append(table)
    for notes, members in groups.items():
        files = ", ".join(f"`{t.name}.tex`" for t in members)
        lines += [f"## {members[0].title}" + (f" and {len(members) - 1} more" if len(members) > 1 else ""), "",
                  f"Tables: {files}", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines) + "\n"


def index_markdown(result: Analysis, out: Path, figures: Sequence[Path]) -> str:
    """The ``index.md`` summary: inputs, problems, every table (Markdown + links) and figure."""
    lines = ["# Analysis", "", f"Results: {', '.join(f'`{r}`' for r in result.records.roots)}", ""]
    lines += ["## Records", ""] + [f"- {line}" for line in result.records.report()] + [""]
    if result.missing is not None or result.missing_error:
        lines += ["## Runs of the grid without a finished record", ""]
        if result.missing_error:
            lines.append(f"- {result.missing_error}")
        elif result.missing.empty:
            lines.append("- none: every run of the grid is done")
        else:
            for _, row in result.missing.iterrows():
                lines.append(f"- {row['state']} `{row['run_id']}` ({_describe(row)})")
        lines.append("")
    if result.skipped:
        lines += [f"Skipped (no matching records): {', '.join(result.skipped)}", ""]
    for table in result.tables.values():
        lines += [f"## {table.title}", "",
                  f"[{table.name}.tex]({table.name}.tex) · [{table.name}.csv]({table.name}.csv)"
                  + (f" · [per seed]({table.name}_per_seed.csv)" if table.per_seed is not None else ""), "",
                  table.caption, "", to_markdown(table), ""]
    if figures:
        lines += ["## Figures", ""]
        for path in figures:
            if path.suffix == ".png":
                rel = path.relative_to(out)
                lines += [f"![{path.stem}]({rel}) ([pdf]({rel.with_suffix('.pdf')}))", ""]
    return "\n".join(lines) + "\n"


def _describe(row: pd.Series) -> str:
    keys = ["method.name", "protocol", "dataset", "shots", "seed"]
    return ", ".join(f"{k}={row[k]}" for k in keys if k in row and pd.notna(row[k]))


# ------------------------------------------------------------------------------------------------------- CLI

def parse_where(items: Sequence[str]) -> dict:
    """``["method.init=official", "shots=16"]`` -> ``{"method.init": "official", "shots": 16}`` (YAML scalars)."""
    from jobs.rawconfig import load_yaml

    conditions = {}
    for item in items:
        if "=" not in item:
            raise argparse.ArgumentTypeError(f"--where {item!r}: expected KEY=VALUE")
        key, text = item.split("=", 1)
        conditions[key] = load_yaml(text, f"--where {key}")  # as grids read values (1e-3 is a float)
    return conditions


def parse_pairs(items: Sequence[str]) -> list[tuple[str, str]]:
    """``["heba:mma"]`` -> ``[("heba", "mma")]``."""
    pairs = []
    for item in items:
        if ":" not in item:
            raise argparse.ArgumentTypeError(f"--pairs {item!r}: expected A:B")
        a, b = item.split(":", 1)
        pairs.append((a, b))
    return pairs


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m analysis.tables", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="examples:\n  python -m analysis.tables results/ablations\n"
                                       "  python -m analysis.tables results/quickstart --out paper/tables --no-plots")
    p.add_argument("results", nargs="+", type=Path, help="result folder(s) holding <grid>/<run_id>/record.json")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: FIRST_RESULTS_DIR/analysis)")
    p.add_argument("--tables", nargs="+", choices=TABLES, default=list(TABLES), metavar="NAME",
                   help=f"tables to build, from {{{', '.join(TABLES)}}} (default: all)")
    p.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE,
                   help=f"published numbers (default: {DEFAULT_REFERENCE.name} shipped with the package)")
    p.add_argument("--grid", type=Path, default=None, help="grid file: list its runs that have no finished record")
    p.add_argument("--where", nargs="+", default=[], metavar="KEY=VALUE",
                   help="keep runs with these config values (runs without the key, e.g. other methods, stay)")
    p.add_argument("--pairs", nargs="+", default=None, metavar="A:B",
                   help="method pairs for the significance table (default: every method against --baseline)")
    p.add_argument("--baseline", default=compare.BASELINE, metavar="METHOD",
                   help=f"the method (or label) the significance table compares with (default: {compare.BASELINE})")
    p.add_argument("--std", choices=STD_STYLES, default="small",
                   help="how ± std is printed: small (smaller font after the mean), inline, none (CSV only)")
    p.add_argument("--no-plots", action="store_true", help="skip the figures")
    return p


def _user_error(err: Exception) -> bool:
    """Bad input the user can fix: a missing folder, an unknown column or table, the suite's own SuiteError (a
    ConfigError from the grid file), recognised by name so that this module does not import the suite."""
    names = {cls.__name__ for cls in type(err).__mro__}
    return isinstance(err, (FileNotFoundError, KeyError, ValueError)) or "SuiteError" in names


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    out = args.out or args.results[0] / "analysis"
    try:
        result = analyse(args.results, args.tables, args.reference, args.grid, parse_where(args.where),
                         parse_pairs(args.pairs) if args.pairs else None, args.baseline)
    except Exception as err:  # noqa: BLE001 - user errors exit 2 with their message, anything else is a bug
        if not _user_error(err):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    for line in result.records.report():
        print(line, file=sys.stderr)
    records = result.records
    if records.done.empty and records.failed.empty and not records.problems:
        print(f"error: no record.json under {', '.join(map(str, args.results))}", file=sys.stderr)
        return 2
    if result.missing_error:
        print(result.missing_error, file=sys.stderr)
    write_outputs(result, out, plots=not args.no_plots, std=args.std)
    return 0


if __name__ == "__main__":
    sys.exit(main())
