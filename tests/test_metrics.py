"""Tests for metrics.py: hand-derived values and independent brute-force implementations."""

import json
import math
import os
import sys
import warnings

import numpy as np
import pytest
from scipy import ndimage
from scipy.stats import binomtest
from skimage.measure import label as sk_label
from sklearn import metrics as sk_metrics

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import metrics  # noqa: E402

_trapz = getattr(np, "trapezoid", None) or np.trapz


# ------------------------------------------------------------------ brute force


def brute_force_au_pro(maps, masks, fpr_limit=0.3):
    """Threshold-by-threshold PRO, independent of metrics.pro_curve.

    Regions: skimage 8-connected labelling. For every unique score t (descending):
    PRO(t) = mean over all regions of mean(map[region] >= t),
    FPR(t) = mean(map[ok] >= t) over all defect-free pixels of all images.
    Curve gets (0, 0) in front and (1, 1) at the end; integrated up to fpr_limit with
    np.interp at fpr_limit and np.trapezoid.
    """
    regions, ok_scores = [], []
    for m, g in zip(maps, masks):
        lab = sk_label(np.asarray(g) != 0, connectivity=2)
        for k in range(1, lab.max() + 1):
            regions.append(m[lab == k])
        ok_scores.append(m[lab == 0])
    ok_scores = np.concatenate(ok_scores)
    thresholds = np.unique(np.concatenate([np.ravel(m) for m in maps]))[::-1]
    fprs = [0.0]
    pros = [0.0]
    for t in thresholds:
        fprs.append(np.mean(ok_scores >= t))
        pros.append(np.mean([np.mean(r >= t) for r in regions]))
    fprs.append(1.0)
    pros.append(1.0)
    fprs, pros = np.array(fprs), np.array(pros)

    below = fprs <= fpr_limit
    x, y = list(fprs[below]), list(pros[below])
    if fpr_limit not in fprs:
        # neighbours of fpr_limit on the polyline: last point at or below, first above
        lo = np.flatnonzero(below)[-1]
        hi = np.flatnonzero(~below)[0]
        x.append(fpr_limit)
        y.append(np.interp(fpr_limit, [fprs[lo], fprs[hi]], [pros[lo], pros[hi]]))
    return _trapz(y, x) / fpr_limit


def brute_force_auroc(scores, truth):
    """Mann-Whitney U / (n_pos * n_neg) by counting all pairs; ties count 1/2."""
    pos = scores[truth]
    neg = scores[~truth]
    diff = pos[:, None] - neg[None, :]
    return (np.sum(diff > 0) + 0.5 * np.sum(diff == 0)) / (pos.size * neg.size)


def random_case(seed, n_images=6, shape=(24, 28), n_levels=12):
    """Blobby random masks (several regions, some good images) and integer-quantised maps."""
    rng = np.random.default_rng(seed)
    maps, masks = [], []
    for i in range(n_images):
        if i % 3 == 0:
            mask = np.zeros(shape, dtype=bool)  # good image
        else:
            noise = ndimage.gaussian_filter(rng.normal(size=shape), 1.5)
            mask = noise > np.quantile(noise, 0.85)
        raw = rng.normal(size=shape) + 1.5 * mask
        amap = np.clip(np.round((raw + 2.5) * n_levels / 6), 0, n_levels).astype(np.float64)
        maps.append(amap)
        masks.append(mask)
    return maps, masks


# ------------------------------------------------------------------ pixel AUROC / PRO


def _perfect_case():
    masks = [np.zeros((16, 16), bool) for _ in range(4)]
    masks[1][2:6, 3:9] = True
    masks[2][10:14, 10:12] = True
    masks[2][0:2, 0:2] = True
    masks[3][5, 5] = True
    maps = [m.astype(np.float64) for m in masks]
    return maps, masks


def test_perfect_map_gives_one():
    maps, masks = _perfect_case()
    assert metrics.pixel_auroc(maps, masks) == 1.0
    assert metrics.au_pro(maps, masks) == pytest.approx(1.0, abs=1e-12)
    assert metrics.au_pro(np.stack(maps), np.stack(masks), fpr_limit=0.05) == pytest.approx(1.0, abs=1e-12)


def test_inverse_map_gives_zero():
    maps, masks = _perfect_case()
    inverse = [1.0 - m for m in maps]
    assert metrics.pixel_auroc(inverse, masks) == 0.0
    assert metrics.au_pro(inverse, masks) == pytest.approx(0.0, abs=1e-12)


