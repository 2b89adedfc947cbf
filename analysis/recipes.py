"""Recipe cards: every setting of a method on a protocol, its value and where the value comes from.

``python -m analysis.recipes [--out DIR] [--method NAME ...] [--protocol NAME ...]`` writes, for each registered
method and each protocol it supports, one Markdown page (``<method>_<protocol>.md``) and one LaTeX appendix table
(``<method>_<protocol>.tex``), plus ``index.md`` listing them and ``recipes_preview.tex`` inputting every table.
A card has two parts, both read from the method contract (no run, no data, no weights):

* **Optimisation**: the method's recipe (``Method.recipe_settings``) on the protocol's datasets (the 11 standard
  ones; ImageNet alone as the cross-dataset / domain-generalisation source) and shot counts (1, 2, 4, 8, 16 on
  few-shot; 16 otherwise). A value that differs by dataset or shots is listed once per value with where it applies.
  Settings the recipe leaves alone come from ``OptimConfig``'s defaults, with their own sources (methods that train).
* **Method options**: every option's default with its source, and the value a protocol-dependent option takes on
  this protocol (``Method.protocol_settings``).

Every value's source is an official ``file:line`` (of the repository and commit the card names), a paper section,
"suite choice" with the reason, or "no official value" with the reason. A recipe value without a source is an error
here and fails the registry-wide tests.

This is a command-line module: it imports the methods (and torch), unlike the rest of ``analysis``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from analysis.latex import escape
from frozen_clip.atomic import write_text
from frozen_clip.contract import PROTOCOL_NAMES, SOURCE_KIND_NAMES, Sourced, defaults, option_display, \
    option_meta, unsourced, value_display
from frozen_clip.optim import OptimConfig

#: the standard datasets (CoOp's 11) with the names papers give them
STANDARD_DATASETS = {"imagenet": "ImageNet", "caltech101": "Caltech101", "oxford_pets": "OxfordPets",
                     "stanford_cars": "StanfordCars", "oxford_flowers": "Flowers102", "food101": "Food101",
                     "fgvc_aircraft": "FGVCAircraft", "sun397": "SUN397", "dtd": "DTD", "eurosat": "EuroSAT",
                     "ucf101": "UCF101"}
#: the runs a protocol's card covers: (source datasets, shot counts)
PROTOCOL_RUNS = {"base2novel": (tuple(STANDARD_DATASETS), (16,)),
                 "fewshot": (tuple(STANDARD_DATASETS), (1, 2, 4, 8, 16)),
                 "cross_dataset": (("imagenet",), (16,)),
                 "domain_generalization": (("imagenet",), (16,))}
PROTOCOL_DISPLAY = {"base2novel": "base-to-novel", "fewshot": "few-shot", "cross_dataset": "cross-dataset",
                    "domain_generalization": "domain generalisation"}


@dataclass(frozen=True)
class Row:
    """One line of a card: a setting, one of its values, where that value applies, and the value's source."""

    section: str  # one of SECTIONS
    setting: str
    value: str
    applies: str  # "" = every run of the protocol
    source: str
    kind: str  # a SOURCE_KIND_NAMES key


SECTIONS = ("optimisation", "method option", "run setting")


class MissingSource(ValueError):
    """A recipe value (or an option default) that names no source."""


def _shown(value: Any) -> str:
    return json.dumps(list(value) if isinstance(value, tuple) else value)


def _shots_text(shots: Sequence[int]) -> str:
    return ", ".join(str(s) for s in shots) + (" shot" if list(shots) == [1] else " shots")


def _datasets_text(datasets: frozenset[str], every: Sequence[str]) -> str:
    """``ImageNet``, ``every dataset but ImageNet`` or a list of paper names."""
    if set(datasets) == set(every):
        return ""
    others = [d for d in every if d not in datasets]
    if len(others) <= 2 < len(datasets):
        return "every dataset but " + ", ".join(STANDARD_DATASETS.get(d, d) for d in others)
    return ", ".join(STANDARD_DATASETS.get(d, d) for d in every if d in datasets)


