"""A table as data, and its LaTeX (pandas ``Styler.to_latex``, booktabs), Markdown and structural check.

A :class:`Table` holds display text in plain Unicode (``83.21 ± 0.45``), a boolean mask of the cells to set in bold,
the numbers behind it (written to CSV) and, where it has them, the per-seed values. :func:`to_latex` escapes the
text once (``±`` becomes ``$\\pm$``, ``_`` becomes ``\\_``), renders it through ``Styler.to_latex`` with booktabs rules
(``\\toprule``, ``\\midrule``, ``\\bottomrule``), and puts a ``\\midrule`` between row groups (datasets, protocols).
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

MISSING = "–"
"""Display text of an empty cell (rendered ``--`` in LaTeX)."""
FEWER_SEEDS = "†"
"""Marks a cell computed from fewer seeds than the table's other cells."""
PREAMBLE = ("\\usepackage[T1]{fontenc}\n\\usepackage[utf8]{inputenc}\n\\usepackage{booktabs}\n"
            "\\usepackage{longtable}\n\\usepackage{graphicx}\n")
"""Packages the generated tables need (booktabs; longtable for the long ones; graphicx for vertical headers)."""
PAGE_GEOMETRY = ("\\usepackage[letterpaper,textwidth=6.875in,textheight=8.875in,columnsep=0.375in,"
                 "top=1in]{geometry}\n")
"""The CVPR page: text 6.875 in wide in two columns of 3.25 in (10 pt type), as ``cvpr.sty`` sets it."""
TEXT_WIDTH_PT = 6.875 * 72.27
COLUMN_WIDTH_PT = 3.25 * 72.27
STD_STYLES = ("small", "inline", "none")
"""How a cell's ``± std`` is set: in a smaller font after the mean (default), inline at full size, or left out (the
CSV keeps it)."""

_LATEX_CHARS = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
    "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"$<$", ">": r"$>$",
    "±": r"$\pm$", "Δ": r"$\Delta$", "†": r"$^\dagger$", "–": "--", "—": "---", "−": "$-$", "×": r"$\times$",
    "≤": r"$\leq$", "≥": r"$\geq$", "≈": r"$\approx$", "→": r"$\rightarrow$", "·": r"$\cdot$",
    "…": r"\ldots{}", "§": r"\S{}",
}


def escape(text: object) -> str:
    """Plain text -> LaTeX text (special characters escaped, the few symbols the tables use mapped)."""
    out = []
    for char in str(text):
        if char in _LATEX_CHARS:
            out.append(_LATEX_CHARS[char])
        elif ord(char) < 128:
            out.append(char)
        else:
            out.append(unicodedata.normalize("NFKD", char).encode("ascii", "ignore").decode())
    return "".join(out)


@dataclass
class Table:
    """One publishable table.

    ``cells`` holds every displayed column as text, the first ``n_label_cols`` being row labels (dataset, method,
    ...); ``bold`` has the same shape. ``group_col`` names the label column whose value changes start a new block
    (a ``\\midrule``; repeated values are shown once). ``numbers`` is the tidy numeric frame behind the text,
    ``per_seed`` the per-run values it was computed from.
    """

    name: str
    title: str
    caption: str
    cells: pd.DataFrame
    bold: pd.DataFrame
    numbers: pd.DataFrame
    per_seed: pd.DataFrame | None = None
    n_label_cols: int = 1
    group_col: str | None = None
    environment: str = "table"
    notes: list[str] = field(default_factory=list)
    font_size: str | None = None  # e.g. "small", "footnotesize" for wide tables
    #: second-best cells (underlined), same shape as ``bold``; None: none marked
    second: pd.DataFrame | None = None
    #: set the data columns' headers vertically (a wide table of many datasets, as the papers' main tables)
    rotate_headers: bool = False
    #: how this table prints ``± std`` whatever the document's choice (:data:`STD_STYLES`); None: the document's
    std: str | None = None

    def __post_init__(self) -> None:
        if self.bold.shape != self.cells.shape:
            raise ValueError(f"table {self.name}: bold mask {self.bold.shape} != cells {self.cells.shape}")

    def display(self) -> pd.DataFrame:
        """The text with repeated group labels blanked (what the LaTeX shows), for notebooks."""
        return _blank_repeats(self.cells, self.group_col)


# ------------------------------------------------------------------------------------------------- formatting

