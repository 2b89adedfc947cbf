"""Released checkpoints of the official code (``method.checkpoint: PATH``), evaluated under the suite's protocol.

A run given a checkpoint loads it into the method through the method's ``load_official_state_dict`` (which maps the
official parameter names onto the port's), after ``prepare_fit`` and before the gradient loop; with
``optim.epochs: 0`` the run only evaluates, so a released HeBA, MMA or CoOp model is scored on the suite's splits
next to the user's own runs. Accepted files: Dassl's ``model.pth.tar-N`` / ``model-best.pth.tar`` (a dict whose
``state_dict`` holds the tensors; optimiser and scheduler states are ignored), a plain ``torch.save`` state dict, or
a ``.safetensors`` file. The run id hashes the file's content (:func:`checkpoint_digest`), not its path, so moving
the file keeps the run and replacing its content makes a new one.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from frozen_clip.errors import ConfigError
from frozen_clip.stamps import file_stamp

if TYPE_CHECKING:  # pragma: no cover - typing only: resolving a config imports no torch
    import torch

#: keys under which checkpoint formats keep the tensors (Dassl: ``state_dict``)
STATE_KEYS = ("state_dict", "model", "model_state_dict")


def checkpoint_digest(path: str | Path) -> str:
    """``sha256:<hex>`` of the file's bytes (computed once per path and stamp); ConfigError naming the file when it
    cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"method.checkpoint: {path} is not a file")
    return _digest(str(path.resolve()), file_stamp(path))


@functools.lru_cache(maxsize=64)
def _digest(path: str, stamp: str) -> str:  # ``stamp``: a rewritten file is hashed again
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as err:
        raise ConfigError(f"method.checkpoint: cannot read {path} ({err.strerror or err})") from None
    return f"sha256:{digest.hexdigest()}"


def load_checkpoint(path: str | Path) -> dict[str, "torch.Tensor"]:
    """The tensors of an official checkpoint (see the module docstring), on the CPU."""
    import torch
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(path))
        content: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
        raise ConfigError(f"method.checkpoint: {path} is not a readable checkpoint ({type(err).__name__}: {err})")
    for key in STATE_KEYS:
        if isinstance(content, dict) and isinstance(content.get(key), dict):
            content = content[key]
            break
    if not isinstance(content, dict) or not all(isinstance(v, torch.Tensor) for v in content.values()):
        raise ConfigError(f"method.checkpoint: {path} holds no state dict of tensors (expected a Dassl checkpoint "
                          f"with 'state_dict', a torch.save state dict or a .safetensors file)")
    return dict(content)


def tensors_digest(tensors: dict[str, "torch.Tensor"]) -> str:
    """``sha256:<hex>`` over the names, dtypes, shapes and bytes of ``tensors`` (sorted by name): which weights a
    run evaluated, comparable across runs and files."""
    import torch
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return f"sha256:{digest.hexdigest()}"


__all__ = ["checkpoint_digest", "load_checkpoint", "tensors_digest", "STATE_KEYS"]
