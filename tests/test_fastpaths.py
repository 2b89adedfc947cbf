"""Every fast path against its slow path: logits and gradients (or trained weights) equal within 1e-5.

Fast paths pinned here: text truncated to the longest prompt (HeBA, MMA, CoOp, CLIP-LoRA against the full 77-token
context), head-only training on cached per-view features (CLIP-Adapter, end to end through the runner), the uint8
image cache (train and eval transforms), evaluation features shared across manifests; plus the deterministic
per-item augmentation they rest on, the FLOP model against torch's flop counter, and the ``fast`` config section.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.common import FullContextCLIP
from bench.steps import build_method, class_names
from frozen_clip import flops
from frozen_clip.backbone import length_buckets
from frozen_clip.errors import ConfigError
from frozen_clip.fastpaths import FastPaths, FeatureRows, SeededViews, supports_feature_training
from frozen_clip.imagecache import ImageCache, eval_dataset, train_dataset
from frozen_clip.images import ImageListDataset
from frozen_clip.method import MethodContext
from frozen_clip.seeding import view_seed
from frozen_clip.shared_prefix import common_prefix_length
from frozen_clip.taps import Taps
from frozen_clip import transforms
from jobs.config import method_class, resolve
from protocols.splits import build_manifest
from tests.conftest import base_run, execute_resolved

TOL = 1e-5


def execute(cfg: dict) -> dict:
    """Resolve ``cfg`` and execute it in this process; its record."""
    return execute_resolved(resolve(cfg, "test"))


# -- text truncation: logits and gradients against the full context ---------------------------------------------------
def _pair(name: str, clip, n_classes: int = 7, **overrides):
    """The method on the suite's backbone and on the full-context backbone, same weights."""
    names = class_names(n_classes)
    fast = build_method(name, clip, names, reference=False)
    ref = build_method(name, FullContextCLIP(clip), names, reference=True)
    if overrides:
        cls = method_class(name, "test")
        ctx = MethodContext("imagenet", "a photo of a {}.", "base2novel", 16, 1, 1)
        fast = cls(clip, names, dataclasses.replace(fast.config, **overrides), ctx)
        ref = cls(FullContextCLIP(clip), names, dataclasses.replace(ref.config, **overrides), ctx)
    ref.load_state_dict(fast.state_dict())
    return fast, ref


