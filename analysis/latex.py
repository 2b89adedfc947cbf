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

import pandas as pd

MISSING = "–"
"""Display text of an empty cell (rendered ``--`` in LaTeX)."""
FEWER_SEEDS = "†"
"""Marks a cell computed from fewer seeds than the table's other cells."""
PREAMBLE = ("\\usepackage[T1]{fontenc}\n\\usepackage[utf8]{inputenc}\n\\usepackage{booktabs}\n"
            "\\usepackage{longtable}\n\\usepackage[a4paper,landscape,margin=1.5cm]{geometry}\n")
"""Packages the generated tables need (booktabs; longtable for the long ones)."""

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


def best_mask(values: pd.DataFrame, higher_is_better: bool | Sequence[bool] = True, decimals: int = 2,
              groups: pd.Series | None = None) -> pd.DataFrame:
    """Cells equal to the best of their column (within each group) at the displayed precision: ties are all bold."""
    directions = ([higher_is_better] * values.shape[1] if isinstance(higher_is_better, bool)
                  else list(higher_is_better))
    rounded = values.astype(float).round(decimals)
    keys = groups if groups is not None else pd.Series(0, index=values.index)
    mask = pd.DataFrame(False, index=values.index, columns=values.columns)
    for col, higher in zip(values.columns, directions):
        best = rounded[col].groupby(keys).transform("max" if higher else "min")
        mask[col] = rounded[col].notna() & (rounded[col] == best)
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

def to_latex(table: Table) -> str:
    """The table as a LaTeX float (``table`` or ``longtable``) with booktabs rules and bold best cells."""
    shown = _blank_repeats(table.cells, table.group_col)
    text = shown.map(escape)
    text.columns = [escape(c) for c in shown.columns]
    bold = table.bold.copy()
    bold.columns = text.columns
    styler = text.style.hide(axis="index")
    styler = styler.apply(lambda _: bold.replace({True: "textbf: --rwrap;", False: ""}), axis=None)
    n_data = text.shape[1] - table.n_label_cols
    column_format = "l" * table.n_label_cols + "r" * n_data
    latex = styler.to_latex(column_format=column_format, hrules=True, caption=escape(table.caption),
                            label=f"tab:{table.name}", position="htbp" if table.environment == "table" else None,
                            position_float="centering" if table.environment == "table" else None,
                            environment=table.environment)
    latex = _insert_group_rules(latex, group_starts(table.cells, table.group_col))
    if table.font_size:
        if table.environment == "table":
            latex = latex.replace("\\centering\n", f"\\centering\n\\{table.font_size}\n", 1)
        else:
            latex = f"\\begingroup\\{table.font_size}\n{latex}\\endgroup\n"
    return latex


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


def standalone(tex_files: Sequence[str]) -> str:
    """A LaTeX document that ``\\input``s the given table files (for previewing and compiling them)."""
    body = "\n\\clearpage\n".join(f"\\input{{{name}}}" for name in tex_files)
    return f"\\documentclass{{article}}\n{PREAMBLE}\\begin{{document}}\n{body}\n\\end{{document}}\n"


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


__all__ = ["Table", "MISSING", "FEWER_SEEDS", "PREAMBLE", "escape", "fmt_number", "fmt_mean_std", "fmt_count",
           "best_mask", "group_starts", "to_latex", "standalone", "to_markdown", "check_latex", "bold_cells"]