def test_au_pro_analytic():
    # One 2x7 image. Region = columns 0-1 (4 pixels, R = 4); ok pixels = columns 2-6 (10).
    #   region half A: (0,0), (0,1) score 2.0  -> above every ok pixel
    #   region half B: (1,0) score 0.8 (tied with one ok pixel), (1,1) score 0.0 (below all)
    #   ok pixels: 1.0, 0.9, ..., 0.1 (distinct)
    # PRO curve (one point per distinct score, thresholds descending):
    #   start (0, 0); t=2.0: (0, .5); t=1.0: (.1, .5); t=.9: (.2, .5);
    #   t=.8: (.3, .75)  <- the tied ok pixel and B1 enter together (diagonal segment);
    #   t=.7..0.1: (.4..1.0, .75); t=0: (1, 1); end (1, 1).
    # Area to 0.3: 0 (vertical) + .1*.5 + .1*.5 + .1*(.5+.75)/2 = .05+.05+.0625 = .1625
    #   -> AU-PRO(0.3) = .1625/.3 = 0.541666...
    #   (were B1 ranked before its tied ok pixel it would be .175/.3: ties matter.)
    # To 0.25: interpolated point (.25, .625): .1 + .05*(.5+.625)/2 = .128125 -> /.25 = .5125
    # To 1.0:  .1625 + .7*.75 = .6875
    amap = np.array(
        [
            [2.0, 2.0, 1.0, 0.9, 0.8, 0.7, 0.6],
            [0.8, 0.0, 0.5, 0.4, 0.3, 0.2, 0.1],
        ]
    )
    mask = np.zeros((2, 7), dtype=np.uint8)
    mask[:, :2] = 1
    assert metrics.au_pro([amap], [mask], fpr_limit=0.3) == pytest.approx(0.1625 / 0.3, abs=1e-9)
    assert metrics.au_pro([amap], [mask], fpr_limit=0.25) == pytest.approx(0.5125, abs=1e-9)
    assert metrics.au_pro([amap], [mask], fpr_limit=1.0) == pytest.approx(0.6875, abs=1e-9)

    fprs, pros = metrics.pro_curve([amap], [mask])
    np.testing.assert_allclose(fprs[:6], [0, 0, 0.1, 0.2, 0.3, 0.4], atol=1e-12)
    np.testing.assert_allclose(pros[:6], [0, 0.5, 0.5, 0.5, 0.75, 0.75], atol=1e-12)
    np.testing.assert_allclose(fprs[-3:], [1, 1, 1], atol=1e-12)
    np.testing.assert_allclose(pros[-3:], [0.75, 1, 1], atol=1e-12)

    value, f2, p2 = metrics.au_pro([amap], [mask], return_curve=True)
    assert value == pytest.approx(0.1625 / 0.3, abs=1e-9)
    np.testing.assert_array_equal(f2, fprs)
    np.testing.assert_array_equal(p2, pros)


def test_pro_regions_are_8_connected_and_fpr_includes_good_images():
    # Mask pixels (0,0),(0,1),(0,2) and (1,3): diagonal contact -> ONE region of 4 pixels.
    mask = np.zeros((4, 6), bool)
    mask[0, :3] = True
    mask[1, 3] = True
    amap = np.zeros((4, 6))
    amap[1, 3] = 3.0  # only the diagonal pixel is detected first
    amap[3, 5] = 2.0  # one ok pixel in the defective image
    good_map = np.zeros((4, 6))
    good_map[0, 0] = 2.0  # one ok pixel in a good image, tied with it
    fprs, pros = metrics.pro_curve([amap, good_map], [mask, np.zeros((4, 6))])
    n_ok = 4 * 6 - 4 + 4 * 6  # 44 ok pixels in both images together
    # 8-connectivity: PRO = 1/4 (4-connectivity would give (0 + 1)/2 = 0.5)
    assert pros[1] == pytest.approx(0.25) and fprs[1] == 0.0
    assert fprs[2] == pytest.approx(2 / n_ok) and pros[2] == pytest.approx(0.25)


def test_au_pro_matches_brute_force_on_random_maps():
    for seed in range(4):
        maps, masks = random_case(seed)
        assert sum(sk_label(m, connectivity=2).max() for m in masks) >= 4  # several regions
        for limit in (0.3, 0.1, 1.0):
            expected = brute_force_au_pro(maps, masks, fpr_limit=limit)
            assert metrics.au_pro(maps, masks, fpr_limit=limit) == pytest.approx(expected, abs=1e-6)


def test_pro_curve_errors():
    maps = [np.random.default_rng(0).random((5, 5))]
    with pytest.raises(ValueError, match="no defect region"):
        metrics.pro_curve(maps, [np.zeros((5, 5))])
    with pytest.raises(ValueError, match="no defect-free"):
        metrics.pro_curve(maps, [np.ones((5, 5))])
    with pytest.raises(ValueError, match="shape"):
        metrics.pro_curve(maps, [np.ones((5, 6))])
    with pytest.raises(ValueError, match="fpr_limit"):
        metrics.au_pro(maps, [np.eye(5)], fpr_limit=0.0)


def test_pixel_auroc_matches_mann_whitney():
    rng = np.random.default_rng(1)
    maps = [rng.integers(0, 6, size=(7, 9)).astype(float) for _ in range(3)]
    masks = [rng.random((7, 9)) < 0.3 for _ in range(3)]
    scores = np.concatenate([m.ravel() for m in maps])
    truth = np.concatenate([g.ravel() for g in masks])
    expected = brute_force_auroc(scores, truth)
    assert metrics.pixel_auroc(maps, masks) == pytest.approx(expected, abs=1e-12)
    # channel axis (N, H, W, 1) and 0/255 masks are accepted
    maps4 = np.stack(maps)[..., None]
    masks255 = np.stack(masks).astype(np.uint8) * 255
    assert metrics.pixel_auroc(maps4, masks255) == pytest.approx(expected, abs=1e-12)
    # one class only -> None
    assert metrics.pixel_auroc(maps, [np.zeros((7, 9))] * 3) is None


def test_pixel_roc_curve_is_subsampled():
    rng = np.random.default_rng(2)
    masks = [rng.random((64, 64)) < 0.2 for _ in range(4)]
    maps = [rng.random((64, 64)) + 0.5 * g for g in masks]
    fpr, tpr = metrics.pixel_roc_curve(maps, masks)
    assert 2 <= len(fpr) <= 2000 and len(fpr) == len(tpr)
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert _trapz(tpr, fpr) == pytest.approx(metrics.pixel_auroc(maps, masks), abs=5e-3)
    fpr_s, _ = metrics.pixel_roc_curve(maps, masks, max_points=50)
    assert len(fpr_s) <= 50


