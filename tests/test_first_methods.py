"""Zero-shot, linear probe and the feature cache, end to end on the fake data and the golden tiny CLIP."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from baselines.linear_probe import LinearProbe, LinearProbeConfig
from baselines.templates import IMAGENET_TEMPLATES_SELECT
from baselines.zeroshot import ZeroShotCLIP, ZeroShotConfig
from frozen_clip.features import FeatureCache, FeatureKey
from frozen_clip.method import FitData, MethodContext, normalize
from jobs.config import resolve
from tests.conftest import base_run, execute_resolved


def ctx(dataset: str = "oxford_pets") -> MethodContext:
    return MethodContext(dataset=dataset, template="a photo of a {}, a type of pet.", protocol="fewshot", shots=4,
                         seed=1, epochs=0)


def execute(cfg: dict) -> dict:
    return execute_resolved(resolve(cfg, "test"))


def test_zeroshot_ensemble_averages_normalised_template_features(tiny_clip):
    names = ["great_pyrenees", "sphynx"]
    single = ZeroShotCLIP(tiny_clip, names, ZeroShotConfig(), ctx())
    ensemble = ZeroShotCLIP(tiny_clip, names, ZeroShotConfig(templates="ensemble"), ctx())
    assert ensemble.template_set() == IMAGENET_TEMPLATES_SELECT + ("a photo of a {}, a type of pet.",)
    assert ZeroShotCLIP(tiny_clip, names, ZeroShotConfig(templates="ensemble"), ctx("imagenet")).template_set() \
        == IMAGENET_TEMPLATES_SELECT
    per_template = [normalize(tiny_clip.model.encode_text(tiny_clip.tokenize([t.format(n.replace("_", " "))
                                                                                for n in names])))
                    for t in ensemble.template_set()]
    torch.testing.assert_close(ensemble.text_features(), normalize(torch.stack(per_template).mean(0)),
                               atol=1e-5, rtol=1e-5)
    assert not torch.allclose(single.text_features(), ensemble.text_features())


def test_linear_probe_search_selects_on_val_only(tiny_clip):
    torch.manual_seed(0)
    centers = torch.randn(3, 32) * 3
    train_y = torch.arange(3).repeat_interleave(8)
    val_y = torch.arange(3).repeat_interleave(4)
    train_x, val_x = centers[train_y] + torch.randn(24, 32), centers[val_y] + torch.randn(12, 32)
    calls = []

    def features(split: str):
        calls.append(split)
        return (train_x, train_y) if split == "train" else (val_x, val_y)
    probe = LinearProbe(tiny_clip, ["a", "b", "c"], LinearProbeConfig(), ctx())
    probe.prepare_fit(FitData(("a", "b", "c"), 24, 12, features))
    assert set(calls) == {"train", "val"} and probe.chosen_c is not None
    assert (probe.logits_from_features(val_x).argmax(1) == val_y).float().mean() == 1.0
    assert probe.num_trainable() == 3 * 32 + 3


class CountingProbe(LinearProbe):
    """A linear probe that records each C it fits and each validation accuracy it scores, in order."""

    def _fit(self, c, x, y):
        self.fits.append(c)
        return super()._fit(c, x, y)

    def _val_acc(self, clf, x, y):
        self.accs.append(super()._val_acc(clf, x, y))
        return self.accs[-1]


def _probe_search(tiny_clip, reuse: bool, n_cls: int = 6, shots: int = 8, noise: float = 2.0, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(n_cls, 32, generator=gen)
    train_y, val_y = torch.arange(n_cls).repeat_interleave(shots), torch.arange(n_cls).repeat_interleave(4)
    train_x = centers[train_y] + noise * torch.randn(len(train_y), 32, generator=gen)
    val_x = centers[val_y] + noise * torch.randn(len(val_y), 32, generator=gen)
    names = [f"c{i}" for i in range(n_cls)]
    probe = CountingProbe(tiny_clip, names, LinearProbeConfig(reuse_fits=reuse), ctx())
    probe.fits, probe.accs = [], []
    probe.prepare_fit(FitData(tuple(names), len(train_y), len(val_y),
                              lambda split: (train_x, train_y) if split == "train" else (val_x, val_y)))
    return probe


@pytest.mark.parametrize("c_without_val", ["fixed", "search_on_test"])
def test_linear_probe_without_val_fixes_c_or_searches_on_test(tiny_clip, c_without_val):
    """ImageNet has no val split: C = 1 (test-clean default), or searched on test as the official code does (its
    ImageNet "val" features are the test images)."""
    torch.manual_seed(0)
    centers = torch.randn(3, 32) * 3
    train_y, test_y = torch.arange(3).repeat_interleave(8), torch.arange(3).repeat_interleave(5)
    train_x, test_x = centers[train_y] + torch.randn(24, 32), centers[test_y] + torch.randn(15, 32)
    calls = []

    def features(split: str):
        calls.append(split)
        return {"train": (train_x, train_y), "val": (train_x[:0], train_y[:0]), "test": (test_x, test_y)}[split]
    config = LinearProbeConfig(c_without_val=c_without_val)
    assert LinearProbe.selects_on_test(config) == (c_without_val == "search_on_test")
    probe = LinearProbe(tiny_clip, ["a", "b", "c"], config, ctx())
    probe.prepare_fit(FitData(("a", "b", "c"), 24, 0, features))
    if c_without_val == "fixed":
        assert "test" not in calls and probe.chosen_c == 1.0 and probe.report()["c_selected_on"] == "fixed"
    else:
        assert "test" in calls and probe.report()["c_selected_on"] == "test"


def test_linear_probe_search_steps_like_lpclip(tiny_clip):
    """The refitting search fits lpclip's C sequence, value and type: the grid as listed, then 8 steps of
    ``binary_search`` (the official update rule, transcribed below), whose ends are ``np.power(10, .)``."""
    probe = _probe_search(tiny_clip, reuse=False)
    assert len(probe.fits) == 7 + 2 * 8
    search_list = [1e6, 1e4, 1e2, 1, 1e-2, 1e-4, 1e-6]
    assert [(type(c), c) for c in probe.fits[:7]] == [(type(c), c) for c in search_list]
    c_peak = search_list[int(np.argmax(probe.accs[:7]))]
    c_left, c_right = 1e-1 * c_peak, 1e1 * c_peak
    for step in range(8):
        fitted_left, fitted_right = probe.fits[7 + 2 * step: 9 + 2 * step]
        assert (type(fitted_left), fitted_left, type(fitted_right), fitted_right) == \
            (type(c_left), c_left, type(c_right), c_right)
        acc_left, acc_right = probe.accs[7 + 2 * step: 9 + 2 * step]
        if acc_left < acc_right:
            c_final = c_right
            c_left = 0.5 * (np.log10(c_right) + np.log10(c_left))
            c_right = np.log10(c_right)
        else:
            c_final = c_left
            c_right = 0.5 * (np.log10(c_right) + np.log10(c_left))
            c_left = np.log10(c_left)
        c_left, c_right = np.power(10, c_left), np.power(10, c_right)
    assert probe.chosen_c == c_final


def test_linear_probe_reuse_fits_equals_refitting(tiny_clip):
    """``reuse_fits`` fits each (C, type of C) once and ends with the same classifier as the refitting search. On
    these data the grid's best C comes back as np.float64 and is chosen: reusing the grid's Python-float fit for it
    (they compare equal) gave another classifier, as a value-keyed reuse did."""
    probes = {reuse: _probe_search(tiny_clip, reuse) for reuse in (True, False)}
    assert len(probes[True].fits) == 17
    assert sorted({(type(c).__name__, c) for c in probes[False].fits}) == \
        sorted((type(c).__name__, c) for c in probes[True].fits)  # each distinct C fitted once
    assert probes[True].chosen_c == probes[False].chosen_c
    assert torch.equal(probes[True].weight, probes[False].weight) and torch.equal(probes[True].bias,
                                                                                   probes[False].bias)
    lp = {"protocol": "fewshot", "shots": 4}
    assert resolve(base_run("d", "r", method={"name": "linear_probe", "reuse_fits": False}, **lp), "t").run_id == \
        resolve(base_run("d", "r", method="linear_probe", **lp), "t").run_id  # exact: not part of the run id


def test_linear_probe_and_zeroshot_runs_use_the_feature_cache(data_root, tmp_path):
    common = dict(protocol="fewshot", shots=4)
    zs = execute(base_run(data_root, tmp_path / "r", method="zeroshot", **common))
    lp = execute(base_run(data_root, tmp_path / "r", method="linear_probe", **common))
    assert set(lp["metrics"]) == {"test"} and lp["summary"]["accuracy"] >= zs["summary"]["accuracy"]
    assert lp["summary"]["accuracy"] > 50  # colours are linearly separable even for a random tiny CLIP
    assert zs["cost"]["feature_cache"]["misses"] == 1  # test features computed once ...
    assert lp["cost"]["feature_cache"] == {"hits": 1, "misses": 2}  # ... and reused; train/val computed
    assert lp["cost"]["trainable_params"] == 6 * 32 + 6


def test_feature_cache_keys_and_reuse(tmp_path):
    cache = FeatureCache(tmp_path)
    key = FeatureKey("b", None, "t", "d", manifest="m", split="test")
    calls = []

    def compute():
        calls.append(1)
        return {"features": torch.ones(2, 3)}
    assert torch.equal(cache.get_or_compute(key, compute)["features"], torch.ones(2, 3))
    cache.get_or_compute(key, compute)
    assert len(calls) == 1 and (cache.hits, cache.misses) == (1, 1)
    assert json.loads(cache.path(key).with_suffix(".json").read_text()) == key.parts()  # the key, for inspection
    for field in key.parts():
        assert key.replace(**{field: "other"}).digest() != key.digest()


def test_feature_cache_memo_keeps_the_first_entries_within_its_budget(tmp_path):
    """A memoised cache returns what the disk holds and keeps the entries it reads first until ``memo_mb`` is full
    (cyclic readers: the views that fit are served from memory on every cycle); an entry that does not fit is read
    from disk each time."""
    entry_mb = 4 * 2 ** 18 * 4 / 2 ** 20  # one [4, 2**18] float32 entry: 4 MiB
    memo = FeatureCache(tmp_path, memo_mb=2.5 * entry_mb)
    plain = FeatureCache(tmp_path)
    values = {i: torch.full((4, 2 ** 18), float(i)) for i in range(3)}

    def view(i: int) -> FeatureKey:
        return FeatureKey("b", None, "t", "d", view=i)
    for cycle in range(2):
        for i in range(3):
            got = memo.get_or_compute(view(i), lambda i=i: {"features": values[i]})["features"]
            assert torch.equal(got, values[i])
            assert torch.equal(plain.get_or_compute(view(i), lambda: pytest.fail("not on disk"))["features"],
                               values[i])
    assert list(memo._memo) == [memo.path(view(0)), memo.path(view(1))]  # view 2 did not fit
    assert (memo.hits, memo.misses) == (3, 3)  # second cycle: 0 and 1 from memory, 2 from disk
    tiny = FeatureCache(tmp_path, memo_mb=entry_mb / 2)
    tiny.get_or_compute(view(0), lambda: pytest.fail("not cached"))
    assert not tiny._memo


def test_method_report_reaches_the_record(data_root, tmp_path):
    rec = execute(base_run(data_root, tmp_path / "r", method="tip_adapter", protocol="fewshot", shots=4,
                           optim={"epochs": 0}))
    search = rec["method_report"]["search"]
    assert search["searched"] is True and search["split"] == "val"  # chosen on val, never on test
    assert rec["method_report"]["fit_log"] == []  # training-free Tip-Adapter
