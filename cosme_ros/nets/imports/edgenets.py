"""Import of the EdgeNets project's ESPNetv2 segmentation checkpoints (strict, the width ``s``
and the class count read from the weights)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Tuple

from torch import Tensor

from cosme_ros.errors import CheckpointError
from cosme_ros.nets.espnetv2 import WIDTHS, ESPNetv2Seg
from cosme_ros.nets.imports.checkpoints import (
    extract_state_dict,
    load_strict,
    read_checkpoint,
    strip_prefix,
)


def _config_from_state(state: Dict[str, Tensor], path: Path) -> Tuple[float, int]:
    level2, classifier = "base_net.level2_0.act.weight", "bu_dec_l4.merge_layer.3.weight"
    for key in (level2, classifier):
        if key not in state:
            raise CheckpointError(
                f"{path}: not an ESPNetv2 segmentation checkpoint "
                f"(no {key!r} among its {len(state)} tensors)"
            )
    width = int(state[level2].shape[0])
    by_width = {w[1]: s for s, w in WIDTHS.items()}
    if width not in by_width:
        raise CheckpointError(
            f"{path}: ESPNetv2 level-2 width {width} matches no known s "
            f"(known widths {sorted(by_width)})"
        )
    classes = int(state[classifier].shape[0]) if state[classifier].dim() else 0
    if classes < 2:
        raise CheckpointError(
            f"{path}: the classifier {classifier!r} has {classes} output "
            f"row(s); a segmentation teacher needs at least 2 classes"
        )
    return by_width[width], classes


def load_espnetv2_checkpoint(path: str | Path) -> ESPNetv2Seg:
    """Load an EdgeNets ESPNetv2 segmentation state dict; width and classes come from its shapes.

    Returns the network in eval mode. Any unreadable, foreign or mismatching file raises a one-line
    :class:`CheckpointError` naming it.
    """
    path = Path(path)
    state = strip_prefix(extract_state_dict(read_checkpoint(path), path), "module.")
    s, num_classes = _config_from_state(state, path)
    model = ESPNetv2Seg(s=s, num_classes=num_classes)
    load_strict(model, state, path)
    return model.eval()
