"""``python -m jobs.adaptation_report``: how far a finished run moved from zero-shot, measured on its run folder."""

from __future__ import annotations

import pytest
import torch

from jobs.adaptation_report import main, report
from jobs.config import resolve
from tests.conftest import base_run, execute_resolved


@pytest.mark.parametrize("method, options", [("mma", {"layers": [1, 2]}), ("heba", {})])
def test_report_rebuilds_the_trained_method_and_reproduces_its_base_accuracy(data_root, tmp_path, method, options):
    cfg = base_run(data_root, tmp_path / "results", method={"name": method, **options},
                   optim={"epochs": 2, "lr": 0.05})
    resolved = resolve(cfg, "test")
    record = execute_resolved(resolved)
    from jobs.runfolder import run_dir
    result = report(run_dir(resolved))
    # the trained model the report rebuilds is the one the run evaluated: the same base accuracy to the image
    assert result["accuracy"]["trained"] == pytest.approx(record["metrics"]["base"]["accuracy"], abs=1e-6)
    assert result["param_change"] > 0
    assert result["logit_shift"] > 0 and result["zeroshot_median_margin"] > 0
    assert 0.0 <= result["changed"] <= 1.0 and 0.0 <= result["changed_init"] <= 1.0


def test_a_run_without_gradient_training_is_skipped_with_the_reason(data_root, tmp_path, capsys):
    resolved = resolve(base_run(data_root, tmp_path / "results", method="zeroshot"), "test")
    execute_resolved(resolved)
    from jobs.runfolder import run_dir
    assert main([str(run_dir(resolved))]) == 0
    assert "no checkpoints/last.pt" in capsys.readouterr().err
    assert torch.is_grad_enabled()  # the report computes without gradients but leaves the process as it found it
