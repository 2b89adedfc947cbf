"""Datasets in the CoOp on-disk layout, few-shot sampling, class subsampling, split manifests, protocols, metrics.

Importing the package is light (no torch): :mod:`protocols.imagefolder` (image checks) and
:mod:`protocols.verify_data` (``python -m protocols.verify_data DATA_ROOT``) are imported on their own.
"""

from protocols.datasets import (
    COOP_DATASETS,
    DG_TARGETS,
    DatasetSpec,
    DatasetSplits,
    Item,
    get_spec,
    list_datasets,
    load_splits,
    register_dataset,
)
from protocols.fewshot import base_new_classnames, dassl_fewshot, sample_fewshot, subsample_classes
from protocols.metrics import accuracy, harmonic_mean, per_class_accuracy
from protocols.protocols import DEFAULT_TARGETS, PROTOCOLS, EvalSplit, ProtocolPlan, plan
from protocols.splits import SplitManifest, build_manifest, load_manifest

__all__ = [
    "COOP_DATASETS", "DG_TARGETS", "DEFAULT_TARGETS", "PROTOCOLS", "DatasetSpec", "DatasetSplits", "EvalSplit", "Item",
    "ProtocolPlan", "SplitManifest", "accuracy", "base_new_classnames", "build_manifest", "dassl_fewshot",
    "get_spec", "harmonic_mean", "list_datasets", "load_manifest", "load_splits", "per_class_accuracy", "plan",
    "register_dataset", "sample_fewshot", "subsample_classes",
]