def where_applies(pairs: set[tuple[str, int]], datasets: Sequence[str], shots: Sequence[int]) -> str:
    """Words for the (dataset, shots) runs a value applies to: "" for all of them, else e.g.
    ``ImageNet; 1 shot on every dataset but ImageNet``."""
    if pairs == {(d, s) for d in datasets for s in shots}:
        return ""
    by_shots: dict[int, frozenset[str]] = {s: frozenset(d for d, k in pairs if k == s) for s in shots}
    groups: dict[frozenset[str], list[int]] = defaultdict(list)
    for s, ds in by_shots.items():
        if ds:
            groups[ds].append(s)
    parts = []
    for ds, group_shots in groups.items():
        on = _datasets_text(ds, datasets)
        at = "" if len(group_shots) == len(shots) or len(shots) == 1 else _shots_text(group_shots)
        parts.append(" on ".join(p for p in (at, on) if p) or "every run")
    return "; ".join(parts)


def recipe_rows(cls: type, protocol: str) -> list[Row]:
    """The optimisation rows of ``cls`` on ``protocol`` (recipe values, then ``OptimConfig`` defaults it keeps)."""
    datasets, shots = PROTOCOL_RUNS[protocol]
    config = cls.Config()
    seen: dict[str, dict[tuple[str, str, str], set[tuple[str, int]]]] = defaultdict(lambda: defaultdict(set))
    for dataset in datasets:
        for k in shots:
            settings = cls.recipe_settings(protocol, dataset, k, config)
            missing = unsourced(settings)
            if missing:
                raise MissingSource(f"{cls.info.name}: recipe_settings({protocol!r}, {dataset!r}, {k}) gives "
                                    f"{missing} without a source (wrap each value in official(), suite_choice() or "
                                    "no_official() of frozen_clip.contract)")
            for key, value in settings.items():
                seen[key][(_shown(value.value), value.source, value.kind)].add((dataset, k))
    rows = [Row("optimisation", key, value, where_applies(pairs, datasets, shots), source, kind)
            for key in _optim_order(seen) for (value, source, kind), pairs in seen[key].items()]
    trains = any(v != "0" for (v, _, _) in seen.get("epochs", {})) or "iterations" in seen
    if trains:
        rows += [Row("optimisation", name, _shown(value), "", *_option_source(OptimConfig, name))
                 for name, value in defaults(OptimConfig).items() if name not in seen]
    return rows


def _optim_order(keys: Iterable[str]) -> list[str]:
    order = [f.name for f in dataclasses.fields(OptimConfig)]
    return sorted(keys, key=lambda k: order.index(k) if k in order else len(order))


def _option_source(config_cls: type, name: str) -> tuple[str, str]:
    meta = option_meta(config_cls, name)
    if not meta.get("source"):
        raise MissingSource(f"{config_cls.__name__}.{name} has no source (declare it with frozen_clip.contract.option)")
    return meta["source"], meta.get("kind", "official")


def option_rows(cls: type, protocol: str) -> list[Row]:
    """The method-option rows: each option's default (display names) with its source; a protocol-dependent option
    also shows the value it takes on ``protocol``."""
    config_cls = cls.Config
    on_protocol = cls.protocol_settings(cls.Config(), protocol)
    exact = getattr(config_cls, "UNHASHED_FIELDS", ())
    rows = []
    for name, value in defaults(config_cls).items():
        source, kind = _option_source(config_cls, name)
        shown = value_display(config_cls, name, value) or '""'
        if name in on_protocol:
            here = value_display(config_cls, name, on_protocol[name]) or '""'
            shown += f" (on {PROTOCOL_DISPLAY[protocol]}: {here})"
        setting = option_display(config_cls, name) + (" (speed switch, same results)" if name in exact else "")
        rows.append(Row("method option", setting, shown, "", source, kind))
    return rows


