"""The papers' numbers shipped with the package, and the explicit name mappings to the suite."""

from __future__ import annotations

from analysis.reference import (COOP_DATASETS, DATASETS, DEFAULT_REFERENCE, load_reference, paper_names,
                                normalize_backbone, trust_tag)

TAGS = {"VERIFIED", "RECALLED", "RECALLED+CHECKED", "SECONDARY", "APPROX", "COMPUTED"}


def test_reference_file_keeps_its_provenance_columns():
    reference = load_reference()
    assert DEFAULT_REFERENCE.name == "reference_results.csv" and DEFAULT_REFERENCE.parent.name == "analysis"
    assert len(reference) == 693
    assert list(reference.columns[:8]) == ["method", "backbone", "protocol", "dataset", "shots", "metric", "value",
                                           "source"]
    assert reference["source"].str.len().min() > 10
    assert set(reference["trust"]) <= TAGS


def test_every_dataset_and_metric_name_maps_to_the_suite():
    reference = load_reference()
    assert reference["suite_dataset"].notna().all(), set(reference.loc[reference["suite_dataset"].isna(), "dataset"])
    assert reference["suite_metric"].notna().all()
    assert set(reference["protocol"]) == {"base2novel", "fewshot", "cross_dataset", "domain_generalization"}
    assert len(COOP_DATASETS) == 11 and COOP_DATASETS[0] == "imagenet" and len(DATASETS) == 15


def test_suite_methods_are_found_in_the_reference():
    reference = load_reference()
    present = set(reference["method"])
    for paper_name in ("ZS-CLIP", "CoOp", "CoCoOp", "MaPLe", "MMA", "HeBA", "RMAdapter", "CLIP-Adapter",
                       "Tip-Adapter", "Tip-Adapter-F", "CLIP-LoRA"):
        assert paper_name in present and paper_name in paper_names()
    mma = reference[(reference["suite_method"] == "mma") & (reference["suite_dataset"] == "Average")
                    & (reference["protocol"] == "base2novel")].set_index("metric")["value"]
    assert (mma["base"], mma["novel"], mma["hm"]) == (83.20, 76.80, 79.87)


def test_names_and_tags():
    assert normalize_backbone("ViT-B/16") == normalize_backbone("ViT-B-16-quickgelu") == "ViT-B-16"
    assert trust_tag("RECALLED (from memory) MMA Tab.1; CHECKED: sums") == "RECALLED+CHECKED"
    assert trust_tag("RECALLED (used only for image counts)") == "RECALLED"
    assert trust_tag("VERIFIED MMA README") == "VERIFIED"


def test_option_dependent_method_names():
    from analysis.reference import paper_method, run_display

    assert paper_method("tip_adapter", {"finetune": True}) == "Tip-Adapter-F"
    assert paper_method("tip_adapter", {"finetune": False}) == "Tip-Adapter"
    assert paper_method("heba", {"bottleneck_ratio": 2}) == "HeBA"
    assert paper_method("my_method", {}) is None
    assert run_display({"method.name": "tip_adapter", "method.finetune": True}) == "Tip-Adapter-F"
    assert run_display({"method.name": "zeroshot"}) == "Zero-shot CLIP"
