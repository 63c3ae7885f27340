"""Dataset readers: every kind on a tiny fake tree, layout errors, and the real data in ../shared."""

import json
import pickle
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from cosme_ros.data.cityscapes import CITYSCAPES_PALETTE
from cosme_ros.data.datasets import CAMVID_TO_TRAINID, KINDS, DatasetError, Sample, open_dataset
from cosme_ros.errors import InputError

H, W = 6, 8


def rgb(seed=0, size=(H, W)):
    return np.random.default_rng(seed).integers(0, 256, size + (3,), dtype=np.uint8)


def write_image(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    assert cv2.imwrite(str(path), image)
    return path


def row_label(values, size=(H, W)):
    """A label image whose columns cycle through ``values``."""
    values = np.asarray(values, np.uint8)
    return np.tile(values[np.arange(size[1]) % len(values)], (size[0], 1))


def test_error_is_an_input_error_and_kinds_are_listed():
    assert issubclass(DatasetError, InputError)
    assert set(KINDS) == {
        "cityscapes",
        "camvid",
        "images",
        "road_anomaly",
        "folder",
        "streethazards",
        "synthetic",
    }


@pytest.mark.parametrize(
    "spec, needle",
    [
        ("nocolon", "KIND:PATH"),
        ("kitti:/tmp", "unknown kind 'kitti'"),
        ("images:", "PATH is empty"),
    ],
)
def test_bad_specs(spec, needle):
    with pytest.raises(DatasetError, match=needle):
        open_dataset(spec)


def test_missing_path(tmp_path):
    with pytest.raises(DatasetError, match="no such file or directory"):
        open_dataset(f"images:{tmp_path / 'nope'}")


# ----------------------------------------------------------------------------- cityscapes


def test_cityscapes_official_layout(tmp_path):
    ids = [7, 26, 0, 33, 4, 24, 9, 23]
    for split, city, stem in (
        ("train", "aachen", "aachen_000000_000019"),
        ("train", "bochum", "bochum_000000_000313"),
        ("val", "lindau", "lindau_000000_000019"),
    ):
        write_image(tmp_path / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", rgb())
        write_image(
            tmp_path / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", row_label(ids)
        )
    ds = open_dataset(f"cityscapes:{tmp_path}")
    assert ds.kind == "cityscapes" and ds.split == "train" and len(ds) == 2
    assert ds.names == ["aachen_000000_000019", "bochum_000000_000313"]
    assert ds.has_semantic and not ds.has_anomaly
    s = ds[1]
    assert isinstance(s, Sample) and s.image.shape == (H, W, 3) and s.image.dtype == np.uint8
    assert s.anomaly is None
    assert s.semantic.dtype == np.uint8
    assert s.semantic[0].tolist() == [0, 13, 255, 18, 255, 11, 255, 10]
    assert len(open_dataset(f"cityscapes:{tmp_path}", split="val")) == 1
    with pytest.raises(DatasetError, match="not 'tset'"):
        open_dataset(f"cityscapes:{tmp_path}", split="tset")
    with pytest.raises(DatasetError, match=r"leftImg8bit/test"):
        open_dataset(f"cityscapes:{tmp_path}", split="test")
    (tmp_path / "gtFine" / "train" / "bochum" / "bochum_000000_000313_gtFine_labelIds.png").unlink()
    with pytest.raises(DatasetError, match="bochum_000000_000313_gtFine_labelIds.png: missing"):
        open_dataset(f"cityscapes:{tmp_path}")


def test_cityscapes_without_gtfine_has_no_labels(tmp_path):
    write_image(
        tmp_path / "leftImg8bit" / "test" / "berlin" / "berlin_000000_000019_leftImg8bit.png", rgb()
    )
    ds = open_dataset(f"cityscapes:{tmp_path}", "test")
    assert not ds.has_semantic and ds[0].semantic is None and ds.notes


def test_cityscapes_flat_folder_with_colour_labels(tmp_path):
    colour = np.zeros((H, W, 3), np.uint8)
    colour[:, :4] = CITYSCAPES_PALETTE[0]  # road
    colour[:, 4:6] = CITYSCAPES_PALETTE[13]  # car
    colour[:, 6:] = (1, 2, 3)  # not a class colour → 255
    rgba = np.concatenate(
        [cv2.cvtColor(colour, cv2.COLOR_RGB2BGR), np.full((H, W, 1), 255, np.uint8)], axis=2
    )
    write_image(tmp_path / "x_leftImg8bit.png", rgb())
    (tmp_path / "x_gtFine_color.png").parent.mkdir(exist_ok=True)
    cv2.imwrite(str(tmp_path / "x_gtFine_color.png"), rgba)  # 4 channels, like the release
    ds = open_dataset(f"cityscapes:{tmp_path}")
    assert ds.names == ["x"] and ds.has_semantic
    assert ds[0].semantic[0].tolist() == [0, 0, 0, 0, 13, 13, 255, 255]


def test_cityscapes_layout_error(tmp_path):
    write_image(tmp_path / "a.png", rgb())
    with pytest.raises(DatasetError, match="leftImg8bit"):
        open_dataset(f"cityscapes:{tmp_path}")


# ----------------------------------------------------------------------------- camvid


def test_camvid_lists_with_release_paths(tmp_path):
    for i in range(3):
        write_image(tmp_path / "train" / f"f{i}.jpg", rgb(i))  # re-encoded: .jpg for .png
        write_image(tmp_path / "trainannot" / f"f{i}.png", row_label(range(2 * i, 2 * i + 8)))
    lines = [
        "/SegNet/CamVid/train/f0.png /SegNet/CamVid/trainannot/f0.png",  # absolute, release
        "train/f1.jpg trainannot/f1.png",  # relative
        "",
        "C:\\CamVid\\train\\f2.png C:\\CamVid\\trainannot\\f2.png",
    ]  # windows-ish
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    ds = open_dataset(f"camvid:{tmp_path}")
    assert ds.split == "train" and ds.names == ["f0", "f1", "f2"] and ds.has_semantic
    sem = ds[0].semantic[0].tolist()
    assert sem == [CAMVID_TO_TRAINID[v] for v in range(8)]
    assert sem == [10, 2, 5, 0, 1, 8, 7, 4]
    assert ds[2].semantic[0].tolist()[-4:] == [13, 11, 12, 255]  # car, pedestrian, bicyclist, void
    with pytest.raises(DatasetError, match=r"val\.txt: missing"):
        open_dataset(f"camvid:{tmp_path}", "val")
    (tmp_path / "val.txt").write_text("val/nope.png valannot/nope.png\n")
    with pytest.raises(DatasetError, match=r"val\.txt:1: image 'val/nope.png' not found"):
        open_dataset(f"camvid:{tmp_path}", "val")
    (tmp_path / "val.txt").write_text("just-one-path\n")
    with pytest.raises(DatasetError, match="expected 'image label'"):
        open_dataset(f"camvid:{tmp_path}", "val")


# ----------------------------------------------------------------------------- images


def test_images_recursive_sorted(tmp_path):
    write_image(tmp_path / "b" / "2.png", rgb(1))
    write_image(tmp_path / "a.jpg", rgb(2))
    write_image(tmp_path / "b" / "1.png", rgb(3))
    (tmp_path / "notes.txt").write_text("not an image")
    ds = open_dataset(f"images:{tmp_path}")
    assert ds.names == ["a", "b/1", "b/2"]
    assert not ds.has_semantic and not ds.has_anomaly
    assert ds[-1].image.shape == (H, W, 3) and ds[-1].semantic is None
    with pytest.raises(IndexError):
        ds[3]
    single = open_dataset(f"images:{tmp_path / 'a.jpg'}")
    assert single.names == ["a"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="no images"):
        open_dataset(f"images:{empty}")


# ----------------------------------------------------------------------------- road anomaly


def test_road_anomaly(tmp_path):
    frames = tmp_path / "frames"
    for name in ("b_deer", "a_cone"):
        write_image(frames / f"{name}.jpg", rgb())
        write_image(frames / f"{name}.labels" / "labels_semantic.png", row_label([0, 2, 0, 1]))
    (tmp_path / "frame_list.json").write_text(json.dumps(["b_deer.jpg", "a_cone.jpg"]))
    ds = open_dataset(f"road_anomaly:{tmp_path}")
    assert ds.names == ["b_deer", "a_cone"]  # frame_list.json order
    assert ds.has_anomaly and not ds.has_semantic
    assert ds[0].anomaly[0].tolist() == [0, 1, 0, 255] * 2
    (frames / "a_cone.labels" / "labels_semantic.png").unlink()
    with pytest.raises(DatasetError, match=r"a_cone.labels/labels_semantic.png: missing"):
        open_dataset(f"road_anomaly:{tmp_path}")
    with pytest.raises(DatasetError, match="frames: missing directory"):
        open_dataset(f"road_anomaly:{frames}")


# ----------------------------------------------------------------------------- folder


def test_folder_masks_by_stem(tmp_path):
    write_image(tmp_path / "images" / "0.jpg", rgb())
    write_image(tmp_path / "images" / "validation0001.jpg", rgb())
    write_image(tmp_path / "images" / "test0001.jpg", rgb())  # no mask: left out
    write_image(tmp_path / "labels_masks" / "0.png", row_label([0, 1, 255, 7]))
    write_image(tmp_path / "labels_masks" / "validation0001_labels_semantic.png", row_label([1, 0]))
    write_image(tmp_path / "labels_masks" / "validation0001_labels_semantic_color.png", rgb())
    ds = open_dataset(f"folder:{tmp_path}")
    assert ds.names == ["0", "validation0001"] and ds.has_anomaly
    assert ds[0].anomaly[0].tolist() == [0, 1, 255, 255] * 2
    assert ds[1].anomaly[0].tolist() == [1, 0] * 4
    assert any("no mask" in n for n in ds.notes) and any("match no image" in n for n in ds.notes)


def test_folder_layout_errors(tmp_path):
    write_image(tmp_path / "images" / "0.jpg", rgb())
    with pytest.raises(DatasetError, match="labels_masks: missing directory"):
        open_dataset(f"folder:{tmp_path}")
    (tmp_path / "labels_masks").mkdir()
    with pytest.raises(DatasetError, match="no mask matches an image"):
        open_dataset(f"folder:{tmp_path}")


def test_label_size_mismatch_is_reported_on_access(tmp_path):
    write_image(tmp_path / "images" / "0.png", rgb())
    write_image(tmp_path / "labels_masks" / "0.png", np.zeros((H + 1, W), np.uint8))
    ds = open_dataset(f"folder:{tmp_path}")
    with pytest.raises(DatasetError, match=r"0\.png: label is 8x7 but its image is 8x6"):
        ds[0]


# ----------------------------------------------------------------------------- streethazards


def _streethazards(root: Path) -> None:
    sem = row_label([1, 2, 3, 4, 5, 6, 7, 8])
    for top, sub, town, name in (
        ("train", "training", "t1-3", "300.png"),
        ("train", "training", "t1-3", "301.png"),
        ("train", "validation", "t4", "400.png"),
        ("test", "test", "t5", "500.png"),
    ):
        write_image(root / top / "images" / sub / town / name, rgb())
        label = sem if top == "train" else row_label([9, 10, 11, 12, 13, 14, 14, 0])
        write_image(root / top / "annotations" / sub / town / name, label)


def test_streethazards(tmp_path):
    _streethazards(tmp_path)
    train = open_dataset(f"streethazards:{tmp_path}")
    assert train.split == "train" and len(train) == 2 and not train.has_anomaly
    # 1 unlabeled, 2 building, 3 fence, 4 other, 5 pedestrian, 6 pole, 7 road line, 8 road
    assert train[0].semantic[0].tolist() == [255, 2, 4, 255, 11, 5, 0, 0]
    assert len(open_dataset(f"streethazards:{tmp_path}", "val")) == 1
    test = open_dataset(f"streethazards:{tmp_path}", "test")
    assert test.has_anomaly and test.names == ["500"]
    s = test[0]
    # 9 sidewalk, 10 vegetation, 11 car, 12 wall, 13 traffic sign, 14 anomaly, 0 (no class)
    assert s.semantic[0].tolist() == [1, 8, 13, 3, 7, 255, 255, 255]
    assert s.anomaly[0].tolist() == [0, 0, 0, 0, 0, 1, 1, 255]
    (tmp_path / "test" / "annotations" / "test" / "t5" / "500.png").unlink()
    with pytest.raises(DatasetError, match=r"t5/500\.png: missing"):
        open_dataset(f"streethazards:{tmp_path}", "test")
    with pytest.raises(DatasetError, match=r"train/images/training/t1-3"):
        open_dataset(f"streethazards:{tmp_path / 'test'}")


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_splits(tmp_path):
    for split in ("train", "test"):
        for i in ("000001", "000002"):
            write_image(tmp_path / split / "images" / f"{i}.png", rgb())
            write_image(tmp_path / split / "semantic" / f"{i}.png", row_label([0, 13, 255, 18]))
            if split == "test":
                write_image(tmp_path / split / "labels_masks" / f"{i}.png", row_label([0, 1, 255]))
    train = open_dataset(f"synthetic:{tmp_path / 'train'}")
    assert train.names == ["000001", "000002"] and train.has_semantic and not train.has_anomaly
    assert train[0].semantic[0].tolist() == [0, 13, 255, 18] * 2
    test = open_dataset(f"synthetic:{tmp_path / 'test'}")
    assert test.has_anomaly and test[1].anomaly[0].tolist()[:3] == [0, 1, 255]
    (tmp_path / "test" / "labels_masks" / "000002.png").unlink()
    with pytest.raises(DatasetError, match=r"labels_masks/000002\.png: missing"):
        open_dataset(f"synthetic:{tmp_path / 'test'}")
    with pytest.raises(DatasetError, match="images: missing directory"):
        open_dataset(f"synthetic:{tmp_path}")  # the parent, not a split directory
    shutil.rmtree(tmp_path / "train" / "semantic")
    with pytest.raises(DatasetError, match="semantic: missing directory"):
        open_dataset(f"synthetic:{tmp_path / 'train'}")


def test_datasets_pickle(tmp_path):
    write_image(tmp_path / "images" / "0.png", rgb())
    write_image(tmp_path / "labels_masks" / "0.png", row_label([0, 1]))
    ds = pickle.loads(pickle.dumps(open_dataset(f"folder:{tmp_path}")))
    assert ds[0].anomaly[0, :2].tolist() == [0, 1]


# ----------------------------------------------------------------------------- real data


def test_real_camvid(shared_data):
    train = open_dataset(f"camvid:{shared_data / 'camvid'}")
    val = open_dataset(f"camvid:{shared_data / 'camvid'}", "val")
    assert (len(train), len(val)) == (367, 101)
    s = val[0]
    assert s.image.shape == (360, 480, 3) and s.semantic.shape == (360, 480)
    allowed = set(CAMVID_TO_TRAINID.values()) | {255}
    assert set(np.unique(s.semantic).tolist()) <= allowed
    assert (s.semantic == 0).mean() > 0.1  # a street: plenty of road


def test_real_road_anomaly(shared_data):
    ds = open_dataset(f"road_anomaly:{shared_data / 'road_anomaly'}")
    assert len(ds) == 60 and ds.has_anomaly
    s = ds[0]
    assert s.image.shape == (720, 1280, 3)
    assert set(np.unique(s.anomaly).tolist()) == {0, 1}  # no void in Road Anomaly


def test_real_fs_static(shared_data):
    ds = open_dataset(f"folder:{shared_data / 'fs_static'}")
    assert len(ds) == 30 and not ds.notes
    s = ds[ds.names.index("0")]
    assert s.image.shape == (1024, 2048, 3)
    assert set(np.unique(s.anomaly).tolist()) == {0, 1, 255}


def test_real_cityscapes_sample(shared_data):
    ds = open_dataset(f"cityscapes:{shared_data / 'cityscapes_sample'}")
    assert ds.names == ["frankfurt_000001_058914"] and ds.has_semantic
    s = ds[0]
    assert s.semantic.shape == (1024, 2048)
    values = set(np.unique(s.semantic).tolist())
    assert {0, 2, 10, 13} <= values and values <= set(range(19)) | {255}


def test_subset_indices_spread_over_the_dataset():
    from cosme_ros.data.datasets import subset_indices

    assert subset_indices(5, None).tolist() == [0, 1, 2, 3, 4]
    assert subset_indices(5, 9).tolist() == [0, 1, 2, 3, 4]
    picked = subset_indices(100, 4).tolist()
    assert picked[0] == 0 and picked[-1] == 99 and len(picked) == 4
    with pytest.raises(ValueError):
        subset_indices(5, 0)


def test_reads_what_the_synthetic_world_writes(tmp_path):
    synth = pytest.importorskip("cosme_ros.data.synth.dataset")
    synth.write_split(tmp_path / "test", "test", 2, 0, (64, 128))
    ds = open_dataset(f"synthetic:{tmp_path / 'test'}")
    assert len(ds) == 2 and ds.has_semantic and ds.has_anomaly
    s = ds[0]
    assert s.image.shape == (64, 128, 3) and s.semantic.shape == s.anomaly.shape == (64, 128)
    assert set(np.unique(s.anomaly).tolist()) <= {0, 1, 255}
    assert set(np.unique(s.semantic).tolist()) <= set(range(19)) | {255}
