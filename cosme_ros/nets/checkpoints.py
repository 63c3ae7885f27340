"""Safe import of third-party checkpoints and strict loading into our networks.

Third-party ``.pth`` files are read with ``torch.load(..., weights_only=True)`` only: a pickle that
would run code is refused, never executed. Loading into a module is always strict; every problem
is reported as one :class:`~cosme_ros.errors.CheckpointError` line that names the file.
"""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Dict, Iterable, Mapping

import torch
from torch import Tensor, nn

from cosme_ros.errors import CheckpointError

StateDict = Dict[str, Tensor]


def read_checkpoint(path: str | Path) -> object:
    """Unpickle a checkpoint with ``weights_only=True``; any failure becomes a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "Weights only load failed" in str(exc) or "weights_only" in str(exc):
            raise CheckpointError(
                f"{path}: refused to unpickle: the file holds Python objects other than tensors "
                f"(only plain state dicts are loaded, for safety)") from None
        raise CheckpointError(f"{path}: cannot read checkpoint (truncated or not a torch file: "
                              f"{first})") from None
    except Exception as exc:  # pickle.UnpicklingError and friends from a corrupt stream
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {exc})") from None


def extract_state_dict(obj: object, path: str | Path,
                       wrappers: Iterable[str] = ("model_state", "state_dict", "model")) -> StateDict:
    """Find the tensor dict inside a loaded checkpoint (bare, or under one of ``wrappers``)."""
    if isinstance(obj, Mapping):
        for key in wrappers:
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path}: not a state dict (found {type(obj).__name__})")
    tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise CheckpointError(f"{path}: not a state dict (no tensors among its {len(obj)} entries)")
    return dict(tensors)


def strip_prefix(state: StateDict, prefix: str) -> StateDict:
    """Drop ``prefix`` (e.g. DataParallel's ``module.``) from every key that has it."""
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}


def load_strict(module: nn.Module, state: StateDict, path: str | Path) -> None:
    """Load ``state`` into ``module`` requiring every key on both sides and matching shapes."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
             for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) e.g. {missing[:3]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) e.g. {unexpected[:3]}")
        if wrong:
            parts.append(f"{len(wrong)} shape mismatch(es) e.g. {wrong[:2]}")
        raise CheckpointError(f"{path}: does not fit {type(module).__name__}: " + "; ".join(parts))
    module.load_state_dict(state, strict=True)
