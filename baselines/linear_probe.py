"""Linear probe (CoOp ``lpclip/linear_probe.py`` @ ff61507, following CLIP's Appendix A3).

scikit-learn ``LogisticRegression(solver="lbfgs", max_iter=1000, penalty="l2", C=c)`` on frozen image features of the
few-shot train split (test transform, no augmentation, not L2-normalised by default). ``C`` is chosen on the
``min(k, 4)``-shot validation split only: a coarse grid {1e6, 1e4, ..., 1e-6}, then 8 steps of interval halving in
log10 space around the best value (ties keep the smaller C), keeping the classifier chosen at the last step.
Deviation: the official probe draws its own shots with NumPy; the suite uses the shared split manifests.
Without a validation split (ImageNet in the CoOp protocol) C is fixed at 1.0 (``c_without_val: fixed``, test-clean);
the official code's ImageNet "val" features are its test images (``datasets/imagenet.py:61`` with
``lpclip/feat_extractor.py:126-127``), so its C is searched on test: ``c_without_val: search_on_test``.
Fast path (``reuse_fits``, exact, not hashed): each halving step fits both ends of the interval; from the third step
on, the end kept from the step before comes back with the same C (value and type: see :meth:`LinearProbe._search`)
on the same data, and L-BFGS is deterministic, so that classifier is reused (17 fits instead of the official 23).
A linear probe cannot score unseen classes, so it runs under the ``fewshot`` protocol only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Sequence

import numpy as np
import torch
from torch import nn

from frozen_clip.backbone import FrozenCLIP
from frozen_clip.contract import Capabilities, Code, MethodInfo, OfficialPrecision, Paper, Sourced, official, option
from frozen_clip.method import FeatureMethod, FitData, MethodContext, normalize

C_GRID = (1e6, 1e4, 1e2, 1, 1e-2, 1e-4, 1e-6)  # the official list (1 is an int there)


@dataclass(frozen=True)
class LinearProbeConfig:
    """Linear-probe options (defaults: CoOp's lpclip)."""

    search_steps: int = option(8, "interval-halving steps after the coarse grid")
    max_iter: int = option(1000, "lpclip/linear_probe.py: LogisticRegression(max_iter=1000)")
    normalize_features: bool = option(False, "official: raw features")
    c_without_val: Literal["fixed", "search_on_test"] = option(
        "fixed", "test-clean: C = 1.0 without a val split (official: its ImageNet 'val' is the test set, "
                 "lpclip/feat_extractor.py:126-127: search_on_test)", kind="suite", display="C without val",
        values={"fixed": "C = 1", "search_on_test": "searched on test (official)"},
        value_notes={"search_on_test": "On ImageNet the linear probe's C is searched on the test set, as the "
                                       "official code does (its ImageNet validation features are the test images)."})
    reuse_fits: bool = option(True, "a C fitted before is not fitted again (official: refits; same classifier)",
                               fast_path_off=False)

    UNHASHED_FIELDS: ClassVar[tuple[str, ...]] = ("reuse_fits",)


class LinearProbe(FeatureMethod):
    """Logistic regression on frozen features, C selected on the few-shot validation split."""

    Config = LinearProbeConfig
    info = MethodInfo(
        name="linear_probe", display="Linear probe", paper=Paper("Learning Transferable Visual Models From Natural Language Supervision", "ICML", 2021, "2103.00020"),
        code=Code("KaiyangZhou/CoOp", "ff61507"), paper_names={"Linear probe": {}},
        capabilities=Capabilities(trains_on="features", unseen_classes=False, protocols=("fewshot",)),
        precision=OfficialPrecision(
            "fp32", "fp32",
            "features in fp32: the official feature extractor's precision is not part of the audited recipe",
            "suite"))

    def __init__(self, clip: FrozenCLIP, classnames: Sequence[str], config: LinearProbeConfig,
                 context: MethodContext) -> None:
        super().__init__(clip, classnames, config, context)
        n_cls, dim = len(classnames), clip.embed_dim
        self.weight = nn.Parameter(torch.zeros(n_cls, dim))
        self.bias = nn.Parameter(torch.zeros(n_cls))
        self.chosen_c: float | None = None
        self.c_selected_on = ""  # "val", "test" (c_without_val: search_on_test) or "fixed"

    def report(self) -> dict[str, Any]:
        """The chosen C and the split it was chosen on."""
        return {"chosen_c": self.chosen_c, "c_selected_on": self.c_selected_on}

    @classmethod
    def selects_on_test(cls, config: LinearProbeConfig) -> bool:
        return config.c_without_val == "search_on_test"

    @classmethod
    def recipe_settings(cls, protocol: str, dataset: str, shots: int, config: Any) -> dict[str, Sourced]:
        """Closed-form fit: no gradient epochs."""
        return {"epochs": official(0, "lpclip/linear_probe.py:57: a LogisticRegression fit, no gradient epochs")}

    def _prep(self, feats: torch.Tensor) -> np.ndarray:
        feats = normalize(feats) if self.config.normalize_features else feats
        return feats.float().cpu().numpy()

    def _fit(self, c: float, x: np.ndarray, y: np.ndarray):
        from sklearn.linear_model import LogisticRegression
        return LogisticRegression(solver="lbfgs", max_iter=self.config.max_iter, C=c).fit(x, y)

    def _val_acc(self, clf, x: np.ndarray, y: np.ndarray) -> float:
        return float((clf.predict(x) == y).mean()) if len(y) else 0.0

    def prepare_fit(self, data: FitData) -> None:
        """Select C on val and store the chosen classifier as this module's weights."""
        train_x, train_y = data.features("train")
        x, y = self._prep(train_x), train_y.numpy()
        vx, vy = data.features("val")
        self.c_selected_on = "val"
        if len(vy) == 0 and self.config.c_without_val == "search_on_test":  # the official ImageNet "val"
            vx, vy = data.features("test")
            self.c_selected_on = "test"
        vx, vy = self._prep(vx), vy.numpy()
        if len(vy) == 0:  # ImageNet-style datasets have no val split: keep the grid's middle value
            clf, c = self._fit(1.0, x, y), 1.0
            self.c_selected_on = "fixed"
        else:
            clf, c = self._search(x, y, vx, vy)
        self.chosen_c = c
        self._store(clf)

    def _search(self, x: np.ndarray, y: np.ndarray, vx: np.ndarray, vy: np.ndarray):
        """CoOp's search (``binary_search`` in lpclip), C for C.

        The interval's ends after a step are ``np.power(10, ...)`` of their log10 values, as in the official code:
        np.float64, and the end that is kept goes through log10 and back. Both matter under NumPy 2 with float32
        features: scikit-learn adds the L2 term's gradient, ``1 / (C n)`` x weights, in float64 for a np.float64 C
        but in float32 for a Python float, so a fit at np.float64(100.0) differs in the last bits from one at 100.0,
        and L-BFGS can take other steps from there and end at another classifier.
        """
        fitted: dict[tuple[type, float], Any] = {}

        def fit(c: float):
            if not self.config.reuse_fits:
                return self._fit(c, x, y)
            key = (type(c), c)  # 100.0 == np.float64(100.0), but their fits differ (see above)
            if key not in fitted:
                fitted[key] = self._fit(c, x, y)
            return fitted[key]
        accs = [self._val_acc(fit(c), vx, vy) for c in C_GRID]
        peak = C_GRID[int(np.argmax(accs))]
        left, right = 1e-1 * peak, 1e1 * peak
        final, final_c = None, peak
        for _ in range(self.config.search_steps):
            clf_left, clf_right = fit(left), fit(right)
            acc_left, acc_right = self._val_acc(clf_left, vx, vy), self._val_acc(clf_right, vx, vy)
            middle = 0.5 * (np.log10(right) + np.log10(left))
            if acc_left < acc_right:
                final, final_c = clf_right, right
                log_left, log_right = middle, np.log10(right)
            else:  # ties keep the left (smaller) C
                final, final_c = clf_left, left
                log_left, log_right = np.log10(left), middle
            left, right = np.power(10, log_left), np.power(10, log_right)
        if final is None:  # no halving steps: the grid's best
            final = fit(peak)
        return final, float(final_c)

    def _store(self, clf) -> None:
        n_cls = len(self.classnames)
        weight = torch.zeros(n_cls, self.weight.shape[1])
        bias = torch.zeros(n_cls)
        coef, intercept = torch.from_numpy(clf.coef_).float(), torch.from_numpy(clf.intercept_).float()
        classes = [int(c) for c in clf.classes_]
        if coef.shape[0] == 1:  # binary: sklearn keeps one row for classes_[1]
            weight[classes[1]], bias[classes[1]] = coef[0], intercept[0]
        else:
            weight[classes], bias[classes] = coef, intercept
            missing = sorted(set(range(n_cls)) - set(classes))
            bias[missing] = -1e9  # a class absent from train can never be predicted
        with torch.no_grad():
            self.weight.copy_(weight)
            self.bias.copy_(bias)

    def logits_from_features(self, features: torch.Tensor) -> torch.Tensor:
        feats = normalize(features) if self.config.normalize_features else features
        return feats.float() @ self.weight.t() + self.bias
