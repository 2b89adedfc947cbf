"""Prompt templates shared by the zero-shot-style baselines (CoOp ``trainers/zsclip.py``)."""

#: ``IMAGENET_TEMPLATES_SELECT``: the 7 templates of CoOp's ``ZeroshotCLIP2`` ensemble (and Tip-Adapter on ImageNet).
IMAGENET_TEMPLATES_SELECT: tuple[str, ...] = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)


def ensemble_templates(dataset: str, custom_template: str) -> tuple[str, ...]:
    """``ZeroshotCLIP2``'s list: the 7 templates plus the dataset's custom one (ImageNet: the 7 only)."""
    if dataset == "imagenet":
        return IMAGENET_TEMPLATES_SELECT
    return IMAGENET_TEMPLATES_SELECT + (custom_template,)
