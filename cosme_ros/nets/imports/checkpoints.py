"""Safe import of third-party checkpoints and strict loading into our networks.

Third-party ``.pth`` files are read with ``torch.load(..., weights_only=True)`` only: a pickle that
would run code is refused, never executed. Loading into a module is always strict; every problem
is reported as one :class:`~cosme_ros.errors.CheckpointError` line that names the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterable, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from cosme_ros.errors import CheckpointError

StateDict = Dict[str, Tensor]


# Release checkpoints (VainF's best_score, SML's mean_iu) carry numpy scalars beside the weights.
# Rebuilding a numpy scalar or dtype runs no user code, so these, and only these, are allowed;
# the tuple form covers files pickled under numpy 1.x, whose module path was numpy.core.
_NUMPY_SCALAR_GLOBALS = [
    np._core.multiarray.scalar,
    (np._core.multiarray.scalar, "numpy.core.multiarray.scalar"),
    np.dtype,
    *(
        getattr(np.dtypes, name)
        for name in (
            "Float64DType",
            "Float32DType",
            "Float16DType",
            "Int64DType",
            "Int32DType",
            "BoolDType",
        )
    ),
]


def read_checkpoint(path: str | Path) -> object:
    """Unpickle a checkpoint with ``weights_only=True``; any failure becomes a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        with torch.serialization.safe_globals(_NUMPY_SCALAR_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types here (UnpicklingError, RuntimeError, …)
        text = str(exc)
        if "Weights only load failed" in text:
            raise CheckpointError(
                f"{path}: refused to unpickle: it holds Python objects other than tensors and "
                f"plain containers (only state dicts are loaded, for safety)"
            ) from None
        if "zip archive" in text or "central directory" in text or isinstance(exc, EOFError):
            raise CheckpointError(
                f"{path}: cannot read checkpoint: truncated or corrupt "
                f"(not a complete torch zip archive)"
            ) from None
        reason = text.strip().splitlines()[0][:160] if text.strip() else ""
        raise CheckpointError(
            f"{path}: cannot read checkpoint: not a torch file "
            f"({type(exc).__name__}{': ' + reason if reason else ''})"
        ) from None


def extract_state_dict(
    obj: object, path: str | Path, wrappers: Iterable[str] = ("model_state", "state_dict", "model")
) -> StateDict:
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
    return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state.items()}


def load_strict(module: nn.Module, state: StateDict, path: str | Path) -> None:
    """Load ``state`` into ``module`` requiring every key on both sides and matching shapes."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
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
