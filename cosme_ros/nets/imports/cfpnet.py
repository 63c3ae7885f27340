"""Import of the CFPNet Cityscapes checkpoint of ``zh320/realtime-semantic-segmentation-pytorch``
(a dict with ``state_dict``, ``cur_epoch``, ``best_score``, ``optimizer``, ``scheduler``; only the
weights are read, strictly, the class count from the head's shape)."""

from __future__ import annotations

from pathlib import Path

from cosme_ros.errors import CheckpointError
from cosme_ros.nets.cfpnet import CFPNet
from cosme_ros.nets.imports.checkpoints import (
    extract_state_dict,
    load_strict,
    read_checkpoint,
    strip_prefix,
)

HEAD = "seg_head.0.weight"


def load_cfpnet_checkpoint(path: str | Path) -> CFPNet:
    """Load a CFPNet checkpoint into :class:`CFPNet`, in eval mode. A foreign, unreadable or
    mismatching file raises a one-line :class:`CheckpointError` naming it (and the first keys
    that do not fit)."""
    path = Path(path)
    state = strip_prefix(extract_state_dict(read_checkpoint(path), path), "module.")
    if HEAD not in state:
        raise CheckpointError(
            f"{path}: not a CFPNet checkpoint (no {HEAD!r} among its {len(state)} tensors)"
        )
    classes = int(state[HEAD].shape[0]) if state[HEAD].dim() == 4 else 0
    if classes < 2:
        raise CheckpointError(
            f"{path}: the classifier {HEAD!r} has {classes} output row(s); a segmentation "
            f"teacher needs at least 2 classes"
        )
    model = CFPNet(num_classes=classes)
    load_strict(model, state, path)
    return model.eval()
