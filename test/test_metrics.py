"""Tests for cosme_ros.metrics: pixel metrics against scikit-learn, the histogram accumulator's
error bound, and SegmentMeIfYouCan component metrics on hand-computed cases."""

import numpy as np
import pytest
import torch

from cosme_ros.data.cityscapes import CITYSCAPES_CLASSES
from cosme_ros.metrics import (
    ComponentMetricAccumulator,
    ConfusionMatrix,
    PixelMetricAccumulator,
    best_f1_threshold,
    component_metrics,
    iou_from_confusion,
    pixel_metrics,
)

sk = pytest.importorskip("sklearn.metrics")  # test-only reference implementation


def sklearn_reference(scores, labels):
    """Percent AUROC / AP / FPR95 from scikit-learn, on the pixels labelled 0 or 1."""
    scores, labels = np.ravel(scores), np.ravel(labels)
    keep = (labels == 0) | (labels == 1)
    s, y = scores[keep], labels[keep].astype(int)
    fpr, tpr, _ = sk.roc_curve(y, s, drop_intermediate=False)
    return {
        "auroc": 100 * sk.roc_auc_score(y, s),
        "ap": 100 * sk.average_precision_score(y, s),
        "fpr95": 100 * fpr[np.searchsorted(tpr, 0.95)],
    }


def assert_metrics_close(got, want, tol=1e-6):
    assert set(got) == {"auroc", "ap", "fpr95"}
    for k in want:
        assert got[k] == pytest.approx(want[k], abs=tol), k


def random_case(rng, n, anomaly_rate=0.1, levels=None, void_rate=0.0):
    labels = (rng.random(n) < anomaly_rate).astype(np.uint8)
    scores = rng.standard_normal(n) + 1.2 * labels
    if levels is not None:  # heavy ties: only `levels` distinct score values
        scores = np.digitize(scores, np.quantile(scores, np.linspace(0, 1, levels + 1)[1:-1]))
        scores = scores.astype(np.float64) / levels
    labels[rng.random(n) < void_rate] = 255
    return scores, labels


# ------------------------------------------------------------------------------------------
# pixel metrics


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n", [7, 500, 20_000])
def test_pixel_metrics_match_sklearn_random(seed, n):
    rng = np.random.default_rng(seed)
    scores, labels = random_case(rng, n, anomaly_rate=0.3)
    if labels.min() == labels.max():
        pytest.skip("one class only")
    assert_metrics_close(pixel_metrics(scores, labels), sklearn_reference(scores, labels))


@pytest.mark.parametrize("levels", [1, 2, 5, 37])
@pytest.mark.parametrize("seed", range(3))
def test_pixel_metrics_match_sklearn_tied(levels, seed):
    rng = np.random.default_rng(100 + seed)
    scores, labels = random_case(rng, 30_000, anomaly_rate=0.05, levels=levels)
    assert len(np.unique(scores)) == levels
    got = pixel_metrics(scores, labels)
    assert_metrics_close(got, sklearn_reference(scores, labels))
    if levels == 1:  # all tied: chance AUROC, AP = prevalence, every pixel flagged at 95 % TPR
        assert got["auroc"] == pytest.approx(50.0)
        assert got["ap"] == pytest.approx(100 * labels.mean())
        assert got["fpr95"] == pytest.approx(100.0)


def test_fpr95_is_searchsorted_on_full_roc():
    """FPR95 exactly as ``fpr[np.searchsorted(tpr, 0.95)]`` on the undropped ROC curve."""
    rng = np.random.default_rng(7)
    for levels in (None, 3, 20):
        scores, labels = random_case(rng, 5_000, anomaly_rate=0.2, levels=levels)
        fpr, tpr, _ = sk.roc_curve(labels, scores, drop_intermediate=False)
        want = 100 * fpr[np.searchsorted(tpr, 0.95)]
        assert pixel_metrics(scores, labels)["fpr95"] == pytest.approx(want, abs=1e-9)
    # 20 anomalies: tpr hits 0.95 exactly at the 19th, the point searchsorted must pick.
    scores = np.r_[np.arange(20.0), np.arange(100.0) / 10]
    labels = np.r_[np.ones(20, int), np.zeros(100, int)]
    fpr, tpr, _ = sk.roc_curve(labels, scores, drop_intermediate=False)
    want = 100 * fpr[np.searchsorted(tpr, 0.95)]
    assert pixel_metrics(scores, labels)["fpr95"] == pytest.approx(want, abs=1e-12)


