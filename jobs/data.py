"""The data a run reads: its data root and the split manifests of its protocol, checked before compute is spent."""

from __future__ import annotations

import os
from pathlib import Path

from frozen_clip.errors import DataError
from jobs.config import ResolvedRun
from protocols.imagefolder import check_images_with_ledger
from protocols.protocols import plan as protocol_plan
from protocols.splits import SplitManifest, build_manifest

LEDGER_NAME = "verified-images.json"  # in a results folder's cache: images that decoded, with size and mtime


def resolve_data_root(data_root: str) -> Path:
    """``builtin`` -> the generated world (created on first use); otherwise the expanded path, which must exist."""
    if data_root == "builtin":
        from world.generate import ensure_world
        return ensure_world()
    root = Path(os.path.expandvars(os.path.expanduser(data_root)))
    if not root.is_dir():
        raise DataError(f"data_root {data_root!r} does not exist or is not a directory")
    return root


def cache_dir(resolved: ResolvedRun) -> Path:
    """Shared caches (split manifests, images, features, the image ledger) of a results folder."""
    return Path(resolved.run.results_dir) / "cache"


class Manifests:
    """The split manifests of one run: the fit split and one per evaluation split (stored in :func:`cache_dir`)."""

    def __init__(self, resolved: ResolvedRun, data_root: Path) -> None:
        run = resolved.run
        self.plan = protocol_plan(run.protocol, run.dataset, run.targets)
        cache = cache_dir(resolved)
        self.ledger = cache / LEDGER_NAME
        self.fit = build_manifest(self.plan.fit_dataset, data_root, run.shots, run.seed, self.plan.fit_subsample,
                                  run.sampling, cache)
        #: the fit dataset's whole val split (no few-shot draw), built for a method that asks for it
        #: (:meth:`request_full_val`)
        self.full_val: SplitManifest | None = None
        self._full = lambda: build_manifest(self.plan.fit_dataset, data_root, 0, run.seed, self.plan.fit_subsample,
                                            run.sampling, cache)
        self.evals: dict[str, SplitManifest] = {}
        for split in self.plan.evals:
            shots = run.shots if split.dataset == self.plan.fit_dataset else 0
            self.evals[split.name] = build_manifest(split.dataset, data_root, shots, run.seed, split.subsample,
                                                    run.sampling, cache)

    def request_full_val(self) -> SplitManifest:
        """Build :attr:`full_val` (the fit classes' whole val split, e.g. for Tip-Adapter's official alpha/beta
        search); its images are preflighted with the others."""
        if self.full_val is None:
            self.full_val = self._full()
        return self.full_val

    def all(self) -> list[SplitManifest]:
        return [self.fit, *self.evals.values(), *([self.full_val] if self.full_val is not None else [])]

    def image_paths(self, seen: set[str] | None = None) -> set[str]:
        """The path of every image the run's splits reference; with ``seen`` (content hashes of manifests already
        listed, updated here), only those of the other manifests (a grid's runs share their evaluation splits)."""
        paths: set[str] = set()
        seen = set() if seen is None else seen
        for manifest in self.all():
            if manifest.content_hash in seen:
                continue
            seen.add(manifest.content_hash)
            root = manifest.image_root
            paths.update(os.path.join(root, item.path) for item in (*manifest.train, *manifest.val, *manifest.test))
        return paths

    def preflight(self) -> None:
        """Every image referenced exists and decodes; raises one :class:`DataError` listing the problems."""
        check_image_paths(self.image_paths(), self.ledger)


def check_image_paths(paths: set[str], ledger: Path) -> None:
    """Every image of ``paths`` exists and decodes; raises one :class:`DataError` listing the problems.

    Images the results folder's ledger saw decode, unchanged since, are not decoded again
    (:func:`~protocols.imagefolder.check_images_with_ledger`); a grid checks the images of all its runs at once, so
    the ledger is read and written once, not per run."""
    problems = check_images_with_ledger(sorted(paths), ledger)
    if problems:
        listed = "\n".join(f"  {path}: {why}" for path, why in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise DataError(f"{len(problems)} image(s) missing or unreadable:\n{listed}{more}")
