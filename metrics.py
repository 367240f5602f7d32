"""Evaluation metrics for anomaly detection: the one home of every number in ``metrics.json``.

Pure NumPy / SciPy / scikit-learn (no TensorFlow), so it can be imported and tested
without a model.

Conventions used throughout:

* An **anomaly map** is a 2-D float array (H x W); higher = more anomalous.
  ``anomaly_maps`` is a sequence of such maps or an ``(N, H, W)`` array; a trailing
  channel axis of size 1 (``(H, W, 1)`` / ``(N, H, W, 1)``) is squeezed away.
* A **ground-truth mask** has the same shape as its map; any non-zero value is a defect
  pixel (so bool, 0/1 and 0/255 masks all work). Good images have all-zero masks.
* **Image labels** are bool / 0-1: True (1) = defective.
* Scores must be finite; NaN/inf raise ``ValueError`` (they would silently corrupt the
  ranking that every metric here is based on).
* Metrics that are undefined (e.g. an AUROC with only one class) are returned as
  ``None`` rather than NaN, so the results stay valid JSON.

Ties: ROC/AUROC use scikit-learn, which counts a tied (positive, negative) pair as
1/2 (the Mann-Whitney convention) and puts all tied scores on one ROC point. The PRO
curve likewise has one point per distinct score: all pixels with an equal score enter
the positive set together, exactly as MVTec's official ``compute_pro`` does.
"""
import warnings

import numpy as np
from scipy import ndimage
from sklearn import metrics as _skm

__all__ = [
    "image_auroc",
    "roc_curve",
    "pixel_auroc",
    "pixel_roc_curve",
    "pro_curve",
    "trapezoid",
    "au_pro",
    "classification_metrics",
    "evaluate",
]

DEFAULT_FPR_LIMIT = 0.3
GOOD_TYPE = "good"
NO_MASKS_NOTE = "no ground-truth masks: pixel AUROC and AU-PRO not computed"
NO_MAPS_NOTE = "no anomaly maps: pixel AUROC and AU-PRO not computed"

# 8-connectivity, as in MVTec's evaluation code.
_STRUCTURE = np.ones((3, 3), dtype=int)


# --------------------------------------------------------------------------- helpers


def _as_labels(labels, name="labels"):
    """1-D bool array from bool / 0-1 labels; anything else is a ValueError."""
    arr = np.asarray(labels)
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    if arr.dtype == bool:
        return arr
    if arr.size and not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be bool or 0/1 numbers, got dtype {arr.dtype}")
    if arr.size and not np.all((arr == 0) | (arr == 1)):
        raise ValueError(f"{name} must contain only 0/1 (or False/True)")
    return arr.astype(bool)