def test_pixel_metrics_dtypes_shapes_and_torch():
    rng = np.random.default_rng(3)
    scores, labels = random_case(rng, 6 * 40 * 50, void_rate=0.1)
    want = sklearn_reference(scores.astype(np.float32), labels)
    s32, lab = scores.astype(np.float32).reshape(6, 40, 50), labels.reshape(6, 40, 50)
    assert_metrics_close(pixel_metrics(s32, lab), want)
    assert_metrics_close(pixel_metrics(torch.from_numpy(s32), torch.from_numpy(lab)), want)
    assert_metrics_close(pixel_metrics(s32, lab.astype(np.int64)), want)
    # float16 is widened exactly, so its ties are those of the float16 values
    s16 = scores.astype(np.float16)
    assert_metrics_close(pixel_metrics(s16, labels), sklearn_reference(s16.astype(float), labels))


def test_pixel_metrics_large_input_exact():
    """2e7 pixels: each of 2e6 (score, label) pairs repeated 10 times, which leaves every ROC
    and PR point, hence all three metrics, unchanged; sklearn runs on the 2e6 originals."""
    rng = np.random.default_rng(11)
    scores, labels = random_case(rng, 2_000_000, anomaly_rate=0.03, void_rate=0.1)
    scores = scores.astype(np.float32)
    want = sklearn_reference(scores, labels)
    big_s = np.tile(scores, 10).reshape(10, 1000, 2000)
    big_l = np.tile(labels, 10).reshape(10, 1000, 2000)
    assert big_s.size == 20_000_000
    assert_metrics_close(pixel_metrics(big_s, big_l), want)


def test_pixel_metrics_ignores_every_label_but_0_and_1():
    rng = np.random.default_rng(5)
    scores, labels = random_case(rng, 10_000, anomaly_rate=0.2)
    want = sklearn_reference(scores, labels)
    # Extra pixels with void labels of any value (and extreme scores) must change nothing.
    junk = np.array([255, 2, 7, 254, 3, 100] * 50, dtype=np.int64)
    junk_scores = rng.choice([-1e9, 1e9, 0.5], junk.size)
    s = np.r_[scores, junk_scores]
    y = np.r_[labels.astype(np.int64), junk]
    assert_metrics_close(pixel_metrics(s, y), want)
    assert_metrics_close(pixel_metrics(s, y, ignore_index=254), want)
    y_neg = y.copy()
    y_neg[-junk.size :] = -1
    assert_metrics_close(pixel_metrics(s, y_neg), want)


