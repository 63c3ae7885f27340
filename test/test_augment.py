"""Training augmentation: seeded, crops to the training size, geometry identical for image and label."""

import numpy as np
import pytest

from cosme_ros.train.augment import (
    IGNORE_ID,
    PAD_RGB,
    AugmentConfig,
    augment,
    cover_scale,
    resize_for_eval,
    shrink_for_training,
)
from cosme_ros.train.loop import sample_rng

PALETTE = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200], [220, 220, 40]], np.uint8)


def scene(h=120, w=240):
    """Four big blocks whose colour is a function of their label: geometry can be checked."""
    label = np.zeros((h, w), np.uint8)
    label[: h // 2, w // 2 :] = 1
    label[h // 2 :, : w // 3] = 2
    label[h // 2 :, w // 3 :] = 3
    return PALETTE[label], label


def agreement(image, label):
    """Fraction of labelled pixels whose colour is nearest to their label's palette colour."""
    d = ((image[:, :, None, :].astype(int) - PALETTE[None, None].astype(int)) ** 2).sum(-1)
    ok = label != IGNORE_ID
    return float((d.argmin(-1)[ok] == label[ok]).mean())


def test_shapes_dtypes_and_determinism():
    image, label = scene()
    cfg = AugmentConfig(size=(64, 128))
    a = augment(image, label, sample_rng(3, 7, 11), cfg)
    b = augment(image, label, sample_rng(3, 7, 11), cfg)
    c = augment(image, label, sample_rng(3, 8, 11), cfg)
    assert a[0].shape == (64, 128, 3) and a[0].dtype == np.uint8 and a[0].flags.c_contiguous
    assert a[1].shape == (64, 128) and a[1].dtype == np.uint8 and a[1].flags.c_contiguous
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    # without a label: the very same image
    alone, none = augment(image, None, sample_rng(3, 7, 11), cfg)
    assert none is None and np.array_equal(alone, a[0])


@pytest.mark.parametrize("seed", range(12))
def test_label_follows_the_image(seed):
    image, label = scene()
    cfg = AugmentConfig(size=(64, 128), brightness=0, contrast=0, saturation=0)
    out_image, out_label = augment(image, label, sample_rng(seed, 0, 0), cfg)
    # nearest-neighbour labels: only source values and the pad value
    assert set(np.unique(out_label)) <= {0, 1, 2, 3, IGNORE_ID}
    assert agreement(out_image, out_label) > 0.97
    pad = out_label == IGNORE_ID
    if pad.any():
        assert np.all(out_image[pad] == PAD_RGB)


def test_flip_scale_and_padding_all_happen():
    image, label = scene()
    cfg = AugmentConfig(size=(60, 120), brightness=0, contrast=0, saturation=0)
    flipped = padded = zoomed = 0
    for seed in range(40):
        img, lab = augment(image, label, sample_rng(seed, 0, 0), cfg)
        # class 1 is top-right in the source: a flip puts it on the left
        top = lab[:20]
        cols = np.nonzero((top == 1).any(0))[0]
        if cols.size and cols.mean() < 60:
            flipped += 1
        padded += int((lab == IGNORE_ID).any())
        zoomed += int(not (lab == IGNORE_ID).any())
    assert 10 < flipped < 30 and padded > 5 and zoomed > 5


def test_colour_jitter_is_mild_and_keeps_geometry():
    image, label = scene()
    cfg = AugmentConfig(size=(64, 128), scale=(1.0, 1.0), flip=False)
    base = augment(
        image,
        label,
        sample_rng(0, 0, 0),
        AugmentConfig(
            size=(64, 128), scale=(1.0, 1.0), flip=False, brightness=0, contrast=0, saturation=0
        ),
    )[0].astype(float)
    for seed in range(10):
        img, lab = augment(image, label, sample_rng(0, 0, seed), cfg)
        ratio = img.mean() / base.mean()
        assert 0.6 < ratio < 1.4
        assert agreement(img, lab) > 0.97


def test_shrink_for_training_and_cover_scale():
    big = np.zeros((1024, 2048, 3), np.uint8)
    lab = np.zeros((1024, 2048), np.uint8)
    im, lb = shrink_for_training(big, lab, (128, 256), max_scale=1.25)
    assert im.shape == (160, 320, 3) and lb.shape == (160, 320)
    small = np.zeros((100, 200, 3), np.uint8)
    assert shrink_for_training(small, None, (128, 256))[0] is small
    assert cover_scale((100, 400), (50, 100)) == 0.5
    assert resize_for_eval(big, (64, 128)).shape == (64, 128, 3)


def test_rejects_mismatched_inputs():
    image, label = scene()
    cfg = AugmentConfig(size=(32, 64))
    with pytest.raises(ValueError):
        augment(image, label[:10], sample_rng(0, 0, 0), cfg)
    with pytest.raises(ValueError):
        augment(image.astype(np.float32), None, sample_rng(0, 0, 0), cfg)
