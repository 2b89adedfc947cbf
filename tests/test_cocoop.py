"""CoCoOp against the official implementation (tests/fixtures/cocoop.*): logits/loss at atol=rtol=1e-5, gradients at
the golden tolerance (``golden_grad_tol``); the batched prompt path against the per-image loop; two training steps end
to end on the fake data."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from baselines.cocoop import CoCoOp, CoCoOpConfig
from frozen_clip.method import MethodContext, normalize
from tests.conftest import FIXTURES, base_run, execute_resolved, golden_grad_tol

TOL = dict(atol=1e-5, rtol=1e-5)
PARAMS = ("ctx", "meta_net.linear1.weight", "meta_net.linear1.bias", "meta_net.linear2.weight",
          "meta_net.linear2.bias")


def context() -> MethodContext:
    return MethodContext(dataset="oxford_pets", template="a photo of a {}.", protocol="base2novel", shots=16, seed=1,
                         epochs=10)


@pytest.fixture(scope="module")
def golden():
    return load_file(str(FIXTURES / "cocoop.safetensors")), json.loads((FIXTURES / "cocoop.json").read_text())


def official_method(tiny_clip, golden, **options) -> CoCoOp:
    tensors, meta = golden
    method = CoCoOp(tiny_clip, meta["classnames"], CoCoOpConfig(**options), context())
    method.load_official_state_dict({f"prompt_learner.{name}": tensors[f"param.{name}"] for name in PARAMS})
    return method


def test_word_init_and_meta_net_shapes(tiny_clip, golden):
    tensors, meta = golden
    method = CoCoOp(tiny_clip, meta["classnames"], CoCoOpConfig(), context())
    torch.testing.assert_close(method.ctx.detach(), tensors["param.ctx"], atol=0, rtol=0)  # no RNG: word embeddings
    assert method.meta_net.linear1.weight.shape == (2, 32) and method.meta_net.linear2.weight.shape == (32, 2)
    assert method.num_trainable() == 4 * 32 + (32 * 2 + 2) + (2 * 32 + 32)  # 35,360 at E = D = 512


@pytest.mark.parametrize("truncate", [False, True])
def test_matches_official(tiny_clip, golden, truncate):
    tensors, _meta = golden
    method = official_method(tiny_clip, golden, truncate_text=truncate)
    ids = tensors["tokenized_prompts"]
    length = method.tokenized_prompts.shape[1]
    assert torch.equal(method.tokenized_prompts, ids[:, :length])
    assert length == (tiny_clip.context_needed(ids) if truncate else 77)
    images, labels = tensors["images"], tensors["labels"]
    image_features = tiny_clip.encode_image(images)
    torch.testing.assert_close(image_features, tensors["image_features"], **TOL)
    torch.testing.assert_close(method.meta_net(normalize(image_features)), tensors["meta_net_bias"], **TOL)

    method.eval()
    with torch.no_grad():
        torch.testing.assert_close(method(images), tensors["eval.logits"], **TOL)

    method.train()
    out = method.training_step(images, labels)
    torch.testing.assert_close(out.loss.reshape(1), tensors["train.loss"], **TOL)
    torch.testing.assert_close(out.logits.detach(), tensors["eval.logits"], **TOL)  # no dropout: train == eval
    out.loss.backward()
    grads = dict(method.named_parameters())
    for name in PARAMS:
        expected = tensors[f"train.grad.{name}"]
        # truncation reorders the attention reductions (exact in real arithmetic): the golden tolerance, scaled
        torch.testing.assert_close(grads[name].grad, expected, **golden_grad_tol(expected),
                                   msg=lambda m: f"{name}: {m}")


def test_batched_prompts_equal_the_per_image_loop(tiny_clip, golden):
    tensors, _meta = golden
    loop = official_method(tiny_clip, golden)
    batched = official_method(tiny_clip, golden, batched_prompts=True)
    images, labels = tensors["images"], tensors["labels"]
    out_loop, out_batched = loop.training_step(images, labels), batched.training_step(images, labels)
    torch.testing.assert_close(out_batched.logits, out_loop.logits, atol=1e-6, rtol=1e-6)
    out_loop.loss.backward()
    out_batched.loss.backward()
    for (name, p_loop), (_, p_batched) in zip(loop.named_parameters(), batched.named_parameters()):
        torch.testing.assert_close(p_batched.grad, p_loop.grad, atol=1e-6, rtol=1e-6, msg=lambda m: f"{name}: {m}")


def test_novel_classes_keep_the_learned_state(tiny_clip, golden):
    tensors, meta = golden
    full = official_method(tiny_clip, golden).eval()
    partial = CoCoOp(tiny_clip, meta["classnames"][:3], CoCoOpConfig(), context())
    partial.load_official_state_dict({f"prompt_learner.{name}": tensors[f"param.{name}"] for name in PARAMS})
    partial.eval()
    partial.set_classnames(meta["classnames"])
    with torch.no_grad():
        torch.testing.assert_close(partial(tensors["images"]), full(tensors["images"]), atol=0, rtol=0)


def test_recipe_and_protocols(data_root, tmp_path):
    from jobs.config import resolve
    for protocol, extra in (("base2novel", {}), ("fewshot", {}),
                            ("cross_dataset", {"targets": ["caltech101"]})):
        cfg = base_run(data_root, tmp_path, method="cocoop", protocol=protocol, **extra)
        del cfg["optim"]
        optim = resolve(cfg, "t").optim
        assert (optim.name, optim.lr, optim.batch_size, optim.epochs, optim.warmup_epochs) == ("sgd", 0.002, 1, 10, 1)


def test_two_steps_end_to_end(data_root, tmp_path, tiny_clip):
    from jobs.config import resolve
    cfg = base_run(data_root, tmp_path / "res", method={"name": "cocoop", "batched_prompts": True},
                   optim={"epochs": 1, "batch_size": 6, "warmup_epochs": 0})
    resolved = resolve(cfg, "test")
    from jobs.runfolder import run_dir
    record = execute_resolved(resolved)
    assert record["history"][-1]["iterations"] == 2  # 3 base classes x 4 shots / batch 6
    assert set(record["summary"]) == {"base", "novel", "hm"}
    assert record["cost"]["trainable_params"] == 4 * 32 + 66 + 96
    state = torch.load(run_dir(resolved) / "checkpoints" / "last.pt", weights_only=False)["method"]
    init = CoCoOp(tiny_clip, ["a"], CoCoOpConfig(), context()).ctx.detach()
    assert not torch.equal(state["ctx"], init)  # the context trained
