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

Ties: ROC/AUROC count a tied (positive, negative) pair as 1/2 (the Mann-Whitney
convention, as scikit-learn, which computes the image-level figures) and put all tied
scores on one ROC point. The PRO
curve likewise has one point per distinct score: all pixels with an equal score enter
the positive set together, exactly as MVTec's official ``compute_pro`` does.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage
from sklearn import metrics as _skm

Maps = Sequence[np.ndarray] | np.ndarray  # per-image 2-D maps or masks, or one N×H×W array

__all__ = [
    "image_auroc",
    "roc_curve",
    "pixel_auroc",
    "pixel_roc_curve",
    "PixelRanking",
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
                f"{name} must be a sequence of 2-D arrays or an (N, H, W) array, got an array of shape {images.shape}"
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
    """Validated lists of float maps (float32 kept, anything else as float64) and bool
    masks with matching shapes."""
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
        m = np.asarray(m)
        if m.dtype not in (np.float32, np.float64):
            m = m.astype(np.float64)
        if not np.isfinite(m).all():
            raise ValueError(f"anomaly map {i} contains NaN or infinite values")
        out_maps.append(m)
        out_masks.append(np.asarray(g) != 0)
    return out_maps, out_masks


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


def image_auroc(labels: ArrayLike, scores: ArrayLike) -> float | None:
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


def roc_curve(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
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


def _descending_order(scores):
    """Indices that sort finite float ``scores`` by descending score; ties in any order.

    Scores that are float32 values (every map this suite makes) are sorted as one uint64
    key per pixel, ``(order-preserving float32 bits, inverted) << 32 | index``, with
    ``np.sort``, several times faster than ``np.argsort``; other scores fall back to
    ``np.argsort``. Returns ``(order, starts)``: ``starts`` is True where a run of equal
    scores begins in sorted order.
    """
    n = scores.size
    as32 = scores if scores.dtype == np.float32 else scores.astype(np.float32)
    if n >= 2**32 or (as32 is not scores and not np.array_equal(as32, scores)):
        order = np.argsort(scores, kind="stable")[::-1]
        ranked = scores[order]
        return order, np.concatenate(([True], ranked[1:] != ranked[:-1]))
    bits = (as32 + np.float32(0.0)).view(np.uint32)  # + 0 turns -0.0 into +0.0: equal scores, one key
    # Negative floats: flip every bit; others: flip the sign bit. Then invert, for descending.
    key = ~(bits ^ ((bits >> np.uint32(31)) * np.uint32(0xFFFFFFFF) | np.uint32(0x80000000)))
    packed = key.astype(np.uint64)
    packed <<= np.uint64(32)
    packed |= np.arange(n, dtype=np.uint64)
    packed.sort()
    halves = packed.view(np.uint32).reshape(n, 2)  # (low, high) words on little-endian machines
    low, high = (0, 1) if np.little_endian else (1, 0)
    order = halves[:, low].astype(np.intp)
    return order, np.concatenate(([True], halves[1:, high] != halves[:-1, high]))


class PixelRanking:
    """All pixels of a set of anomaly maps, sorted once by score, serving every pixel metric.

    Building it sorts the pixel scores once (and labels each mask's regions once); then
    :meth:`auroc`, :meth:`roc_curve`, :meth:`pro_curve` and :meth:`au_pro` answer for all
    images or any subset of them (``images``: bool per image) in linear time, without
    sorting again. Subset results equal those of a fresh computation on the subset's maps:
    every pixel of the subset keeps its rank among the subset's pixels, and a run of equal
    scores of the whole set holds either no pixel of the subset (no curve point, no area) or
    exactly the subset's pixels with that score.

    * AUROC counts, for each defect pixel p of the subset, the defect-free pixels of the
      subset below it plus half of those tied with it (Mann-Whitney U, in integers):
      AUROC = U / (n_defect · n_ok). Equal to scikit-learn's ``roc_auc_score``.
    * The PRO curve is :func:`pro_curve`'s: one point per distinct score.
    """

    def __init__(self, anomaly_maps, gt_masks):
        maps, masks = _maps_and_masks(anomaly_maps, gt_masks)
        sizes = np.array([m.size for m in maps], dtype=np.int64)
        self.n_images = len(maps)
        scores = np.concatenate([m.ravel() for m in maps])
        truth = np.concatenate([g.ravel() for g in masks])
        # Regions of every mask (8-connected), numbered across images; region k's pixels
        # weigh 1/|R_k| in the PRO curve.
        self.regions = np.zeros(self.n_images, dtype=np.int64)
        labels, region_sizes = [], [np.zeros(1, dtype=np.int64)]  # global region 0: no region
        for i, g in enumerate(masks):
            labeled, n_components = ndimage.label(g, structure=_STRUCTURE)
            self.regions[i] = n_components
            if n_components:
                region_sizes.append(np.bincount(labeled.ravel())[1:])
                labeled[g] += int(self.regions[:i].sum())  # to global region numbers
            labels.append(labeled.ravel())
        labels = np.concatenate(labels)
        region_sizes = np.concatenate(region_sizes)
        self.ok_per_image = sizes - np.array([int(g.sum()) for g in masks], dtype=np.int64)
        order, starts = _descending_order(scores)
        del scores
        self.n_pixels = order.size
        # Counts fit in int32 below 2**31 pixels (a faster cumulative sum).
        self._count_dtype = np.int32 if self.n_pixels < 2**31 else np.int64
        self.image = np.repeat(np.arange(self.n_images, dtype=np.int32), sizes)[order]
        self.ok = ~truth[order]
        # Last position of each run of equal scores, in sorted order.
        self.run_last = np.append(np.flatnonzero(starts[1:]), self.n_pixels - 1)
        del starts
        # Defect pixels in sorted order: their image, PRO weight and the run they sit in.
        self.defect_pos = np.flatnonzero(~self.ok)
        self.defect_image = self.image[self.defect_pos]
        region = labels[order[self.defect_pos]]
        self.defect_weight = 1.0 / region_sizes[region] if region.size else np.zeros(0)
        del order, truth, labels
        run_of = np.searchsorted(self.run_last, self.defect_pos)  # first run ending at or after the pixel
        self.defect_run_last = self.run_last[run_of]
        self.defect_run_first = np.where(run_of > 0, self.run_last[run_of - 1] + 1, 0)
        # Defect pixels at or above each run's end (any subset's count is a prefix sum over them).
        self.defects_upto_run = np.cumsum(np.bincount(run_of, minlength=self.run_last.size), dtype=self._count_dtype)
        self._last_subset = None

    def _subset(self, images):
        """``(bool per image, bool per sorted pixel or None for all, bool per defect pixel,
        defect-free pixels of the subset at or above each sorted position)``.

        The last subset's answer is kept: AUROC and AU-PRO of one subset share it.
        """
        if images is None:
            chosen = np.ones(self.n_images, dtype=bool)
        else:
            chosen = np.asarray(images, dtype=bool).reshape(-1)
            if chosen.size != self.n_images:
                raise ValueError(f"images selects from {chosen.size} images but the ranking holds {self.n_images}")
        key = chosen.tobytes()
        if self._last_subset is None or self._last_subset[0] != key:
            if chosen.all():
                sel, dsel, ok = None, np.ones(self.defect_pos.size, dtype=bool), self.ok
            else:
                sel, dsel = chosen[self.image], chosen[self.defect_image]
                ok = self.ok & sel
            self._last_subset = (key, (chosen, sel, dsel, np.cumsum(ok, dtype=self._count_dtype)))
        return self._last_subset[1]

    def auroc(self, images=None):
        """Pixel AUROC of the subset, or None if it has only one pixel class."""
        _, _, dsel, cum_ok = self._subset(images)
        n_def = int(dsel.sum())
        n_ok = int(cum_ok[-1])
        if n_def == 0 or n_ok == 0:
            return None
        at_or_above = cum_ok[self.defect_run_last[dsel]].astype(np.int64)
        first = self.defect_run_first[dsel]
        above = np.where(first > 0, cum_ok[np.maximum(first - 1, 0)], 0).astype(np.int64)
        # 2U = sum over defect pixels of 2·(ok pixels below) + (ok pixels tied).
        twice_u = int(np.sum(2 * (n_ok - at_or_above) + (at_or_above - above)))
        return twice_u / (2.0 * n_def * n_ok)

    def roc_curve(self, max_points=2000):
        """ROC curve ``(fpr, tpr)`` of all pixels as :func:`pixel_roc_curve` describes."""
        n_def = self.defect_pos.size
        n_ok = self.n_pixels - n_def
        if n_def == 0 or n_ok == 0:
            raise ValueError("pixel ROC curve needs both defect and defect-free pixels")
        tps = self.defects_upto_run.astype(np.int64)
        fps = self.run_last + 1 - tps
        # scikit-learn's drop_intermediate: drop points collinear with both neighbours.
        if tps.size > 2:
            keep = np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]
            tps, fps = tps[keep], fps[keep]
        fpr = np.r_[0, fps] / n_ok
        tpr = np.r_[0, tps] / n_def
        return _subsample_curve(fpr, tpr, int(max_points))

    def _pro_points(self, images, limit=None):
        """``(fprs, pros)`` at every run end (with (0, 0) and (1, 1)), up to the first point
        past FPR ``limit`` when given; runs without a pixel of the subset repeat the previous
        point (zero area). Raises ValueError when the curve is undefined."""
        chosen, sel, dsel, cum_ok = self._subset(images)
        n_regions = int(self.regions[chosen].sum())
        n_ok = int(self.ok_per_image[chosen].sum())
        if n_regions == 0:
            raise ValueError("PRO curve undefined: the ground-truth masks contain no defect region")
        if n_ok == 0:
            raise ValueError("PRO curve undefined: there are no defect-free pixels")
        runs = self.run_last.size
        if limit is not None:  # the curve past the first point beyond the limit cannot change the area
            within = np.array(np.floor(limit * n_ok), dtype=cum_ok.dtype)  # searched without converting cum_ok
            past = int(np.searchsorted(cum_ok, within, side="right"))  # first position past the limit
            runs = min(runs, int(np.searchsorted(self.run_last, past)) + 2)
        cum_weight = np.concatenate(([0.0], np.cumsum(np.where(dsel, self.defect_weight, 0.0))))
        # (0, 0), one point per run end, and (1, 1) when the curve is whole.
        points = runs + 1 + (runs == self.run_last.size)
        fprs, pros = np.empty(points), np.empty(points)
        fprs[0] = pros[0] = 0.0
        fprs[-1] = pros[-1] = 1.0
        np.divide(cum_ok[self.run_last[:runs]], n_ok, out=fprs[1 : runs + 1])  # <= 1 already: counts <= n_ok
        np.divide(cum_weight[self.defects_upto_run[:runs]], n_regions, out=pros[1 : runs + 1])
        np.minimum(pros, 1.0, out=pros)
        return fprs, pros, sel

    def pro_curve(self, images=None):
        """PRO curve ``(fprs, pros)`` of the subset, exactly as :func:`pro_curve`."""
        fprs, pros, sel = self._pro_points(images)
        if sel is not None:  # drop the runs that hold no pixel of the subset
            has = np.diff(np.concatenate(([0], np.cumsum(sel, dtype=np.int64)[self.run_last]))) > 0
            keep = np.concatenate(([True], has, [True]))
            fprs, pros = fprs[keep], pros[keep]
        return fprs, pros

    def au_pro(self, fpr_limit=DEFAULT_FPR_LIMIT, images=None):
        """AU-PRO of the subset up to ``fpr_limit``, exactly as :func:`au_pro`."""
        fpr_limit = _check_fpr_limit(fpr_limit)
        fprs, pros, _ = self._pro_points(images, fpr_limit)
        return _sorted_area(fprs, pros, fpr_limit) / fpr_limit  # the points are finite and sorted


def pixel_auroc(anomaly_maps: Maps, gt_masks: Maps) -> float | None:
    """Pixel-level ROC AUC over all pixels of all images, or None if only one class.

    All maps and masks are flattened and concatenated; then, as for images,
    AUROC = P(s_defect_pixel > s_ok_pixel) + 1/2 * P(equal), equal to
    ``sklearn.metrics.roc_auc_score`` (computed by :class:`PixelRanking` from one sort).
    Memory is a few tens of bytes per pixel (~100 images of 256x256 = 6.5M pixels is fine).
    """
    return PixelRanking(anomaly_maps, gt_masks).auroc()


def pixel_roc_curve(anomaly_maps: Maps, gt_masks: Maps, max_points: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-level ROC curve ``(fpr, tpr)``, subsampled to at most ``max_points`` points.

    Same definition as :func:`roc_curve` over all pixels. scikit-learn's collinear-point
    dropping is applied first, then (if still longer) points are taken evenly spaced by
    index, always keeping the first (0, 0) and last (1, 1) point. For plotting only;
    use :func:`pixel_auroc` for the number. Raises ValueError with only one class.
    """
    return PixelRanking(anomaly_maps, gt_masks).roc_curve(max_points)


# ---------------------------------------------------------------------------- PRO


def pro_curve(anomaly_maps: Maps, gt_masks: Maps) -> tuple[np.ndarray, np.ndarray]:
    """Per-region-overlap (PRO) curve ``(fprs, pros)``, as MVTec AD's official ``compute_pro``.

    Each mask is split into 8-connected regions (``scipy.ndimage.label``, 3x3 ones).
    For a threshold t, with R_1..R_K all regions of all images and OK all defect-free
    pixels of all images (good images included):

        PRO(t) = 1/K * sum_k |{p in R_k : s_p >= t}| / |R_k|
        FPR(t) = |{p in OK : s_p >= t}| / |OK|

    Computed in one pass (:class:`PixelRanking`): all pixels are sorted by score
    (descending); at the last position of each run of equal scores (so tied pixels enter
    together: one curve point per distinct score, t = that score), cum_fp counts the OK
    pixels so far and cum_pro sums 1/|R_k| over the region pixels so far.
    fprs = cum_fp / |OK|, pros = cum_pro / K, clipped to <= 1, with 0 prepended and 1
    appended to both.

    Returns float64 arrays, fprs non-decreasing (MVTec casts fprs to float32; we keep
    float64, which only differs at the 1e-7 level). Raises ValueError if there is no
    ground-truth region at all or no defect-free pixel.
    """
    return PixelRanking(anomaly_maps, gt_masks).pro_curve()


def trapezoid(x: ArrayLike, y: ArrayLike, x_max: float | None = None) -> float:
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
        warnings.warn("trapezoid: dropping points with non-finite x or y", RuntimeWarning, stacklevel=2)
        x, y = x[finite], y[finite]
    if x.size == 0:
        raise ValueError("trapezoid: no finite points")
    if np.any(np.diff(x) < 0):
        raise ValueError("trapezoid: x must be sorted in ascending order")

    if x_max is not None:
        x_max = float(x_max)
        if not x[0] <= x_max <= x[-1]:
            raise ValueError(f"trapezoid: x_max={x_max} outside the range of x [{x[0]}, {x[-1]}]")
    return _sorted_area(x, y, x_max)


def _sorted_area(x, y, x_max=None):
    """:func:`trapezoid`'s area for finite float64 x, sorted ascending, x_max None or in range."""
    correction = 0.0
    if x_max is not None:
        i = int(np.searchsorted(x, x_max, side="right"))  # x[:i] <= x_max (= bisect_right)
        if x[i - 1] != x_max:  # x_max is not one of the x: x[i-1] < x_max < x[i]
            y_interp = y[i - 1] + (y[i] - y[i - 1]) * (x_max - x[i - 1]) / (x[i] - x[i - 1])
            correction = 0.5 * (y_interp + y[i - 1]) * (x_max - x[i - 1])
        x, y = x[:i], y[:i]
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1])) + correction)