#: run-level settings every method shares, with the official value and why the suite's differs where it does
SHARED_RUN_ROWS = (
    Row("run setting", "RNG stream", "re-seeded per epoch; crops seeded per (split, view, item)", "",
        "a killed run resumes to identical metrics; Dassl seeds once per process (train.py set_random_seed), the "
        "distributions are the same", "suite"),
    Row("run setting", "cuDNN", "deterministic (deterministic: true)", "",
        "the same kernels every run; CoOp train.py:135-136 sets cudnn.benchmark = True: deterministic: false", "suite"),
    Row("run setting", "ImageNet few-shot draw", "files in sorted order (sampling: dassl)", "",
        "the same lists on every machine; Dassl draws from os.listdir order (dassl/utils/tools.py:135-145, "
        "sort=False), which depends on the file system: sampling: dassl_listdir; the other datasets draw from their "
        "split files exactly either way", "suite"),
    Row("run setting", "cross-dataset / DG target prompts", "the target dataset's own template", "",
        "CoOp trainers/zsclip.py:42 (the eval-only run sets DATASET.NAME to the target), CLIP-Adapter "
        "clip_adapter.py:80", "official"),
    Row("run setting", "evaluated model", "the last epoch", "",
        "Dassl dassl/config/defaults.py TEST.FINAL_MODEL last_step; base-to-novel novel classes with --load-epoch "
        "<last>", "official"),
)


def run_rows(cls: type) -> list[Row]:
    """The run-level rows: the method's official precision (what ``precision: auto`` runs on CUDA), then
    :data:`SHARED_RUN_ROWS`."""
    official = cls.info.precision
    return [Row("run setting", "precision (on CUDA)", official.describe(), "", f"{official.source}; precision: auto runs it on "
                "CUDA and fp32 on a CPU", official.kind), *SHARED_RUN_ROWS]


def card_rows(cls: type, protocol: str) -> list[Row]:
    """Every row of the card of ``cls`` on ``protocol``."""
    return recipe_rows(cls, protocol) + option_rows(cls, protocol) + run_rows(cls)


def _title(cls: type, protocol: str) -> str:
    return f"{cls.info.display}: {PROTOCOL_DISPLAY[protocol]} recipe"


def _provenance(cls: type) -> str:
    info = cls.info
    code = f"{info.code.repository}@{info.code.commit}" if info.code else "no official code"
    paper = f"{info.paper.title} ({info.paper.venue} {info.paper.year})" if info.paper else "no paper"
    return f"Paper: {paper}. Official code: {code}; every official file:line below is in that repository unless " \
           f"it names another (Dassl, CoOp). Recipe version {info.recipe_version}."


def _heading(section: str) -> str:
    return {"optimisation": "Optimisation", "method option": "Method options", "run setting": "Run settings"}[section]


def markdown(cls: type, protocol: str, rows: Sequence[Row]) -> str:
    """The Markdown page of one card."""
    lines = [f"# {_title(cls, protocol)}", "", _provenance(cls), ""]
    for section in SECTIONS:
        lines += [f"## {_heading(section)}", "",
                  "| setting | value | applies to | source | kind |", "|---|---|---|---|---|"]
        lines += [f"| {r.setting} | `{r.value}` | {r.applies or 'all runs'} | {r.source.replace('|', '/')} | "
                  f"{SOURCE_KIND_NAMES[r.kind]} |" for r in rows if r.section == section]
        lines.append("")
    return "\n".join(lines)


def _breakable(text: str) -> str:
    """Escaped LaTeX text whose paths and identifiers may break after ``/``, ``_`` and ``,`` (a long config path
    in a narrow column would run into the margin)."""
    for mark in ("/", r"\_", ","):
        text = text.replace(mark, mark + r"\allowbreak{}")
    return text


