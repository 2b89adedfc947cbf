"""The training loop's epoch mechanics: the last partial batch (Dassl drops it, CLIP-LoRA's loader keeps it) and the
per-epoch log line (epoch of how many, time left)."""

from __future__ import annotations

import pytest
import torch

from baselines.clip_lora import CLIPLoRA, CLIPLoRAConfig
from tests.test_clip_lora import CLASSNAMES, context


@pytest.mark.parametrize("last_batch,sizes", [("keep", [4, 4, 2]), ("drop", [4, 4])])
def test_the_last_partial_batch_is_kept_or_dropped(tiny_clip, last_batch, sizes):
    from torch.utils.data import TensorDataset

    from frozen_clip.optim import OptimConfig
    from frozen_clip.trainer import Trainer
    method = CLIPLoRA(tiny_clip, CLASSNAMES, CLIPLoRAConfig(), context())
    optim = OptimConfig(batch_size=4, epochs=3, last_batch=last_batch)
    trainer = Trainer(method, optim, seed=1, device=torch.device("cpu"), log=lambda _: None)
    data = TensorDataset(torch.arange(10), torch.zeros(10, dtype=torch.long))
    batches = list(trainer._loader(data, epoch=1))
    assert [len(b[0]) for b in batches] == sizes and trainer.batches_per_epoch(10) == len(sizes)
    assert trainer.total_iterations(10) == 3 * len(sizes)
    seen = sorted(torch.cat([b[0] for b in batches]).tolist())
    assert len(seen) == sum(sizes) and (seen == list(range(10))) == (last_batch == "keep")
    assert trainer.batches_per_epoch(3) == 1  # a set smaller than one batch is one (partial) batch either way


def test_epoch_lines_count_epochs_and_give_an_eta(tiny_clip):
    """The log line of each epoch says which epoch of how many, and the time left at the mean epoch time so far."""
    from frozen_clip.optim import OptimConfig
    from frozen_clip.trainer import FitResult, Trainer
    method = CLIPLoRA(tiny_clip, CLASSNAMES, CLIPLoRAConfig(), context())
    trainer = Trainer(method, OptimConfig(epochs=30), seed=1, device=torch.device("cpu"), log=lambda _: None)
    result = FitResult(history=[{"epoch": e, "time_s": 3.0} for e in (1, 2)])
    assert trainer._eta(2, result) == ", ETA 1m24s"  # 28 epochs x 3 s
    trainer._first_epoch = 2  # a resumed fit: only its own epochs count
    result.history.append({"epoch": 3, "time_s": 1.0})
    assert trainer._eta(3, result) == ", ETA 54s"  # 27 epochs x mean(3, 1) s
    assert trainer._eta(30, result) == ""