def _grads(method, images, labels, seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    method.train()
    torch.manual_seed(seed)
    out = method.training_step(images, labels)
    params = method.trainable_parameters()
    grads = torch.autograd.grad(out.loss, list(params.values()))
    return out.logits.detach(), dict(zip(params, grads))


@pytest.mark.parametrize("name,overrides", [("heba", {}), ("heba", {"text_buckets": 1}),
                                            ("heba", {"share_text_prefix": False}), ("mma", {}),
                                            ("mma", {"share_text_prefix": False, "text_buckets": 1}), ("coop", {}),
                                            ("clip_lora", {"dropout_rate": 0.0})])
def test_truncated_text_equals_full_context(tiny_clip, name, overrides):
    fast, ref = _pair(name, tiny_clip, **overrides)
    assert getattr(fast, "truncates_text", True)
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(4, 3, 32, 32, generator=gen)
    labels = torch.tensor([0, 3, 5, 6])
    logits_fast, grads_fast = _grads(fast, images, labels, seed=11)
    logits_ref, grads_ref = _grads(ref, images, labels, seed=11)
    assert torch.allclose(logits_fast, logits_ref, atol=TOL, rtol=TOL)  # logits reach 100 x cosine
    assert grads_fast.keys() == grads_ref.keys()
    for key in grads_fast:
        assert torch.allclose(grads_fast[key], grads_ref[key], atol=TOL, rtol=TOL), key
    fast.eval(), ref.eval()
    with torch.no_grad():
        assert torch.allclose(fast(images), ref(images), atol=TOL, rtol=TOL)


def test_length_buckets_partition_the_prompts_with_the_least_padding():
    gen = torch.Generator().manual_seed(3)
    lengths = torch.randint(5, 20, (40,), generator=gen)
    for max_buckets in (1, 2, 3, 5):
        groups = length_buckets(lengths, max_buckets)
        rows = torch.cat([r for r, _ in groups])
        assert sorted(rows.tolist()) == list(range(40)) and len(groups) <= max_buckets
        assert all(int(lengths[r].max()) == length for r, length in groups)  # each group cut to its own longest
        padded = sum(len(r) * length for r, length in groups)
        # brute force over every way to cut the distinct lengths into at most max_buckets ranges
        values = sorted(set(lengths.tolist()))
        best = min(sum(int((lengths <= hi).sum() - (lengths < lo).sum()) * hi for lo, hi in zip(
            [values[0]] + [values[c] for c in cuts], [values[c - 1] for c in cuts] + [values[-1]]))
                   for k in range(max_buckets) for cuts in itertools.combinations(range(1, len(values)), k))
        assert padded == best


def test_heba_text_buckets_split_the_step_prompts_and_match_one_batch(tiny_clip):
    """The bucketed text features equal the single truncated batch, and the default really uses several buckets."""
    fast, _ = _pair("heba", tiny_clip, n_classes=40)
    ids = fast.tk_prompts[:, 0]
    assert len(length_buckets(ids.argmax(dim=-1) + 1, fast.config.text_buckets)) > 1
    taps = fast.taps("text", [0.025] * fast.n_blocks["text"])
    bucketed = tiny_clip.encode_text(ids, taps, buckets=fast.config.text_buckets)
    single = tiny_clip.encode_text(ids, taps, buckets=1)
    assert torch.allclose(bucketed, single, atol=TOL, rtol=TOL)


def test_heba_shared_text_prefix_runs_once_and_matches_whole_prompts(tiny_clip):
    """``[SOS] a photo of a`` runs once: a tap sees one flat sequence of the prefix and every bucket's suffixes
    (``5 + sum(rows x (length - 5))`` positions); features and gradients equal whole prompts."""
    fast, _ = _pair("heba", tiny_clip, n_classes=40)
    ids = fast.tk_prompts[:, 0]
    assert fast.shares_text_prefix and common_prefix_length(ids) == 5
    seen: list[tuple[int, ...]] = []

    def record(x, site):  # identity at a per-token point, after HeBA's adapter
        seen.append(tuple(x.shape[:2]))
        return x
    taps = fast.taps("text", [0.05] * fast.n_blocks["text"]).add("attn_in", "text", 0, record)
    shared = tiny_clip.encode_text(ids, taps, buckets=3, share_prefix=True)
    groups = length_buckets(ids.argmax(dim=-1) + 1, 3)
    assert len(groups) > 1 and seen == [(1, 5 + sum(len(rows) * (length - 5) for rows, length in groups))]
    seen.clear()
    whole = tiny_clip.encode_text(ids, taps, buckets=3)
    assert seen == [(len(rows), length) for rows, length in groups]  # the plain path: whole prompts per bucket
    assert torch.allclose(shared, whole, atol=TOL, rtol=TOL)
    params = list(fast.trainable_parameters().values())
    grads_shared = torch.autograd.grad(shared.square().sum(), params, allow_unused=True)
    grads_whole = torch.autograd.grad(whole.square().sum(), params, allow_unused=True)
    for a, b in zip(grads_shared, grads_whole, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.allclose(a, b, atol=TOL * max(1.0, float(b.abs().max())), rtol=TOL)


def test_shared_text_prefix_is_skipped_where_it_would_not_be_exact(tiny_clip):
    from frozen_clip.shared_prefix import shared_prefix_hidden
    ids = tiny_clip.tokenize(["a photo of a cat.", "a photo of a large dog."])
    seen: list[int] = []

    def whole_prompts(x, site):  # a tower_in tap sees whole prompts: the shared path must not run
        seen.append(x.shape[1])
        return x
    taps = Taps().add("tower_in", "text", -1, whole_prompts)
    plain = tiny_clip.encode_text(ids, taps, share_prefix=True)
    assert seen == [tiny_clip.context_needed(ids)]
    assert torch.allclose(plain, tiny_clip.encode_text(ids), atol=TOL, rtol=TOL)
    with pytest.raises(ValueError, match="per-token"):
        shared_prefix_hidden(tiny_clip.text, tiny_clip.token_embedding(ids[:1, :5]),
                             [tiny_clip.token_embedding(ids[:, 5:])], taps)
    # nothing shared but SOS: still exact; a causal text convolution switches the HeBA path off
    other = tiny_clip.tokenize(["one cat.", "two dogs on a mat."])
    assert common_prefix_length(other) == 1
    assert torch.allclose(tiny_clip.encode_text(other, share_prefix=True), tiny_clip.encode_text(other),
                          atol=TOL, rtol=TOL)
    same = tiny_clip.tokenize(["a cat.", "a cat."])  # everything shared: the prefix stops before the EOT
    assert common_prefix_length(same) == tiny_clip.context_needed(same) - 1
    assert torch.allclose(tiny_clip.encode_text(same, share_prefix=True), tiny_clip.encode_text(same),
                          atol=TOL, rtol=TOL)
    conv, _ = _pair("heba", tiny_clip, text_adapter="conv1d_causal")
    assert conv.truncates_text and not conv.shares_text_prefix


def test_full_context_backbone_really_runs_77_tokens(tiny_clip):
    ids = tiny_clip.tokenize(["a photo of a cat."])
    full = FullContextCLIP(tiny_clip)
    assert full.truncate(ids).shape[-1] == 77 and tiny_clip.truncate(ids).shape[-1] < 10
    count = flops.count_flops(lambda: full.encode_text(tiny_clip.truncate(ids)))
    assert count == flops.clip_shape(tiny_clip).text_forward(77)


# -- deterministic augmentation and head-only training on cached features ---------------------------------------------
def test_seeded_views_do_not_depend_on_order_or_global_rng(data_root):
    manifest = build_manifest("oxford_pets", data_root, 4, 1, "all", "dassl", data_root.parent / "cache")
    spec = transforms.train_spec(32, (0.5,) * 3, (0.25,) * 3)
    views = SeededViews(ImageListDataset(manifest.train, manifest.image_root, spec.build()), manifest.content_hash)
    views.set_view(3)
    forward = [views[i][0] for i in range(len(views))]
    state = torch.get_rng_state()
    backward = {i: views[i][0] for i in reversed(range(len(views)))}
    assert torch.equal(torch.get_rng_state(), state)  # the global stream is untouched
    assert all(torch.equal(forward[i], backward[i]) for i in range(len(views)))
    views.set_view(4)
    assert not torch.equal(views[0][0], forward[0])  # another epoch, another crop
    plain = ImageListDataset(manifest.train, manifest.image_root, spec.build())
    torch.manual_seed(view_seed(manifest.content_hash, 3, 1))  # the definition: view 3 of item 1 under this seed
    assert torch.equal(plain[1][0], forward[1])


@pytest.mark.parametrize("method,other", [("clip_adapter", {"residual_ratio": 0.5}), ("coop", {"n_ctx": 4})])
def test_training_on_cached_features_equals_image_path(data_root, tmp_path, method, other):
    common = dict(protocol="fewshot", shots=4, optim={"epochs": 3, "batch_size": 8})
    slow = execute(base_run(data_root, tmp_path / "slow", method=method,
                            fast={"feature_training": False, "image_cache": False}, **common))
    fast = execute(base_run(data_root, tmp_path / "fast", method=method, **common))
    assert slow["run_id"] == fast["run_id"]  # exact switches are not part of the run id
    assert slow["cost"]["trained_on_cached_features"] is False and fast["cost"]["trained_on_cached_features"]
    for a, b in zip(slow["history"], fast["history"], strict=True):
        assert abs(a["loss"] - b["loss"]) < TOL
    weights = [torch.load(Path(tmp_path / d / "runs" / slow["run_id"] / "checkpoints" / "last.pt"),
                          weights_only=False)["method"] for d in ("slow", "fast")]
    for key in weights[0]:
        assert torch.allclose(weights[0][key], weights[1][key], atol=TOL, rtol=0), key
    assert slow["summary"]["accuracy"] == fast["summary"]["accuracy"]
    # the three epoch views are in the shared cache now: another run on the same split computes none of them
    again = execute(base_run(data_root, tmp_path / "fast", method={"name": method, **other}, **common))
    assert again["cost"]["view_cache"] == {"hits": 3, "misses": 0}


def test_feature_rows_and_capability():
    rows = FeatureRows(torch.arange(6.0).view(3, 2), torch.tensor([2, 0, 1]))
    assert len(rows) == 3 and rows[1][1:] == (0, 1) and torch.equal(rows[2][0], torch.tensor([4.0, 5.0]))
    with pytest.raises(ValueError):
        FeatureRows(torch.zeros(3, 2), torch.zeros(2))
    from baselines.clip_adapter import CLIPAdapter
    from baselines.cocoop import CoCoOp
    from baselines.coop import CoOp
    from baselines.tip_adapter import TipAdapter
    assert supports_feature_training(object.__new__(CLIPAdapter))
    assert supports_feature_training(object.__new__(CoOp))  # frozen image encoder: features suffice
    assert not supports_feature_training(object.__new__(CoCoOp))  # inherits it, but its meta-net reads images
    assert not supports_feature_training(object.__new__(TipAdapter))  # trains in prepare_fit


# -- image cache and shared evaluation features -----------------------------------------------------------------------
def test_image_cache_gives_the_same_tensors(data_root, tmp_path):
    manifest = build_manifest("oxford_pets", data_root, 4, 1, "all", "dassl", data_root.parent / "cache")
    root = Path(manifest.image_root)
    cache = ImageCache(tmp_path / "images")
    train = transforms.train_spec(32, (0.5,) * 3, (0.25,) * 3)
    plain = SeededViews(ImageListDataset(manifest.train, root, train.build()), "k")
    cached = SeededViews(train_dataset(cache, "oxford_pets", manifest.train, root, train), "k")
    for view in (0, 5):
        plain.set_view(view), cached.set_view(view)
        assert all(torch.equal(plain[i][0], cached[i][0]) for i in range(len(plain)))
    test = transforms.test_spec(32, (0.5,) * 3, (0.25,) * 3)
    plain_eval = ImageListDataset(manifest.test, root, test.build())
    cached_eval = eval_dataset(cache, "oxford_pets", manifest.test, root, test)
    assert all(torch.equal(plain_eval[i][0], cached_eval[i][0]) for i in range(len(plain_eval)))
    assert isinstance(cached_eval.arrays, np.memmap)
    again = ImageCache(tmp_path / "images")
    eval_dataset(again, "oxford_pets", manifest.test, root, test)
    train_dataset(again, "oxford_pets", manifest.train, root, train)
    assert (again.hits, again.misses) == (2, 0)
    first = train_dataset(again, "oxford_pets", manifest.train, root, train).arrays
    for entry in (tmp_path / "images").glob("*.pt"):
        entry.unlink()  # the next epoch's read is served from memory, not from the file
    assert train_dataset(again, "oxford_pets", manifest.train, root, train).arrays is first
    assert train_dataset(again, "oxford_pets", manifest.val, root, train).arrays is not first  # another entry
    small = ImageCache(tmp_path / "small", max_decoded_mb=1e-4)  # over the limit: falls back to the files
    assert type(train_dataset(small, "oxford_pets", manifest.train, root, train)) is ImageListDataset
    assert type(train_dataset(small, "oxford_pets", manifest.train, root, train)) is ImageListDataset
    assert small.misses == 1  # the second run remembers that the split is too large instead of decoding again


def test_eval_features_shared_across_shots_and_equal_to_unshared(data_root, tmp_path):
    common = dict(method="zeroshot", protocol="fewshot")
    first = execute(base_run(data_root, tmp_path / "r", shots=2, **common))
    second = execute(base_run(data_root, tmp_path / "r", shots=4, **common))
    assert first["cost"]["feature_cache"]["misses"] == 1 and second["cost"]["feature_cache"] == {"hits": 1,
                                                                                                 "misses": 0}
    unshared = execute(base_run(data_root, tmp_path / "u", shots=4, fast={"shared_eval_features": False,
                                                                          "image_cache": False}, **common))
    assert unshared["metrics"]["test"]["per_class_accuracy"] == second["metrics"]["test"]["per_class_accuracy"]


# -- FLOP model, peaks, MFU, config -----------------------------------------------------------------------------------
def test_flop_model_matches_the_torch_flop_counter(tiny_clip):
    shape = flops.clip_shape(tiny_clip)
    images = torch.randn(3, 3, 32, 32)
    assert flops.count_flops(lambda: tiny_clip.encode_image(images)) == 3 * shape.image_forward()
    ids = tiny_clip.tokenize(["a photo of a cat.", "a dog"])
    length = tiny_clip.context_needed(ids)
    assert flops.count_flops(lambda: tiny_clip.encode_text(ids)) == 2 * shape.text_forward(length)
    assert flops.count_flops(lambda: tiny_clip.encode_text(ids, truncate=False)) == 2 * shape.text_forward()
    b16 = flops.vit_b16_shape()
    assert round(b16.text_forward() / 1e9, 2) == 5.96  # 5.96 GFLOPs per 77-token prompt
    cost = flops.step_flops(b16, images=2, prompts=10, text_tokens=20, image_grad=True, trainable_forward=5)
    assert cost.total == 2 * 2 * b16.image_forward() + 10 * b16.text_forward(20) + 15


def test_peaks_and_mfu():
    assert flops.peak_for_name("NVIDIA H100 80GB HBM3", "amp_bf16") == pytest.approx(989.4e12)
    assert flops.peak_for_name("NVIDIA H100 PCIe", "amp_fp16") == pytest.approx(756e12)
    assert flops.peak_for_name("NVIDIA A100-SXM4-40GB", "fp32", tf32=True) == pytest.approx(156e12)
    assert flops.peak_for_name("Tesla V100-SXM2-16GB", "amp_bf16") is None  # no bf16 tensor cores
    assert flops.peak_for_name("Some Unknown GPU", "fp32") is None
    assert flops.peak_flops("cpu") is None and flops.mfu(1e12, 1.0, None) is None
    assert flops.mfu(1e12, 2.0, 1e12) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        flops.peak_for_name("H100", "int8")


def test_fast_section_is_validated_and_unhashed(data_root, tmp_path):
    cfg = base_run(data_root, tmp_path)
    plain = resolve(cfg, "t")
    assert plain.fast == FastPaths() and plain.config["fast"]["feature_training"] is True
    off = resolve({**cfg, "fast": {"image_cache": False, "compile": True}}, "t")
    assert off.run_id == plain.run_id and off.fast.compile and not off.fast.image_cache
    with pytest.raises(ConfigError, match="fast.image_cach"):
        resolve({**cfg, "fast": {"image_cach": False}}, "t")
    with pytest.raises(ConfigError, match="fast.compile"):
        resolve({**cfg, "fast": {"compile": "yes"}}, "t")


def test_method_speed_switches_listed_as_unhashed_keep_the_run_id(data_root, tmp_path):
    cfg = {**base_run(data_root, tmp_path), "method": {"name": "heba"}}
    plain = resolve(cfg, "t")
    one = resolve({**cfg, "method": {"name": "heba", "text_buckets": 1, "share_text_prefix": False}}, "t")
    assert one.method_config.text_buckets == 1 and one.config["method"]["text_buckets"] == 1
    assert not one.method_config.share_text_prefix
    assert one.run_id == plain.run_id  # exact switches: same result, same run
    mma = resolve({**cfg, "method": {"name": "mma", "layers": [1, 2]}}, "t")  # the tiny CLIP has 2 blocks
    assert resolve({**cfg, "method": {"name": "mma", "layers": [1, 2], "text_buckets": 2,
                                      "share_text_prefix": False}}, "t").run_id == mma.run_id
    other = resolve({**cfg, "method": {"name": "heba", "bottleneck_ratio": 8}}, "t")
    assert other.run_id != plain.run_id  # a result-changing option still is part of the id
    with pytest.raises(ConfigError, match="text_buckets"):
        resolve({**cfg, "method": {"name": "heba", "text_buckets": 0}}, "t")


def test_compile_switch_falls_back_on_cpu(data_root, tmp_path):
    rec = execute(base_run(data_root, tmp_path, shots=2, fast={"compile": True}, optim={"epochs": 2}))
    assert rec["cost"]["mfu"] is None and rec["cost"]["flops_per_image"] is None  # CPU: no peak, no count
    assert rec["cost"]["images_per_s"] > 0 and rec["cost"]["peak_memory_mb"] > 0


def test_flop_count_of_the_first_step_does_not_change_training(tiny_clip):
    from baselines.clip_adapter import CLIPAdapter, CLIPAdapterConfig
    from frozen_clip.optim import OptimConfig
    from frozen_clip.trainer import Trainer
    from jobs.execute import RunExecution
    ctx = MethodContext("oxford_pets", "a photo of a {}.", "fewshot", 2, 1, 2)
    gen = torch.Generator().manual_seed(0)
    data = FeatureRows(torch.randn(8, 3, 32, 32, generator=gen), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]))
    outcomes = []
    for count in (False, True):
        torch.manual_seed(0)
        method = CLIPAdapter(tiny_clip, ["a", "b", "c"], CLIPAdapterConfig(), ctx)
        trainer = Trainer(method, OptimConfig(epochs=2, batch_size=4), seed=1, device=torch.device("cpu"),
                          log=lambda _m: None, count_flops=count)
        outcomes.append((trainer.fit(data), method.fc[0].weight.detach().clone()))
    (plain, w_plain), (counted, w_counted) = outcomes
    assert plain.flops_per_image is None and counted.flops_per_image > 0
    assert torch.equal(w_plain, w_counted) and plain.history[-1]["loss"] == counted.history[-1]["loss"]
    cost = RunExecution._flop_cost(counted, 2.0, torch.device("cpu"), "fp32")
    assert cost == {"flops_per_image": counted.flops_per_image, "mfu": None}  # no CPU peak