def fmt_number(value: float, decimals: int = 2) -> str:
    """``83.2051 -> '83.21'``; NaN -> the missing mark."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return f"{value:.{decimals}f}"


def fmt_mean_std(mean: float, std: float, n: int | None = None, n_max: int | None = None,
                 decimals: int = 2) -> str:
    """``'83.21 ± 0.45'``; a ``†`` when ``n < n_max`` (fewer seeds than the rest of the table)."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return MISSING
    text = f"{mean:.{decimals}f}"
    if std is not None and not (isinstance(std, float) and math.isnan(std)):
        text += f" ± {std:.{decimals}f}"
    if n is not None and n_max is not None and n < n_max:
        text += f" {FEWER_SEEDS}"
    return text


def fmt_count(value: float) -> str:
    """An integer with thousands separators (``87,158,016``); NaN -> the missing mark."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return f"{int(round(value)):,}"


def signed(value: float) -> str:
    """``+0.28``, ``−1.75`` (a true minus sign), ``0.00`` for what rounds to zero; NaN -> the missing mark."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if round(value, 2) == 0:
        return "0.00"
    return f"{value:+.2f}".replace("-", "−")


def best_mask(values: pd.DataFrame, higher_is_better: bool | Sequence[bool] = True, decimals: int = 2,
              groups: pd.Series | None = None) -> pd.DataFrame:
    """Cells equal to the best of their column (within each group) at the displayed precision: ties are all bold."""
    return _rank_mask(values, higher_is_better, decimals, groups, rank=0)


def second_mask(values: pd.DataFrame, higher_is_better: bool | Sequence[bool] = True, decimals: int = 2,
                groups: pd.Series | None = None) -> pd.DataFrame:
    """Cells equal to the second-best distinct value of their column (within each group) at the displayed
    precision, as the papers underline it; none where a column has fewer than two distinct values."""
    return _rank_mask(values, higher_is_better, decimals, groups, rank=1)


def _rank_mask(values: pd.DataFrame, higher_is_better: bool | Sequence[bool], decimals: int,
               groups: pd.Series | None, rank: int) -> pd.DataFrame:
    """Cells holding the ``rank``-th best distinct value (0: the best) of their column within each group."""
    directions = ([higher_is_better] * values.shape[1] if isinstance(higher_is_better, bool)
                  else list(higher_is_better))
    rounded = values.astype(float).round(decimals)
    keys = groups if groups is not None else pd.Series(0, index=values.index)
    mask = pd.DataFrame(False, index=values.index, columns=values.columns)
    for col, higher in zip(values.columns, directions):
        def target(column: pd.Series, higher: bool = higher) -> float:
            distinct = sorted(column.dropna().unique(), reverse=higher)
            return distinct[rank] if len(distinct) > rank else np.nan
        wanted = rounded[col].groupby(keys).transform(target)
        mask[col] = rounded[col].notna() & (rounded[col] == wanted)
    return mask


def _blank_repeats(cells: pd.DataFrame, column: str | None) -> pd.DataFrame:
    if column is None:
        return cells
    out = cells.copy()
    repeated = out[column].eq(out[column].shift())
    out.loc[repeated, column] = ""
    return out


def group_starts(cells: pd.DataFrame, column: str | None) -> list[int]:
    """Row positions (after the first) where the value of ``column`` changes."""
    if column is None:
        return []
    values = list(cells[column])
    return [i for i in range(1, len(values)) if values[i] != values[i - 1]]


# -------------------------------------------------------------------------------------------------------- LaTeX

def to_latex(table: Table, std: str = "small") -> str:
    """The table as a LaTeX float with booktabs rules, the best cells bold and the second best underlined.

    ``std`` (:data:`STD_STYLES`) sets how ``± std`` is printed. The float is the table's ``environment``, except
    that a ``table`` too wide for a column of the two-column page becomes a full-width ``table*`` and one too wide
    for that too is set in a smaller font with narrower column gaps (:func:`fit_width`)."""
    if std not in STD_STYLES:
        raise ValueError(f"std={std!r}: expected one of {STD_STYLES}")
    std = table.std or std
    shown = _blank_repeats(table.cells, table.group_col)
    text = shown.map(lambda cell: _std_text(escape(cell), std))
    text.columns = [escape(c) if i < table.n_label_cols or not table.rotate_headers else
                    f"\\rotatebox{{90}}{{{escape(c)}}}" for i, c in enumerate(shown.columns)]
    marks = table.bold.replace({True: "textbf: --rwrap;", False: ""})
    if table.second is not None:
        marks = marks.where(table.bold | ~table.second, "underline: --rwrap;")
    marks.columns = text.columns
    styler = text.style.hide(axis="index")
    styler = styler.apply(lambda _: marks, axis=None)
    n_data = text.shape[1] - table.n_label_cols
    column_format = "l" * table.n_label_cols + "r" * n_data
    environment, font, tabcolsep = fit_width(table, std)
    floating = environment != "longtable"
    latex = styler.to_latex(column_format=column_format, hrules=True, caption=escape(table.caption),
                            label=f"tab:{table.name}", position="htbp" if floating else None,
                            position_float="centering" if floating else None, environment=environment)
    latex = _insert_group_rules(latex, group_starts(table.cells, table.group_col))
    setup = (f"\\{font}\n" if font else "") + (f"\\setlength{{\\tabcolsep}}{{{tabcolsep}pt}}\n" if tabcolsep else "")
    if setup and floating:
        latex = latex.replace("\\centering\n", f"\\centering\n{setup}", 1)
    elif setup:
        latex = f"\\begingroup{setup}{latex}\\endgroup\n"
    return latex