# ------------------------------------------------------------------ trapezoid


def test_trapezoid_hand_values():
    x = [0.0, 0.2, 0.5, 1.0]
    y = [0.0, 0.4, 0.7, 1.0]
    # full: .2*(0+.4)/2 + .3*(.4+.7)/2 + .5*(.7+1)/2 = .04 + .165 + .425 = .63
    assert metrics.trapezoid(x, y) == pytest.approx(0.63, abs=1e-12)
    # to 0.3: y(0.3) = .4 + (.7-.4)*(.3-.2)/(.5-.2) = .5 ; .04 + .1*(.4+.5)/2 = .085
    assert metrics.trapezoid(x, y, x_max=0.3) == pytest.approx(0.085, abs=1e-12)
    # x_max on a sample point: no interpolation
    assert metrics.trapezoid(x, y, x_max=0.5) == pytest.approx(0.205, abs=1e-12)
    # vertical step (repeated x): order of y kept
    assert metrics.trapezoid([0, 0, 1], [0, 1, 1], x_max=0.5) == pytest.approx(0.5, abs=1e-12)
    # non-finite points dropped (with a warning)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        v = metrics.trapezoid([0.0, 0.2, np.nan, 0.5, 1.0], [0.0, 0.4, 5.0, 0.7, np.inf])
    assert v == pytest.approx(0.04 + 0.165, abs=1e-12)
    assert any(issubclass(w.category, RuntimeWarning) for w in caught)
    with pytest.raises(ValueError, match="sorted"):
        metrics.trapezoid([0, 1, 0.5], [0, 1, 1])
    with pytest.raises(ValueError, match="outside"):
        metrics.trapezoid(x, y, x_max=1.5)


# ------------------------------------------------------------------ image level


def test_image_auroc_and_roc_curve():
    labels = [0, 0, 0, 1, 1]
    scores = [0.1, 0.4, 0.35, 0.8, 0.4]
    # pairs (pos, neg): .8 beats all 3; .4 beats .1, .35, ties .4 -> (3 + 2.5) / 6
    assert metrics.image_auroc(labels, scores) == pytest.approx(5.5 / 6, abs=1e-12)
    assert metrics.image_auroc([1, 1], [0.2, 0.3]) is None
    fpr, tpr = metrics.roc_curve(np.array(labels, bool), scores)
    assert fpr[0] == 0 and tpr[-1] == 1 and fpr[-1] == 1
    with pytest.raises(ValueError):
        metrics.roc_curve([0, 0], [0.1, 0.2])


# ------------------------------------------------------------------ classification


def test_classification_metrics_hand_built():
    truth = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], bool)
    pred = np.array([1, 1, 1, 0, 1, 1, 0, 0, 0, 0], bool)
    r = metrics.classification_metrics(truth, pred)
    assert (r["tp"], r["fn"], r["fp"], r["tn"]) == (3, 1, 2, 4)
    assert r["tpr"] == pytest.approx(0.75)
    assert r["tnr"] == pytest.approx(4 / 6)
    assert r["accuracy"] == pytest.approx(0.7)
    assert r["balanced_accuracy"] == pytest.approx((0.75 + 4 / 6) / 2)
    assert r["precision"] == pytest.approx(0.6)
    assert r["f1"] == pytest.approx(2 * 0.6 * 0.75 / (0.6 + 0.75))
    assert r["confusion_matrix"] == {
        "truth_good": {"pred_good": 4, "pred_defective": 2},
        "truth_defective": {"pred_good": 1, "pred_defective": 3},
    }
    assert (r["n_images"], r["n_good"], r["n_defective"]) == (10, 6, 4)
    assert r["undefined"] == []
    assert json.loads(json.dumps(r)) == r
    assert all(type(r[k]) is int for k in ("tp", "fp", "tn", "fn"))


def test_image_auroc_interval_is_the_documented_stratified_bootstrap():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    labels = np.r_[np.zeros(9, bool), np.ones(14, bool)]
    scores = np.round(rng.normal(size=23) + labels, 1)  # rounded: ties between the classes
    got = metrics.image_auroc_interval(labels, scores, resamples=300, seed=7)
    # The same resamples, drawn as the docstring says, scored one by one by scikit-learn.
    draw = np.random.default_rng(7)
    pos = scores[labels][draw.integers(0, 14, (300, 14))]
    neg = scores[~labels][draw.integers(0, 9, (300, 9))]
    aurocs = [roc_auc_score(np.r_[np.ones(14), np.zeros(9)], np.r_[p, n]) for p, n in zip(pos, neg)]
    assert got == pytest.approx(np.quantile(aurocs, [0.025, 0.975]))
    assert got[0] < metrics.image_auroc(labels, scores) < got[1]
    assert metrics.image_auroc_interval(labels, scores, resamples=300, seed=7) == got  # seeded
    assert metrics.image_auroc_interval([0, 1, 1], [0.1, 0.5, 0.9]) == [1.0, 1.0]  # separated in every resample
    assert metrics.image_auroc_interval([1, 1], [0.1, 0.5]) is None
    with pytest.raises(ValueError, match="whole number of resamples"):
        metrics.image_auroc_interval(labels, scores, resamples=0)


