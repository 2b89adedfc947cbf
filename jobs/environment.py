"""The device a run computes on, its numeric precision, and the environment recorded with its results."""

from __future__ import annotations

import os
import platform
import socket
from typing import Any

import torch

from frozen_clip.errors import ConfigError, SuiteError
from jobs.runfolder import LAUNCH_ID_ENV

SUITE_VERSION = "0.1.0"


def pick_device(name: str) -> torch.device:
    """``auto`` -> the first CUDA device if any, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SuiteError(f"device {name!r} requested but CUDA is not available")
    return device


def run_precision(config: dict[str, Any], official: Any, device: torch.device) -> Any:
    """The :class:`~frozen_clip.precision.ResolvedPrecision` a run computes in on ``device``. It must be the one its
    config was resolved with (and its id hashes): a config resolved for CUDA that lands on a CPU, or the other way
    round, is a :class:`ConfigError` naming the way out, never a run that silently computes otherwise."""
    from frozen_clip.precision import ResolvedPrecision, resolve_precision
    here = resolve_precision(config["precision"], device.type, official)
    stored = config.get("resolved_precision") or {"train": "fp32", "eval": "fp32"}
    if (here.train, here.eval) != (stored["train"], stored["eval"]):
        planned = ResolvedPrecision(stored["train"], stored["eval"])
        raise ConfigError(f"this run was configured to compute in {planned.describe()} (precision "
                          f"{config['precision']!r} on the device the grid was resolved for) but runs on {device}, "
                          f"where it would compute in {here.describe()}; set device: cuda or device: cpu (or an "
                          "explicit precision) so the run id says what it computes")
    return here


def make_deterministic() -> None:
    """cuDNN picks the same kernels every time (no autotuning, deterministic algorithms)."""
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def environment(device: torch.device, precision: Any, commit: str | None, code: str | None = None,
                official: Any = None) -> dict[str, Any]:
    """Versions, the suite's commit (``commit``) and which code that is (``code``:
    :func:`jobs.runfolder.code_version`, also set outside a git checkout), device and host of the run, and its
    precision (``precision``: the :class:`~frozen_clip.precision.ResolvedPrecision`; ``precision_note`` says when it
    is not the official one, ``official``: the method's :class:`~frozen_clip.contract.OfficialPrecision`)."""
    import open_clip
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {"versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "open_clip": open_clip.__version__, "suite": SUITE_VERSION},
            "git_sha": commit, "code": code, "launch_id": os.environ.get(LAUNCH_ID_ENV), "pid": os.getpid(),
            "device": str(device), "device_name": name, "precision": precision.train,
            "precision_eval": precision.eval, "precision_note": _precision_note(precision, official, device),
            "threads": torch.get_num_threads(), "hostname": socket.gethostname()}


def _precision_note(precision: Any, official: Any, device: torch.device) -> str | None:
    """A sentence when the run's precision is not the official code's (e.g. every CPU run of CoOp)."""
    if official is None or (precision.train, precision.eval) == (official.train, official.eval):
        return None
    where = "on a CPU" if device.type == "cpu" else "as configured"
    return f"computed in {precision.describe()} {where}; the official code runs in {official.describe()} on a GPU"
