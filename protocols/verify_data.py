"""Check a data root in CoOp layout before compute is spent: folders, split files and every referenced image.

Usage::

    python -m protocols.verify_data DATA_ROOT [--datasets oxford_pets eurosat ...] [--quick] [--workers N]

Without ``--datasets`` the 15 registered real datasets are checked (``world_*`` ones only when named). ``--quick``
only checks that each image exists; otherwise each is decoded as training would. Exit code 0 when everything is
fine, 1 when a dataset has a problem, 2 on bad arguments (unknown dataset, missing data root).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from frozen_clip.errors import DataError, SuiteError
from protocols.datasets import get_spec, list_datasets, load_splits
from protocols.imagefolder import check_images

SHOW_FIRST = 5  # problem paths printed per kind and dataset


@dataclass(frozen=True)
class VerifyReport:
    """What :func:`verify_dataset` found for one dataset.

    ``errors`` are problems that stopped the check (missing folder or split file, malformed split file);
    ``missing`` and ``unreadable`` list absolute image paths (``unreadable`` with the reason); ``warnings`` do not
    fail the check (e.g. a class count that differs from the real dataset's, as with synthetic stand-ins).
    """

    dataset: str
    n_images: int
    decoded: bool
    missing: tuple[str, ...] = ()
    unreadable: tuple[tuple[str, str], ...] = ()
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when nothing is missing, unreadable or broken."""
        return not (self.missing or self.unreadable or self.errors)

    def lines(self, show: int = SHOW_FIRST) -> list[str]:
        """The human-readable report, first line a summary, then up to ``show`` paths per problem kind."""
        if self.errors:
            return [f"{self.dataset}: ERROR"] + [f"  {e}" for e in self.errors]
        how = "decoded" if self.decoded else "exist"
        if self.ok:
            head = [f"{self.dataset}: OK ({self.n_images} images {how})"]
        else:
            head = [f"{self.dataset}: {len(self.missing)} missing, {len(self.unreadable)} unreadable "
                    f"of {self.n_images} images"]
        body = [f"  {p}: missing" for p in self.missing[:show]]
        body += [f"  {p}: {why}" for p, why in self.unreadable[:show]]
        more = max(0, len(self.missing) - show) + max(0, len(self.unreadable) - show)
        body += [f"  ... and {more} more"] if more else []
        return head + body + [f"  warning: {w}" for w in self.warnings]


def verify_dataset(key: str, root: str | Path, decode: bool = True, workers: int = 1) -> VerifyReport:
    """Check dataset ``key`` under data root ``root``: folder, split file, and every image of train/val/test.

    Raises :class:`ConfigError` for an unknown key; data problems are reported, not raised.
    """
    spec = get_spec(key)
    try:
        splits = load_splits(spec, root)
    except DataError as err:
        return VerifyReport(spec.key, 0, decode, errors=(str(err),))
    items = (*splits.train, *splits.val, *splits.test)
    paths = list(dict.fromkeys(splits.image_root / item.path for item in items))
    problems = check_images(paths, decode=decode, workers=workers)
    warnings = ()
    if len(splits.classnames) != spec.n_classes:
        warnings = (f"{len(splits.classnames)} classes found, {spec.dassl_name} has {spec.n_classes}",)
    return VerifyReport(
        spec.key, len(paths), decode,
        missing=tuple(p for p, why in problems if why == "missing"),
        unreadable=tuple((p, why) for p, why in problems if why != "missing"),
        warnings=warnings)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m protocols.verify_data", description=__doc__.split("\n")[0],
                                     epilog="example: python -m protocols.verify_data /data/coop --datasets dtd eurosat")
    parser.add_argument("data_root", type=Path, help="folder holding the datasets in CoOp layout")
    parser.add_argument("--datasets", nargs="+", metavar="KEY",
                        help="dataset keys to check (default: the 15 real datasets)")
    parser.add_argument("--quick", action="store_true", help="only check that images exist, do not decode them")
    parser.add_argument("--workers", type=int, default=1, help="threads decoding images (default 1)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 all good, 1 problems, 2 bad arguments)."""
    args = _parser().parse_args(argv)
    if not args.data_root.is_dir():
        print(f"error: data root {args.data_root} does not exist", file=sys.stderr)
        return 2
    keys = args.datasets or list_datasets(include_world=False)
    try:
        for key in keys:
            get_spec(key)
    except SuiteError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    reports = []
    for key in keys:
        reports.append(verify_dataset(key, args.data_root, decode=not args.quick, workers=args.workers))
        print("\n".join(reports[-1].lines()), flush=True)
    bad = [r.dataset for r in reports if not r.ok]
    print(f"{len(reports) - len(bad)}/{len(reports)} datasets OK" + (f"; problems in: {', '.join(bad)}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
