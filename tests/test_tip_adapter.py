"""Tip-Adapter and Tip-Adapter-F against the official implementation (tests/fixtures/tip_adapter.*): cache, text
classifier, logits at atol=rtol=1e-5, the alpha/beta search on val, Tip-Adapter-F's step (gradient at 1e-6); the
key-aliasing option; the protocol restriction; end-to-end runs on the fake data."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from baselines.templates import IMAGENET_TEMPLATES_SELECT
from baselines.tip_adapter import TipAdapter, TipAdapterConfig, build_cache, search_hp, search_hp_loop
from frozen_clip.errors import ConfigError
from frozen_clip.method import FitData, MethodContext, normalize
from tests.conftest import FIXTURES, base_run, execute_resolved, golden_grad_tol

TOL = dict(atol=1e-5, rtol=1e-5)


def context(dataset: str = "oxford_pets") -> MethodContext:
    return MethodContext(dataset=dataset, template="a photo of a {}, a type of pet.", protocol="fewshot", shots=2,
                         seed=1, epochs=0)


@pytest.fixture(scope="module")
def golden():
    return load_file(str(FIXTURES / "tip_adapter.safetensors")), json.loads((FIXTURES / "tip_adapter.json").read_text())


def fixture_fit_data(tensors, requested: list) -> FitData:
    """The fixture's given features behind the runner's FitData interface (view v -> stored view v mod 3)."""
    views, labels = tensors["cache.features_per_view"], tensors["cache.labels"]

    def features(split):
        requested.append(split)
        assert split == "val", "Tip-Adapter reads the val features only (train comes from augmented views)"
        return tensors["val.features_in"], tensors["val.labels"]

    def augmented(split, view, rrc_scale):
        requested.append((split, view, tuple(rrc_scale)))
        return views[view % views.shape[0]], labels
    return FitData(classnames=(), n_train=len(labels), n_val=len(tensors["val.labels"]), features=features,
                   augmented_features=augmented)


def make(tiny_clip, golden, **options) -> TipAdapter:
    _tensors, meta = golden
    cfg = TipAdapterConfig(template_list=tuple(meta["templates"]), **options)
    return TipAdapter(tiny_clip, meta["classnames"], cfg, context())


def test_cache_and_text_classifier(tiny_clip, golden):
    tensors, meta = golden
    assert tuple(meta["templates"]) == IMAGENET_TEMPLATES_SELECT
    keys, values = build_cache(tensors["cache.features_per_view"], tensors["cache.labels"], 6)
    torch.testing.assert_close(keys.t(), tensors["cache_keys"], **TOL)
    torch.testing.assert_close(values, tensors["cache_values"], atol=0, rtol=0)
    torch.testing.assert_close(make(tiny_clip, golden).text_features().t(), tensors["clip_weights"], **TOL)


@pytest.mark.parametrize("batched", [True, False])
def test_training_free_logits_and_val_search(tiny_clip, golden, batched):
    tensors, meta = golden
    method = make(tiny_clip, golden, augment_epoch=3, batched_search=batched)
    assert (method.beta, method.alpha) == (1.0, 1.17)  # OxfordPets' init_beta / init_alpha
    requested: list = []
    method.prepare_fit(fixture_fit_data(tensors, requested))
    assert requested[:3] == [("train", v, (0.5, 1.0)) for v in range(3)] and requested[3:] == ["val"]
    torch.testing.assert_close(method.cache_keys.t(), tensors["cache_keys"], **TOL)
    assert method.search_outcome["searched"] and method.search_outcome["split"] == "val"
    assert (method.beta, method.alpha) == pytest.approx(tuple(meta["beta_alpha"]["searched_on_val"]), abs=1e-12)
    test_in = tensors["test.features_in"]
    torch.testing.assert_close(method.logits_from_features(test_in), tensors["tip.searched.logits"], **TOL)
    for key, (beta, alpha) in (("init", meta["beta_alpha"]["init"]), ("explicit", meta["beta_alpha"]["explicit"])):
        method.beta, method.alpha = float(beta), float(alpha)
        torch.testing.assert_close(method.logits_from_features(test_in), tensors[f"tip.{key}.logits"], **TOL)


def test_no_val_split_keeps_the_initial_values(tiny_clip, golden):
    tensors, _meta = golden
    method = make(tiny_clip, golden, augment_epoch=3)
    data = fixture_fit_data(tensors, [])
    data.features = lambda split: (tensors["val.features_in"][:0], tensors["val.labels"][:0])
    method.prepare_fit(data)
    assert method.search_outcome == {"searched": False, "reason": "no validation images", "beta": 1.0, "alpha": 1.17}
    torch.testing.assert_close(method.logits_from_features(tensors["test.features_in"]), tensors["tip.init.logits"],
                               **TOL)


def test_tip_adapter_f_step_matches_official(tiny_clip, golden):
    tensors, _meta = golden
    method = make(tiny_clip, golden, finetune=True)
    method.load_official_state_dict({"cache_keys": tensors["cache_keys"], "cache_values": tensors["cache_values"],
                                     "adapter.weight": tensors["cache_keys"].t()})
    assert method.num_trainable() == 12 * 32
    out = method.feature_training_step(tensors["tipF.features_in"], tensors["tipF.labels"])
    torch.testing.assert_close(out.logits, tensors["tipF.logits"], **TOL)
    torch.testing.assert_close(out.loss.reshape(1), tensors["tipF.loss"], **TOL)
    out.loss.backward()
    expected = tensors["tipF.grad.weight"]
    torch.testing.assert_close(method.adapter.weight.grad, expected, **golden_grad_tol(expected))


@pytest.mark.parametrize("fix", [True, False])
def test_key_aliasing_option(tiny_clip, golden, fix):
    tensors, _meta = golden
    method = make(tiny_clip, golden, finetune=True, augment_epoch=3, train_epoch=2, batch_size=8,
                  fix_key_aliasing=fix)
    requested: list = []
    method.prepare_fit(fixture_fit_data(tensors, requested))
    assert [r[1] for r in requested if isinstance(r, tuple)] == [0, 1, 2, 3, 4]  # cache views, then one per epoch
    assert [e["epoch"] for e in method.fit_log] == [1, 2]
    trained = method.adapter.weight.detach()
    initial = tensors["cache_keys"].t()
    assert not torch.allclose(trained, initial, atol=1e-4)  # the keys trained (2 epochs x 2 steps)
    if fix:
        torch.testing.assert_close(method.cache_keys, initial, **TOL)  # the cache is left intact
    else:
        assert method.cache_keys.data_ptr() == trained.data_ptr()  # official: training rewrote the keys in place


def test_val_epoch_selection_reads_val_only(tiny_clip, golden):
    tensors, _meta = golden
    method = make(tiny_clip, golden, finetune=True, augment_epoch=3, train_epoch=3, batch_size=8,
                  epoch_selection="val")
    requested: list = []
    method.prepare_fit(fixture_fit_data(tensors, requested))
    assert all("val_acc" in entry for entry in method.fit_log)
    assert "test" not in requested


def _with_test_split(data: FitData, tensors, requested: list) -> FitData:
    """``data`` whose ``features("test")`` gives the fixture's test features (a FitData built with the test allowed)."""
    val_only = data.features

    def features(split):
        if split == "test":
            requested.append("test")
            return tensors["test.features_in"], tensors["test.labels"]
        return val_only(split)
    data.features = features
    return data