@pytest.mark.parametrize("n_rows", [10, 37])  # fewer rows than a batch (no drop_last), and a ragged last batch
def test_feature_rows_loader_yields_the_collated_batches(tiny_clip, n_rows):
    """The trainer reads cached features a batch at a time; the batches (features, labels, indices, order) are
    those the per-row DataLoader with the same generator would collate."""
    from baselines.zeroshot import ZeroShotCLIP, ZeroShotConfig
    from frozen_clip.optim import OptimConfig
    from frozen_clip.seeding import derive_seed
    from frozen_clip.trainer import Trainer
    from torch.utils.data import DataLoader, RandomSampler
    gen = torch.Generator().manual_seed(0)
    rows = FeatureRows(torch.randn(n_rows, 8, generator=gen), torch.randint(0, 5, (n_rows,), generator=gen))
    method = ZeroShotCLIP(tiny_clip, ["a", "b"], ZeroShotConfig(), MethodContext("imagenet", "{}", "fewshot", 1, 1, 1))
    trainer = Trainer(method, OptimConfig(epochs=1, batch_size=16), seed=3, device=torch.device("cpu"))
    for epoch in (1, 2):
        fast = list(trainer._loader(rows, epoch))
        generator = torch.Generator().manual_seed(derive_seed("loader", 3, epoch))
        slow = list(DataLoader(rows, batch_size=16, sampler=RandomSampler(rows, generator=generator),
                               drop_last=n_rows >= 16, generator=generator))
        assert len(fast) == len(slow) == (1 if n_rows < 16 else 2)
        for a, b in zip(fast, slow, strict=True):
            assert all(torch.equal(x, y) and x.dtype == y.dtype for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("spacing, saved, before_crash", [(0.0, list(range(1, 9)), [1, 2, 3, 4]), (1e9, [1, 8], [1])])
def test_checkpoint_cadence_first_last_and_spaced_by_write_cost(tiny_clip, tmp_path, monkeypatch, spacing, saved,
                                                                before_crash):
    """Epochs are checkpointed once the time since the last write is CHECKPOINT_SPACING times its cost (always the
    first and the last); a fit that crashes mid-way resumes from the last checkpoint to the same weights."""
    from baselines.clip_adapter import CLIPAdapter, CLIPAdapterConfig
    from frozen_clip import trainer as trainer_module
    from frozen_clip.optim import OptimConfig
    monkeypatch.setattr(trainer_module, "CHECKPOINT_SPACING", spacing)

    class Crash(Exception):
        pass

    class Recording(trainer_module.Trainer):
        saved: list[int] = []
        crash_at: int | None = None

        def _epoch(self, epoch, *args):
            if epoch == self.crash_at:
                raise Crash
            return super()._epoch(epoch, *args)

        def _checkpoint(self, epoch, *args):
            self.saved.append(epoch)
            super()._checkpoint(epoch, *args)
    ctx = MethodContext("oxford_pets", "a photo of a {}.", "fewshot", 2, 1, 2)
    gen = torch.Generator().manual_seed(0)
    data = FeatureRows(torch.randn(8, 3, 32, 32, generator=gen), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]))

    def fit(folder: Path, crash_at: int | None = None) -> tuple[list[int], torch.Tensor]:
        torch.manual_seed(0)
        method = CLIPAdapter(tiny_clip, ["a", "b", "c"], CLIPAdapterConfig(), ctx)
        Recording.saved, Recording.crash_at = [], crash_at
        Recording(method, OptimConfig(epochs=8, batch_size=4), seed=1, device=torch.device("cpu"),
                  checkpoint_dir=folder, log=lambda _m: None).fit(data)
        return Recording.saved, method.fc[0].weight.detach().clone()
    epochs_saved, weight = fit(tmp_path / "whole")
    assert epochs_saved == saved
    with pytest.raises(Crash):
        fit(tmp_path / "crashed", crash_at=5)
    assert Recording.saved == before_crash
    _, resumed = fit(tmp_path / "crashed")
    assert torch.equal(weight, resumed)