def test_pixel_metrics_errors():
    s = np.array([0.1, 0.2, 0.3, 0.4])
    with pytest.raises(ValueError, match="no anomaly"):
        pixel_metrics(s, np.array([0, 0, 255, 0]))
    with pytest.raises(ValueError, match="no in-distribution"):
        pixel_metrics(s, np.array([1, 1, 255, 1]))
    with pytest.raises(ValueError, match="no anomaly"):
        pixel_metrics(s, np.array([255, 255, 3, 255]))
    with pytest.raises(ValueError, match="shape"):
        pixel_metrics(s, np.array([0, 1, 0]))
    with pytest.raises(ValueError, match="shape"):
        pixel_metrics(s.reshape(2, 2), np.array([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="NaN"):
        pixel_metrics(np.array([0.1, np.nan, 0.3, 0.4]), np.array([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="ignore_index"):
        pixel_metrics(s, np.array([0, 1, 0, 1]), ignore_index=1)


def test_best_f1_threshold_matches_pr_curve():
    rng = np.random.default_rng(9)
    for levels in (None, 6):
        scores, labels = random_case(rng, 20_000, anomaly_rate=0.1, levels=levels)
        prec, rec, thr = sk.precision_recall_curve(labels, scores)
        with np.errstate(invalid="ignore"):
            f1 = 2 * prec * rec / (prec + rec)
        want = thr[np.nanargmax(f1[:-1])]
        t = best_f1_threshold(scores, labels)
        assert t == want
        pred = scores >= t
        tp = np.sum(pred & (labels == 1))
        assert 2 * tp / (pred.sum() + labels.sum()) == pytest.approx(np.nanmax(f1))


# ------------------------------------------------------------------------------------------
# histogram accumulator

# Documented in PixelMetricAccumulator's docstring: with 2**16 bins on the data below the
# error stays under these (percentage points).
DOCUMENTED_BOUND = {"auroc": 0.01, "ap": 0.02, "fpr95": 0.02}


def mixture_images(seed, n_images=50, h=256, w=512):
    """Gaussian-mixture anomaly maps: a per-image offset, a 30 % in-distribution mode that
    scores high, 3 % anomalies with an image-dependent shift, void rows at the top, and a
    scale that grows over the set so the accumulator must widen its first-image range."""
    rng = np.random.default_rng(seed)
    for i in range(n_images):
        lab = (rng.random((h, w)) < 0.03).astype(np.uint8)
        lab[:20] = 255
        hard = rng.random((h, w)) < 0.3
        s = np.where(hard, rng.normal(1.0, 0.5, (h, w)), rng.normal(0.0, 1.0, (h, w)))
        s += rng.normal(0.0, 0.5) + 2.0 * rng.random() * (lab == 1)
        s *= 1 + i / 10
        yield s.astype(np.float32), lab


def test_accumulator_error_within_documented_bound():
    acc = PixelMetricAccumulator()  # 2**16 bins, range learned from the first image
    all_s, all_l = [], []
    for s, lab in mixture_images(0):
        acc.update(s, lab)
        all_s.append(s)
        all_l.append(lab)
    exact = pixel_metrics(np.stack(all_s), np.stack(all_l))
    binned, bound = acc.compute(), acc.error_bounds()
    assert set(binned) == set(bound) == {"auroc", "ap", "fpr95"}
    for k in exact:
        err = abs(binned[k] - exact[k])
        assert err <= bound[k] + 1e-9, (k, err, bound[k])
        assert bound[k] <= DOCUMENTED_BOUND[k], (k, bound[k])
    assert binned["fpr95"] >= exact["fpr95"] - 1e-9  # binning can only raise FPR95
    assert acc.hi - acc.lo > 0 and acc.pos_hist.sum() + acc.neg_hist.sum() == 50 * 236 * 512


def test_accumulator_exact_when_each_value_has_its_own_bin():
    rng = np.random.default_rng(2)
    acc = PixelMetricAccumulator(bins=64, range=(0.0, 1.0))
    all_s, all_l = [], []
    for _ in range(5):
        s, lab = random_case(rng, 4_000, anomaly_rate=0.1, levels=5, void_rate=0.05)
        s = s * 0.9 + 0.01  # values 0.01 .. 0.73, one per bin
        acc.update(torch.from_numpy(s), torch.from_numpy(lab))
        all_s.append(s)
        all_l.append(lab)
    exact = pixel_metrics(np.concatenate(all_s), np.concatenate(all_l))
    assert_metrics_close(acc.compute(), exact, tol=1e-9)


def test_accumulator_grows_range_without_clipping():
    acc = PixelMetricAccumulator(bins=1024, range=(0.0, 1.0))
    rng = np.random.default_rng(4)
    chunks = []
    for scale, shift in [(0.2, 0.5), (5.0, 3.0), (1.0, -20.0)]:
        s = rng.normal(shift, scale, 10_000)
        lab = (rng.random(10_000) < 0.2).astype(np.uint8)
        s += lab * scale
        acc.update(s, lab)
        chunks.append((s, lab))
    all_s = np.concatenate([c[0] for c in chunks])
    assert acc.lo <= all_s.min() and all_s.max() < acc.hi
    assert acc.pos_hist.sum() + acc.neg_hist.sum() == all_s.size
    exact = pixel_metrics(all_s, np.concatenate([c[1] for c in chunks]))
    binned, bound = acc.compute(), acc.error_bounds()
    for k in exact:
        assert abs(binned[k] - exact[k]) <= bound[k] + 1e-9


def test_accumulator_errors_and_void():
    with pytest.raises(ValueError, match="bins"):
        PixelMetricAccumulator(bins=7)
    with pytest.raises(ValueError, match="range"):
        PixelMetricAccumulator(range=(1.0, 1.0))
    acc = PixelMetricAccumulator(bins=16)
    with pytest.raises(ValueError, match="finite"):
        acc.update(np.array([0.0, np.inf]), np.array([0, 1]))
    acc.update(np.array([5.0, 6.0]), np.array([255, 9]))  # all void: no range learned yet
    assert acc.lo is None
    acc.update(np.array([0.1, 0.2, 0.3]), np.array([0, 0, 0]))
    with pytest.raises(ValueError, match="no anomaly"):
        acc.compute()
    with pytest.raises(ValueError, match="shape"):
        acc.update(np.zeros(3), np.zeros(4))


# ------------------------------------------------------------------------------------------
# SegmentMeIfYouCan component metrics, hand-computed

TAUS = np.linspace(0.25, 0.75, 11)


def test_half_covered_blob_and_false_positive():
    gt = np.zeros((10, 10), np.uint8)
    gt[2:6, 2:6] = 1  # 16-pixel object
    pred = np.zeros_like(gt)
    pred[2:6, 0:4] = 1  # 8 px on the object, 8 px on the road
    pred[8:10, 8:10] = 1  # isolated 4-px false positive
    r = component_metrics([pred], [gt])
    siou = 8 / (16 + 8)
    ppvs = [8 / 16, 0.0]
    assert r["n_gt"] == 1 and r["n_pred"] == 2
    assert r["siou_gt"] == pytest.approx(100 * siou)
    assert r["ppv"] == pytest.approx(100 * np.mean(ppvs))
    # tau 0.25, 0.30: TP 1, FN 0, FP 1 -> 2/3; tau >= 0.35: TP 0 -> F1 0.
    f1 = [2 / 3 if t <= siou else 0.0 for t in TAUS]
    assert r["mean_f1"] == pytest.approx(100 * np.mean(f1))
    assert r["mean_f1"] == pytest.approx(100 * 4 / 33)
    assert r["f1_25"] == pytest.approx(200 / 3) and r["f1_50"] == 0 and r["f1_75"] == 0
    # The benchmark's size filter deletes the 4-px false positive.
    r = component_metrics([pred], [gt], min_pred_size=5)
    assert r["n_pred"] == 1 and r["ppv"] == pytest.approx(50.0)
    assert r["f1_25"] == pytest.approx(100.0)  # TP 1, FN 0, FP 0


def test_two_gt_components_one_detected():
    gt = np.zeros((6, 12), np.uint8)
    gt[1:4, 1:4] = 1
    gt[1:4, 7:10] = 1
    pred = (np.arange(12)[None, :] < 5) & (gt == 1)  # exactly the left object
    r = component_metrics(torch.from_numpy(pred[None]), torch.from_numpy(gt[None]))
    assert (r["n_gt"], r["n_pred"]) == (2, 1)
    assert r["siou_gt"] == pytest.approx(50.0)  # sIoU 1 and 0
    assert r["ppv"] == pytest.approx(100.0)
    assert r["mean_f1"] == pytest.approx(100 * 2 / 3)  # every tau: TP 1, FN 1, FP 0


def test_one_prediction_over_two_objects_uses_adjustment_set():
    gt = np.zeros((5, 9), np.uint8)
    gt[1:4, 1:4] = 1  # A, 9 px
    gt[1:4, 5:8] = 1  # B, 9 px, column 4 is road between them
    pred = np.zeros_like(gt)
    pred[1:4, 1:8] = 1  # 21 px: 18 on objects, 3 on road
    r = component_metrics(pred, gt)  # a single 2-D image is accepted too
    # sIoU(A) = |A ∩ P| / |(A ∪ P) \ B| = 9 / (21 - 9) = 0.75; without the adjustment 9/21.
    assert r["siou_gt"] == pytest.approx(75.0)
    assert r["ppv"] == pytest.approx(100 * 18 / 21)
    assert r["mean_f1"] == pytest.approx(100.0)  # 0.75 >= every tau (0.75 inclusive)


def test_void_is_ignored_and_splits_predictions():
    gt = np.zeros((6, 12), np.int64)
    gt[1:3, 1:3] = 1  # 4-px object
    gt[1:3, 3] = 255  # void right of it, under the prediction
    gt[4:6, 6] = 255  # void column cutting a false positive in two
    gt[4:6, 8] = 7  # any non-0/1 label is void as well
    pred = np.zeros((6, 12), bool)
    pred[1:3, 1:4] = True  # the object plus the void column
    pred[4:6, 4:9] = True  # cols 4-5 | void 6 | col 7 | label-7 col 8
    r = component_metrics([pred], [gt])
    assert (r["n_gt"], r["n_pred"]) == (1, 3)  # 8-connected, but void disconnects
    assert r["siou_gt"] == pytest.approx(100.0)  # void pixels are not in the union
    assert r["ppv"] == pytest.approx(100 / 3)  # PPVs 1, 0, 0


def test_small_gt_component_becomes_void_and_diagonals_connect():
    gt = np.zeros((8, 8), np.uint8)
    gt[1:4, 1:4] = 1  # 9-px object, found
    gt[6, 6] = 1
    gt[7, 7] = 1  # 2-px object (diagonal = one 8-connected component), missed
    pred = np.zeros_like(gt)
    pred[1:4, 1:4] = 1
    r = component_metrics([pred], [gt])
    assert r["n_gt"] == 2 and r["siou_gt"] == pytest.approx(50.0)
    r = component_metrics([pred], [gt], min_gt_size=3)  # the tiny object becomes void
    assert r["n_gt"] == 1 and r["siou_gt"] == pytest.approx(100.0)


def test_component_metrics_aggregate_over_components_not_images():
    gt1 = np.zeros((6, 12), np.uint8)
    gt1[1:4, 1:4] = 1
    gt1[1:4, 7:10] = 1
    pred1 = gt1.copy()  # both found, sIoU 1
    gt2 = np.zeros((6, 12), np.uint8)
    gt2[2:4, 2:4] = 1
    pred2 = np.zeros_like(gt2)  # missed, no prediction
    r = component_metrics([pred1, pred2], [gt1, gt2])
    assert r["siou_gt"] == pytest.approx(100 * 2 / 3)  # per-image mean would give 50
    assert r["ppv"] == pytest.approx(100.0)
    assert r["mean_f1"] == pytest.approx(100 * 4 / 5)  # TP 2, FN 1, FP 0
    acc = ComponentMetricAccumulator()
    acc.update(pred2, gt2)
    assert np.isnan(acc.compute()["ppv"]) and acc.compute()["mean_f1"] == 0.0


def test_component_metrics_errors():
    with pytest.raises(ValueError, match="no ground-truth"):
        component_metrics([np.ones((4, 4))], [np.zeros((4, 4))])
    with pytest.raises(ValueError, match="shape"):
        component_metrics([np.ones((4, 4))], [np.zeros((4, 5))])
    with pytest.raises(ValueError, match="label maps"):
        component_metrics([np.ones((4, 4))] * 2, [np.zeros((4, 4))])


def reference_segment_stats(pred, gt):
    """Straight from the definitions with boolean masks and scipy's labelling (independent of
    OpenCV and of the contingency-table shortcut in cosme_ros.metrics)."""
    ndimage = pytest.importorskip("scipy.ndimage")
    roi = (gt == 0) | (gt == 1)
    eight = np.ones((3, 3), int)
    gcc, ng = ndimage.label(gt == 1, structure=eight)
    pcc, npred = ndimage.label((pred > 0) & roi, structure=eight)
    siou = []
    for k in range(1, ng + 1):
        comp = gcc == k
        touching = np.setdiff1d(np.unique(pcc[comp]), [0])
        khat = np.isin(pcc, touching)
        others = (gcc > 0) & ~comp
        siou.append((comp & khat).sum() / ((comp | khat) & ~others & roi).sum())
    ppv = [((pcc == j) & (gcc > 0)).sum() / (pcc == j).sum() for j in range(1, npred + 1)]
    return np.array(siou), np.array(ppv)


def test_component_metrics_match_definition_on_random_blobs():
    rng = np.random.default_rng(21)
    preds, gts, sious, ppvs = [], [], [], []
    for _ in range(6):
        gt = (rng.random((40, 60)) < 0.08).astype(np.uint8)
        gt = np.maximum(gt, np.roll(gt, 1, 0))  # small blobs, some touching diagonally
        gt[rng.random(gt.shape) < 0.05] = 255
        pred = (gt == 1) & (rng.random(gt.shape) < 0.7) | (rng.random(gt.shape) < 0.05)
        pred = pred | np.roll(pred, 1, 1)
        s, p = reference_segment_stats(pred, gt)
        preds.append(pred)
        gts.append(gt)
        sious.append(s)
        ppvs.append(p)
    siou, ppv = np.concatenate(sious), np.concatenate(ppvs)
    r = component_metrics(preds, gts)
    assert r["n_gt"] == siou.size and r["n_pred"] == ppv.size
    assert r["siou_gt"] == pytest.approx(100 * siou.mean())
    assert r["ppv"] == pytest.approx(100 * ppv.mean())
    f1 = []
    for t in TAUS:
        tp = np.sum(siou >= t)
        f1.append(2 * tp / (2 * tp + (siou.size - tp) + np.sum(ppv < t)))
    assert r["mean_f1"] == pytest.approx(100 * np.mean(f1))


def test_iou_from_confusion():
    conf = np.zeros((19, 19), np.int64)
    conf[0, 0], conf[0, 1], conf[10, 10] = 8, 2, 10  # road: 8 right, 2 called sidewalk
    conf[13, 13] = 0
    r = iou_from_confusion(conf, CITYSCAPES_CLASSES)
    assert r["iou"]["road"] == pytest.approx(0.8)
    assert r["iou"]["sidewalk"] == 0.0  # predicted, never in the labels: counts as 0
    assert r["iou"]["sky"] == 1.0
    assert r["iou"]["car"] is None  # neither labelled nor predicted: left out
    assert r["miou"] == pytest.approx((0.8 + 0.0 + 1.0) / 3)
    assert r["miou_present"] == pytest.approx(0.9)
    assert r["pixel_accuracy"] == pytest.approx(18 / 20)


def test_confusion_matrix_counts_void_and_out_of_table_predictions():
    cm = ConfusionMatrix(3)
    gt = np.array([[0, 0, 1, 255], [2, 2, 1, 1]], np.uint8)
    pred = np.array([[0, 1, 1, 0], [2, 7, 1, 0]], np.uint8)  # 7: beyond the table
    cm.add(gt, pred)
    r = cm.iou(["a", "b", "c"])
    assert r["pixels"] == 7  # the void pixel is not counted
    assert r["iou"]["a"] == pytest.approx(1 / 3)  # 1 right; 1 called b; one b called a
    assert r["iou"]["c"] == pytest.approx(1 / 2)  # 1 right, 1 called class 7 (wrong)
    assert r["iou"]["b"] == pytest.approx(2 / 4)
    assert r["pixel_accuracy"] == pytest.approx(4 / 7)
    assert r["present"] == [0, 1, 2]