def test_best_on_test_keeps_the_best_test_epoch_and_the_better_alpha_beta(tiny_clip, golden):
    """``epoch_selection: best_on_test`` is main.py's report: the best epoch on test (with the initial alpha/beta),
    then the initial or the searched alpha/beta, whichever scores higher on test."""
    tensors, _meta = golden
    assert not TipAdapter.selects_on_test(TipAdapterConfig(finetune=True))
    assert TipAdapter.selects_on_test(TipAdapterConfig(finetune=True, epoch_selection="best_on_test"))
    method = make(tiny_clip, golden, finetune=True, augment_epoch=3, train_epoch=4, batch_size=8,
                  epoch_selection="best_on_test")
    requested: list = []
    method.prepare_fit(_with_test_split(fixture_fit_data(tensors, requested), tensors, requested))
    accs = [entry["test_acc"] for entry in method.fit_log]
    assert len(accs) == 4 and "test" in requested
    test_x, test_y = normalize(tensors["test.features_in"]), tensors["test.labels"]
    assert method._acc_with_initial_hp(test_x, test_y) == max(accs)  # the kept weights are the best epoch's
    chosen = method.search_outcome["test_selection"]
    assert chosen["initial_test_acc"] == max(accs)
    final = float((method.logits_from_features(tensors["test.features_in"]).argmax(1) == test_y).float().mean() * 100)
    assert final == pytest.approx(max(chosen["initial_test_acc"], chosen["searched_test_acc"]))