def test_evaluate_reports_the_image_auroc_interval():
    labels = np.r_[np.zeros(6, bool), np.ones(8, bool)]
    scores = np.linspace(0, 1, 14)[::-1] * 0.3 + labels * 0.5
    types = np.array(["good"] * 6 + ["hole", "crack"] * 4)
    result = metrics.evaluate(None, None, labels, scores, types)
    assert result["image_auroc_interval"] == metrics.image_auroc_interval(labels, scores)
    # Per type: that type's images with every good one, as its image AUROC.
    crack = (types == "good") | (types == "crack")
    assert result["per_defect_type"]["crack"]["image_auroc_interval"] == metrics.image_auroc_interval(
        labels[crack], scores[crack]
    )
    assert result["confidence"] == 0.95 and json.loads(json.dumps(result)) == result


def _binomial_tail(k_from, k_to, n, p):
    """P(k_from <= X <= k_to) for X ~ Binomial(n, p), summed by hand (independent of SciPy)."""
    return sum(math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(k_from, k_to + 1))


@pytest.mark.parametrize("k, n", [(3, 10), (1, 7), (19, 20), (42, 50)])
def test_rate_interval_is_clopper_pearson(k, n):
    low, high = metrics.rate_interval(k, n)
    # The exact interval's ends are where each one-sided tail holds 2.5 %.
    assert _binomial_tail(k, n, n, low) == pytest.approx(0.025, abs=1e-6)
    assert _binomial_tail(0, k, n, high) == pytest.approx(0.025, abs=1e-6)
    assert low < k / n < high
    exact = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")  # SciPy's own
    assert [low, high] == pytest.approx([exact.low, exact.high], abs=1e-9)
    narrow = metrics.rate_interval(k, n, level=0.8)
    assert low < narrow[0] < k / n < narrow[1] < high


def test_rate_interval_at_the_ends_has_closed_forms_and_refuses_impossible_counts():
    assert metrics.rate_interval(5, 5) == pytest.approx([0.025 ** (1 / 5), 1.0])  # 0.478: 5 of 5 says little
    assert metrics.rate_interval(0, 5) == pytest.approx([0.0, 1 - 0.025 ** (1 / 5)])
    assert metrics.rate_interval(0, 0) is None
    for bad, match in (((6, 5), "0 <= successes <= trials"), ((-1, 5), "0 <= successes"), ((1.5, 5), "whole counts")):
        with pytest.raises(ValueError, match=match):
            metrics.rate_interval(*bad)
    with pytest.raises(ValueError, match="confidence level must be in"):
        metrics.rate_interval(1, 5, level=1.0)


def test_classification_metrics_carry_each_rates_interval():
    truth = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], bool)
    pred = np.array([1, 1, 1, 0, 1, 1, 0, 0, 0, 0], bool)
    r = metrics.classification_metrics(truth, pred)
    assert r["tpr_interval"] == pytest.approx(metrics.rate_interval(3, 4))
    assert r["tnr_interval"] == pytest.approx(metrics.rate_interval(4, 6))
    r = metrics.classification_metrics([True, True], [True, False])
    assert r["tnr_interval"] is None and r["tpr_interval"] == pytest.approx(metrics.rate_interval(1, 2))


def test_classification_metrics_undefined():
    r = metrics.classification_metrics([False, False, False], [True, False, False])
    assert r["tpr"] is None and r["balanced_accuracy"] is None
    assert r["tnr"] == pytest.approx(2 / 3)
    assert r["precision"] == 0.0 and r["f1"] == 0.0
    assert "TPR cannot be computed: no defective images" in r["undefined"]
    assert any("balanced accuracy" in n for n in r["undefined"])

    r = metrics.classification_metrics([False, False], [False, False])
    assert r["precision"] is None and r["f1"] is None and r["tpr"] is None
    assert any("precision" in n for n in r["undefined"])

    r = metrics.classification_metrics([True, True], [True, False])
    assert r["tnr"] is None and r["tpr"] == 0.5 and r["precision"] == 1.0
    assert "TNR cannot be computed: no good images" in r["undefined"]
    json.dumps(r)


# ------------------------------------------------------------------ evaluate


def _eval_case():
    types = ["good", "good", "good", "crack", "crack", "scratch"]
    labels = [t != "good" for t in types]
    scores = [0.1, 0.2, 0.3, 0.9, 0.25, 0.05]
    return types, labels, scores


def test_evaluate_without_masks():
    types, labels, scores = _eval_case()
    r = metrics.evaluate(None, None, labels, scores, types)
    json.dumps(r)
    assert r["pixel_auroc"] is None and r["au_pro"] is None
    assert metrics.NO_MASKS_NOTE in r["notes"]
    assert set(r["per_defect_type"]) == {"crack", "scratch"}
    for entry in r["per_defect_type"].values():
        assert {"image_auroc", "pixel_auroc", "au_pro", "n_images", "n_defective"} <= set(entry)
        assert entry["pixel_auroc"] is None and entry["au_pro"] is None
    # crack vs good: .9 beats 3, .25 beats .1, .2 -> 5/6 ; scratch .05 beats none -> 0
    assert r["per_defect_type"]["crack"]["image_auroc"] == pytest.approx(5 / 6)
    assert r["per_defect_type"]["scratch"]["image_auroc"] == pytest.approx(0.0)
    assert r["per_defect_type"]["crack"]["n_images"] == 5
    s, t = np.array(scores), np.array(labels)
    assert r["image_auroc"] == pytest.approx(brute_force_auroc(s, t))
    assert (r["n_images"], r["n_good"], r["n_defective"]) == (6, 3, 3)