def _check_fpr_limit(fpr_limit):
    fpr_limit = float(fpr_limit)
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    return fpr_limit


def au_pro(
    anomaly_maps: Maps, gt_masks: Maps, fpr_limit: float = DEFAULT_FPR_LIMIT, return_curve: bool = False
) -> float | tuple[float, np.ndarray, np.ndarray]:
    """Normalised area under the PRO curve up to FPR = ``fpr_limit`` (MVTec's AU-PRO).

    AU-PRO = trapezoid(fprs, pros, x_max=fpr_limit) / fpr_limit, in [0, 1]
    (1 = every region fully detected before any defect-free pixel is flagged).

    Returns a float; with ``return_curve=True`` returns ``(value, fprs, pros)`` with the
    full (un-cut) curve of :func:`pro_curve`, so it need not be computed twice.
    Raises ValueError when the PRO curve is undefined (no regions / no ok pixels) or
    ``fpr_limit`` is not in (0, 1].
    """
    fpr_limit = _check_fpr_limit(fpr_limit)
    ranking = PixelRanking(anomaly_maps, gt_masks)
    if not return_curve:
        return ranking.au_pro(fpr_limit)
    fprs, pros = ranking.pro_curve()
    return trapezoid(fprs, pros, x_max=fpr_limit) / fpr_limit, fprs, pros