def test_augment_views_cycle_is_hashed_and_paths_still_agree(data_root, tmp_path):
    common = dict(method="clip_adapter", protocol="fewshot", shots=2, optim={"epochs": 5, "batch_size": 8})
    cycled = {"augment_views": 2}
    assert resolve(base_run(data_root, tmp_path, fast=cycled, **common), "t").run_id != \
        resolve(base_run(data_root, tmp_path, **common), "t").run_id  # changes the data: a different run
    with pytest.raises(ConfigError, match="augment_views"):
        resolve(base_run(data_root, tmp_path, fast={"augment_views": 0}, **common), "t")
    assert [FastPaths(augment_views=2).view_of_epoch(e) for e in range(1, 6)] == [0, 1, 0, 1, 0]
    fast = execute(base_run(data_root, tmp_path / "fast", fast=cycled, **common))
    slow = execute(base_run(data_root, tmp_path / "slow", fast={**cycled, "feature_training": False}, **common))
    assert fast["cost"]["view_cache"] == {"hits": 3, "misses": 2}  # two feature passes for five epochs
    for a, b in zip(slow["history"], fast["history"], strict=True):
        assert abs(a["loss"] - b["loss"]) < TOL


def test_coop_shared_prefix_equals_per_class_prompts(tiny_clip):
    from baselines.coop import CoOp, CoOpConfig
    ctx = MethodContext("imagenet", "a photo of a {}.", "fewshot", 16, 1, 1)
    names = class_names(9)
    torch.manual_seed(0)
    shared = CoOp(tiny_clip, names, CoOpConfig(), ctx)
    plain = CoOp(tiny_clip, names, CoOpConfig(shared_prefix=False), ctx)
    plain.load_state_dict(shared.state_dict())
    assert shared.shares_prefix() and not plain.shares_prefix()
    images, labels = torch.randn(3, 3, 32, 32), torch.tensor([0, 4, 8])
    logits_a, grads_a = _grads(shared, images, labels, seed=0)
    logits_b, grads_b = _grads(plain, images, labels, seed=0)
    assert torch.allclose(logits_a, logits_b, atol=TOL, rtol=TOL)
    assert torch.allclose(grads_a["ctx"], grads_b["ctx"], atol=TOL * float(grads_b["ctx"].abs().max()), rtol=TOL)
    for config in (CoOpConfig(csc=True), CoOpConfig(class_token_position="middle")):
        assert not CoOp(tiny_clip, names, config, ctx).shares_prefix()  # only a shared context at the end
    from frozen_clip.shared_prefix import encode_text_shared_prefix
    with pytest.raises(ValueError, match="EOT"):
        encode_text_shared_prefix(tiny_clip, shared.token_prefix[:1], shared.token_suffix[:, :0],
                                  shared.tokenized_prompts[:, :1])
