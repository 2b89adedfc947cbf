"""Dassl's image transforms with CLIP statistics, sized to the backbone.

Train: ``RandomResizedCrop(size, scale=(0.08, 1), bicubic)`` -> ``RandomHorizontalFlip`` -> ``ToTensor`` ->
``Normalize``. Test: ``Resize(size, bicubic)`` (shorter side) -> ``CenterCrop(size)`` -> ``ToTensor`` -> ``Normalize``.
``size`` is the backbone's input size (224 for ViT-B/16). Each transform has a signature string used in cache keys.
"""

from __future__ import annotations

from dataclasses import dataclass

from torchvision import transforms as T

DASSL_RRC_SCALE = (0.08, 1.0)


@dataclass(frozen=True)
class TransformSpec:
    """A transform's identity: enough to rebuild it and to key caches on it."""

    kind: str  # "train" | "test"
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    rrc_scale: tuple[float, float] = DASSL_RRC_SCALE

    def signature(self) -> str:
        """A stable string identifying the transform (cache keys)."""
        base = f"{self.kind}-{self.size}-bicubic-mean{list(self.mean)}-std{list(self.std)}"
        return base + (f"-rrc{list(self.rrc_scale)}-flip" if self.kind == "train" else "-resize-centercrop")

    def build(self) -> T.Compose:
        """The torchvision pipeline: :meth:`head`, then ``ToTensor`` and ``Normalize``."""
        return T.Compose([*self.head(), T.ToTensor(), T.Normalize(self.mean, self.std)])

    def head(self) -> list:
        """The PIL part of the pipeline (before ``ToTensor``): the random crop and flip, or resize and centre crop."""
        bicubic = T.InterpolationMode.BICUBIC
        if self.kind == "train":
            return [T.RandomResizedCrop(self.size, scale=self.rrc_scale, interpolation=bicubic),
                    T.RandomHorizontalFlip()]
        return [T.Resize(self.size, interpolation=bicubic), T.CenterCrop(self.size)]


def train_spec(size: int, mean: tuple[float, ...], std: tuple[float, ...],
               rrc_scale: tuple[float, float] = DASSL_RRC_SCALE) -> TransformSpec:
    """The protocol's training transform."""
    return TransformSpec("train", size, tuple(mean), tuple(std), tuple(rrc_scale))


def test_spec(size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> TransformSpec:
    """The protocol's evaluation transform."""
    return TransformSpec("test", size, tuple(mean), tuple(std))
