"""Training: the AuxCon student (``cosme train-student``) and a DeepLabV3+ teacher from scratch
(``cosme train-teacher``), on shared, deterministic, resumable, data-parallel machinery
(:mod:`.loop`) and driving-image augmentation (:mod:`.augment`)."""

from __future__ import annotations

from typing import Optional


def open_training_data(spec: str, split: Optional[str] = None):
    """``KIND:PATH`` → a dataset (see :func:`cosme_ros.data.datasets.open_dataset`)."""
    from cosme_ros.data.datasets import open_dataset

    return open_dataset(spec, split=split)
