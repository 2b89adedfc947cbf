"""Zero-shot, linear probe and the feature cache, end to end on the fake data and the golden tiny CLIP."""

from __future__ import annotations

import pytest
import torch

from baselines.linear_probe import LinearProbe, LinearProbeConfig
from baselines.templates import IMAGENET_TEMPLATES_SELECT
from baselines.zeroshot import ZeroShotCLIP, ZeroShotConfig
from frozen_clip.cache import FeatureCache, cache_key
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


def test_linear_probe_reuse_fits_equals_refitting(tiny_clip):
    """``reuse_fits`` fits each C once (the halving steps refit one end of the interval, the first midpoint is the
    grid's best C) and ends with the same C and the same classifier as the official refitting search."""
    gen = torch.Generator().manual_seed(3)
    centers = torch.randn(4, 32, generator=gen)
    train_y, val_y = torch.arange(4).repeat_interleave(6), torch.arange(4).repeat_interleave(4)
    train_x = centers[train_y] + 1.5 * torch.randn(24, 32, generator=gen)
    val_x = centers[val_y] + 1.5 * torch.randn(16, 32, generator=gen)

    class Counting(LinearProbe):
        def _fit(self, c, x, y):
            self.fits.append(c)
            return super()._fit(c, x, y)
    probes = {}
    for reuse in (True, False):
        probe = probes[reuse] = Counting(tiny_clip, ["a", "b", "c", "d"], LinearProbeConfig(reuse_fits=reuse), ctx())
        probe.fits = []
        probe.prepare_fit(FitData(("a", "b", "c", "d"), 24, 16,
                                  lambda split: (train_x, train_y) if split == "train" else (val_x, val_y)))
    assert len(probes[False].fits) == 25 and len(probes[True].fits) <= 17
    assert sorted(set(probes[False].fits)) == sorted(probes[True].fits)  # each distinct C fitted once
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
    parts = {"backbone": "b", "pretrained": None, "transform": "t", "dataset": "d", "manifest": "m",
             "split": "test", "view": None}
    calls = []

    def compute():
        calls.append(1)
        return {"features": torch.ones(2, 3)}
    assert torch.equal(cache.get_or_compute(parts, compute)["features"], torch.ones(2, 3))
    cache.get_or_compute(parts, compute)
    assert len(calls) == 1 and (cache.hits, cache.misses) == (1, 1)
    for key in parts:
        assert cache_key({**parts, key: "other"}) != cache_key(parts)


def test_feature_cache_memo_keeps_the_first_entries_within_its_budget(tmp_path):
    """A memoised cache returns what the disk holds and keeps the entries it reads first until ``memo_mb`` is full
    (cyclic readers: the views that fit are served from memory on every cycle); an entry that does not fit is read
    from disk each time."""
    entry_mb = 4 * 2 ** 18 * 4 / 2 ** 20  # one [4, 2**18] float32 entry: 4 MiB
    memo = FeatureCache(tmp_path, memo_mb=2.5 * entry_mb)
    plain = FeatureCache(tmp_path)
    values = {i: torch.full((4, 2 ** 18), float(i)) for i in range(3)}
    for cycle in range(2):
        for i in range(3):
            got = memo.get_or_compute({"view": i}, lambda i=i: {"features": values[i]})["features"]
            assert torch.equal(got, values[i])
            assert torch.equal(plain.get_or_compute({"view": i}, lambda: pytest.fail("not on disk"))["features"],
                               values[i])
    assert list(memo._memo) == [memo.path({"view": 0}), memo.path({"view": 1})]  # view 2 did not fit
    assert (memo.hits, memo.misses) == (3, 3)  # second cycle: 0 and 1 from memory, 2 from disk
    tiny = FeatureCache(tmp_path, memo_mb=entry_mb / 2)
    tiny.get_or_compute({"view": 0}, lambda: pytest.fail("not cached"))
    assert not tiny._memo


def test_method_report_reaches_the_record(data_root, tmp_path):
    rec = execute(base_run(data_root, tmp_path / "r", method="tip_adapter", protocol="fewshot", shots=4,
                           optim={"epochs": 0}))
    search = rec["method_report"]["search"]
    assert search["searched"] is True and search["split"] == "val"  # chosen on val, never on test
    assert rec["method_report"]["fit_log"] == []  # training-free Tip-Adapter
