"""How far training moved a finished run away from zero-shot CLIP: ``python -m jobs.adaptation_report RUN_DIR...``.

A method that scores exactly zero-shot's accuracy either did not learn or learned something too small to change a
prediction. This report tells the two apart from a run folder (its ``config.yaml`` and the last epoch checkpoint
``checkpoints/last.pt``): it rebuilds the method as the run built it (same build seed, so the same initial
weights), loads the trained weights, and on the test images of the fit split's classes compares three models,
zero-shot CLIP, the method at its initial weights and the trained method:

* ``param_change``: ``||theta_T - theta_0|| / ||theta_0||`` over the trainable parameters;
* ``logit_shift``: the mean absolute change of the logits (trained minus zero-shot), in units of zero-shot's median
  top-1 margin (top-1 minus top-2 logit): a value far below 1 cannot change a prediction;
* ``changed``: the fraction of test images whose predicted class differs from zero-shot's, at init and trained;
* the accuracy of each of the three.

It needs the run's images (``data_root``) and its backbone, as the run did; it writes nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from frozen_clip.backbone import FrozenCLIP, load_backbone
from frozen_clip.device_augment import collate, to_device
from frozen_clip.imagecache import eval_dataset
from frozen_clip.method import Method
from frozen_clip.seeding import derive_seed, seed_everything
from frozen_clip.transforms import test_spec
from jobs.config import method_class, resolve, run_label
from jobs.data import Manifests, resolve_data_root
from jobs.execute import build_method
from jobs.runfolder import read_run_config
from protocols.splits import SplitManifest


@torch.no_grad()
def logits_on(method: Method, clip: FrozenCLIP, manifest: SplitManifest, batch_size: int = 256
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``[N, C]`` and labels of ``method`` on the test images of ``manifest`` (evaluation transform)."""
    method.eval()
    spec = test_spec(clip.image_size, clip.mean, clip.std)
    images = eval_dataset(None, manifest.dataset, manifest.test, Path(manifest.image_root), spec, False)
    logits, labels = [], []
    for batch, target, _index in DataLoader(images, batch_size=batch_size, shuffle=False, collate_fn=collate):
        logits.append(method(to_device(batch, clip.device)).float().cpu())
        labels.append(target)
    return torch.cat(logits), torch.cat(labels)


def _flat(params: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([p.detach().float().flatten().cpu() for _, p in sorted(params.items())])


def report(run_dir: Path) -> dict[str, Any]:
    """The measures of the module docstring for one finished run folder."""
    resolved = resolve(read_run_config(run_dir / "config.yaml"), str(run_dir / "config.yaml"))
    checkpoint = run_dir / "checkpoints" / "last.pt"
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint}: no trained weights (a run without a gradient fit keeps none)")
    manifests = Manifests(resolved, resolve_data_root(resolved.run.data_root))
    # the runner's order (jobs.execute.RunExecution._execute): seed, load the backbone, build the method
    seed_everything(derive_seed("build", resolved.run.seed))
    clip = load_backbone(resolved.run.backbone, resolved.run.pretrained, torch.device("cpu"))
    method = build_method(resolved, method_class(resolved.method_name, "run"), clip, manifests.fit)
    theta0 = _flat(method.trainable_parameters())
    reference = resolve({**resolved.config, "method": {"name": "zeroshot"}}, "zero-shot reference")
    zeroshot = build_method(reference, method_class("zeroshot", "run"), clip, manifests.fit)
    zs_logits, labels = logits_on(zeroshot, clip, manifests.fit)
    init_logits, _ = logits_on(method, clip, manifests.fit)
    method.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=False)["method"], strict=True)
    method.invalidate()
    theta = _flat(method.trainable_parameters())
    trained_logits, _ = logits_on(method, clip, manifests.fit)
    top2 = zs_logits.topk(2, dim=-1).values
    margin = (top2[:, 0] - top2[:, 1]).median().item()
    zs_pred = zs_logits.argmax(-1)

    def accuracy(logits: torch.Tensor) -> float:
        return 100.0 * (logits.argmax(-1) == labels).float().mean().item()
    return {"run": run_label(resolved.config), "run_dir": str(run_dir),
            "param_change": float((theta - theta0).norm() / theta0.norm().clamp_min(1e-12)),
            "zeroshot_median_margin": margin,
            "logit_shift_init": float((init_logits - zs_logits).abs().mean() / margin),
            "logit_shift": float((trained_logits - zs_logits).abs().mean() / margin),
            "changed_init": float((init_logits.argmax(-1) != zs_pred).float().mean()),
            "changed": float((trained_logits.argmax(-1) != zs_pred).float().mean()),
            "accuracy": {"zeroshot": accuracy(zs_logits), "init": accuracy(init_logits),
                         "trained": accuracy(trained_logits)}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.adaptation_report", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  python -m jobs.adaptation_report results/quickstart/*/  # every run of the quickstart")
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (with config.yaml and checkpoints/last.pt)")
    parser.add_argument("--json", action="store_true", help="one JSON object per run instead of a table line")
    args = parser.parse_args(argv)
    for run_dir in args.runs:
        if not (run_dir / "checkpoints" / "last.pt").is_file():
            print(f"{run_dir}: skipped (no checkpoints/last.pt: not a gradient-trained run)", file=sys.stderr)
            continue
        result = report(run_dir)
        if args.json:
            print(json.dumps(result))
            continue
        acc = result["accuracy"]
        print(f"{result['run']}: param change {result['param_change']:.2e}, logit shift "
              f"{result['logit_shift']:.3f} margins (init {result['logit_shift_init']:.3f}), predictions changed "
              f"{100 * result['changed']:.1f}% (init {100 * result['changed_init']:.1f}%), accuracy zero-shot "
              f"{acc['zeroshot']:.2f} / init {acc['init']:.2f} / trained {acc['trained']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