def test_evaluate_with_masks_matches_direct_calls():
    types, labels, scores = _eval_case()
    maps, masks = random_case(7, n_images=6)
    masks = [np.zeros_like(m) if t == "good" else m for m, t in zip(masks, types)]
    for i, t in enumerate(types):
        if t != "good" and not masks[i].any():
            masks[i][3:6, 3:6] = True
    r = metrics.evaluate(maps, masks, labels, scores, types, fpr_limit=0.3)
    json.dumps(r)
    assert r["pixel_auroc"] == pytest.approx(metrics.pixel_auroc(maps, masks))
    assert r["au_pro"] == pytest.approx(brute_force_au_pro(maps, masks), abs=1e-6)
    idx = [0, 1, 2, 3, 4]  # good + crack
    sub_maps, sub_masks = [maps[i] for i in idx], [masks[i] for i in idx]
    crack = r["per_defect_type"]["crack"]
    assert crack["pixel_auroc"] == pytest.approx(metrics.pixel_auroc(sub_maps, sub_masks))
    assert crack["au_pro"] == pytest.approx(brute_force_au_pro(sub_maps, sub_masks), abs=1e-6)
    assert metrics.NO_MASKS_NOTE not in r["notes"]


def test_evaluate_undefined_notes_and_validation():
    types = ["good", "good"]
    maps = [np.random.default_rng(0).random((4, 4)) for _ in range(2)]
    masks = [np.zeros((4, 4)) for _ in range(2)]
    r = metrics.evaluate(maps, masks, [0, 0], [0.1, 0.2], types)
    assert r["image_auroc"] is None and r["pixel_auroc"] is None and r["au_pro"] is None
    assert r["per_defect_type"] == {}
    assert any("image AUROC undefined" in n for n in r["notes"])
    assert any("AU-PRO undefined" in n for n in r["notes"])
    with pytest.raises(ValueError, match="disagree"):
        metrics.evaluate(None, None, [1, 0], [0.1, 0.2], ["good", "crack"])


# ------------------------------------------- one sort: pinned to the previous implementation
#
# The functions below are the pixel metrics as they were before PixelRanking (one sort per
# call, scikit-learn for the pixel AUROC and ROC curve), kept verbatim as the reference the
# one-sort code must reproduce to 1e-9.


def _ref_maps_and_masks(anomaly_maps, gt_masks):
    maps = metrics._as_image_list(anomaly_maps, "anomaly_maps")
    masks = metrics._as_image_list(gt_masks, "gt_masks")
    return [np.asarray(m, dtype=np.float64) for m in maps], [np.asarray(g) != 0 for g in masks]


def _ref_flat_pixels(anomaly_maps, gt_masks):
    maps, masks = _ref_maps_and_masks(anomaly_maps, gt_masks)
    return np.concatenate([m.ravel() for m in maps]), np.concatenate([g.ravel() for g in masks])


def _ref_pixel_auroc(anomaly_maps, gt_masks):
    scores, truth = _ref_flat_pixels(anomaly_maps, gt_masks)
    if truth.all() or not truth.any():
        return None
    return float(sk_metrics.roc_auc_score(truth, scores))


def _ref_pixel_roc_curve(anomaly_maps, gt_masks, max_points=2000):
    scores, truth = _ref_flat_pixels(anomaly_maps, gt_masks)
    fpr, tpr, _ = sk_metrics.roc_curve(truth, scores, drop_intermediate=True)
    return metrics._subsample_curve(fpr, tpr, int(max_points))


def _ref_pro_curve(anomaly_maps, gt_masks):
    maps, masks = _ref_maps_and_masks(anomaly_maps, gt_masks)
    n_total = sum(m.size for m in maps)
    scores = np.empty(n_total, dtype=np.float64)
    is_ok = np.empty(n_total, dtype=bool)
    pro_change = np.zeros(n_total, dtype=np.float64)
    num_ok = num_regions = pos = 0
    for m, g in zip(maps, masks):
        n = m.size
        labeled, n_components = ndimage.label(g, structure=np.ones((3, 3), dtype=int))
        labeled = labeled.ravel()
        scores[pos : pos + n] = m.ravel()
        ok = labeled == 0
        is_ok[pos : pos + n] = ok
        num_ok += int(ok.sum())
        if n_components:
            sizes = np.bincount(labeled, minlength=n_components + 1).astype(np.float64)
            weights = np.zeros(n_components + 1, dtype=np.float64)
            weights[1:] = 1.0 / sizes[1:]
            pro_change[pos : pos + n] = weights[labeled]
        num_regions += int(n_components)
        pos += n
    if num_regions == 0:
        raise ValueError("PRO curve undefined: the ground-truth masks contain no defect region")
    if num_ok == 0:
        raise ValueError("PRO curve undefined: there are no defect-free pixels")
    order = np.argsort(scores, kind="stable")[::-1]
    scores = scores[order]
    cum_fp = np.cumsum(is_ok[order], dtype=np.int64)
    cum_pro = np.cumsum(pro_change[order])
    keep = np.append(np.diff(scores) != 0, True)
    fprs = np.minimum(cum_fp[keep] / num_ok, 1.0)
    pros = np.minimum(cum_pro[keep] / num_regions, 1.0)
    return np.concatenate(([0.0], fprs, [1.0])), np.concatenate(([0.0], pros, [1.0]))


def _ref_au_pro(anomaly_maps, gt_masks, fpr_limit=0.3):
    fprs, pros = _ref_pro_curve(anomaly_maps, gt_masks)
    return metrics.trapezoid(fprs, pros, x_max=fpr_limit) / fpr_limit