# ------------------------------------------------------------------ classification


def classification_metrics(truth: ArrayLike, pred: ArrayLike) -> dict:
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


def _image_and_pixel_metrics(idx, labels, scores, ranking, fpr_limit, prefix, notes):
    """image_auroc / pixel_auroc / au_pro on the images ``idx``; undefined ones -> None + note.

    ``ranking``: the :class:`PixelRanking` of all images (None without maps or masks).
    """
    out = {"image_auroc": None, "pixel_auroc": None, "au_pro": None}
    out["image_auroc"] = image_auroc(labels[idx], scores[idx])
    if out["image_auroc"] is None:
        notes.append(f"{prefix}image AUROC undefined: only one class (good/defective) present")
    if ranking is None:
        return out
    chosen = None
    if idx.size != labels.size:
        chosen = np.zeros(labels.size, dtype=bool)
        chosen[idx] = True
    out["pixel_auroc"] = _opt_float(ranking.auroc(chosen))
    if out["pixel_auroc"] is None:
        notes.append(f"{prefix}pixel AUROC undefined: only one pixel class (defect/defect-free) present")
    try:
        out["au_pro"] = float(ranking.au_pro(fpr_limit, chosen))
    except ValueError as exc:
        notes.append(f"{prefix}AU-PRO undefined: {exc}")
    return out