def _as_scores(scores, name="scores"):
    arr = np.asarray(scores, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contain NaN or infinite values")
    return arr


def _squeeze_channel(a):
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    return a


def _as_image_list(images, name):
    """List of 2-D arrays from a sequence of maps or an (N, H, W[, 1]) array."""
    if isinstance(images, np.ndarray):
        if images.ndim == 4 and images.shape[-1] == 1:
            images = images[..., 0]
        if images.ndim != 3:
            raise ValueError(
                f"{name} must be a sequence of 2-D arrays or an (N, H, W) array, "
                f"got an array of shape {images.shape}"
            )
        return list(images)
    out = []
    for i, img in enumerate(images):
        a = _squeeze_channel(np.asarray(img))
        if a.ndim != 2:
            raise ValueError(f"{name}[{i}] must be 2-D (H x W), got shape {a.shape}")
        out.append(a)
    return out


def _maps_and_masks(anomaly_maps, gt_masks):
    """Validated lists of float64 maps and bool masks with matching shapes."""
    maps = _as_image_list(anomaly_maps, "anomaly_maps")
    masks = _as_image_list(gt_masks, "gt_masks")
    if len(maps) != len(masks):
        raise ValueError(f"{len(maps)} anomaly maps but {len(masks)} ground-truth masks")
    if not maps:
        raise ValueError("no anomaly maps given")
    out_maps, out_masks = [], []
    for i, (m, g) in enumerate(zip(maps, masks)):
        if m.shape != g.shape:
            raise ValueError(f"anomaly map {i} has shape {m.shape} but its mask has shape {g.shape}")
        m = np.asarray(m, dtype=np.float64)
        if not np.all(np.isfinite(m)):
            raise ValueError(f"anomaly map {i} contains NaN or infinite values")
        out_maps.append(m)
        out_masks.append(np.asarray(g) != 0)
    return out_maps, out_masks


def _flat_pixels(anomaly_maps, gt_masks):
    maps, masks = _maps_and_masks(anomaly_maps, gt_masks)
    scores = np.concatenate([m.ravel() for m in maps])
    truth = np.concatenate([g.ravel() for g in masks])
    return scores, truth


def _subsample_curve(x, y, max_points):
    """At most ``max_points`` points, evenly spaced by index, always keeping both ends."""
    if max_points < 2:
        raise ValueError("max_points must be at least 2")
    n = len(x)
    if n <= max_points:
        return x, y
    idx = np.unique(np.round(np.linspace(0, n - 1, max_points)).astype(np.int64))
    return x[idx], y[idx]


def _opt_float(v):
    return None if v is None else float(v)


# --------------------------------------------------------------------- image level


def image_auroc(labels, scores):
    """Image-level ROC AUC, or None if only one class is present.

    AUROC = P(s_defective > s_good) + 1/2 * P(s_defective == s_good)
          = U / (n_defective * n_good)   (Mann-Whitney U; ties count 1/2),
    computed by ``sklearn.metrics.roc_auc_score``. ``labels``: True/1 = defective.
    """
    y = _as_labels(labels)
    s = _as_scores(scores)
    if y.shape != s.shape:
        raise ValueError(f"{y.size} labels but {s.size} scores")
    if y.all() or not y.any():
        return None
    return float(_skm.roc_auc_score(y, s))


def roc_curve(labels, scores):
    """ROC curve ``(fpr, tpr)`` as float arrays, for plotting (thin wrapper of sklearn's).

    For each threshold t (every distinct score, descending):
    TPR(t) = #{defective: s >= t} / #defective, FPR(t) = #{good: s >= t} / #good.
    The curve starts at (0, 0). Raises ValueError if only one class is present.
    """
    y = _as_labels(labels)
    s = _as_scores(scores)
    if y.shape != s.shape:
        raise ValueError(f"{y.size} labels but {s.size} scores")
    if y.all() or not y.any():
        raise ValueError("ROC curve needs both classes; only one is present")
    fpr, tpr, _ = _skm.roc_curve(y, s)
    return fpr, tpr


# --------------------------------------------------------------------- pixel level


def pixel_auroc(anomaly_maps, gt_masks):
    """Pixel-level ROC AUC over all pixels of all images, or None if only one class.

    All maps and masks are flattened and concatenated; then, as for images,
    AUROC = P(s_defect_pixel > s_ok_pixel) + 1/2 * P(equal), via
    ``sklearn.metrics.roc_auc_score``. Memory is a few tens of bytes per pixel
    (~100 images of 256x256 = 6.5M pixels is fine).
    """
    scores, truth = _flat_pixels(anomaly_maps, gt_masks)
    if truth.all() or not truth.any():
        return None
    return float(_skm.roc_auc_score(truth, scores))


def pixel_roc_curve(anomaly_maps, gt_masks, max_points=2000):
    """Pixel-level ROC curve ``(fpr, tpr)``, subsampled to at most ``max_points`` points.

    Same definition as :func:`roc_curve` over all pixels. sklearn's collinear-point
    dropping is applied first, then (if still longer) points are taken evenly spaced by
    index, always keeping the first (0, 0) and last (1, 1) point. For plotting only;
    use :func:`pixel_auroc` for the number. Raises ValueError with only one class.
    """
    scores, truth = _flat_pixels(anomaly_maps, gt_masks)
    if truth.all() or not truth.any():
        raise ValueError("pixel ROC curve needs both defect and defect-free pixels")
    fpr, tpr, _ = _skm.roc_curve(truth, scores, drop_intermediate=True)
    return _subsample_curve(fpr, tpr, int(max_points))


# ---------------------------------------------------------------------------- PRO


def pro_curve(anomaly_maps, gt_masks):
    """Per-region-overlap (PRO) curve ``(fprs, pros)``, as MVTec AD's official ``compute_pro``.

    Each mask is split into 8-connected regions (``scipy.ndimage.label``, 3x3 ones).
    For a threshold t, with R_1..R_K all regions of all images and OK all defect-free
    pixels of all images (good images included):

        PRO(t) = 1/K * sum_k |{p in R_k : s_p >= t}| / |R_k|
        FPR(t) = |{p in OK : s_p >= t}| / |OK|

    Computed in one pass: every OK pixel carries fp_change = 1, every pixel of region k
    carries pro_change = 1/|R_k|; all pixels are sorted by score (descending), both
    changes cumulatively summed, and only the last position of each run of equal scores
    is kept (so tied pixels enter together: one curve point per distinct score, t = that
    score). fprs = cum_fp / |OK|, pros = cum_pro / K, clipped to <= 1, with 0 prepended
    and 1 appended to both.

    Returns float64 arrays, fprs non-decreasing (MVTec casts fprs to float32; we keep
    float64, which only differs at the 1e-7 level). Raises ValueError if there is no
    ground-truth region at all or no defect-free pixel.
    """
    maps, masks = _maps_and_masks(anomaly_maps, gt_masks)

    n_total = sum(m.size for m in maps)
    scores = np.empty(n_total, dtype=np.float64)
    is_ok = np.empty(n_total, dtype=bool)
    pro_change = np.zeros(n_total, dtype=np.float64)

    num_ok = 0
    num_regions = 0
    pos = 0
    for m, g in zip(maps, masks):
        n = m.size
        labeled, n_components = ndimage.label(g, structure=_STRUCTURE)
        labeled = labeled.ravel()
        scores[pos:pos + n] = m.ravel()
        ok = labeled == 0
        is_ok[pos:pos + n] = ok
        num_ok += int(ok.sum())
        if n_components:
            sizes = np.bincount(labeled, minlength=n_components + 1).astype(np.float64)
            weights = np.zeros(n_components + 1, dtype=np.float64)
            weights[1:] = 1.0 / sizes[1:]
            pro_change[pos:pos + n] = weights[labeled]  # label 0 -> weight 0
        num_regions += int(n_components)
        pos += n

    if num_regions == 0:
        raise ValueError("PRO curve undefined: the ground-truth masks contain no defect region")
    if num_ok == 0:
        raise ValueError("PRO curve undefined: there are no defect-free pixels")

    order = np.argsort(scores, kind="stable")[::-1]
    scores = scores[order]
    cum_fp = np.cumsum(is_ok[order], dtype=np.int64)
    del is_ok
    cum_pro = np.cumsum(pro_change[order])
    del pro_change, order

    # Last position of each run of equal scores: [7, 4, 4, 4, 3, 1, 1] -> [T, F, F, T, T, F, T]
    keep = np.append(np.diff(scores) != 0, True)
    fprs = np.minimum(cum_fp[keep] / num_ok, 1.0)
    pros = np.minimum(cum_pro[keep] / num_regions, 1.0)

    return np.concatenate(([0.0], fprs, [1.0])), np.concatenate(([0.0], pros, [1.0]))


def trapezoid(x, y, x_max=None):
    """Area under the polyline (x, y) by the trapezoidal rule, optionally only up to ``x_max``.

    As MVTec's ``generic_util.trapezoid``:

    * points with a non-finite x or y are dropped (with a RuntimeWarning);
    * x must already be sorted ascending (non-decreasing). It is *not* re-sorted, because
      with repeated x values the order of their y values is part of the curve (a
      vertical step); unsorted x raises ValueError (MVTec silently assumes sorted);
    * if ``x_max`` is given it must lie within [min(x), max(x)] (else ValueError);
      points with x <= x_max are kept and, if x_max is not itself one of the x values,
      the point (x_max, y*) is added, with y* linearly interpolated between the
      neighbours x[i-1] < x_max < x[i] (x[i-1] = the last x <= x_max):
      y* = y[i-1] + (y[i] - y[i-1]) * (x_max - x[i-1]) / (x[i] - x[i-1]).

    area = sum_j (x[j+1] - x[j]) * (y[j] + y[j+1]) / 2.
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"x has {x.size} points but y has {y.size}")
    finite = np.isfinite(x) & np.isfinite(y)
    if not finite.all():
        warnings.warn(
            "trapezoid: dropping points with non-finite x or y", RuntimeWarning, stacklevel=2
        )
        x, y = x[finite], y[finite]
    if x.size == 0:
        raise ValueError("trapezoid: no finite points")
    if np.any(np.diff(x) < 0):
        raise ValueError("trapezoid: x must be sorted in ascending order")

    correction = 0.0
    if x_max is not None:
        x_max = float(x_max)
        if not x[0] <= x_max <= x[-1]:
            raise ValueError(f"trapezoid: x_max={x_max} outside the range of x [{x[0]}, {x[-1]}]")
        if x_max not in x:
            i = int(np.searchsorted(x, x_max, side="right"))  # x[i-1] < x_max < x[i] (= bisect_right)
            y_interp = y[i - 1] + (y[i] - y[i - 1]) * (x_max - x[i - 1]) / (x[i] - x[i - 1])
            correction = 0.5 * (y_interp + y[i - 1]) * (x_max - x[i - 1])
        keep = x <= x_max
        x, y = x[keep], y[keep]

    return float(np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1])) + correction)


def au_pro(anomaly_maps, gt_masks, fpr_limit=DEFAULT_FPR_LIMIT, return_curve=False):
    """Normalised area under the PRO curve up to FPR = ``fpr_limit`` (MVTec's AU-PRO).

    AU-PRO = trapezoid(fprs, pros, x_max=fpr_limit) / fpr_limit, in [0, 1]
    (1 = every region fully detected before any defect-free pixel is flagged).

    Returns a float; with ``return_curve=True`` returns ``(value, fprs, pros)`` with the
    full (un-cut) curve of :func:`pro_curve`, so it need not be computed twice.
    Raises ValueError when the PRO curve is undefined (no regions / no ok pixels) or
    ``fpr_limit`` is not in (0, 1].
    """
    fpr_limit = float(fpr_limit)
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    fprs, pros = pro_curve(anomaly_maps, gt_masks)
    value = trapezoid(fprs, pros, x_max=fpr_limit) / fpr_limit
    if return_curve:
        return value, fprs, pros
    return value


# ------------------------------------------------------------------ classification


def classification_metrics(truth, pred):
    """Confusion counts and rates of a thresholded image-level decision.

    ``truth`` / ``pred``: bool (or 0/1) per image, True = defective. With
    tp = truth & pred, fp = ~truth & pred, tn = ~truth & ~pred, fn = truth & ~pred:

        tpr (recall)       = tp / (tp + fn)            None if no defective images
        tnr (specificity)  = tn / (tn + fp)            None if no good images
        accuracy           = (tp + tn) / n             None if no images
        balanced_accuracy  = (tpr + tnr) / 2           None unless tpr and tnr defined
        precision          = tp / (tp + fp)            None if nothing predicted defective
        f1                 = 2 tp / (2 tp + fp + fn)   None if tp + fp + fn == 0

    (f1 uses the count form, equal to 2PR/(P+R) when both are defined; it is 0.0, not
    None, when there are defective images but none is predicted defective.)
    Returns a JSON-serialisable dict: tp, fp, tn, fn, n_images, n_good, n_defective
    (ints), the rates above (float or None), ``confusion_matrix`` as
    {"truth_good": {"pred_good": tn, "pred_defective": fp},
     "truth_defective": {"pred_good": fn, "pred_defective": tp}},
    and ``undefined``: human-readable notes for every None.
    """
    t = _as_labels(truth, "truth")
    p = _as_labels(pred, "pred")
    if t.shape != p.shape:
        raise ValueError(f"{t.size} truth labels but {p.size} predictions")

    tp = int(np.sum(t & p))
    fp = int(np.sum(~t & p))
    tn = int(np.sum(~t & ~p))
    fn = int(np.sum(t & ~p))
    n = tp + fp + tn + fn
    n_defective = tp + fn
    n_good = tn + fp
    undefined = []

    tpr = tp / n_defective if n_defective else None
    if tpr is None:
        undefined.append("TPR cannot be computed: no defective images")
    tnr = tn / n_good if n_good else None
    if tnr is None:
        undefined.append("TNR cannot be computed: no good images")
    accuracy = (tp + tn) / n if n else None
    if accuracy is None:
        undefined.append("accuracy cannot be computed: no images")
    if tpr is not None and tnr is not None:
        balanced = (tpr + tnr) / 2
    else:
        balanced = None
        undefined.append("balanced accuracy cannot be computed: needs both good and defective images")
    precision = tp / (tp + fp) if (tp + fp) else None
    if precision is None:
        undefined.append("precision cannot be computed: no images predicted defective")
    f1_den = 2 * tp + fp + fn
    f1 = 2 * tp / f1_den if f1_den else None
    if f1 is None:
        undefined.append("F1 cannot be computed: no defective images and none predicted defective")

    return {
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "tpr": _opt_float(tpr),
        "tnr": _opt_float(tnr),
        "accuracy": _opt_float(accuracy),
        "balanced_accuracy": _opt_float(balanced),
        "precision": _opt_float(precision),
        "f1": _opt_float(f1),
        "confusion_matrix": {
            "truth_good": {"pred_good": tn, "pred_defective": fp},
            "truth_defective": {"pred_good": fn, "pred_defective": tp},
        },
        "n_images": n,
        "n_good": n_good,
        "n_defective": n_defective,
        "undefined": undefined,
    }


# ------------------------------------------------------------------------ evaluate


def _image_and_pixel_metrics(idx, labels, scores, maps, masks, fpr_limit, prefix, notes):
    """image_auroc / pixel_auroc / au_pro on the images ``idx``; undefined ones -> None + note."""
    out = {"image_auroc": None, "pixel_auroc": None, "au_pro": None}
    out["image_auroc"] = image_auroc(labels[idx], scores[idx])
    if out["image_auroc"] is None:
        notes.append(f"{prefix}image AUROC undefined: only one class (good/defective) present")
    if maps is None or masks is None:
        return out
    sub_maps = [maps[i] for i in idx]
    sub_masks = [masks[i] for i in idx]
    out["pixel_auroc"] = pixel_auroc(sub_maps, sub_masks)
    if out["pixel_auroc"] is None:
        notes.append(f"{prefix}pixel AUROC undefined: only one pixel class (defect/defect-free) present")
    try:
        out["au_pro"] = au_pro(sub_maps, sub_masks, fpr_limit=fpr_limit)
    except ValueError as exc:
        notes.append(f"{prefix}AU-PRO undefined: {exc}")
    return out


def evaluate(anomaly_maps, gt_masks, image_labels, image_scores, defect_types,
             fpr_limit=DEFAULT_FPR_LIMIT):
    """All threshold-free metrics for ``metrics.json``, overall and per defect type.

    Args:
        anomaly_maps: per-image 2-D maps (or (N, H, W) array), or None.
        gt_masks: per-image masks of the same shapes, or None when the dataset has no
            ground truth; then pixel AUROC / AU-PRO are None and a note says so.
        image_labels: bool / 0-1 per image, True = defective. Must agree with
            ``defect_types`` (False exactly for the "good" images), else ValueError.
        image_scores: float per image, higher = more anomalous.
        defect_types: str per image; "good" for defect-free images.
        fpr_limit: upper FPR bound of the AU-PRO integration (default 0.3).

    Per defect type D (every type except "good"), the metrics use D's images together
    with all good images (the usual MVTec convention): image AUROC over good + D,
    pixel AUROC and AU-PRO over the pixels of good + D images.

    Returns a JSON-serialisable dict::

        {"image_auroc": float|None, "pixel_auroc": float|None, "au_pro": float|None,
         "fpr_limit": float, "n_images": int, "n_good": int, "n_defective": int,
         "per_defect_type": {D: {"image_auroc", "pixel_auroc", "au_pro",
                                 "n_images", "n_defective"}, ...},   # sorted by D
         "notes": [str, ...]}

    Every metric that is None gets an explanatory entry in ``notes``.
    """
    labels = _as_labels(image_labels, "image_labels")
    scores = _as_scores(image_scores, "image_scores")
    types = np.asarray([str(t) for t in defect_types], dtype=object)
    n = labels.size
    if scores.size != n or types.size != n:
        raise ValueError(
            f"got {n} image labels, {scores.size} image scores and {types.size} defect types"
        )
    is_good_type = types == GOOD_TYPE
    if np.any(labels == is_good_type):
        bad = int(np.sum(labels == is_good_type))
        raise ValueError(
            f"{bad} image(s) where image_labels disagree with defect_types "
            f"(label must be False exactly for defect type {GOOD_TYPE!r})"
        )
    fpr_limit = float(fpr_limit)
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")

    notes = []
    maps = masks = None
    if gt_masks is None:
        notes.append(NO_MASKS_NOTE)
    elif anomaly_maps is None:
        notes.append(NO_MAPS_NOTE)
    else:
        maps, masks = _maps_and_masks(anomaly_maps, gt_masks)
        if len(maps) != n:
            raise ValueError(f"{len(maps)} anomaly maps but {n} image labels")
        has_defect = np.array([g.any() for g in masks])
        empty_defective = int(np.sum(labels & ~has_defect))
        if empty_defective:
            notes.append(f"{empty_defective} defective image(s) have an empty ground-truth mask")
        marked_good = int(np.sum(~labels & has_defect))
        if marked_good:
            notes.append(f"{marked_good} good image(s) have defect pixels in their ground-truth mask")

    all_idx = np.arange(n)
    result = _image_and_pixel_metrics(all_idx, labels, scores, maps, masks, fpr_limit, "", notes)
    result["fpr_limit"] = fpr_limit
    result["n_images"] = int(n)
    result["n_good"] = int(np.sum(~labels))
    result["n_defective"] = int(np.sum(labels))

    good_idx = np.flatnonzero(is_good_type)
    per_type = {}
    for dtype in sorted(set(types[~is_good_type].tolist())):
        idx = np.concatenate([good_idx, np.flatnonzero(types == dtype)])
        entry = _image_and_pixel_metrics(
            idx, labels, scores, maps, masks, fpr_limit, f"{dtype}: ", notes
        )
        entry["n_images"] = int(idx.size)
        entry["n_defective"] = int(np.sum(types == dtype))
        per_type[dtype] = entry
    result["per_defect_type"] = per_type
    result["notes"] = notes
    return result
