"""Precision as the official code runs it: each method's official precision on CUDA under ``precision: auto``, fp32
on a CPU (said in the record), pure fp16 for the methods whose official code runs in it, and the resolved precision in
the run id. CUDA itself is not available in CI: the resolution is tested for both device kinds, pure fp16 runs on the
CPU (torch computes half precision there too), and autocast is CUDA-only by construction."""

from __future__ import annotations

import pytest
import torch

from frozen_clip.contract import OfficialPrecision
from frozen_clip.errors import ConfigError
from frozen_clip.precision import ResolvedPrecision, device_kind, resolve_precision
from jobs.config import resolve
from jobs.executors.local import execute_run
from jobs.grid import RunSpec
from jobs.registry import METHODS
from tests.conftest import base_run, execute_resolved

AMP_THEN_FP32 = OfficialPrecision("amp_fp16", "fp32", "x", "official")
PURE = OfficialPrecision("fp16", "fp16", "x", "official")


@pytest.mark.parametrize("requested,kind,official,expected", [
    ("auto", "cpu", PURE, ("fp32", "fp32")),
    ("auto", "cuda", PURE, ("fp16", "fp16")),
    ("auto", "cuda", AMP_THEN_FP32, ("amp_fp16", "fp32")),
    ("auto", "cpu", AMP_THEN_FP32, ("fp32", "fp32")),
    ("amp_bf16", "cuda", PURE, ("amp_bf16", "amp_bf16")),
    ("amp_fp16", "cpu", AMP_THEN_FP32, ("fp32", "fp32")),  # autocast is CUDA-only
    ("fp16", "cpu", PURE, ("fp16", "fp16")),  # a half model computes on a CPU too
])
def test_resolution(requested, kind, official, expected):
    assert (lambda r: (r.train, r.eval))(resolve_precision(requested, kind, official)) == expected


def test_device_kind_uses_the_executors_hint_for_auto_only():
    assert device_kind("cuda:1") == "cuda" and device_kind("cpu", hint="cuda") == "cpu"
    assert device_kind("auto", hint="cuda") == "cuda" and device_kind("auto", hint="cpu") == "cpu"
    assert device_kind("auto") == ("cuda" if torch.cuda.is_available() else "cpu")


def test_official_precisions_of_the_methods():
    official = {name: (METHODS.get(name).info.precision.train, METHODS.get(name).info.precision.eval)
                for name in METHODS.names()}
    assert official["coop"] == official["cocoop"] == official["maple"] == ("fp16", "fp16")
    assert official["zeroshot"] == official["tip_adapter"] == ("fp16", "fp16")  # fp16 CLIP features
    assert official["heba"] == official["mma"] == ("amp_fp16", "fp32")  # Dassl's test() has no autocast
    assert official["clip_adapter"] == ("fp32", "fp32") and official["clip_lora"] == ("amp_fp16", "amp_fp16")
    assert all(METHODS.get(name).info.precision.source for name in METHODS.names())


def test_the_run_id_hashes_the_resolved_precision(data_root, tmp_path):
    cfg = base_run(data_root, tmp_path, method="heba")
    on_cpu, on_cuda = resolve(cfg, "t", compute_device="cpu"), resolve(cfg, "t", compute_device="cuda")
    assert on_cpu.config["resolved_precision"] == {"train": "fp32", "eval": "fp32"}
    assert on_cuda.config["resolved_precision"] == {"train": "amp_fp16", "eval": "fp32"}
    assert on_cpu.run_id != on_cuda.run_id
    # fp32/fp32 is left out of the id: every CPU run keeps the id it had before precisions were resolved
    from jobs.config import canonical_config
    assert "resolved_precision" not in canonical_config(on_cpu.config)
    assert canonical_config(on_cuda.config)["resolved_precision"] == {"train": "amp_fp16", "eval": "fp32"}
    explicit = resolve({**cfg, "device": "cpu"}, "t", compute_device="cuda")  # an explicit device wins over a hint
    assert explicit.run_id == on_cpu.run_id