def latex(cls: type, protocol: str, rows: Sequence[Row]) -> str:
    """The LaTeX appendix table of one card (booktabs; a ``table*`` spanning both columns of a two-column paper)."""
    body = []
    for section in SECTIONS:
        body.append(rf"\multicolumn{{4}}{{l}}{{\textit{{{escape(_heading(section))}}}}} \\")
        for r in (r for r in rows if r.section == section):
            value = escape(r.value) + (f" ({escape(r.applies)})" if r.applies else "")
            body.append(f"{escape(r.setting)} & {_breakable(value)} & {escape(SOURCE_KIND_NAMES[r.kind])} & "
                        rf"{{\footnotesize {_breakable(escape(r.source))}}} \\")
    label = f"tab:recipe-{cls.info.name}-{protocol}".replace("_", "-")
    caption = escape(f"{_title(cls, protocol)}: every setting and where its value comes from. {_provenance(cls)}")
    return "\n".join([r"\begin{table*}[t]", r"\centering", r"\footnotesize",
                      r"\begin{tabular}{@{}p{0.2\textwidth}p{0.24\textwidth}p{0.1\textwidth}p{0.38\textwidth}@{}}",
                      r"\toprule", r"Setting & Value & Kind & Source \\", r"\midrule", *body, r"\bottomrule",
                      r"\end{tabular}", rf"\caption{{{caption}}}", rf"\label{{{label}}}", r"\end{table*}", ""])


PREVIEW = r"""\documentclass[10pt,twocolumn]{article}
\usepackage[letterpaper,textwidth=6.875in,textheight=8.875in,columnsep=0.3125in]{geometry}
\usepackage{booktabs}
\begin{document}
%s
\end{document}
"""


def write_cards(out: Path, methods: Sequence[str], protocols: Sequence[str] | None = None) -> list[Path]:
    """Write the cards of ``methods`` (each on ``protocols`` it supports, default all) under ``out``; returns the
    Markdown pages written."""
    from jobs.registry import METHODS
    out.mkdir(parents=True, exist_ok=True)
    pages, tables = [], []
    for name in methods:
        cls = METHODS.get(name)
        for protocol in (p for p in cls.info.capabilities.protocols if not protocols or p in protocols):
            rows = card_rows(cls, protocol)
            stem = f"{name}_{protocol}"
            write_text(out / f"{stem}.md", markdown(cls, protocol, rows))
            write_text(out / f"{stem}.tex", latex(cls, protocol, rows))
            pages.append(out / f"{stem}.md")
            tables.append(f"{stem}.tex")
    index = ["# Recipe cards", ""] + [f"- [{p.stem}]({p.name})" for p in pages]
    write_text(out / "index.md", "\n".join(index) + "\n")
    write_text(out / "recipes_preview.tex",
                      PREVIEW % "\n\\clearpage\n".join(rf"\input{{{t}}}" for t in tables))
    return pages


def main(argv: Sequence[str] | None = None) -> int:
    from jobs.registry import METHODS
    parser = argparse.ArgumentParser(
        prog="python -m analysis.recipes", description=__doc__.split("\n\n")[0],
        epilog="example: python -m analysis.recipes --out recipes --method heba --protocol base2novel")
    parser.add_argument("--out", type=Path, default=Path("recipes"), help="folder for the cards (default: recipes)")
    parser.add_argument("--method", action="append", choices=METHODS.names(), help="only this method (repeatable)")
    parser.add_argument("--protocol", action="append", choices=PROTOCOL_NAMES, help="only this protocol (repeatable)")
    args = parser.parse_args(argv)
    try:
        pages = write_cards(args.out, args.method or METHODS.names(), args.protocol)
    except MissingSource as err:
        print(f"error: {err}")
        return 2
    print(f"{len(pages)} recipe cards (Markdown + LaTeX) in {args.out}/ (index.md, recipes_preview.tex)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
