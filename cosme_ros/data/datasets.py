"""Dataset readers behind one interface, chosen on the command line as ``KIND:PATH``.

``open_dataset("camvid:/data/camvid", split="val")`` returns a :class:`Dataset`: a sized,
indexable collection of :class:`Sample` (name, RGB image, optional Cityscapes-trainId semantic map,
optional anomaly mask). The layout is checked when the dataset is opened — every file a sample
needs must exist — and a problem raises :class:`DatasetError` with one line naming the path and
what was expected. Images and labels are read lazily, one sample at a time.

Label conventions (the same for every kind, whatever the files hold):

- ``semantic``: (H, W) uint8 **Cityscapes trainIds** 0–18, 255 = void / no corresponding class;
- ``anomaly``: (H, W) uint8, 0 = in-distribution, 1 = anomaly, 255 = void (ignored by metrics).

Kinds (:data:`KINDS`):

===============  ==========================================================================
cityscapes       ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` (+ ``gtFine/<split>/<city>/
                 *_gtFine_labelIds.png``, mapped to trainIds with the official table; without a
                 ``gtFine/<split>`` folder the samples have no labels). Split default ``train``.
                 Also a *flat* folder of ``*_leftImg8bit.png`` with ``*_gtFine_labelIds.png`` or
                 ``*_gtFine_color.png`` beside them (colour labels are mapped by exact RGB with
                 :func:`cosme_ros.data.cityscapes.color_to_trainid`; the split is ignored).
camvid           ``train.txt`` / ``val.txt`` / ``test.txt`` of ``image label`` lines (SegNet
                 tutorial release). Paths are resolved inside the folder: as written when
                 relative, else by their last folder + file name, else by file name (absolute
                 paths of the original release such as ``/SegNet/CamVid/train/x.png`` work); an
                 image re-encoded with another suffix is found by its stem. Labels 0–10 are
                 mapped to trainIds by :data:`CAMVID_TO_TRAINID`, 11 (unlabelled) and anything
                 else to 255. Split default ``train``.
images           any folder of images, searched recursively, sorted; no labels.
road_anomaly     Road Anomaly (Lis et al. 2019): ``frames/<name>.<jpg|webp|…>`` and
                 ``frames/<name>.labels/labels_semantic.png`` (0 background → 0, 2 anomaly → 1,
                 anything else → 255; the release has no void). Order from ``frame_list.json``
                 when present.
folder           ``images/`` + ``labels_masks/`` holding 0/1/255 masks matched by stem (mask stem
                 = image stem, optionally followed by ``_labels_semantic``, as in
                 SegmentMeIfYouCan); Fishyscapes Static / L&F, SegmentMeIfYouCan. Images without
                 a mask are left out and listed in :attr:`Dataset.notes`.
streethazards    The StreetHazards release (Hendrycks et al.): ``train/images/training/t1-3``,
                 ``train/images/validation/t4``, ``test/images/test/t5`` with the annotations
                 under ``…/annotations/…`` at the same relative path. Splits ``train`` (default),
                 ``val``, ``test``. See :data:`STREETHAZARDS_TO_TRAINID` for the label mapping.
synthetic        Our synthetic world (``cosme_ros.data.synth``), PATH = one split directory:
                 ``images/<id>.png``, ``semantic/<id>.png`` (uint8 trainIds, 255 void) and, for
                 the test split, ``labels_masks/<id>.png`` (0/1/255).
===============  ==========================================================================
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from cosme_ros.data.cityscapes import IGNORE_ID, color_to_trainid
from cosme_ros.data.images import IMAGE_SUFFIXES, decode_file, read_rgb
from cosme_ros.errors import InputError

__all__ = [
    "DatasetError",
    "Sample",
    "Dataset",
    "KINDS",
    "open_dataset",
    "open_datasets",
    "Mixture",
    "source_chunks",
    "mixture_spec",
    "parse_spec",
    "prefetched_batches",
    "subset_indices",
    "CITYSCAPES_LABELID_TO_TRAINID",
    "CAMVID_CLASSES",
    "CAMVID_TO_TRAINID",
    "STREETHAZARDS_CLASSES",
    "STREETHAZARDS_TO_TRAINID",
    "STREETHAZARDS_ANOMALY",
]


class DatasetError(InputError):
    """A dataset whose layout or files do not match its kind; one line naming the path."""


# ----------------------------------------------------------------------------- label tables


def _lut(pairs: Dict[int, int]) -> np.ndarray:
    lut = np.full(256, IGNORE_ID, dtype=np.uint8)
    for src, dst in pairs.items():
        lut[src] = dst
    return lut


# Official cityscapesscripts labels.py: labelId → trainId (every other id, e.g. parking, guard
# rail, caravan, trailer, license plate, is ignored).
CITYSCAPES_LABELID_TO_TRAINID: Dict[int, int] = {
    7: 0,
    8: 1,
    11: 2,
    12: 3,
    13: 4,
    17: 5,
    19: 6,
    20: 7,
    21: 8,
    22: 9,
    23: 10,
    24: 11,
    25: 12,
    26: 13,
    27: 14,
    28: 15,
    31: 16,
    32: 17,
    33: 18,
}

CAMVID_CLASSES: Tuple[str, ...] = (
    "Sky",
    "Building",
    "Pole",
    "Road",
    "Pavement",
    "Tree",
    "SignSymbol",
    "Fence",
    "Car",
    "Pedestrian",
    "Bicyclist",
    "Unlabelled",
)
# The SegNet 11-class grouping merges several CamVid classes (Building includes walls, SignSymbol
# traffic lights, Car trucks and buses, Pedestrian children), so each maps to its closest
# Cityscapes class and the semantic labels are approximate. Bicyclist → rider (12): the region
# is the riding person together with the bicycle, and most of its pixels are the person (wheels
# are mostly see-through), which Cityscapes labels "rider".
CAMVID_TO_TRAINID: Dict[int, int] = {
    0: 10,  # Sky → sky
    1: 2,  # Building → building
    2: 5,  # Pole → pole
    3: 0,  # Road → road
    4: 1,  # Pavement → sidewalk
    5: 8,  # Tree → vegetation
    6: 7,  # SignSymbol → traffic sign
    7: 4,  # Fence → fence
    8: 13,  # Car → car
    9: 11,  # Pedestrian → person
    10: 12,  # Bicyclist → rider
    # 11 Unlabelled → 255
}

# StreetHazards annotation files hold 1-based class ids (the release's loader subtracts 1):
STREETHAZARDS_CLASSES: Tuple[str, ...] = (
    "unlabeled",
    "building",
    "fence",
    "other",
    "pedestrian",
    "pole",
    "road line",
    "road",
    "sidewalk",
    "vegetation",
    "car",
    "wall",
    "traffic sign",
    "anomaly",
)  # file value = index + 1
STREETHAZARDS_ANOMALY = 14
STREETHAZARDS_TO_TRAINID: Dict[int, int] = {
    2: 2,  # building
    3: 4,  # fence
    5: 11,  # pedestrian → person
    6: 5,  # pole
    7: 0,  # road line → road
    8: 0,  # road
    9: 1,  # sidewalk
    10: 8,  # vegetation
    11: 13,  # car
    12: 3,  # wall
    13: 7,  # traffic sign
    # 1 unlabeled, 4 other, 14 anomaly → 255
}

_CITYSCAPES_LUT = _lut(CITYSCAPES_LABELID_TO_TRAINID)
_CAMVID_LUT = _lut(CAMVID_TO_TRAINID)
_STREETHAZARDS_LUT = _lut(STREETHAZARDS_TO_TRAINID)
# Anomaly masks. StreetHazards: the release's evaluation (eval_ood.py) counts every pixel that is
# not the anomaly class as in-distribution, unlabeled included, so 1–13 → 0 and 14 → 1; a 0 (not
# a class id) → void.
_STREETHAZARDS_ANOMALY_LUT = _lut({**{v: 0 for v in range(1, 14)}, STREETHAZARDS_ANOMALY: 1})
_ROAD_ANOMALY_LUT = _lut({0: 0, 2: 1})
_MASK_LUT = _lut({0: 0, 1: 1})  # 0/1 kept, everything else → 255
_IDENTITY_LUT = np.arange(256, dtype=np.uint8)


# ----------------------------------------------------------------------------- samples


@dataclass
class Sample:
    """One image and whatever labels its dataset has (see the module docstring)."""

    name: str
    image: np.ndarray  # (H, W, 3) uint8 RGB
    semantic: Optional[np.ndarray] = None  # (H, W) uint8 Cityscapes trainIds, 255 void
    anomaly: Optional[np.ndarray] = None  # (H, W) uint8 0 in-distribution, 1 anomaly, 255 void
    # The network input its source asks for (a :class:`Mixture`'s sources keep their aspect
    # ratios), or None: the bundle's.
    input_size: Optional[Tuple[int, int]] = None


@dataclass(frozen=True)
class _Entry:
    name: str
    image: Path
    semantic: Optional[Path] = None
    anomaly: Optional[Path] = None


# How a label file becomes a Sample label: a 256-entry LUT over a grey image, or a function of
# the RGB image (Cityscapes colour labels).
_Decoder = Callable[[Path], np.ndarray]


def _read_label(path: Path) -> np.ndarray:
    """A single-channel 8-bit label image; a grey image stored as RGB is accepted."""
    label = decode_file(path, cv2.IMREAD_UNCHANGED, error=DatasetError, what="label image")
    if label.ndim == 3:
        if label.shape[2] >= 3 and (
            np.array_equal(label[..., 0], label[..., 1])
            and np.array_equal(label[..., 0], label[..., 2])
        ):
            label = label[..., 0]
        else:
            raise DatasetError(
                f"{path}: expected a single-channel label image, got " f"{label.shape[2]} channels"
            )
    if label.dtype != np.uint8:
        if label.dtype == np.uint16 and int(label.max(initial=0)) <= 255:
            label = label.astype(np.uint8)
        else:
            raise DatasetError(f"{path}: expected 8-bit label values, got {label.dtype}")
    return label


class _LutDecoder:
    """Grey label image → ``lut[value]`` (a class, not a lambda: datasets must pickle)."""

    def __init__(self, lut: np.ndarray):
        self.lut = lut

    def __call__(self, path: Path) -> np.ndarray:
        return self.lut[_read_label(path)]


_lut_decoder = _LutDecoder


def _decode_cityscapes_color(path: Path) -> np.ndarray:
    bgr = decode_file(path, cv2.IMREAD_COLOR, error=DatasetError, what="colour label image")
    return color_to_trainid(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


class Dataset:
    """Samples of one dataset, listed (and checked) at open time, read on access.

    Attributes: ``kind``, ``root`` (the PATH of the spec), ``split`` (or None), ``names`` (sample
    names, unique, in order), ``has_semantic`` / ``has_anomaly`` (whether every sample carries
    that label), ``notes`` (things a user should know, e.g. images left out for lack of a label).
    Picklable (paths only), so it can be handed to worker processes.
    """

    def __init__(
        self,
        kind: str,
        root: Path,
        entries: Sequence[_Entry],
        *,
        split: Optional[str] = None,
        semantic: Optional[_Decoder] = None,
        anomaly: Optional[_Decoder] = None,
        notes: Sequence[str] = (),
    ):
        if not entries:
            raise DatasetError(
                f"{root}: no samples found for a {kind} dataset"
                + (f" (split {split!r})" if split else "")
            )
        names = [e.name for e in entries]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})[0]
            raise DatasetError(f"{root}: two samples are named {dup!r}")
        self.kind = kind
        self.root = Path(root)
        self.split = split
        self._entries = list(entries)
        self._semantic = semantic
        self._anomaly = anomaly
        self.notes: List[str] = list(notes)
        # The network input its samples ask for (None: the bundle's); see Sample.input_size.
        self.input_size: Optional[Tuple[int, int]] = None

    @property
    def names(self) -> List[str]:
        return [e.name for e in self._entries]

    @property
    def has_semantic(self) -> bool:
        return self._semantic is not None

    @property
    def has_anomaly(self) -> bool:
        return self._anomaly is not None

    def __len__(self) -> int:
        return len(self._entries)

    def image_path(self, index: int) -> Path:
        return self._entries[index].image

    def __getitem__(self, index: int) -> Sample:
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"dataset indices are integers, got {type(index).__name__}")
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} out of range (dataset of {len(self)})")
        entry = self._entries[index]
        image = read_rgb(entry.image)
        semantic = anomaly = None
        if self._semantic is not None:
            semantic = self._check_size(self._semantic(entry.semantic), image, entry.semantic)
        if self._anomaly is not None:
            anomaly = self._check_size(self._anomaly(entry.anomaly), image, entry.anomaly)
        return Sample(entry.name, image, semantic, anomaly, self.input_size)

    @staticmethod
    def _check_size(label: np.ndarray, image: np.ndarray, path: Path) -> np.ndarray:
        if label.shape != image.shape[:2]:
            raise DatasetError(
                f"{path}: label is {label.shape[1]}x{label.shape[0]} but its image "
                f"is {image.shape[1]}x{image.shape[0]}"
            )
        return np.ascontiguousarray(label, dtype=np.uint8)

    def describe(self) -> str:
        labels = [
            n for n, ok in (("semantic", self.has_semantic), ("anomaly", self.has_anomaly)) if ok
        ]
        split = f" {self.split}" if self.split else ""
        return (
            f"{self.kind}{split} at {self.root}: {len(self)} image(s), labels: "
            f"{', '.join(labels) or 'none'}"
        )

    def __repr__(self) -> str:
        return f"Dataset({self.describe()})"


# ----------------------------------------------------------------------------- helpers


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def _need_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{path}: missing directory ({what})")
    return path


def _split(
    split: Optional[str], allowed: Sequence[str], default: str, root: Path, kind: str
) -> str:
    split = default if split is None else split
    if split not in allowed:
        raise DatasetError(
            f"{root}: a {kind} dataset has splits {', '.join(allowed)}, " f"not {split!r}"
        )
    return split


def _images_under(folder: Path) -> List[Path]:
    return sorted(p for p in folder.rglob("*") if _is_image(p))


# ----------------------------------------------------------------------------- kinds


def _open_cityscapes(root: Path, split: Optional[str]) -> Dataset:
    if (root / "leftImg8bit").is_dir():
        split = _split(split, ("train", "val", "test", "train_extra"), "train", root, "cityscapes")
        images_dir = _need_dir(
            root / "leftImg8bit" / split,
            f"Cityscapes images leftImg8bit/{split}/<city>/*_leftImg8bit.png",
        )
        label_dir = root / "gtFine" / split
        has_labels = label_dir.is_dir()
        entries = []
        for image in sorted(images_dir.glob("*/*_leftImg8bit.png")):
            stem = image.name[: -len("_leftImg8bit.png")]
            label = label_dir / image.parent.name / f"{stem}_gtFine_labelIds.png"
            if has_labels and not label.is_file():
                raise DatasetError(
                    f"{label}: missing (the labelIds of {image.name}; gtFine/{split}"
                    f" exists, so every image needs one)"
                )
            entries.append(_Entry(stem, image, label if has_labels else None))
        if not entries:
            raise DatasetError(f"{images_dir}: no <city>/*_leftImg8bit.png images")
        notes = [] if has_labels else [f"{label_dir} is absent: images without labels"]
        return Dataset(
            "cityscapes",
            root,
            entries,
            split=split,
            semantic=_lut_decoder(_CITYSCAPES_LUT) if has_labels else None,
            notes=notes,
        )

    # Flat folder (e.g. ../shared/data/cityscapes_sample): labelIds preferred, else colour.
    if not root.is_dir():
        raise DatasetError(f"{root}: no such directory")
    images = sorted(root.glob("*_leftImg8bit.*"))
    images = [p for p in images if _is_image(p)]
    if not images:
        raise DatasetError(
            f"{root}: expected leftImg8bit/<split>/<city>/*_leftImg8bit.png, or a "
            f"flat folder of *_leftImg8bit.png images"
        )
    ids = [root / (p.name.split("_leftImg8bit")[0] + "_gtFine_labelIds.png") for p in images]
    colors = [root / (p.name.split("_leftImg8bit")[0] + "_gtFine_color.png") for p in images]
    if all(p.is_file() for p in ids):
        labels, decoder = ids, _lut_decoder(_CITYSCAPES_LUT)
    elif all(p.is_file() for p in colors):
        labels, decoder = colors, _decode_cityscapes_color
    elif not any(p.is_file() for p in ids + colors):
        labels, decoder = [None] * len(images), None
    else:
        missing = next(c for i, c in zip(ids, colors) if not i.is_file() and not c.is_file())
        raise DatasetError(
            f"{missing}: missing (some images have *_gtFine_labelIds.png or "
            f"*_gtFine_color.png labels, so every image needs one)"
        )
    entries = [_Entry(p.name.split("_leftImg8bit")[0], p, lab) for p, lab in zip(images, labels)]
    return Dataset("cityscapes", root, entries, split=None, semantic=decoder)


def _resolve_in(root: Path, written: str, image: bool) -> Optional[Path]:
    """A path from a list file, found inside ``root`` (see the camvid kind)."""
    p = Path(written.replace("\\", "/"))
    tails = []
    if not p.is_absolute():
        tails.append(p)
    if len(p.parts) >= 2:
        tails.append(Path(*p.parts[-2:]))
    tails.append(Path(p.name))
    for tail in tails:
        if (root / tail).is_file():
            return root / tail
    if image:  # the same stem re-encoded (this copy's JPEGs vs the release's PNGs)
        for tail in tails:
            folder = (root / tail).parent
            if folder.is_dir():
                for suffix in IMAGE_SUFFIXES:
                    cand = folder / (tail.stem + suffix)
                    if cand.is_file():
                        return cand
    if p.is_absolute() and p.is_file():
        return p
    return None


def _open_camvid(root: Path, split: Optional[str]) -> Dataset:
    split = _split(split, ("train", "val", "test"), "train", root, "camvid")
    listing = root / f"{split}.txt"
    if not listing.is_file():
        raise DatasetError(
            f"{listing}: missing (CamVid list of 'image label' lines for split " f"{split!r})"
        )
    entries = []
    for lineno, line in enumerate(listing.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise DatasetError(f"{listing}:{lineno}: expected 'image label', got {line.strip()!r}")
        image = _resolve_in(root, parts[0], image=True)
        label = _resolve_in(root, parts[1], image=False)
        for written, found, what in ((parts[0], image, "image"), (parts[1], label, "label")):
            if found is None:
                raise DatasetError(
                    f"{listing}:{lineno}: {what} {written!r} not found under " f"{root}"
                )
        entries.append(_Entry(image.stem, image, label))
    return Dataset("camvid", root, entries, split=split, semantic=_lut_decoder(_CAMVID_LUT))


def _open_images(root: Path, split: Optional[str]) -> Dataset:
    if _is_image(root):
        return Dataset("images", root.parent, [_Entry(root.stem, root)])
    _need_dir(root, "a folder of images")
    files = _images_under(root)
    if not files:
        raise DatasetError(
            f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder or " f"below"
        )
    entries = [_Entry(p.relative_to(root).with_suffix("").as_posix(), p) for p in files]
    return Dataset("images", root, entries)


def _open_road_anomaly(root: Path, split: Optional[str]) -> Dataset:
    frames = _need_dir(
        root / "frames",
        "Road Anomaly frames/<name>.jpg with " "frames/<name>.labels/labels_semantic.png",
    )
    listing = root / "frame_list.json"
    if listing.is_file():
        try:
            files = json.loads(listing.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise DatasetError(f"{listing}: not valid JSON ({exc})") from None
        if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
            raise DatasetError(f"{listing}: expected a JSON list of frame file names")
        images = []
        for name in files:
            path = frames / name
            if not path.is_file():  # the readme speaks of .webp; accept any image suffix
                alt = [frames / (Path(name).stem + s) for s in IMAGE_SUFFIXES]
                path = next((a for a in alt if a.is_file()), path)
            if not path.is_file():
                raise DatasetError(f"{path}: missing (listed in {listing.name})")
            images.append(path)
    else:
        images = sorted(p for p in frames.iterdir() if _is_image(p))
    entries = []
    for image in images:
        label = frames / f"{image.stem}.labels" / "labels_semantic.png"
        if not label.is_file():
            raise DatasetError(f"{label}: missing (the label of {image.name})")
        entries.append(_Entry(image.stem, image, anomaly=label))
    return Dataset("road_anomaly", root, entries, anomaly=_lut_decoder(_ROAD_ANOMALY_LUT))


_MASK_SUFFIXES = ("", "_labels_semantic")


def _open_folder(root: Path, split: Optional[str]) -> Dataset:
    images_dir = _need_dir(root / "images", "images/ with labels_masks/ beside it")
    masks_dir = _need_dir(
        root / "labels_masks",
        "labels_masks/ with 0/1/255 masks named like " "the images in images/",
    )
    images = sorted(p for p in images_dir.iterdir() if _is_image(p))
    if not images:
        raise DatasetError(f"{images_dir}: no images")
    masks: Dict[str, Path] = {}
    for m in sorted(masks_dir.iterdir()):
        if _is_image(m):
            stem = m.stem
            for suffix in _MASK_SUFFIXES[1:]:
                if stem.endswith(suffix):
                    stem = stem[: -len(suffix)]
            masks.setdefault(stem, m)
    entries, unlabeled = [], []
    for image in images:
        if image.stem in masks:
            entries.append(_Entry(image.stem, image, anomaly=masks.pop(image.stem)))
        else:
            unlabeled.append(image.name)
    if not entries:
        raise DatasetError(f"{masks_dir}: no mask matches an image in {images_dir} by stem")
    notes = []
    if unlabeled:
        notes.append(
            f"{len(unlabeled)} image(s) in {images_dir} have no mask and are left out "
            f"(first: {unlabeled[0]})"
        )
    if masks:  # e.g. SegmentMeIfYouCan's *_labels_semantic_color.png visualisations
        notes.append(
            f"{len(masks)} file(s) in {masks_dir} match no image and are ignored "
            f"(first: {sorted(masks.values())[0].name})"
        )
    return Dataset("folder", root, entries, anomaly=_lut_decoder(_MASK_LUT), notes=notes)


_STREETHAZARDS_SPLITS = {
    "train": ("train", "training", "t1-3"),
    "val": ("train", "validation", "t4"),
    "test": ("test", "test", "t5"),
}


def _open_streethazards(root: Path, split: Optional[str]) -> Dataset:
    split = _split(split, tuple(_STREETHAZARDS_SPLITS), "train", root, "streethazards")
    top, sub, town = _STREETHAZARDS_SPLITS[split]
    images_dir = _need_dir(
        root / top / "images" / sub / town,
        f"StreetHazards {split} images {top}/images/{sub}/{town}/*.png",
    )
    ann_dir = _need_dir(
        root / top / "annotations" / sub / town,
        f"StreetHazards {split} annotations {top}/annotations/{sub}/{town}/*.png",
    )
    entries = []
    for image in _images_under(images_dir):
        rel = image.relative_to(images_dir)
        label = ann_dir / rel.with_suffix(".png")
        if not label.is_file():
            raise DatasetError(f"{label}: missing (the annotation of {image.name})")
        name = rel.with_suffix("").as_posix()
        entries.append(
            _Entry(name, image, semantic=label, anomaly=label if split == "test" else None)
        )
    return Dataset(
        "streethazards",
        root,
        entries,
        split=split,
        semantic=_lut_decoder(_STREETHAZARDS_LUT),
        anomaly=_lut_decoder(_STREETHAZARDS_ANOMALY_LUT) if split == "test" else None,
    )


def _open_synthetic(root: Path, split: Optional[str]) -> Dataset:
    images_dir = _need_dir(
        root / "images",
        "synthetic images/<id>.png (PATH is one split "
        "directory written by the synthetic world renderer)",
    )
    sem_dir = _need_dir(root / "semantic", "synthetic semantic/<id>.png trainId maps")
    masks_dir = root / "labels_masks"
    has_masks = masks_dir.is_dir()
    images = sorted(p for p in images_dir.iterdir() if _is_image(p))
    if not images:
        raise DatasetError(f"{images_dir}: no images")
    entries = []
    for image in images:
        sem = sem_dir / f"{image.stem}.png"
        if not sem.is_file():
            raise DatasetError(f"{sem}: missing (the semantic map of {image.name})")
        mask = masks_dir / f"{image.stem}.png"
        if has_masks and not mask.is_file():
            raise DatasetError(
                f"{mask}: missing (the anomaly mask of {image.name}; labels_masks/"
                f" exists, so every image needs one)"
            )
        entries.append(_Entry(image.stem, image, sem, mask if has_masks else None))
    return Dataset(
        "synthetic",
        root,
        entries,
        split=split,
        semantic=_lut_decoder(_IDENTITY_LUT),
        anomaly=_lut_decoder(_MASK_LUT) if has_masks else None,
    )


KINDS: Dict[str, Callable[[Path, Optional[str]], Dataset]] = {
    "cityscapes": _open_cityscapes,
    "camvid": _open_camvid,
    "images": _open_images,
    "road_anomaly": _open_road_anomaly,
    "folder": _open_folder,
    "streethazards": _open_streethazards,
    "synthetic": _open_synthetic,
}


def parse_spec(spec: str) -> Tuple[str, Path]:
    """``"KIND:PATH"`` → (kind, path). The kind is case-insensitive; PATH may contain ':'."""
    if not isinstance(spec, str) or ":" not in spec:
        raise DatasetError(
            f"dataset {spec!r}: expected KIND:PATH with KIND one of " f"{', '.join(KINDS)}"
        )
    kind, _, path = spec.partition(":")
    kind = kind.strip().lower().replace("-", "_")
    if kind not in KINDS:
        raise DatasetError(
            f"dataset {spec!r}: unknown kind {kind!r}; choose one of " f"{', '.join(KINDS)}"
        )
    if not path:
        raise DatasetError(f"dataset {spec!r}: PATH is empty")
    return kind, Path(os.path.expanduser(path))


def open_dataset(spec: str, split: Optional[str] = None) -> Dataset:
    """Open ``KIND:PATH`` (see the module docstring); ``split`` where the kind has splits.

    Raises :class:`DatasetError` naming the path and what was expected when the layout does not
    match. A split given to a kind without splits (images, road_anomaly, folder, synthetic) is
    recorded but has no effect on which files are read.
    """
    kind, root = parse_spec(spec)
    if not root.exists():
        raise DatasetError(f"{root}: no such file or directory (dataset {spec!r})")
    return KINDS[kind](root, split)


class Mixture:
    """Several datasets read as one (``--data A --data B``), each source at its own network input
    size (KITTI's 3.3:1 frames and Cityscapes' 2:1 ones, neither stretched to the other).

    It has :class:`Dataset`'s interface; sample names are ``<source index>/<kind>/<name>`` (unique
    even when two folders hold the same file names) and every
    :class:`Sample` carries its source's ``input_size``. :attr:`groups` gives each sample's source,
    so that a batch can be drawn from one source (a batch is one tensor: one size).
    """

    kind = "mixture"

    def __init__(self, parts: Sequence[Dataset], sizes: Sequence[Optional[Tuple[int, int]]]):
        if len(parts) < 2 or len(sizes) != len(parts):
            raise ValueError("a Mixture needs two or more datasets and one input size for each")
        self.parts, self.sizes = list(parts), [None if s is None else tuple(s) for s in sizes]
        self.root, self.split = self.parts[0].root, self.parts[0].split
        self.notes = [n for d in self.parts for n in d.notes]
        self._where = [(p, i) for p, d in enumerate(self.parts) for i in range(len(d))]
        self.groups = np.array([p for p, _ in self._where], dtype=np.int64)

    @property
    def names(self) -> List[str]:
        return [self._name(p, self.parts[p].names[i]) for p, i in self._where]

    def _name(self, source: int, name: str) -> str:
        return f"{source}/{self.parts[source].kind}/{name}"

    @property
    def has_semantic(self) -> bool:
        return all(d.has_semantic for d in self.parts)

    @property
    def has_anomaly(self) -> bool:
        return all(d.has_anomaly for d in self.parts)

    def __len__(self) -> int:
        return len(self._where)

    def image_path(self, index: int) -> Path:
        p, i = self._where[index]
        return self.parts[p].image_path(i)

    def __getitem__(self, index: int) -> Sample:
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"dataset indices are integers, got {type(index).__name__}")
        p, i = self._where[index]
        sample = self.parts[p][i]
        sample.name = self._name(p, sample.name)
        sample.input_size = self.sizes[p]
        if not self.has_semantic:
            sample.semantic = None
        if not self.has_anomaly:
            sample.anomaly = None
        return sample

    def describe(self) -> str:
        def size(s):
            return f" at {s[0]}x{s[1]}" if s else ""

        return "mixture of " + " + ".join(
            f"({d.describe()}{size(s)})" for d, s in zip(self.parts, self.sizes)
        )

    def __repr__(self) -> str:
        return f"Mixture({self.describe()})"


def _per_source(count: int, sizes: Sequence[Tuple[int, int]]) -> List[Optional[Tuple[int, int]]]:
    """``--input-size`` given never, once or once per ``--data`` source → one size (or None: the
    bundle's) per source."""
    sizes = [tuple(s) for s in sizes]
    if len(sizes) not in (0, 1, count):
        raise DatasetError(
            f"--input-size given {len(sizes)} times for {count} --data sources: give it "
            f"once (for every source) or once per source, in the same order"
        )
    return sizes if len(sizes) == count else [sizes[0] if sizes else None] * count


def open_datasets(
    specs: Sequence[str],
    split: Optional[str] = None,
    sizes: Sequence[Tuple[int, int]] = (),
):
    """``--data`` given once or more, with ``--input-size`` given never, once (for every source)
    or once per source → a :class:`Dataset` (one source, its samples at that input size) or a
    :class:`Mixture`."""
    if not specs:
        raise DatasetError("give at least one --data KIND:PATH")
    per_source = _per_source(len(specs), sizes)
    parts = [open_dataset(spec, split) for spec in specs]
    if len(parts) == 1:
        parts[0].input_size = per_source[0]
        return parts[0]
    return Mixture(parts, per_source)


def mixture_spec(specs: Sequence[str], sizes: Sequence[Tuple[int, int]] = ()) -> str:
    """How a run records its data: the specs joined by `` + ``, each with its input size."""
    if len(specs) == 1:
        return specs[0]
    per = _per_source(len(specs), sizes)
    return " + ".join(s if z is None else f"{s}@{z[0]}x{z[1]}" for s, z in zip(specs, per))


def source_chunks(
    subset: np.ndarray, batch: int, groups: Optional[np.ndarray] = None
) -> List[np.ndarray]:
    """``subset`` cut into chunks of at most ``batch`` indices in order, each from one source
    (``groups[i]`` is index i's source; None: one source)."""
    if groups is None:
        return [subset[i : i + batch] for i in range(0, len(subset), batch)]
    chunks: List[np.ndarray] = []
    start = 0
    for end in range(1, len(subset) + 1):
        if (
            end == len(subset)
            or groups[subset[end]] != groups[subset[start]]
            or end - start == batch
        ):
            chunks.append(subset[start:end])
            start = end
    return chunks


def prefetched_batches(
    dataset: "Dataset", batches: Sequence[np.ndarray], pool: Optional[ThreadPoolExecutor]
) -> Iterator[List["Sample"]]:
    """The samples of each batch of indices in order, the next batch decoding in ``pool``'s
    threads meanwhile (in this thread when ``pool`` is None)."""
    if pool is None:
        for b in batches:
            yield [dataset[int(i)] for i in b]
        return

    def submit(b):
        return [pool.submit(dataset.__getitem__, int(i)) for i in b]

    pending = submit(batches[0]) if len(batches) else []
    for j in range(len(batches)):
        current = pending
        pending = submit(batches[j + 1]) if j + 1 < len(batches) else []
        yield [f.result() for f in current]


def subset_indices(n: int, max_items: Optional[int]) -> np.ndarray:
    """``max_items`` indices of ``range(n)`` spread evenly over it (all when None or larger).

    Datasets are usually ordered by city or sequence, so the first N images would all come from
    one place; evenly spaced ones do not depend on any seed either.
    """
    if max_items is not None and max_items < 1:
        raise ValueError(f"max_items must be >= 1, got {max_items}")
    if max_items is None or max_items >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, int(max_items)).round().astype(np.int64))