def test_full_val_search_reads_the_whole_val_split(tiny_clip, golden):
    tensors, _meta = golden
    method = make(tiny_clip, golden, augment_epoch=3, search_data="full_val")
    assert TipAdapter.reads_full_val(method.config) and not TipAdapter.reads_full_val(TipAdapterConfig())
    requested: list = []
    data = fixture_fit_data(tensors, requested)
    few = data.features
    data.features = lambda split: (tensors["test.features_in"], tensors["test.labels"]) if split == "val_full" \
        else few(split)  # the fixture's test features stand in for a larger val split
    method.prepare_fit(data)
    assert method.search_outcome["split"] == "val_full"
    assert method.search_outcome["n_val_full"] == len(tensors["test.labels"]) != len(tensors["val.labels"])


def test_search_without_val_on_test_searches_the_test_features(tiny_clip, golden):
    tensors, _meta = golden
    method = make(tiny_clip, golden, augment_epoch=3, search_without_val="on_test")
    requested: list = []
    data = _with_test_split(fixture_fit_data(tensors, requested), tensors, requested)
    no_val = data.features
    data.features = lambda split: (tensors["val.features_in"][:0], tensors["val.labels"][:0]) if split == "val" \
        else no_val(split)
    method.prepare_fit(data)
    assert method.search_outcome["searched"] and method.search_outcome["split"] == "test"
    assert method.search_outcome["n_test"] == len(tensors["test.labels"])
    clean = make(tiny_clip, golden, augment_epoch=3)  # the default: no search without val, test never read
    clean_requested: list = []
    clean_data = fixture_fit_data(tensors, clean_requested)
    clean_data.features = lambda split: (tensors["val.features_in"][:0], tensors["val.labels"][:0])
    clean.prepare_fit(clean_data)
    assert not clean.search_outcome["searched"] and "test" not in clean_requested


def test_official_table_and_defaults(tiny_clip):
    assert TipAdapterConfig().resolved("eurosat").train_epoch == 100
    assert TipAdapterConfig().resolved("fgvc_aircraft").search_scale == (30.0, 30.0)
    world = TipAdapterConfig().resolved("world_shapes")
    assert (world.init_alpha, world.search_scale, world.train_epoch) == (1.17, (7.0, 3.0), 20)
    method = TipAdapter(tiny_clip, ["a", "b"], TipAdapterConfig(), context("imagenet"))
    assert method.templates() == IMAGENET_TEMPLATES_SELECT
    with pytest.raises(ValueError, match="cannot score other classes"):
        method.set_classnames(["a", "c"])


@pytest.mark.parametrize("protocol", ["base2novel", "cross_dataset"])
def test_unseen_class_protocols_are_rejected(data_root, tmp_path, protocol):
    from jobs.config import resolve
    extra = {"targets": ["caltech101"]} if protocol == "cross_dataset" else {}
    with pytest.raises(ConfigError, match="impossible combination.*tip_adapter"):
        resolve(base_run(data_root, tmp_path, method="tip_adapter", protocol=protocol, **extra), "t")


@pytest.mark.parametrize("finetune", [False, True])
def test_end_to_end(data_root, tmp_path, finetune):
    from jobs.config import resolve
    method = {"name": "tip_adapter", "finetune": finetune, "augment_epoch": 2, "train_epoch": 1, "batch_size": 12}
    cfg = base_run(data_root, tmp_path / "res", method=method, protocol="fewshot")
    del cfg["optim"]
    resolved = resolve(cfg, "test")
    assert resolved.optim.epochs == 0
    record = execute_resolved(resolved)
    assert 0 <= record["summary"]["accuracy"] <= 100
    assert record["cost"]["trainable_params"] == (6 * 4 * 32 if finetune else 0)  # 24 keys x E=32
    # cache views 0..1 (+ one training view) and val/test features all went through the runner's feature cache
    assert record["cost"]["feature_cache"]["misses"] == (4 if finetune else 3) + 1
    assert record["selected_on_test"] is False