def _ref_evaluate_pixels(maps, masks, types, fpr_limit=0.3):
    """Pixel AUROC / AU-PRO overall and per defect type (good + that type), as evaluate did."""
    types = np.asarray(types)
    subsets = {"": np.arange(len(types))}
    good = np.flatnonzero(types == "good")
    for t in sorted(set(types[types != "good"].tolist())):
        subsets[t] = np.concatenate([good, np.flatnonzero(types == t)])
    out = {}
    for name, idx in subsets.items():
        sub_maps, sub_masks = [maps[i] for i in idx], [masks[i] for i in idx]
        try:
            pro = _ref_au_pro(sub_maps, sub_masks, fpr_limit)
        except ValueError:
            pro = None
        out[name] = (_ref_pixel_auroc(sub_maps, sub_masks), pro)
    return out


def _assert_close_or_none(a, b, tol=1e-9):
    assert (a is None) == (b is None), (a, b)
    if a is not None:
        assert abs(a - b) <= tol, (a, b)


def _pinning_cases():
    """Ties (quantised float64), continuous float32, negative scores, -0.0 and 0.0, float64
    values that float32 cannot hold (the uint64-key path), a good image marked defective,
    an empty defective mask, differently sized images."""
    rng = np.random.default_rng(11)
    cases = []
    for seed in range(3):
        maps, masks = random_case(seed, n_images=9)
        cases.append((maps, masks))
    maps, masks = random_case(5, n_images=9, shape=(40, 36))
    cases.append(([(m - 6).astype(np.float32) + rng.random(m.shape, dtype=np.float32) for m in maps], masks))
    signed = [np.where(rng.random(m.shape) < 0.2, -0.0, m - 6.0) for m in maps]
    cases.append((signed, masks))
    cases.append(([m + rng.random(m.shape) * 1e-3 for m in maps], masks))  # needs float64
    odd_masks = [g.copy() for g in masks]
    odd_masks[0][2:5, 2:5] = True  # a "good" image (type below) with defect pixels
    odd_masks[1][:] = False  # a defective image with an empty mask
    cases.append((maps, odd_masks))
    sized = [
        rng.random((20 + 3 * i, 25), dtype=np.float32) + 0.5 * (rng.random((20 + 3 * i, 25)) < 0.1) for i in range(6)
    ]
    sized_masks = [
        np.zeros(s.shape, bool) if i % 3 == 0 else ndimage.binary_dilation(s > 1.2) for i, s in enumerate(sized)
    ]
    cases.append((sized, sized_masks))
    return cases


def _types_for(masks):
    return ["good" if i % 3 == 0 else ("crack" if i % 3 == 1 else "scratch") for i in range(len(masks))]


def test_one_sort_metrics_equal_the_previous_implementation():
    for maps, masks in _pinning_cases():
        types = _types_for(masks)
        labels = [t != "good" for t in types]
        scores = [float(np.max(m)) for m in maps]
        for limit in (0.3, 0.05, 1.0):
            expected = _ref_evaluate_pixels(maps, masks, types, limit)
            got = metrics.evaluate(maps, masks, labels, scores, types, fpr_limit=limit)
            for name, (auroc, pro) in expected.items():
                entry = got if name == "" else got["per_defect_type"][name]
                _assert_close_or_none(entry["pixel_auroc"], auroc)
                _assert_close_or_none(entry["au_pro"], pro)
            _assert_close_or_none(metrics.au_pro(maps, masks, fpr_limit=limit), _ref_au_pro(maps, masks, limit))
        f_ref, p_ref = _ref_pro_curve(maps, masks)
        f_new, p_new = metrics.pro_curve(maps, masks)
        assert f_new.shape == f_ref.shape  # one point per distinct score, as before
        np.testing.assert_allclose(f_new, f_ref, rtol=0, atol=1e-12)
        np.testing.assert_allclose(p_new, p_ref, rtol=0, atol=1e-12)
        for points in (2000, 50):
            for new, ref in zip(
                metrics.pixel_roc_curve(maps, masks, points), _ref_pixel_roc_curve(maps, masks, points)
            ):
                np.testing.assert_array_equal(new, ref)
        _assert_close_or_none(metrics.pixel_auroc(maps, masks), _ref_pixel_auroc(maps, masks))


def test_ranking_subsets_equal_fresh_computations_on_the_subset():
    maps, masks = random_case(3, n_images=9)
    ranking = metrics.PixelRanking(maps, masks)
    rng = np.random.default_rng(4)
    for _ in range(5):
        chosen = rng.random(9) < 0.5
        chosen[1] = True  # at least one image with regions
        sub_maps = [m for m, c in zip(maps, chosen) if c]
        sub_masks = [g for g, c in zip(masks, chosen) if c]
        _assert_close_or_none(ranking.auroc(chosen), _ref_pixel_auroc(sub_maps, sub_masks))
        f, p = ranking.pro_curve(chosen)
        f_ref, p_ref = _ref_pro_curve(sub_maps, sub_masks)
        assert f.shape == f_ref.shape
        np.testing.assert_allclose(f, f_ref, atol=1e-12)
        np.testing.assert_allclose(p, p_ref, atol=1e-12)
        assert ranking.au_pro(0.3, chosen) == pytest.approx(_ref_au_pro(sub_maps, sub_masks), abs=1e-12)
    with pytest.raises(ValueError, match="no defect region"):
        ranking.au_pro(0.3, np.arange(9) % 3 == 0)  # only the good images
    with pytest.raises(ValueError, match="selects from 2 images"):
        ranking.auroc([True, False])