def _std_text(cell: str, std: str) -> str:
    """``83.21 $\\pm$ 0.45`` as the ``std`` style sets it."""
    if std == "inline":
        return cell
    replacement = "" if std == "none" else r"{\\scriptsize$\\pm$\1}"
    return re.sub(r" \$\\pm\$ ([0-9.]+)", replacement, cell)


def estimated_width(table: Table, std: str = "small", tabcolsep: float = 6.0, scale: float = 1.0) -> float:
    """A slight over-estimate of the tabular's natural width in points at 10 pt type (``scale`` for a smaller
    font): per column its widest cell or header at 5.0 pt per character (the ``± std`` part in script size at
    0.9 of that: its math-mode sign is wide), plus the column gaps."""
    def width(text: str) -> float:
        mean, _, spread = str(text).partition(" ± ")
        spread_width = 0.0 if not spread or std == "none" else (len(spread) + 2) * (0.9 if std == "small" else 1.0)
        return (len(mean) + spread_width) * 5.0 * scale
    total = 0.0
    for i, column in enumerate(table.cells.columns):
        header = 1.0 if table.rotate_headers and i >= table.n_label_cols else width(str(column))
        widest = max([header] + [width(v) for v in table.cells[column]])
        total += widest + 2 * tabcolsep
    return total


FITS: tuple[tuple[str | None, float, float], ...] = (
    (None, 6.0, 1.0), ("small", 4.0, 0.93), ("footnotesize", 3.0, 0.86), ("scriptsize", 2.0, 0.75))
"""Settings tried in turn to fit a table: font size, column gap (pt) and the width of its text relative to 10 pt
(measured with pdflatex on the generated tables: a smaller font shrinks the figures less than its size)."""
FILL = 0.95
"""The share of the available width an estimated table may fill: the estimate is per character, not per glyph."""


def fit_width(table: Table, std: str = "small") -> tuple[str, str | None, float | None]:
    """The float, font size and column gap that fit the table: a ``table`` in one column of the CVPR page at full
    size, then ``\\small`` and ``\\footnotesize`` with narrower gaps; failing that (or for a ``table*``, the
    papers' wide main tables) a ``table*`` over the text width, trying the same and then ``\\scriptsize``. A
    ``longtable`` (it cannot float; set in one column) is fitted to the text width the same way."""
    std = table.std or std
    if table.environment == "table":
        for font, gap, scale in FITS[:3]:
            if estimated_width(table, std, gap, scale) <= FILL * COLUMN_WIDTH_PT:
                return "table", font, None if font is None else gap
    environment = "longtable" if table.environment == "longtable" else "table*"
    for font, gap, scale in FITS:
        if estimated_width(table, std, gap, scale) <= FILL * TEXT_WIDTH_PT:
            return environment, font, None if font is None else gap
    return environment, "scriptsize", 1.5


def _insert_group_rules(latex: str, starts: Iterable[int]) -> str:
    """Put ``\\midrule`` before the data rows at ``starts`` (positions among the data rows)."""
    starts = set(starts)
    if not starts:
        return latex
    lines = latex.split("\n")
    stripped = [line.strip() for line in lines]
    if "\\endlastfoot" in stripped:  # longtable: data rows follow the foot definitions
        first, last = stripped.index("\\endlastfoot"), len(lines)
    else:
        first = stripped.index("\\midrule")
        last = first + stripped[first:].index("\\bottomrule")
    out, row = lines[: first + 1], 0
    for line in lines[first + 1: last]:
        if line.strip().endswith("\\\\"):
            if row in starts:
                out.append("\\midrule")
            row += 1
        out.append(line)
    return "\n".join(out + lines[last:])