def test_full_val_run_searches_on_the_datasets_whole_val_split(data_root, tmp_path):
    from jobs.config import resolve
    method = {"name": "tip_adapter", "augment_epoch": 2, "search_data": "full_val"}
    cfg = base_run(data_root, tmp_path / "res", method=method, protocol="fewshot", shots=1)
    del cfg["optim"]
    record = execute_resolved(resolve(cfg, "test"))
    search = record["method_report"]["search"]
    from protocols.splits import build_manifest
    full = build_manifest("oxford_pets", data_root, 0, 1, "all", "dassl", tmp_path / "m")
    assert search["split"] == "val_full" and search["n_val_full"] == len(full.val) > 6  # 1 shot: 6 few-shot val


def test_best_on_test_run_reads_the_test_split_and_says_so(data_root, tmp_path):
    from jobs.config import resolve
    method = {"name": "tip_adapter", "finetune": True, "augment_epoch": 2, "train_epoch": 2, "batch_size": 12,
              "epoch_selection": "best_on_test"}
    cfg = base_run(data_root, tmp_path / "res", method=method, protocol="fewshot")
    del cfg["optim"]
    record = execute_resolved(resolve(cfg, "test"))
    assert record["selected_on_test"] is True
    assert [sorted(e) for e in record["method_report"]["fit_log"]] == [["epoch", "loss", "lr", "test_acc"]] * 2
    assert record["method_report"]["search"]["test_selection"]["kept"] in ("initial", "searched")


def test_augment_views_cycles_tip_adapter_f_epochs_through_the_cache_views(data_root, tmp_path):
    """Under the inexact ``fast.augment_views: V`` a run reads at most V augmented views of each image: Tip-Adapter-F's
    epochs reuse its cache passes' views (no feature pass of their own), and fewer views than cache passes collapse
    the passes onto them (a different cache, a different run id)."""
    from jobs.config import resolve
    method = {"name": "tip_adapter", "finetune": True, "augment_epoch": 2, "train_epoch": 3, "batch_size": 12}

    def run(folder: str, fast: dict) -> dict:
        cfg = base_run(data_root, tmp_path / folder, method=method, protocol="fewshot", fast=fast)
        del cfg["optim"]
        return execute_resolved(resolve(cfg, "test"))
    fresh = run("fresh", {})
    assert fresh["cost"]["feature_cache"]["misses"] == 2 + 3 + 2  # cache views 0-1, training views 2-4, val, test
    cycled = run("cycled", {"augment_views": 2})
    assert cycled["cost"]["feature_cache"]["misses"] == 2 + 2  # training epochs read views 0, 1, 0
    assert cycled["cost"]["feature_cache"]["hits"] == fresh["cost"]["feature_cache"]["hits"] + 3
    assert [e["epoch"] for e in cycled["method_report"]["fit_log"]] == [1, 2, 3]
    single = run("single", {"augment_views": 1})
    assert single["cost"]["feature_cache"]["misses"] == 1 + 2  # both cache passes and every epoch: view 0
    assert len({fresh["run_id"], cycled["run_id"], single["run_id"]}) == 3


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batched_search_equals_the_official_double_loop(seed):
    """The alpha-batched search returns exactly the (beta, alpha, accuracy) of one ``cls_acc`` per pair, also when
    logits tie (two classes with the same text feature and cache column), where ``topk``'s tie-breaking decides."""
    gen = torch.Generator().manual_seed(seed)
    n_val, n_keys, n_cls, dim = 40, 24, 6, 16
    normed = lambda x: x / x.norm(dim=-1, keepdim=True)  # noqa: E731
    feats, keys = normed(torch.randn(n_val, dim, generator=gen)), normed(torch.randn(n_keys, dim, generator=gen))
    text = normed(torch.randn(n_cls, dim, generator=gen))
    text[1] = text[0]  # classes 0 and 1 tie in the CLIP logits ...
    key_labels = torch.arange(n_keys) % n_cls
    key_labels[key_labels == 1] = 0  # ... and in the cache logits (no key of class 1)
    values = torch.nn.functional.one_hot(key_labels, n_cls).float()
    labels = torch.randint(0, n_cls, (n_val,), generator=gen)
    for search_scale in ((7.0, 3.0), (50.0, 50.0)):
        args = (feats @ keys.t(), feats, text, values, labels, search_scale, (40, 10))
        assert search_hp(*args) == search_hp_loop(*args)