def test_pixel_figures_equal_scikit_learn_on_small_inputs():
    rng = np.random.default_rng(8)
    for _ in range(20):
        shape = (int(rng.integers(2, 9)), int(rng.integers(2, 9)))
        n = int(rng.integers(1, 4))
        levels = int(rng.integers(2, 30))
        maps = [rng.integers(0, levels, size=shape).astype(np.float32) / levels - 0.3 for _ in range(n)]
        masks = [rng.random(shape) < 0.3 for _ in range(n)]
        truth = np.concatenate([g.ravel() for g in masks])
        scores = np.concatenate([m.ravel() for m in maps])
        if truth.all() or not truth.any():
            assert metrics.pixel_auroc(maps, masks) is None
            continue
        assert metrics.pixel_auroc(maps, masks) == pytest.approx(sk_metrics.roc_auc_score(truth, scores), abs=1e-12)
        assert metrics.pixel_auroc(maps, masks) == pytest.approx(brute_force_auroc(scores, truth), abs=1e-12)
        fpr, tpr = metrics.pixel_roc_curve(maps, masks, max_points=10**6)
        sk_fpr, sk_tpr, _ = sk_metrics.roc_curve(truth, scores)
        np.testing.assert_array_equal(fpr, sk_fpr)
        np.testing.assert_array_equal(tpr, sk_tpr)


def test_evaluate_returns_the_curves_of_its_figures():
    maps, masks = random_case(2, n_images=6)
    types = _types_for(masks)
    labels = [t != "good" for t in types]
    scores = [float(np.max(m)) for m in maps]
    result, curves = metrics.evaluate(maps, masks, labels, scores, types, return_curves=True)
    assert result == metrics.evaluate(maps, masks, labels, scores, types)
    for new, ref in zip(curves["pro"], _ref_pro_curve(maps, masks)):
        np.testing.assert_allclose(new, ref, atol=1e-12)
    for new, ref in zip(curves["pixel_roc"], _ref_pixel_roc_curve(maps, masks)):
        np.testing.assert_array_equal(new, ref)
    _, none = metrics.evaluate(None, None, labels, scores, types, return_curves=True)
    assert none == {"pixel_roc": None, "pro": None}


# ------------------------------------------- the one-sort pieces, each against a plain reference


def test_image_level_figures_equal_scikit_learn_exactly():
    rng = np.random.default_rng(21)
    for trial in range(200):
        n = int(rng.integers(2, 40))
        labels = rng.random(n) < rng.uniform(0.1, 0.9)
        if labels.all() or not labels.any():
            labels[0], labels[-1] = True, False
        levels = int(rng.integers(1, 12))
        scores = rng.integers(0, levels + 1, size=n) / levels - 0.5  # many ties, negative values
        if trial % 4 == 0:
            scores = rng.normal(size=n)
        if trial % 7 == 0:
            scores[scores == 0] = -0.0  # -0.0 ties with 0.0
        assert metrics.image_auroc(labels, scores) == sk_metrics.roc_auc_score(labels, scores)
        fpr, tpr = metrics.roc_curve(labels.astype(int), list(scores))
        sk_fpr, sk_tpr, _ = sk_metrics.roc_curve(labels, scores)
        np.testing.assert_array_equal(fpr, sk_fpr)
        np.testing.assert_array_equal(tpr, sk_tpr)


