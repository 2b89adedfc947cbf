"""LaTeX rendering: escaping, bold best cells with ties, group rules, and the structural checker itself."""

from __future__ import annotations

import pandas as pd

from analysis.latex import (COLUMN_WIDTH_PT, TEXT_WIDTH_PT, Table, best_mask, bold_cells, check_latex, escape,
                            estimated_width, fit_width, fmt_mean_std, second_mask, to_latex, to_markdown)


def _table(environment: str = "table") -> Table:
    cells = pd.DataFrame({"Dataset": ["Average", "Average", "EuroSAT", "EuroSAT"],
                          "Method": ["HeBA (init=zero_up)", "MMA", "HeBA (init=zero_up)", "MMA"],
                          "HM": ["79.87 ± 0.10", "79.87 ± 0.20", "83.00 ± 1.00 †", "82.50 ± 0.50"]})
    values = pd.DataFrame({"HM": [79.871, 79.868, 83.0, 82.5]})
    bold = pd.concat([pd.DataFrame(False, index=cells.index, columns=["Dataset", "Method"]),
                      best_mask(values, groups=cells["Dataset"])], axis=1)
    return Table("demo", "Demo", "A caption with 50% and n = 3 seeds ± std.", cells, bold, values,
                 n_label_cols=2, group_col="Dataset", environment=environment)


def test_escape_maps_special_characters_and_symbols():
    assert escape("a_b & 5% # $x$ {y}") == r"a\_b \& 5\% \# \$x\$ \{y\}"
    assert escape("83.21 ± 0.45 †") == r"83.21 $\pm$ 0.45 $^\dagger$"
    assert escape("A − B, Δ, §4") == r"A $-$ B, $\Delta$, \S{}4"


def test_best_mask_bolds_ties_at_displayed_precision():
    values = pd.DataFrame({"a": [79.871, 79.868, 70.0], "b": [1.0, 2.0, 2.0]})
    mask = best_mask(values)
    assert list(mask["a"]) == [True, True, False]  # 79.87 == 79.87 at two decimals
    assert list(mask["b"]) == [False, True, True]
    lower = best_mask(values, higher_is_better=[False, False])
    assert list(lower["a"]) == [False, False, True]


def test_to_latex_has_booktabs_bold_and_group_rules():
    text = to_latex(_table())
    assert check_latex(text) == []
    assert text.count("\\midrule") == 2  # header rule + one between the two dataset blocks
    assert bold_cells(text) == [r"79.87{\scriptsize$\pm$0.10}", r"79.87{\scriptsize$\pm$0.20}",
                                r"83.00{\scriptsize$\pm$1.00} $^\dagger$"]
    inline, none = to_latex(_table(), std="inline"), to_latex(_table(), std="none")
    assert bold_cells(inline)[0] == r"79.87 $\pm$ 0.10" and bold_cells(none)[0] == "79.87"
    assert "HeBA (init=zero\\_up)" in text and "50\\%" in text
    assert "\nEuroSAT & HeBA" in text and "\n & MMA" in text  # repeated group label shown once


def test_second_best_is_underlined_and_wide_tables_leave_the_column():
    cells = pd.DataFrame({"Method": ["A", "B", "C"], "HM": ["70.00", "71.00", "69.00"]})
    values = pd.DataFrame({"HM": [70.0, 71.0, 69.0]})
    label = pd.DataFrame(False, index=cells.index, columns=["Method"])
    table = Table("t", "T", "Caption.", cells, pd.concat([label, best_mask(values)], axis=1), values,
                  second=pd.concat([label, second_mask(values)], axis=1))
    text = to_latex(table)
    assert "\\underline{70.00}" in text and "\\textbf{71.00}" in text and "69.00 \\\\" in text
    assert text.startswith("\\begin{table}") and fit_width(table) == ("table", None, None)
    wide = Table("w", "W", "Caption.", pd.DataFrame({f"Dataset number {i}": ["88.88 ± 0.11"] for i in range(12)}),
                 pd.DataFrame(False, index=[0], columns=[f"Dataset number {i}" for i in range(12)]), values)
    environment, font, _ = fit_width(wide)
    assert environment == "table*" and font is not None  # too wide for a column, set smaller on the full width
    assert estimated_width(wide) > TEXT_WIDTH_PT > COLUMN_WIDTH_PT


def test_longtable_variant_is_structurally_sound():
    text = to_latex(_table("longtable"))
    assert text.startswith("\\begin{longtable}") and check_latex(text) == []
    body = text.split("\\endlastfoot")[1]
    assert body.count("\\midrule") == 1


def test_check_latex_finds_broken_tables():
    good = to_latex(_table())
    assert any("never closed" in p for p in check_latex(good.replace("\\end{table}", "")))
    assert any("\\bottomrule" in p for p in check_latex(good.replace("\\bottomrule", "")))
    assert any("cells" in p for p in check_latex(good.replace("& MMA &", "& MMA & extra &", 1)))
    assert any("brace" in p for p in check_latex(good.replace("\\textbf{", "\\textbf{{", 1)))


def test_markdown_marks_bold_cells():
    md = to_markdown(_table())
    assert "| **79.87 ± 0.10** |" in md and "| 82.50 ± 0.50 |" in md
    assert md.splitlines()[1] == "|---|---|---:|"


def test_fmt_mean_std_marks_fewer_seeds():
    assert fmt_mean_std(83.2051, 0.449) == "83.21 ± 0.45"
    assert fmt_mean_std(83.2, 0.4, n=2, n_max=3).endswith("†")
    assert fmt_mean_std(float("nan"), 0.1) == "–"
