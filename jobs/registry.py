"""The catalogue of methods: one line per method, name -> ``"module:Class"``, imported lazily (listing methods or
reading this file imports no torch code).

Adding a method is one file under ``adapters/`` or ``baselines/`` plus one ``METHODS.register`` line at the end of
this file (``docs/adding_a_method.md``). The order of registration is the order of methods in every table. What a
method declares about itself (options, recipe, capabilities, names, sources) lives in its own file
(``frozen_clip/contract.py`` says what).
"""

from __future__ import annotations

from typing import Any

from frozen_clip.registry import Registry


def method_card(name: str) -> dict[str, Any]:
    """The card of registered method ``name`` (``frozen_clip.contract.card``); imports the method, hence torch."""
    from frozen_clip.contract import card
    return card(METHODS.get(name))


METHODS = Registry("method")
METHODS.register("zeroshot", "baselines.zeroshot:ZeroShotCLIP")
METHODS.register("linear_probe", "baselines.linear_probe:LinearProbe")
METHODS.register("coop", "baselines.coop:CoOp")
METHODS.register("cocoop", "baselines.cocoop:CoCoOp")
METHODS.register("clip_adapter", "baselines.clip_adapter:CLIPAdapter")
METHODS.register("tip_adapter", "baselines.tip_adapter:TipAdapter")
METHODS.register("clip_lora", "baselines.clip_lora:CLIPLoRA")
METHODS.register("maple", "baselines.maple:MaPLe")
METHODS.register("mma", "adapters.mma:MMA")
METHODS.register("heba", "adapters.heba:HeBA")
METHODS.register("rmadapter", "adapters.rmadapter:RMAdapter")
