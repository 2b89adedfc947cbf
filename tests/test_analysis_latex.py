"""LaTeX rendering: escaping, bold best cells with ties, group rules, and the structural checker itself."""

from __future__ import annotations

import pandas as pd

from analysis.latex import Table, best_mask, bold_cells, check_latex, escape, fmt_mean_std, to_latex, to_markdown


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
    assert bold_cells(text) == [r"79.87 $\pm$ 0.10", r"79.87 $\pm$ 0.20", r"83.00 $\pm$ 1.00 $^\dagger$"]
    assert "HeBA (init=zero\\_up)" in text and "50\\%" in text
    assert "\nEuroSAT & HeBA" in text and "\n & MMA" in text  # repeated group label shown once


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
