"""The catalogue of methods: name -> ``"module:Class"``, imported lazily (listing methods imports no torch code).

Adding a method is one file plus one line here. Each class has a frozen ``Config`` dataclass whose defaults follow
its official code (see the class docstring for sources and deviations).
"""

from __future__ import annotations

from frozen_clip.registry import Registry

METHODS = Registry("method", {
    "zeroshot": "baselines.zeroshot:ZeroShotCLIP",
    "linear_probe": "baselines.linear_probe:LinearProbe",
    "coop": "baselines.coop:CoOp",
    "clip_adapter": "baselines.clip_adapter:CLIPAdapter",
    "cocoop": "baselines.cocoop:CoCoOp",
    "tip_adapter": "baselines.tip_adapter:TipAdapter",
    "clip_lora": "baselines.clip_lora:CLIPLoRA",
    "maple": "baselines.maple:MaPLe",
    "heba": "adapters.heba:HeBA",
    "mma": "adapters.mma:MMA",
    "rmadapter": "adapters.rmadapter:RMAdapter",
})
