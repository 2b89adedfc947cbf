"""``method.checkpoint: PATH``: a released (official-format) checkpoint is loaded through the method's
``load_official_state_dict`` and, with ``optim.epochs: 0``, only evaluated under the suite's protocol and splits."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from frozen_clip.checkpoints import tensors_digest
from frozen_clip.errors import ConfigError
from frozen_clip.trainer import CHECKPOINT_NAME
from jobs.config import resolve
from jobs.executors.local import execute_run
from jobs.grid import RunSpec
from jobs.runfolder import run_dir
from tests.conftest import base_run, execute_resolved
from tests.test_heba import PARAMS


def _dassl_checkpoint(path: Path, state: dict[str, torch.Tensor], epoch: int) -> Path:
    """The layout Dassl's ``save_checkpoint`` writes (``model.pth.tar-<epoch>``): tensors under ``state_dict``, next
    to the epoch and the optimiser and scheduler states."""
    torch.save({"state_dict": state, "epoch": epoch, "optimizer": {"state": {}, "param_groups": [{"lr": 0.002}]},
                "scheduler": {"last_epoch": epoch}, "val_result": None}, path)
    return path


def _trained_state(resolved, record: dict) -> dict[str, torch.Tensor]:
    """The trainable tensors a finished run ended with (from its last training checkpoint)."""
    saved = torch.load(run_dir(resolved) / "checkpoints" / CHECKPOINT_NAME, map_location="cpu", weights_only=False)
    state = saved["method"]
    assert sum(v.numel() for v in state.values() if v.is_floating_point()) >= record["cost"]["trainable_params"]
    return state




def _evaluate_only(data_root: Path, results: Path, method: dict, checkpoint: Path) -> dict:
    cfg = base_run(data_root, results, method={**method, "checkpoint": str(checkpoint)}, optim={"epochs": 0})
    return execute_resolved(resolve(cfg, "test"))


def test_a_coop_checkpoint_in_dassl_format_scores_what_its_run_scored(data_root, tmp_path):
    trained = resolve(base_run(data_root, tmp_path / "a", method={"name": "coop", "n_ctx": 4}), "test")
    record = execute_resolved(trained)
    ctx = _trained_state(trained, record)["ctx"]
    # Dassl saves the prompt learner's buffers too; the port rebuilds them from the class names
    official = {"ctx": ctx, "token_prefix": torch.zeros(4, 1, 32), "token_suffix": torch.zeros(4, 72, 32)}
    checkpoint = _dassl_checkpoint(tmp_path / "model.pth.tar-2", official, 2)
    again = _evaluate_only(data_root, tmp_path / "b", {"name": "coop", "n_ctx": 4}, checkpoint)
    assert again["metrics"] == record["metrics"] and again["history"] == []
    assert again["checkpoint"]["trainable_sha256"] == tensors_digest({"ctx": ctx})  # exactly the trained context
    assert again["checkpoint"]["tensors"] == 3 and again["checkpoint"]["sha256"].startswith("sha256:")
    assert again["config"]["method"]["checkpoint"] == str(checkpoint.resolve())


def _official_heba_name(ours: str) -> str:
    """``text_adapters.0.attn_in.x`` -> ``text_adapter.1.att_conv.x`` (the inverse of the port's mapping)."""
    tower, index, point, rest = ours.split(".", 3)
    point = {"attn_in": "att_conv", "mlp_hidden": "mlp_conv"}[point]
    return f"{tower.replace('_adapters', '_adapter')}.{int(index) + 1}.{point}.{rest}"


def test_heba_checkpoints_in_official_names_load_and_score_what_their_run_scored(data_root, tmp_path):
    trained = resolve(base_run(data_root, tmp_path / "a", method="heba", optim={"epochs": 1}), "test")
    record = execute_resolved(trained)
    state = _trained_state(trained, record)
    official = {f"adapter_learner.{_official_heba_name(k)}": v for k, v in state.items()}
    again = _evaluate_only(data_root, tmp_path / "b", {"name": "heba"},
                           _dassl_checkpoint(tmp_path / "model.pth.tar-1", official, 1))
    assert again["metrics"] == record["metrics"]
    assert again["checkpoint"]["trainable_sha256"] == tensors_digest(state)  # every adapter, mapped back exactly
    # the golden fixture's official parameters (the official code's names) load the same way
    golden = _evaluate_only(data_root, tmp_path / "c", {"name": "heba"},
                            _dassl_checkpoint(tmp_path / "golden.pth.tar", {f"adapter_learner.{k}": v
                                                                            for k, v in PARAMS.items()}, 30))
    from tests.test_heba import ours
    assert golden["checkpoint"]["tensors"] == len(PARAMS)
    assert golden["checkpoint"]["trainable_sha256"] == tensors_digest({ours(k): v for k, v in PARAMS.items()})


def test_the_run_id_follows_the_checkpoint_content_not_its_path(data_root, tmp_path):
    first = _dassl_checkpoint(tmp_path / "one.pth.tar", {"ctx": torch.zeros(4, 32)}, 1)
    moved = tmp_path / "elsewhere" / "one.pth.tar"
    moved.parent.mkdir()
    shutil.copy(first, moved)
    other = _dassl_checkpoint(tmp_path / "two.pth.tar", {"ctx": torch.ones(4, 32)}, 1)

    def run_id(path: Path) -> str:
        cfg = base_run(data_root, tmp_path, method={"name": "coop", "n_ctx": 4, "checkpoint": str(path)})
        return resolve(cfg, "test").run_id
    plain = resolve(base_run(data_root, tmp_path, method={"name": "coop", "n_ctx": 4}), "test")
    assert run_id(first) == run_id(moved) != run_id(other)
    assert plain.run_id != run_id(first)
    with pytest.raises(ConfigError, match=r"method.checkpoint: .*missing.pth is not a file"):
        run_id(tmp_path / "missing.pth")


def test_a_checkpoint_that_does_not_fit_fails_the_run_with_a_clear_message(data_root, tmp_path):
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint")
    cfg = base_run(data_root, tmp_path / "r", method={"name": "coop", "checkpoint": str(broken)}, optim={"epochs": 0})
    resolved = resolve(cfg, "test")
    outcome = execute_run(RunSpec(resolved.run_id, resolved.config, resolved))
    assert outcome.status == "failed" and outcome.user_error and "is not a readable checkpoint" in outcome.detail
    wrong = _dassl_checkpoint(tmp_path / "heba.pth.tar", {f"adapter_learner.{k}": v for k, v in PARAMS.items()}, 1)
    cfg = base_run(data_root, tmp_path / "r", method={"name": "heba", "text_layers": [1], "checkpoint": str(wrong)},
                   optim={"epochs": 0})
    resolved = resolve(cfg, "test")
    outcome = execute_run(RunSpec(resolved.run_id, resolved.config, resolved))
    assert outcome.status == "failed" and "does not fit heba with these options and backbone" in outcome.detail


def test_resolving_a_resolved_config_keeps_the_checkpoint_digest(data_root, tmp_path):
    """A Slurm job resolves its config.yaml again: the digest stays (and so the run id); a file changed since then
    fails the run when it loads it, naming the file."""
    from jobs.runfolder import read_run_config, write_config
    path = _dassl_checkpoint(tmp_path / "c.pth.tar", {"ctx": torch.zeros(4, 32)}, 1)
    first = resolve(base_run(data_root, tmp_path / "r", method={"name": "coop", "n_ctx": 4, "checkpoint": str(path)},
                             optim={"epochs": 0}), "t")
    write_config(tmp_path, first.config)
    _dassl_checkpoint(path, {"ctx": torch.ones(4, 32)}, 1)  # replaced after the grid was configured
    again = resolve(read_run_config(tmp_path / "config.yaml"), "config.yaml")
    assert again.run_id == first.run_id
    outcome = execute_run(RunSpec(again.run_id, again.config, again))
    assert outcome.status == "failed" and "changed since the run was configured" in outcome.detail