FLOATS_PER_FLUSH = 10
"""Tables input between two ``\\clearpage`` of the preview document."""


def standalone(tex_files: Sequence[str], long_files: Sequence[str] = ()) -> str:
    """A two-column document with the CVPR page geometry (10 pt, text 6.875 in, columns 3.25 in) that ``\\input``s
    every table, to check that each fits a paper's page; ``long_files`` (longtables, which cannot be set in two
    columns) follow in one column at the same text width."""
    # a \clearpage every few tables flushes the floats: LaTeX holds at most 18 unplaced ones
    flush = ["\n\\clearpage" if i % FLOATS_PER_FLUSH == FLOATS_PER_FLUSH - 1 else "" for i in range(len(tex_files))]
    floats = "\n".join(f"\\input{{{name}}}{end}" for name, end in zip(tex_files, flush))
    long = "".join(f"\\input{{{name}}}\n" for name in long_files)
    tail = f"\\onecolumn\n{long}" if long_files else ""
    return (f"\\documentclass[10pt,twocolumn]{{article}}\n{PREAMBLE}{PAGE_GEOMETRY}\\begin{{document}}\n"
            f"{floats}\n\\clearpage\n{tail}\\end{{document}}\n")


# --------------------------------------------------------------------------------------------------- Markdown

def to_markdown(table: Table) -> str:
    """The table as GitHub Markdown (bold best cells as ``**x**``)."""
    shown = table.display()
    header = "| " + " | ".join(str(c) for c in shown.columns) + " |"
    rule = "|" + "|".join(["---"] * table.n_label_cols + ["---:"] * (shown.shape[1] - table.n_label_cols)) + "|"
    rows = []
    for (_, row), (_, bold) in zip(shown.iterrows(), table.bold.iterrows()):
        cells = [f"**{v}**" if b and v not in ("", MISSING) else str(v) for v, b in zip(row, bold)]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join([header, rule, *rows])


# ------------------------------------------------------------------------------------------ structural checks

_ENV = re.compile(r"\\(begin|end)\{([^}]*)\}")


def check_latex(text: str) -> list[str]:
    """Problems in a generated table: unbalanced environments or braces, missing booktabs rules, rows whose cell
    count differs from the column format. An empty list means the structure is sound."""
    problems: list[str] = []
    stack: list[str] = []
    for kind, env in _ENV.findall(text):
        if kind == "begin":
            stack.append(env)
        elif not stack or stack.pop() != env:
            problems.append(f"\\end{{{env}}} does not close the innermost open environment")
    problems += [f"environment {env} is never closed" for env in stack]
    depth = 0
    for char in re.sub(r"\\[{}]", "", text):
        depth += (char == "{") - (char == "}")
        if depth < 0:
            problems.append("a closing brace has no opening brace")
            break
    if depth > 0:
        problems.append(f"{depth} unclosed brace(s)")
    for rule in ("\\toprule", "\\midrule", "\\bottomrule"):
        if rule not in text:
            problems.append(f"no {rule} (booktabs)")
    problems += _check_rows(text)
    return problems


def _check_rows(text: str) -> list[str]:
    match = re.search(r"\\begin\{(tabular|longtable)\}(?:\[[^\]]*\])?\{([^}]*)\}", text)
    if not match:
        return ["no tabular or longtable environment"]
    n_cols = len(re.findall(r"[lcrpXS]", re.sub(r"\{[^}]*\}", "", match.group(2))))
    problems = []
    body = text[match.end():]
    for line in body.split("\n"):
        stripped = line.strip()
        if not stripped.endswith("\\\\") or stripped.startswith(("\\multicolumn", "\\caption", "\\label")):
            continue
        cells = len(re.findall(r"(?<!\\)&", stripped)) + 1
        if cells != n_cols:
            problems.append(f"row has {cells} cells, the column format {n_cols}: {stripped[:80]}")
    return problems


def bold_cells(text: str) -> list[str]:
    """The contents of every ``\\textbf{...}`` in ``text``."""
    return re.findall(r"\\textbf\{((?:[^{}]|\{[^{}]*\})*)\}", text)


__all__ = ["Table", "MISSING", "FEWER_SEEDS", "PREAMBLE", "PAGE_GEOMETRY", "TEXT_WIDTH_PT", "COLUMN_WIDTH_PT",
           "STD_STYLES", "escape", "signed", "fmt_number", "fmt_mean_std", "fmt_count", "best_mask", "second_mask",
           "group_starts", "to_latex", "estimated_width", "fit_width", "standalone", "to_markdown", "check_latex",
           "bold_cells"]
