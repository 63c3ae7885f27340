"""Safe checkpoint reading: release files with numpy scalars load, code-running pickles never do."""

import collections
import pickle

import numpy as np
import pytest
import torch

from cosme_ros.errors import CheckpointError
from cosme_ros.nets.imports.checkpoints import extract_state_dict, read_checkpoint


def test_release_metadata_with_numpy_scalars_loads(tmp_path):
    # VainF saves {'model_state', 'best_score': np.float64}; SML saves 'mean_iu' from np.nanmean.
    path = tmp_path / "release.pth"
    torch.save(
        {
            "model_state": {"w": torch.ones(3)},
            "best_score": np.float64(0.78),
            "mean_iu": np.nanmean(np.array([0.5, 0.7], np.float32)),
            "epoch": 12,
        },
        path,
    )
    state = extract_state_dict(read_checkpoint(path), path)
    assert list(state) == ["w"] and torch.equal(state["w"], torch.ones(3))


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as fh:
        pickle.dump({"state_dict": {}, "x": Payload()}, fh)
    with pytest.raises(CheckpointError, match="refused to unpickle|not a torch file"):
        read_checkpoint(path)
    assert "this must never run" not in capsys.readouterr().out


def test_ordered_dict_under_state_dict_key(tmp_path):
    path = tmp_path / "nv.pth"
    torch.save(
        {
            "state_dict": collections.OrderedDict([("module.conv.weight", torch.zeros(1))]),
            "epoch": 3,
        },
        path,
    )
    assert list(extract_state_dict(read_checkpoint(path), path)) == ["module.conv.weight"]


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        read_checkpoint(tmp_path / "absent.pth")