def evaluate(
    anomaly_maps: Maps | None,
    gt_masks: Maps | None,
    image_labels: ArrayLike,
    image_scores: ArrayLike,
    defect_types: Sequence[str],
    fpr_limit: float = DEFAULT_FPR_LIMIT,
    return_curves: bool = False,
) -> dict | tuple[dict, dict]:
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

    All pixel figures come from one :class:`PixelRanking` (one sort of all pixel scores).
    With ``return_curves=True`` returns ``(result, curves)``, ``curves`` holding the
    overall ``"pixel_roc"`` (fpr, tpr) of :func:`pixel_roc_curve` and ``"pro"`` (fprs,
    pros) of :func:`pro_curve`, each None where its metric is None, so plotting them
    needs no second sort.
    """
    labels = _as_labels(image_labels, "image_labels")
    scores = _as_scores(image_scores, "image_scores")
    types = np.asarray([str(t) for t in defect_types], dtype=object)
    n = labels.size
    if scores.size != n or types.size != n:
        raise ValueError(f"got {n} image labels, {scores.size} image scores and {types.size} defect types")
    is_good_type = types == GOOD_TYPE
    if np.any(labels == is_good_type):
        bad = int(np.sum(labels == is_good_type))
        raise ValueError(
            f"{bad} image(s) where image_labels disagree with defect_types "
            f"(label must be False exactly for defect type {GOOD_TYPE!r})"
        )
    fpr_limit = _check_fpr_limit(fpr_limit)

    notes = []
    ranking = None
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
        ranking = PixelRanking(maps, masks)

    all_idx = np.arange(n)
    result = _image_and_pixel_metrics(all_idx, labels, scores, ranking, fpr_limit, "", notes)
    result["fpr_limit"] = fpr_limit
    result["n_images"] = int(n)
    result["n_good"] = int(np.sum(~labels))
    result["n_defective"] = int(np.sum(labels))

    good_idx = np.flatnonzero(is_good_type)
    per_type = {}
    for dtype in sorted(set(types[~is_good_type].tolist())):
        idx = np.concatenate([good_idx, np.flatnonzero(types == dtype)])
        entry = _image_and_pixel_metrics(idx, labels, scores, ranking, fpr_limit, f"{dtype}: ", notes)
        entry["n_images"] = int(idx.size)
        entry["n_defective"] = int(np.sum(types == dtype))
        per_type[dtype] = entry
    result["per_defect_type"] = per_type
    result["notes"] = notes
    if not return_curves:
        return result
    curves = {"pixel_roc": None, "pro": None}
    if result["pixel_auroc"] is not None:
        curves["pixel_roc"] = ranking.roc_curve()
    if result["au_pro"] is not None:
        curves["pro"] = ranking.pro_curve()
    return result, curves