def test_importing_metrics_stays_light():
    import subprocess

    code = (
        "import sys, metrics; print(sorted(m for m in ('sklearn', 'scipy', 'cv2', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=os.path.dirname(os.path.abspath(metrics.__file__)),
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "[]"


def test_score_keys_rank_scores_descending_with_equal_keys_for_equal_scores():
    rng = np.random.default_rng(5)
    specials = [0.0, -0.0, 1e-40, -1e-40, np.finfo(np.float32).max, -np.finfo(np.float32).max, 1.0, -1.0]
    as32 = np.concatenate((np.array(specials), rng.normal(size=500) * 10.0 ** rng.integers(-6, 6, 500)))
    as32 = as32.astype(np.float32)
    cases = {
        "float32": [as32[:300].reshape(20, 15), as32[300:].reshape(26, 8)],
        "float64 holding float32": [as32.astype(np.float64).reshape(2, -1)],
        "float64": [np.concatenate((as32.astype(np.float64), rng.normal(size=92) * 1e-300)).reshape(20, 30)],
    }
    for name, maps in cases.items():
        keys = metrics._score_keys(maps)
        assert keys.dtype == (np.uint64 if name == "float64" else np.uint32), name
        scores = np.concatenate([m.ravel() for m in maps]).astype(np.float64)
        # pairwise: key order is the reverse of score order, equal keys exactly for equal scores
        i, j = rng.integers(0, scores.size, (2, 20000))
        np.testing.assert_array_equal(keys[i] < keys[j], scores[i] > scores[j])
        np.testing.assert_array_equal(keys[i] == keys[j], scores[i] == scores[j])
        zero = np.flatnonzero(scores == 0)
        assert zero.size >= 2 and np.unique(keys[zero]).size == 1  # -0.0 and 0.0: one key


def _same_partition(a, b):
    """True when two label images split the foreground into the same regions (any numbering)."""
    fg = a > 0
    if not np.array_equal(fg, b > 0):
        return False
    pairs = np.unique(np.stack((a[fg], b[fg])), axis=1)
    return pairs.shape[1] == np.unique(a[fg]).size == np.unique(b[fg]).size


def test_opencv_regions_equal_ndimage_label_with_8_connectivity():
    rng = np.random.default_rng(9)
    masks = [
        rng.random((int(rng.integers(1, 40)), int(rng.integers(1, 40)))) < rng.uniform(0.05, 0.7) for _ in range(60)
    ]
    diagonal = np.eye(6, dtype=bool)  # touching only at corners: one 8-connected region
    full = np.ones((5, 7), bool)
    corner = np.zeros((9, 9), bool)
    corner[8, 8] = corner[0, 0] = True
    for mask in masks + [diagonal, full, corner]:
        where = np.flatnonzero(mask)
        if not where.size:
            continue
        n_regions, region = metrics._defect_regions(mask, where)
        expected, n_expected = ndimage.label(mask, structure=np.ones((3, 3), dtype=int))
        assert n_regions == n_expected
        got = np.zeros(mask.shape, dtype=np.int64)
        got.ravel()[where] = region
        assert region.min() >= 1 and region.max() == n_regions
        assert _same_partition(got, expected)
    assert metrics._defect_regions(diagonal, np.flatnonzero(diagonal))[0] == 1


def test_empty_masks_are_not_labelled(monkeypatch):
    maps, masks = random_case(4, n_images=9)  # every third mask empty
    expected = metrics.PixelRanking(maps, masks)
    labelled = []
    original = metrics._defect_regions
    monkeypatch.setattr(metrics, "_defect_regions", lambda m, w: labelled.append(1) or original(m, w))
    ranking = metrics.PixelRanking(maps, masks)
    assert len(labelled) == sum(bool(g.any()) for g in masks) < len(masks)
    np.testing.assert_array_equal(ranking.regions[[not g.any() for g in masks]], 0)
    assert ranking.auroc() == expected.auroc() == pytest.approx(_ref_pixel_auroc(maps, masks), abs=1e-12)
    assert ranking.au_pro() == pytest.approx(_ref_au_pro(maps, masks), abs=1e-12)
    # nothing but empty masks: no region at all
    empty = [np.zeros_like(g) for g in masks]
    assert metrics.PixelRanking(maps, empty).auroc() is None
    with pytest.raises(ValueError, match="no defect region"):
        metrics.PixelRanking(maps, empty).au_pro()


def test_run_ends_equal_searchsorted_in_both_paths():
    rng = np.random.default_rng(3)
    for levels in (5, 50, 10**6):  # long runs of ties (the search fallback) and short ones (the steps)
        keys = np.sort(rng.integers(0, levels, 5000).astype(np.uint32))
        queries = np.unique(keys[rng.integers(0, keys.size, 300)])
        start = np.searchsorted(keys, queries, side="left") + 1
        np.testing.assert_array_equal(
            metrics._run_ends(keys, queries, start), np.searchsorted(keys, queries, side="right")
        )


def test_pixel_roc_curve_subsampled_equals_subsampled_scikit_learn():
    rng = np.random.default_rng(13)
    for trial in range(60):
        shape = (int(rng.integers(1, 12)), int(rng.integers(2, 12)))
        n = int(rng.integers(1, 4))
        levels = int(rng.integers(1, 6)) if trial % 3 else 10**6  # few distinct scores: 1-2 runs too
        maps = [(rng.integers(0, levels + 1, size=shape) / levels).astype(np.float32) for _ in range(n)]
        masks = [rng.random(shape) < rng.uniform(0.05, 0.6) for _ in range(n)]
        truth = np.concatenate([g.ravel() for g in masks])
        if truth.all() or not truth.any():
            continue
        scores = np.concatenate([m.ravel() for m in maps])
        sk_fpr, sk_tpr, _ = sk_metrics.roc_curve(truth, scores)
        ranking = metrics.PixelRanking(maps, masks)
        for points in (2, 3, 4, 7, 10**6):
            fpr, tpr = ranking.roc_curve(points)
            ref_fpr, ref_tpr = metrics._subsample_curve(sk_fpr, sk_tpr, points)
            np.testing.assert_array_equal(fpr, ref_fpr)
            np.testing.assert_array_equal(tpr, ref_tpr)
    with pytest.raises(ValueError, match="max_points"):
        ranking.roc_curve(1)


def test_subset_pro_curves_and_figures_equal_fresh_rankings():
    # Continuous float32 maps and quantised ones (ties across images), every subset kind.
    rng = np.random.default_rng(17)
    maps, masks = random_case(6, n_images=8, shape=(20, 18))
    continuous = [m.astype(np.float32) + rng.random(m.shape, dtype=np.float32) for m in maps]
    for case in (maps, continuous):
        ranking = metrics.PixelRanking(case, masks)
        for chosen in (np.arange(8) % 3 != 1, np.arange(8) < 5, np.ones(8, bool), np.arange(8) == 1):
            sub = [m for m, c in zip(case, chosen) if c], [g for g, c in zip(masks, chosen) if c]
            fresh = metrics.PixelRanking(*sub)
            f, p = ranking.pro_curve(chosen)
            f_ref, p_ref = _ref_pro_curve(*sub)
            assert f.shape == f_ref.shape
            np.testing.assert_array_equal(f, f_ref)
            np.testing.assert_allclose(p, p_ref, rtol=0, atol=1e-12)
            assert ranking.auroc(chosen) == fresh.auroc()
            for limit in (0.3, 0.01, 1.0):
                assert ranking.au_pro(limit, chosen) == pytest.approx(_ref_au_pro(*sub, limit), abs=1e-12)
        assert ranking.auroc(np.zeros(8, bool)) is None