def test_a_run_resolved_for_cuda_refuses_to_run_on_a_cpu(data_root, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    resolved = resolve(base_run(data_root, tmp_path, method="zeroshot", optim={"epochs": 0}), "t",
                       compute_device="cuda")
    outcome = execute_run(RunSpec(resolved.run_id, resolved.config, resolved))
    assert outcome.status == "failed" and outcome.user_error
    assert "configured to compute in fp16" in outcome.detail and "set device: cuda or device: cpu" in outcome.detail


def test_pure_fp16_is_refused_for_methods_whose_official_code_does_not_run_in_it(data_root, tmp_path):
    with pytest.raises(ConfigError, match=r"precision: fp16 .* heba's runs in amp_fp16 \(evaluated in fp32\)"):
        resolve(base_run(data_root, tmp_path, method="heba", precision="fp16"), "t")


@pytest.mark.parametrize("method", ["coop", "cocoop", "maple", "zeroshot", "tip_adapter"])
def test_pure_fp16_runs_train_half_parameters_without_a_scaler(data_root, tmp_path, method):
    options = {"name": method}
    protocol = "fewshot" if method == "tip_adapter" else "base2novel"
    if method == "tip_adapter":
        options.update(finetune=True, augment_epoch=2, train_epoch=1, batch_size=12)
    if method == "maple":
        options.update(prompt_depth=2)
    cfg = base_run(data_root, tmp_path / "r", method=options, precision="fp16", protocol=protocol,
                   optim={"epochs": 0 if method in ("zeroshot", "tip_adapter") else 2})
    if method == "tip_adapter":
        del cfg["optim"]
    resolved = resolve(cfg, "t")
    assert resolved.config["resolved_precision"] == {"train": "fp16", "eval": "fp16"}
    record = execute_resolved(resolved)
    assert record["env"]["precision"] == record["env"]["precision_eval"] == "fp16"
    assert record["env"]["precision_note"] is None  # the official precision
    assert all(0 <= entry["accuracy"] <= 100 for entry in record["metrics"].values())
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in record["history"])


def test_cpu_runs_say_when_they_are_not_the_official_precision(data_root, tmp_path):
    record = execute_resolved(resolve(base_run(data_root, tmp_path, method="coop"), "t", compute_device="cpu"))
    assert record["env"]["precision"] == "fp32"
    assert record["env"]["precision_note"] == "computed in fp32 on a CPU; the official code runs in fp16 on a GPU"


def test_a_half_model_creates_coop_context_in_fp16(tiny_clip):
    from baselines.coop import CoOp, CoOpConfig
    from frozen_clip.method import MethodContext
    import copy
    half = copy.deepcopy(tiny_clip).half()
    method = CoOp(half, ["a", "b"], CoOpConfig(n_ctx=4), MethodContext("oxford_pets", "a photo of a {}.",
                                                                     "fewshot", 2, 1, 1))
    assert method.ctx.dtype == torch.float16
    images = torch.randn(2, 3, half.image_size, half.image_size)  # fp32 pixels, cast by encode_image
    assert method(images).dtype == torch.float16
    assert ResolvedPrecision("fp16", "fp16").half_model and not ResolvedPrecision("amp_fp16", "fp32").half_model


def test_resolving_a_resolved_config_keeps_its_precision_and_id(data_root, tmp_path):
    """A Slurm job resolves its run folder's config.yaml again on the compute node: the precision it was resolved
    with (and so its id) stays, whatever that node has; the run then checks it against its device."""
    from jobs.runfolder import read_run_config, write_config
    on_cuda = resolve(base_run(data_root, tmp_path, method="heba"), "t", compute_device="cuda")
    write_config(tmp_path, on_cuda.config)
    again = resolve(read_run_config(tmp_path / "config.yaml"), "config.yaml", compute_device="cpu")
    assert again.run_id == on_cuda.run_id and again.config["resolved_precision"] == on_cuda.config["resolved_precision"]
    with pytest.raises(ConfigError, match="resolved_precision must be"):
        resolve({**base_run(data_root, tmp_path, method="heba"), "resolved_precision": {"train": "fp8"}}, "t")
