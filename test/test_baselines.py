"""Baselines: MSP, MaxLogit, Entropy, SML (+ boundary suppression, dilated smoothing), PAnS."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cosme_ros.anomaly import baselines
from cosme_ros.anomaly.baselines import (
    SML_DEFAULTS,
    ClassPrototypeAccumulator,
    dilated_smoothing,
    entropy,
    expand_boundaries,
    find_boundaries,
    maxlogit,
    msp,
    pans,
    sml,
    suppress_boundaries,
)
from cosme_ros.anomaly.standardize import ClassStats

# two pixels, three classes: pixel 0 logits (1, 2, 3), pixel 1 logits (0, 0, 0)
LOGITS = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]]).reshape(1, 3, 1, 2)


def test_msp_maxlogit_entropy_by_hand():
    z = math.e + math.e**2 + math.e**3
    p0 = [math.e / z, math.e**2 / z, math.e**3 / z]
    torch.testing.assert_close(msp(LOGITS), torch.tensor([[[1 - p0[2], 1 - 1 / 3]]]))
    torch.testing.assert_close(maxlogit(LOGITS), torch.tensor([[[-3.0, 0.0]]]))
    h0 = -sum(p * math.log(p) for p in p0)
    torch.testing.assert_close(entropy(LOGITS), torch.tensor([[[h0, math.log(3)]]]))
    torch.testing.assert_close(
        entropy(LOGITS, normalize=True), torch.tensor([[[h0 / math.log(3), 1.0]]])
    )


def test_baselines_cast_to_fp32():
    for fn in (msp, maxlogit, entropy):
        out = fn(LOGITS.half())
        assert out.dtype == torch.float32 and out.shape == (1, 1, 2)
        torch.testing.assert_close(out, fn(LOGITS), atol=2e-3, rtol=0)
    with pytest.raises(ValueError, match="B,N,H,W"):
        msp(LOGITS[0])


def test_sml_defaults_follow_the_release():
    assert SML_DEFAULTS == {
        "boundary_width": 4,
        "boundary_iteration": 4,
        "kernel_size": 7,
        "sigma": 1.0,
        "dilation": 6,
    }


# ----------------------------------------------------------------------------- boundaries


def _two_regions(h=3, w=6):
    pred = torch.zeros(1, h, w, dtype=torch.long)
    pred[..., w // 2 :] = 1
    values = (10.0 * torch.arange(w, dtype=torch.float32)).expand(1, h, w).clone()
    return pred, values


def test_find_boundaries_two_regions():
    pred, _ = _two_regions()
    b = find_boundaries(pred)
    expected = torch.zeros(1, 3, 6, dtype=torch.bool)
    expected[..., 2:4] = True
    assert torch.equal(b, expected)
    assert torch.equal(expand_boundaries(b, 1)[0, 0], torch.tensor([0, 1, 1, 1, 1, 0]).bool())


def test_boundary_suppression_replaces_boundary_by_neighbour_average():
    pred, values = _two_regions()
    # width 0, one pass: each boundary pixel takes the mean of its non-boundary 3×3 neighbours
    out = suppress_boundaries(values, pred, width=0, iterations=1)
    torch.testing.assert_close(out[0], torch.tensor([0.0, 10, 10, 40, 40, 50]).expand(3, 6))
    # width 2 in two passes: first the boundary widened by 1 (cols 1..4) — cols 2 and 3 have no
    # non-boundary neighbour and keep their value — then the plain boundary (cols 2, 3)
    out = suppress_boundaries(values, pred, width=2, iterations=2)
    torch.testing.assert_close(out[0], torch.tensor([0.0, 0, 0, 50, 50, 50]).expand(3, 6))
    with pytest.raises(ValueError, match="multiple"):
        suppress_boundaries(values, pred, width=3, iterations=2)
    assert torch.equal(suppress_boundaries(values, pred, iterations=0), values)


def _naive_suppression(values: np.ndarray, pred: np.ndarray, width: int, iterations: int):
    """Per-pixel loops over one (H, W) map, straight from the SML description."""
    h, w = pred.shape
    bnd = np.zeros((h, w), bool)
    for i in range(h):
        for j in range(w):
            cross = [pred[i, j]] + [
                pred[a, b]
                for a, b in ((i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1))
                if 0 <= a < h and 0 <= b < w
            ]
            square = [
                pred[a, b]
                for a in range(i - 1, i + 2)
                for b in range(j - 1, j + 2)
                if 0 <= a < h and 0 <= b < w
            ]
            bnd[i, j] = max(cross) != min(square)
    out = values.astype(np.float64).copy()
    step = width // iterations
    for it in range(iterations):
        r = 0 if it == iterations - 1 else width - step * it - 1
        exp = np.zeros_like(bnd)
        for i in range(h):
            for j in range(w):
                exp[i, j] = any(
                    bnd[a, b] for a in range(h) for b in range(w) if abs(a - i) + abs(b - j) <= r
                )
        prev = out.copy()
        for i in range(h):
            for j in range(w):
                if not exp[i, j]:
                    continue
                vals = []
                for a in range(i - 1, i + 2):
                    for b in range(j - 1, j + 2):
                        aa, bb = min(max(a, 0), h - 1), min(max(b, 0), w - 1)  # replication pad
                        if not exp[aa, bb]:
                            vals.append(prev[aa, bb])
                if vals:
                    out[i, j] = sum(vals) / len(vals)
    return out


@pytest.mark.parametrize("case", ["regions", "random"])
def test_boundary_suppression_matches_naive_loops_with_defaults(case):
    g = torch.Generator().manual_seed(3)
    if case == "regions":
        pred = torch.zeros(1, 14, 15, dtype=torch.long)
        pred[:, 3:9, 2:8] = 1
        pred[:, 7:, 10:] = 2
        pred[:, 0, 14] = 3
    else:  # speckled labels: exercises the cross-dilation vs square-erosion asymmetry
        pred = torch.randint(0, 4, (1, 9, 10), generator=g)
        pred[:, :4, :5] = 2
    values = torch.randn(pred.shape, generator=g)
    out = suppress_boundaries(values, pred)  # width 4, 4 iterations
    ref = _naive_suppression(values[0].numpy(), pred[0].numpy(), 4, 4)
    np.testing.assert_allclose(out[0].numpy(), ref, rtol=1e-5, atol=1e-5)


def test_dilated_smoothing_is_a_dilated_gaussian_convolution():
    g = torch.Generator().manual_seed(4)
    v = torch.randn(2, 9, 11, generator=g)
    k, sigma, d = 7, 1.0, 2
    c = (k - 1) / 2
    kern = np.array(
        [
            [math.exp(-((a - c) ** 2 + (b - c) ** 2) / (2 * sigma**2)) for b in range(k)]
            for a in range(k)
        ]
    )
    kern /= kern.sum()
    x = v.numpy().astype(np.float64)
    ref = np.zeros_like(x)
    _, h, w = x.shape
    for i in range(h):
        for j in range(w):
            for a in range(k):
                for b in range(k):
                    ii = min(max(i + d * (a - 3), 0), h - 1)
                    jj = min(max(j + d * (b - 3), 0), w - 1)
                    ref[:, i, j] += kern[a, b] * x[:, ii, jj]
    out = dilated_smoothing(v, kernel_size=k, sigma=sigma, dilation=d)
    assert out.shape == v.shape and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5, atol=1e-5)
    # constants are preserved (normalised kernel, replication padding), default dilation 6 too
    torch.testing.assert_close(
        dilated_smoothing(torch.full((1, 5, 5), 3.0)), torch.full((1, 5, 5), 3.0)
    )


# ----------------------------------------------------------------------------- SML


def _stats():
    return ClassStats(mean=torch.tensor([1.0, 2.0, 3.0]), std=torch.tensor([1.0, 0.5, 2.0]))


def test_sml_standardisation_by_hand():
    # pixel 0 predicts class 2 (max 3): (3 − 3)/2 = 0; pixel 1 ties → argmax class 0: (0 − 1)/1 = −1
    out = sml(LOGITS, _stats(), boundary_suppression=False, smoothing=False)
    torch.testing.assert_close(out, torch.tensor([[[0.0, 1.0]]]))  # negated: higher = anomalous
    z, classes = baselines.standardized_max_logit(LOGITS, _stats())
    assert classes.tolist() == [[[2, 0]]]
    torch.testing.assert_close(z, -out)


def test_sml_full_pipeline_composes_the_steps():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 3, 20, 24, generator=g) * 3
    stats = _stats()
    z, classes = baselines.standardized_max_logit(logits, stats)
    ref = -dilated_smoothing(suppress_boundaries(z, classes))
    out = sml(logits, stats)
    assert out.shape == (2, 20, 24) and out.dtype == torch.float32
    torch.testing.assert_close(out, ref)


# ----------------------------------------------------------------------------- PAnS


def test_pans_by_hand_excludes_unseen_classes():
    lh = torch.tensor([[1.0, -1.0, 3.0], [0.0, -1.0, 4.0]]).reshape(1, 2, 1, 3)
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])  # class 2 never seen
    out = pans(lh, protos)
    # (1,0) → cos 1; (−1,−1) → max −1/√2 (a zero row would have given 0); (3,4) → 0.8
    torch.testing.assert_close(out, torch.tensor([[[0.0, 1 + 1 / math.sqrt(2), 0.2]]]))
    with pytest.raises(ValueError, match="all zero"):
        pans(lh, torch.zeros(3, 2))
    with pytest.raises(ValueError, match="do not fit"):
        pans(lh, torch.eye(3))


def test_class_prototype_accumulator():
    acc = ClassPrototypeAccumulator(num_classes=3, channels=2)
    # four pixels at 1×4: (2,0) class 0, (0,3) class 0, (5,5) ignored 255, (0,−1) class 1 invalid
    lh = torch.tensor([[2.0, 0.0, 5.0, 0.0], [0.0, 3.0, 5.0, -1.0]]).reshape(1, 2, 1, 4)
    # labels at twice the resolution: resized with nearest neighbour
    labels = torch.tensor([[0, 0, 0, 0, 255, 255, 1, 1]]).repeat(2, 1).reshape(1, 2, 8)
    valid = torch.ones(1, 2, 8, dtype=torch.bool)
    valid[..., 6:] = False
    acc.update(lh, labels, valid)
    torch.testing.assert_close(acc.counts, torch.tensor([2, 0, 0]))
    protos = acc.finalize()
    s = 1 / math.sqrt(2)
    torch.testing.assert_close(protos, torch.tensor([[s, s], [0.0, 0.0], [0.0, 0.0]]))
    # now class 1 appears (pseudo-labels at LH resolution)
    acc.update(lh, torch.tensor([[[1, 1, 1, 1]]]))
    protos = acc.finalize()
    assert protos.dtype == torch.float32
    torch.testing.assert_close(protos.norm(dim=1)[:2], torch.ones(2))
    assert float(protos[2].abs().sum()) == 0.0
    acc.all_reduce()  # no process group: a no-op
    with pytest.raises(ValueError):
        acc.update(torch.zeros(1, 3, 1, 4), labels)
