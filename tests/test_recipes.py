"""Recipe cards (``python -m analysis.recipes``): every recipe value of every method on every protocol has a source,
and the cards show the official recipe choices (and the named alternatives) a researcher pastes into an appendix."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from analysis.recipes import PROTOCOL_RUNS, MissingSource, card_rows, write_cards
from frozen_clip.contract import Sourced, recipe_values, unsourced
from jobs.registry import METHODS

REPO = Path(__file__).resolve().parent.parent


def _method_protocols() -> list[tuple[str, str]]:
    return [(name, protocol) for name in METHODS.names() for protocol in METHODS.get(name).info.capabilities.protocols]


@pytest.mark.parametrize("name,protocol", _method_protocols())
def test_every_recipe_value_has_a_source(name: str, protocol: str) -> None:
    cls = METHODS.get(name)
    datasets, shots = PROTOCOL_RUNS[protocol]
    for dataset in (*datasets, "world_hues"):
        for k in shots:
            settings = cls.recipe_settings(protocol, dataset, k, cls.Config())
            assert not unsourced(settings), f"{name} {protocol} {dataset} {k} shots: {unsourced(settings)}"
            assert all(v.kind in ("official", "paper", "suite", "no_official") for v in settings.values())
            assert cls.recipe(protocol, dataset, k, cls.Config()) == recipe_values(settings)
    rows = card_rows(cls, protocol)
    assert rows and all(r.source.strip() for r in rows)


def test_a_recipe_value_without_a_source_fails_the_card() -> None:
    base = METHODS.get("coop")

    class Unsourced(base):  # type: ignore[misc, valid-type]
        @classmethod
        def recipe_settings(cls, protocol: str, dataset: str, shots: int, config: Any) -> dict[str, Any]:
            return {**super().recipe_settings(protocol, dataset, shots, config), "lr": 0.01}

    with pytest.raises(MissingSource, match=r"coop: recipe_settings\('fewshot', 'imagenet', 1\) gives \['lr'\]"):
        card_rows(Unsourced, "fewshot")
    assert unsourced({"lr": Sourced(0.1, " ")}) == ["lr"]


def _card(tmp_path: Path, name: str, protocol: str) -> str:
    write_cards(tmp_path, [name], [protocol])
    return (tmp_path / f"{name}_{protocol}.md").read_text()


def _row(card: str, setting: str) -> list[str]:
    return [line for line in card.splitlines() if line.startswith(f"| {setting} |")]


def test_cards_show_the_official_choices_and_their_sources(tmp_path: Path) -> None:
    lora = _card(tmp_path, "clip_lora", "fewshot")
    assert '`a photo of a {}.`' in _row(lora, "template")[0] and "official code" in _row(lora, "template")[0]
    assert "run_utils.py:29" in _row(lora, "iterations")[0]
    coop_b2n = _card(tmp_path, "coop", "base2novel")
    assert "(on base-to-novel: 4)" in _row(coop_b2n, "n ctx")[0]
    assert "(on base-to-novel: a photo of a)" in _row(coop_b2n, "ctx init")[0]
    coop_fewshot = _card(tmp_path, "coop", "fewshot")
    assert "(on few-shot: 16)" in _row(coop_fewshot, "n ctx")[0]
    epochs = _row(coop_fewshot, "epochs")
    assert any("`50` | ImageNet |" in line and "COOP.md:13" in line for line in epochs)
    assert any("`100` | 2, 4 shots on every dataset but ImageNet |" in line for line in epochs)
    heba_xd = _card(tmp_path, "heba", "cross_dataset")
    assert "no official value" in _row(heba_xd, "lr")[0] and "x2d.yaml:17" in _row(heba_xd, "lr")[0]
    rm = _card(tmp_path, "rmadapter", "base2novel")
    assert all("no official value" in line for line in _row(rm, "lr") + _row(rm, "epochs"))
    adapter = _card(tmp_path, "clip_adapter", "fewshot")
    assert "`0.002`" in _row(adapter, "lr")[0] and "README.md:14" in _row(adapter, "lr")[0]
    assert "CoOp's" in _row(adapter, "training recipe")[0]


def test_recipe_cards_command_writes_markdown_and_latex_that_compiles(tmp_path: Path) -> None:
    out = tmp_path / "cards"
    proc = subprocess.run([sys.executable, "-m", "analysis.recipes", "--out", str(out), "--method", "coop",
                           "--method", "tip_adapter"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    expected = {f"coop_{p}" for p in METHODS.get("coop").info.capabilities.protocols} | {"tip_adapter_fewshot"}
    assert {p.stem for p in out.glob("*.md")} == expected | {"index"}
    assert {p.stem for p in out.glob("*.tex")} == expected | {"recipes_preview"}
    tex = (out / "coop_fewshot.tex").read_text()
    assert tex.count(r"\begin{table*}") == 1 and r"\label{tab:recipe-coop-fewshot}" in tex
    assert "_" not in re.sub(r"\\_|\\label\{[^}]*\}|\\input\{[^}]*\}", "", tex)  # underscores escaped
    engine = shutil.which("pdflatex")
    if engine is None:  # CI installs it (.ci/latex-up.sh); the structure above is checked regardless
        return
    run = subprocess.run([engine, "-interaction=nonstopmode", "-halt-on-error", "recipes_preview.tex"],
                         capture_output=True, text=True, cwd=out)
    log = (out / "recipes_preview.log").read_text(errors="replace")
    assert run.returncode == 0, log[-3000:]
    assert "Overfull \\hbox" not in log
