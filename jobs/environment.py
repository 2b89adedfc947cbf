"""The device a run computes on, its numeric precision, and the environment recorded with its results."""

from __future__ import annotations

import os
import platform
import socket
from typing import Any

import torch

from frozen_clip.errors import SuiteError
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


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> fp32 on CPU, ``amp_fp16`` on an accelerator; any other value as given."""
    if precision != "auto":
        return precision
    return "fp32" if device.type == "cpu" else "amp_fp16"


def make_deterministic() -> None:
    """cuDNN picks the same kernels every time (no autotuning, deterministic algorithms)."""
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def environment(device: torch.device, precision: str, commit: str | None, code: str | None = None) -> dict[str, Any]:
    """Versions, the suite's commit (``commit``) and which code that is (``code``:
    :func:`jobs.runfolder.code_version`, also set outside a git checkout), device and host of the run."""
    import open_clip
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {"versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "open_clip": open_clip.__version__, "suite": SUITE_VERSION},
            "git_sha": commit, "code": code, "launch_id": os.environ.get(LAUNCH_ID_ENV), "pid": os.getpid(),
            "device": str(device), "device_name": name, "precision": precision,
            "threads": torch.get_num_threads(), "hostname": socket.gethostname()}
