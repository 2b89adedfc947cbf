"""``--print-config``: the fully resolved config of each run as YAML, each value with where it came from.

``python jobs/run.py --print-config method=clip_lora dataset=dtd`` and ``python jobs/launch.py --grid G
--print-config [key=value ...]`` print, for every run, one YAML document: the run id, the method's options, the
optimiser and schedule, the run settings (precision, targets, ...), and as comments the prompt template of the
dataset and, after each value, its origin:

- ``command line``: a ``key=value`` override;
- ``grid file`` / ``run config``: set in the file;
- ``recipe: <protocol>, <dataset>, <shots> shots (<source>)``: the method's recipe for this run
  (``Method.recipe_settings``), with the value's source (official file:line, or the suite's reason);
- ``method default: <source>``: the option's default, with the source its contract names (official file:line,
  paper section, or the suite's reason);
- ``default``: a run or optimiser setting left at the suite's default.

Nothing is run and no data or weights are read: only the configs are resolved (which checks them).
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Mapping

from jobs.config import ResolvedRun, method_class, run_label


def _flat(nested: Mapping[str, Any], prefix: str = "") -> set[str]:
    """The dotted keys set in a raw nested config (``method`` as a string counts as ``method.name``)."""
    keys: set[str] = set()
    for key, value in nested.items():
        dotted = f"{prefix}{key}"
        if key == "method" and not prefix and isinstance(value, str):
            keys.add("method.name")
        elif isinstance(value, Mapping) and key in ("method", "optim", "fast") and not prefix:
            keys |= _flat(value, f"{dotted}.")
        else:
            keys.add(dotted)
    return keys


def _value(value: Any) -> str:
    """A value in flow YAML (JSON is YAML: strings quoted, lists in brackets, null/true/false)."""
    return json.dumps(list(value) if isinstance(value, tuple) else value)


def document(resolved: ResolvedRun, raw: Mapping[str, Any], overrides: Mapping[str, Any], file_kind: str,
             index: int, total: int) -> str:
    """The YAML document of one resolved run (see the module docstring)."""
    from protocols.datasets import get_spec
    cls = method_class(resolved.method_name, "print-config")
    given, from_command_line = _flat(raw), _flat(overrides)
    run = resolved.run
    recipe = cls.recipe_settings(run.protocol, run.dataset, run.shots, resolved.method_config)
    method_meta = _option_sources(cls.Config)

    official = cls.info.precision
    official_text = official.describe()

    def origin(dotted: str) -> str:
        if dotted == "method.checkpoint_sha256":
            return "computed from the checkpoint file (the run id hashes it, not the file's path)"
        if dotted.startswith("resolved_precision."):
            return (f"resolved from precision {run.precision!r} for the device the run computes on (the official "
                    f"precision on CUDA: {official_text}; fp32 on a CPU)")
        if dotted in from_command_line:
            return "command line"
        if dotted in given:
            return file_kind
        section, _, name = dotted.partition(".")
        if section == "optim" and name in recipe:
            return f"recipe: {run.protocol}, {run.dataset}, {run.shots} shots ({_source(recipe[name])})"
        if section == "method" and name in method_meta:
            return f"method default: {method_meta[name]}"
        return "default"

    lines = [f"# run {index}/{total}: {run_label(resolved.config)}",
             f"# prompt template of {run.dataset}: {get_spec(run.dataset).template!r}",
             f"run_id: {_value(resolved.run_id)}"]
    on_protocol = cls.protocol_settings(resolved.method_config, run.protocol)

    def effective(key: str, sub: str) -> str:
        return f"; this run: {_value(on_protocol[sub])}" if key == "method" and sub in on_protocol else ""

    for key, value in resolved.config.items():
        if isinstance(value, Mapping):
            lines.append(f"{key}:")
            lines += [f"  {sub}: {_value(v)}  # {origin(f'{key}.{sub}')}{effective(key, sub)}"
                      for sub, v in value.items()]
        else:
            note = (f" (the official {official_text} on CUDA: {official.source}; fp32 on a CPU)"
                    if key == "precision" and value == "auto" else "")
            lines.append(f"{key}: {_value(value)}  # {origin(key)}{note}")
    return "\n".join(lines)


def _source(value: Any) -> str:
    """A recipe value's source as a comment: ``official: file:line``, ``suite choice: reason``, ..."""
    from frozen_clip.contract import SOURCE_KIND_NAMES, Sourced
    if not isinstance(value, Sourced):
        return "no source given"
    return f"{SOURCE_KIND_NAMES[value.kind]}: {value.source}"


def _option_sources(config_cls: type) -> dict[str, str]:
    import dataclasses
    return {f.name: f.metadata.get("source", "") or "no source given" for f in dataclasses.fields(config_cls)}


def print_configs(runs: Iterable[tuple[ResolvedRun, Mapping[str, Any]]], overrides: Mapping[str, Any],
                  file_kind: str) -> str:
    """The documents of ``runs`` (resolved run, its raw config), separated by ``---``."""
    runs = list(runs)
    return "\n---\n".join(document(resolved, raw, overrides, file_kind, i, len(runs))
                          for i, (resolved, raw) in enumerate(runs, start=1)) + "\n"


__all__ = ["document", "print_configs"]
