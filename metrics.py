"""Evaluation metrics for anomaly detection: the one home of every number in ``metrics.json``.

Pure NumPy (OpenCV labels mask regions and SciPy's Beta quantile gives the rates' exact
confidence intervals, each imported on first use; no TensorFlow or scikit-learn), so it imports in
milliseconds once NumPy is loaded and can be tested without a model.

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
convention, as scikit-learn, whose image-level computation is reproduced exactly) and put
all tied scores on one ROC point. The PRO curve likewise has one point per distinct
score: all pixels with an equal score enter the positive set together, exactly as
MVTec's official ``compute_pro`` does.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

Maps = Sequence[np.ndarray] | np.ndarray  # per-image 2-D maps or masks, or one N×H×W array

__all__ = [
    "image_auroc",
    "image_auroc_interval",
    "roc_curve",
    "pixel_auroc",
    "pixel_roc_curve",
    "PixelRanking",
    "pro_curve",
    "trapezoid",
    "au_pro",
    "classification_metrics",
    "rate_interval",
    "interval_text",
    "evaluate",
]

DEFAULT_FPR_LIMIT = 0.3
CONFIDENCE = 0.95  # level of every rate's confidence interval (rate_interval)
GOOD_TYPE = "good"
NO_MASKS_NOTE = "no ground-truth masks: pixel AUROC and AU-PRO not computed"
NO_MAPS_NOTE = "no anomaly maps: pixel AUROC and AU-PRO not computed"

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


def _subsample_index(n, max_points):
    """Indices of at most ``max_points`` of ``n`` points, evenly spaced, always both ends."""
    if max_points < 2:
        raise ValueError("max_points must be at least 2")
    if n <= max_points:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, max_points)).astype(np.int64))


def _subsample_curve(x, y, max_points):
    """At most ``max_points`` points, evenly spaced by index, always keeping both ends."""
    idx = _subsample_index(len(x), max_points)
    return (x, y) if idx.size == len(x) else (x[idx], y[idx])


def _opt_float(v):
    return None if v is None else float(v)


# --------------------------------------------------------------------- image level


def _binary_roc(y, s):
    """``(fpr, tpr)`` of bool labels ``y`` and float64 scores ``s`` (both classes present),
    computed as scikit-learn's ``roc_curve`` (drop_intermediate=True) does, step for step,
    so the floats are identical (its import alone took 1.4 s)."""
    order = np.argsort(s, kind="stable")[::-1]
    ranked = s[order]
    ends = np.append(np.flatnonzero(np.diff(ranked)), y.size - 1)  # last index of each distinct score
    tps = np.cumsum(y[order], dtype=np.float64)[ends]
    fps = 1 + ends.astype(np.float64) - tps
    if fps.size > 2:  # drop points collinear with both neighbours
        keep = np.flatnonzero(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])
        fps, tps = fps[keep], tps[keep]
    fps, tps = np.r_[0.0, fps], np.r_[0.0, tps]
    return fps / fps[-1], tps / tps[-1]


def image_auroc(labels: ArrayLike, scores: ArrayLike) -> float | None:
    """Image-level ROC AUC, or None if only one class is present.

    AUROC = P(s_defective > s_good) + 1/2 * P(s_defective == s_good)
          = U / (n_defective * n_good)   (Mann-Whitney U; ties count 1/2),
    computed as ``sklearn.metrics.roc_auc_score`` does (trapezoids under :func:`roc_curve`),
    with an identical result. ``labels``: True/1 = defective.
    """
    y = _as_labels(labels)
    s = _as_scores(scores)
    if y.shape != s.shape:
        raise ValueError(f"{y.size} labels but {s.size} scores")
    if y.all() or not y.any():
        return None
    fpr, tpr = _binary_roc(y, s)
    return float(np.sum((fpr[1:] - fpr[:-1]) * (tpr[1:] + tpr[:-1]) / 2.0))  # as sklearn's auc


# image_auroc_interval's resamples: its ends lie within 0.011 of 50 000 resamples' (measured on the
# test scores of bench/README.md's twelve runs, session 22)
BOOTSTRAP_RESAMPLES = 2000


def image_auroc_interval(
    labels: ArrayLike, scores: ArrayLike, level: float = CONFIDENCE, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> list[float] | None:
    """A stratified-bootstrap percentile interval ``[low, high]`` of :func:`image_auroc`, None
    if only one class is present.

    Each resample draws the defective images' scores with replacement from the defective ones
    and the good images' from the good ones (``rng = numpy.random.default_rng(seed)``, first
    ``rng.integers(0, n_defective, (resamples, n_defective))``, then the same for the good
    images), so every resample keeps both classes; the AUROC of each is the Mann-Whitney
    statistic (ties count 1/2), all resamples at once in NumPy. Deterministic for a seed.
    """
    y = _as_labels(labels)
    s = _as_scores(scores)
    if y.shape != s.shape:
        raise ValueError(f"{y.size} labels but {s.size} scores")
    if not 0.0 < level < 1.0:
        raise ValueError(f"the confidence level must be in (0, 1), got {level!r}")
    if isinstance(resamples, bool) or int(resamples) != resamples or resamples < 1:
        raise ValueError(f"the bootstrap needs a whole number of resamples >= 1, got {resamples!r}")
    if y.all() or not y.any():
        return None
    rng = np.random.default_rng(seed)
    pos, neg = s[y], s[~y]
    b = int(resamples)
    drawn_pos = rng.integers(0, pos.size, (b, pos.size))
    drawn_neg = rng.integers(0, neg.size, (b, neg.size))
    # Every resample's good scores as one sorted array: integer codes of the scores (equal
    # scores, equal codes), each resample shifted into its own block, so one searchsorted
    # counts, for every defective score of every resample, the good ones below and equal to it.
    _, codes = np.unique(np.concatenate([pos, neg]), return_inverse=True)
    block = codes.max() + 1
    rows = np.arange(b)[:, None] * block
    goods = np.sort((codes[pos.size :][drawn_neg] + rows).ravel())
    queries = codes[: pos.size][drawn_pos] + rows
    left = np.searchsorted(goods, queries, side="left")
    below = left - np.arange(b)[:, None] * neg.size
    equal = np.searchsorted(goods, queries, side="right") - left
    aurocs = (below + 0.5 * equal).sum(axis=1) / (pos.size * neg.size)  # Mann-Whitney: ties count 1/2
    tail = (1.0 - level) / 2.0
    return [float(np.quantile(aurocs, tail)), float(np.quantile(aurocs, 1.0 - tail))]


def roc_curve(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """ROC curve ``(fpr, tpr)`` as float arrays, for plotting; equal to the first two arrays
    of ``sklearn.metrics.roc_curve`` (drop_intermediate=True).

    For each threshold t (every distinct score, descending):
    TPR(t) = #{defective: s >= t} / #defective, FPR(t) = #{good: s >= t} / #good.
    The curve starts at (0, 0); points collinear with both neighbours are dropped.
    Raises ValueError if only one class is present.
    """
    y = _as_labels(labels)
    s = _as_scores(scores)
    if y.shape != s.shape:
        raise ValueError(f"{y.size} labels but {s.size} scores")
    if y.all() or not y.any():
        raise ValueError("ROC curve needs both classes; only one is present")
    return _binary_roc(y, s)


# --------------------------------------------------------------------- pixel level


def _score_keys(maps):
    """One unsigned integer per pixel of the concatenated, flattened maps whose ascending order
    is the descending order of the scores; equal scores (-0.0 and 0.0 too) get equal keys.

    Maps holding float32 values (every map this suite makes) give uint32 keys, other float64
    maps uint64 keys. Sorting the keys (``np.sort``) is several times faster than an argsort,
    and the sorted keys are all the pixel metrics need: a run of equal keys is a run of tied
    scores.
    """
    narrow = all(m.dtype == np.float32 or np.array_equal(m.astype(np.float32), m) for m in maps)
    ftype, itype, sign = (np.float32, np.int32, 31) if narrow else (np.float64, np.int64, 63)
    low_bits = itype(np.iinfo(itype).max)
    keys = np.empty(sum(m.size for m in maps), dtype=itype)
    pos = 0
    for m in maps:  # map by map: the temporaries stay in cache
        bits = (m.astype(ftype, copy=False).ravel() + ftype(0.0)).view(itype)  # + 0 turns -0.0 into +0.0
        # Non-negative scores: flip all but the sign bit (higher score, smaller key, < 2**31);
        # negative ones keep their bits (sign bit set: after all others, lower score larger).
        np.bitwise_xor(bits, ~(bits >> sign) & low_bits, out=keys[pos : pos + bits.size])
        pos += bits.size
    return keys.view(np.uint32 if narrow else np.uint64)


def _defect_regions(mask, where):
    """``(K, region of each defect pixel)``: the 8-connected regions of a bool mask (as MVTec's
    evaluation, and ``scipy.ndimage.label`` with 3x3 ones) numbered 1..K, for the defect
    pixels at the ascending flat indices ``where`` (not empty).

    OpenCV's ``connectedComponents`` labels only the box around the defect pixels (regions
    never leave it): several times faster than ``scipy.ndimage.label`` on the whole mask.
    Imported here, when a mask first has a defect pixel, so importing this module stays light.
    """
    import cv2

    rows, cols = np.divmod(where, mask.shape[1])
    top, left = rows[0], cols.min()
    box = np.ascontiguousarray(mask[top : rows[-1] + 1, left : cols.max() + 1], dtype=np.uint8)
    n_labels, labels = cv2.connectedComponents(box, connectivity=8, ltype=cv2.CV_32S)
    return n_labels - 1, labels[rows - top, cols - left]


class _RankedSet:
    """The pixels of one set of images (all of a :class:`PixelRanking`'s or a subset), ranked.

    ``sorted_keys``: the :func:`_score_keys` of all its pixels, ascending (= descending score);
    ``defect_keys`` (ascending) and ``defect_weights``: its defect pixels and their PRO weights.
    The defect pixels are grouped into *defect runs* (equal keys); for each run it keeps the
    number of defect-free pixels ranked strictly above it (``ok_above``) and at or above its
    score (``ok_through``). AUROC and AU-PRO follow from these few hundred thousand numbers;
    only the full curves need the runs of all pixels, found when first asked for.
    """

    def __init__(self, sorted_keys, defect_keys, defect_weights, n_regions):
        self.sorted_keys = sorted_keys
        self.n_pixels = sorted_keys.size
        self.n_defect = defect_keys.size
        self.n_ok = self.n_pixels - self.n_defect
        self.n_regions = int(n_regions)
        firsts = _run_starts(defect_keys)
        run_keys = defect_keys[firsts]
        self.count = np.diff(np.append(firsts, self.n_defect))  # defect pixels per run
        self.weight = np.add.reduceat(defect_weights, firsts) if run_keys.size else np.zeros(0)
        before = np.cumsum(self.count) - self.count  # defect pixels ranked strictly above the run
        self.first = np.searchsorted(sorted_keys, run_keys, side="left")  # sorted position of the run
        self.ok_above = self.first - before
        self.ok_through = _run_ends(sorted_keys, run_keys, self.first + self.count) - before - self.count
        self._runs = None

    def auroc(self):
        """Pixel AUROC (Mann-Whitney, ties 1/2) or None with only one pixel class."""
        if self.n_defect == 0 or self.n_ok == 0:
            return None
        # 2U = sum over defect pixels of 2·(ok pixels below) + (ok pixels tied), in integers.
        twice_per_pixel = 2 * (self.n_ok - self.ok_through) + (self.ok_through - self.ok_above)
        twice_u = int(np.dot(self.count, twice_per_pixel))
        return twice_u / (2.0 * self.n_defect * self.n_ok)

    def _check_pro(self):
        if self.n_regions == 0:
            raise ValueError("PRO curve undefined: the ground-truth masks contain no defect region")
        if self.n_ok == 0:
            raise ValueError("PRO curve undefined: there are no defect-free pixels")

    def _pro_after(self):
        """PRO at the end of each defect run (clipped to 1, as the curve is)."""
        return np.minimum(np.cumsum(self.weight) / self.n_regions, 1.0)

    def au_pro(self, fpr_limit):
        """AU-PRO up to ``fpr_limit``: the area under the PRO curve's corners only.

        Between two defect runs the curve is flat, so (0, 0), each defect run's corners
        (FPR before, PRO before) and (FPR after, PRO after), (1, last PRO) and (1, 1) trace
        the very same polyline as the point per distinct score, with as many points as
        defect runs instead of millions.
        """
        self._check_pro()
        m = self.count.size
        after = self._pro_after()
        x, y = np.empty(2 * m + 3), np.empty(2 * m + 3)
        x[0] = y[0] = 0.0
        x[1 : 2 * m : 2] = self.ok_above / self.n_ok
        x[2 : 2 * m + 1 : 2] = self.ok_through / self.n_ok
        y[1 : 2 * m : 2] = np.r_[0.0, after[:-1]]
        y[2 : 2 * m + 1 : 2] = after
        x[-2], y[-2] = 1.0, after[-1]
        x[-1] = y[-1] = 1.0
        return _sorted_area(x, y, fpr_limit) / fpr_limit

    def _special_runs(self):
        """The runs of equal keys that are not a single defect-free pixel (ties and defect
        runs), once: ``(number of runs, their run indices ascending, their pixel counts, their
        defect pixel counts, the run index of each defect run)``.

        Every other run adds one defect-free pixel, so these few describe all runs.
        """
        if self._runs is None:
            keys = self.sorted_keys
            ties = np.flatnonzero(keys[1:] == keys[:-1]) + 1  # positions holding their predecessor's key
            # A run's index is its first position minus the ties before it.
            tie_run = ties - np.arange(1, ties.size + 1)
            firsts = _run_starts(tie_run)
            run_of = self.first - np.searchsorted(ties, self.first)
            # Runs with ties (tag 0) and defect runs (tag 1) merged into one ascending list.
            merged = np.concatenate((tie_run[firsts] * 2, run_of * 2 + 1))
            merged.sort(kind="stable")  # two sorted runs: merged in linear time
            run = merged >> 1
            is_defect = (merged & 1).astype(bool)
            opens = np.r_[True, run[1:] != run[:-1]]
            group = np.cumsum(opens) - 1  # the special run of each entry
            special = run[opens]
            length = np.ones(special.size, dtype=np.int64)
            length[group[~is_defect]] += np.diff(np.append(firsts, ties.size))  # both lists keep their order
            defects = np.zeros(special.size, dtype=np.int64)
            defects[group[is_defect]] = self.count
            self._runs = self.n_pixels - ties.size, special, length, defects, run_of
        return self._runs

    def pro_curve(self):
        """``(fprs, pros)``: (0, 0), one point per distinct score, (1, 1); see :func:`pro_curve`."""
        self._check_pro()
        n_runs, special, length, defects, run_of = self._special_runs()
        # PRO is constant from one defect run to the next.
        stretch = np.diff(np.concatenate(([0], run_of, [n_runs])))
        pros = np.repeat(np.concatenate(([0.0, 0.0], self._pro_after(), [1.0])), np.concatenate(([1], stretch, [1])))
        # ok pixels at or above each run's end: every run adds one, a special run its own
        # count (exact integers in float64, each divided once, as before).
        fprs = np.empty(n_runs + 2)
        fprs[0], fprs[-1] = 0.0, 1.0
        inner = fprs[1:-1]
        inner.fill(1.0)
        inner[special] = length - defects
        np.cumsum(inner, out=inner)
        inner /= self.n_ok  # <= 1 already: counts <= n_ok
        return fprs, pros

    def roc_curve(self, max_points):
        """ROC curve as :func:`pixel_roc_curve` describes, from the special runs alone.

        scikit-learn's drop_intermediate drops the point between runs r and r+1 exactly when
        both add the same (defects, ok pixels). A run of one defect-free pixel adds (0, 1) and
        every special run something else, so the points kept are the first and last, each
        special run's that differs from its successor, and each one just before a special run
        whose predecessor is not special. Only the points left after subsampling are made.
        """
        if self.n_defect == 0 or self.n_ok == 0:
            raise ValueError("pixel ROC curve needs both defect and defect-free pixels")
        n_runs, special, length, defects, _ = self._special_runs()
        if n_runs <= 2:  # no point between two others
            runs = np.arange(n_runs)
            upto = np.searchsorted(special, runs, side="right")  # special runs at or before each
            fps, tps = self._roc_counts(runs, upto, length, defects)
            return _subsample_curve(np.r_[0, fps] / self.n_ok, np.r_[0, tps] / self.n_defect, int(max_points))
        oks = length - defects
        next_special = special[1:] == special[:-1] + 1
        next_defects = np.append(np.where(next_special, defects[1:], 0), 0)
        next_oks = np.append(np.where(next_special, oks[1:], 1), 1)
        keep_run = (special >= 1) & (special <= n_runs - 2) & ((defects != next_defects) | (oks != next_oks))
        keep_before = np.r_[True, ~next_special] & (special >= 2)
        # Kept interior points among the interleaved (run before special run j, special run j).
        inner = np.flatnonzero(np.column_stack((keep_before, keep_run)).ravel())
        # The curve: (0, 0), run 0, the kept interior points, the last run; make only those
        # that subsampling keeps (it always keeps (0, 0), the first point).
        n_points = inner.size + 3
        at = _subsample_index(n_points, int(max_points))[1:]
        runs = np.where(at == 1, 0, n_runs - 1)
        upto = np.where(at == 1, int(special[0] == 0), special.size)
        middle = (at >= 2) & (at <= n_points - 2)
        pair, second = np.divmod(inner[at[middle] - 2], 2)
        runs[middle] = special[pair] - 1 + second
        upto[middle] = pair + second
        fps, tps = self._roc_counts(runs, upto, length, defects)
        return np.r_[0, fps] / self.n_ok, np.r_[0, tps] / self.n_defect

    @staticmethod
    def _roc_counts(runs, upto, length, defects):
        """(ok pixels, defect pixels) at or above the end of each run of ``runs``, given the
        number of special runs at or before each (``upto``)."""
        tps = np.concatenate(([0], np.cumsum(defects)))[upto]
        fps = runs + 1 + np.concatenate(([0], np.cumsum(length - 1 - defects)))[upto]
        return fps, tps


def _key_order(keys):
    """``np.argsort(keys)`` (ties in any order) of uint32 keys by sorting ``key << 32 | index``
    (a stable argsort of a few hundred thousand keys took 30 ms); other keys: argsort."""
    if keys.dtype != np.uint32:
        return np.argsort(keys, kind="stable")
    packed = keys.astype(np.uint64) << np.uint64(32)
    packed |= np.arange(keys.size, dtype=np.uint64)
    packed.sort()
    return (packed & np.uint64(0xFFFFFFFF)).astype(np.intp)


def _run_starts(values):
    """Indices where a run of equal values begins in ``values`` (sorted), as int64."""
    if not values.size:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.r_[True, values[1:] != values[:-1]])


def _run_ends(sorted_keys, keys, start, steps=4):
    """``np.searchsorted(sorted_keys, keys, side="right")`` for ascending ``keys`` found in
    ``sorted_keys`` at or before positions ``start``: with continuous scores a run rarely
    holds more than a pixel or two past ``start``, so step over equal keys a few times and
    search only for the keys still open (a binary search through millions of keys costs
    ~70 ns a key)."""
    end = start.copy()
    open_ = np.flatnonzero(end < sorted_keys.size)
    for _ in range(steps):
        open_ = open_[sorted_keys[end[open_]] == keys[open_]]
        end[open_] += 1
        open_ = open_[end[open_] < sorted_keys.size]
        if not open_.size:
            return end
    end[open_] = np.searchsorted(sorted_keys, keys[open_], side="right")
    return end


class PixelRanking:
    """All pixels of a set of anomaly maps, ranked once by score, serving every pixel metric.

    Building it sorts the pixel scores once (and labels each non-empty mask's regions once);
    then :meth:`auroc`, :meth:`roc_curve`, :meth:`pro_curve` and :meth:`au_pro` answer for all
    images or any subset of them (``images``: bool per image). A subset's pixels are sorted
    again (about half the pixels for a defect type with the good images; the last subset is
    kept, as AUROC and AU-PRO of one subset share it); its results equal those of a fresh
    computation on the subset's maps.

    * AUROC counts, for each defect pixel p of the subset, the defect-free pixels of the
      subset below it plus half of those tied with it (Mann-Whitney U, in integers):
      AUROC = U / (n_defect · n_ok). Equal to scikit-learn's ``roc_auc_score``.
    * The PRO curve is :func:`pro_curve`'s: one point per distinct score.
    """

    def __init__(self, anomaly_maps, gt_masks):
        self._rank(*_maps_and_masks(anomaly_maps, gt_masks))

    @classmethod
    def _of_checked(cls, maps, masks):
        """The ranking of maps and masks already checked by :func:`_maps_and_masks`."""
        ranking = cls.__new__(cls)
        ranking._rank(maps, masks)
        return ranking

    def _rank(self, maps, masks):
        sizes = np.array([m.size for m in maps], dtype=np.int64)
        self.n_images = len(maps)
        self._offsets = np.concatenate(([0], np.cumsum(sizes)))
        self._keys = _score_keys(maps)
        # Regions of every mask (8-connected); region k's pixels weigh 1/|R_k| in the PRO curve.
        # Empty masks (every good image) have none: they are not labelled at all.
        self.regions = np.zeros(self.n_images, dtype=np.int64)
        n_defect = np.zeros(self.n_images, dtype=np.int64)
        keys, weights, images = [], [], []
        for i, g in enumerate(masks):
            where = np.flatnonzero(g)
            if not where.size:
                continue
            n_regions, region = _defect_regions(g, where)
            self.regions[i], n_defect[i] = n_regions, where.size
            keys.append(self._keys[self._offsets[i] + where])
            weights.append(1.0 / np.bincount(region)[region])
            images.append(np.full(where.size, i, dtype=np.int32))
        self.ok_per_image = sizes - n_defect
        empty = [np.zeros(0, self._keys.dtype)], [np.zeros(0)], [np.zeros(0, np.int32)]
        keys, weights, images = (np.concatenate(a or e) for a, e in zip((keys, weights, images), empty))
        order = _key_order(keys)
        self._defect_keys, self._defect_weights, self._defect_images = keys[order], weights[order], images[order]
        self._all = _RankedSet(np.sort(self._keys), self._defect_keys, self._defect_weights, int(self.regions.sum()))
        self._last_subset = None

    def _set(self, images):
        """The :class:`_RankedSet` of the images selected by ``images`` (None: all)."""
        if images is None:
            return self._all
        chosen = np.asarray(images, dtype=bool).reshape(-1)
        if chosen.size != self.n_images:
            raise ValueError(f"images selects from {chosen.size} images but the ranking holds {self.n_images}")
        if chosen.all():
            return self._all
        key = chosen.tobytes()
        if self._last_subset is None or self._last_subset[0] != key:
            picked = np.flatnonzero(chosen)
            keys = np.concatenate(
                [self._keys[self._offsets[i] : self._offsets[i + 1]] for i in picked] or [self._keys[:0]]
            )
            keys.sort()
            in_subset = chosen[self._defect_images]
            subset = _RankedSet(
                keys,
                self._defect_keys[in_subset],
                self._defect_weights[in_subset],
                int(self.regions[chosen].sum()),
            )
            self._last_subset = (key, subset)
        return self._last_subset[1]

    def auroc(self, images=None):
        """Pixel AUROC of the subset, or None if it has only one pixel class."""
        return self._set(images).auroc()

    def roc_curve(self, max_points=2000):
        """ROC curve ``(fpr, tpr)`` of all pixels as :func:`pixel_roc_curve` describes."""
        return self._all.roc_curve(max_points)

    def pro_curve(self, images=None):
        """PRO curve ``(fprs, pros)`` of the subset, exactly as :func:`pro_curve`."""
        return self._set(images).pro_curve()

    def au_pro(self, fpr_limit=DEFAULT_FPR_LIMIT, images=None):
        """AU-PRO of the subset up to ``fpr_limit``, exactly as :func:`au_pro`."""
        fpr_limit = _check_fpr_limit(fpr_limit)
        return self._set(images).au_pro(fpr_limit)


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

    Each mask is split into 8-connected regions (as ``scipy.ndimage.label`` with 3x3 ones).
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
    return ranking.au_pro(fpr_limit), *ranking.pro_curve()


# ------------------------------------------------------------------ classification


def rate_interval(successes: int, trials: int, level: float = CONFIDENCE) -> list[float] | None:
    """The exact (Clopper–Pearson) two-sided confidence interval ``[low, high]`` of a rate
    measured as ``successes`` of ``trials`` (Beta quantiles, SciPy's ``betaincinv``, as
    ``scipy.stats.binomtest(...).proportion_ci(method="exact")``), None when ``trials`` is 0.

    A TNR of 1.0 on 5 held-back images says little (its 95 % interval is 0.48–1.0); the
    interval says how much, and it is never narrower than the true rate's uncertainty.
    """
    if isinstance(successes, bool) or isinstance(trials, bool) or int(successes) != successes or int(trials) != trials:
        raise ValueError(f"a rate interval needs whole counts, got {successes!r} of {trials!r}")
    if not 0 <= successes <= trials:
        raise ValueError(f"a rate interval needs 0 <= successes <= trials, got {successes!r} of {trials!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"the confidence level must be in (0, 1), got {level!r}")
    if not trials:
        return None
    from scipy.special import betaincinv  # the Beta quantile (scipy.stats would add 0.45 s to validate.py's start)

    k, n, tail = int(successes), int(trials), (1.0 - level) / 2.0
    low = 0.0 if k == 0 else float(betaincinv(k, n - k + 1, tail))
    high = 1.0 if k == n else float(betaincinv(k + 1, n - k, 1.0 - tail))
    return [low, high]


def interval_text(interval, digits: int = 2, share: bool = False) -> str:
    """How an interval reads in every output: ``95% CI 0.36–0.64`` (``digits`` decimals) or,
    with ``share``, ``95% CI 36%–64%``."""
    low, high = (f"{v:.0%}" if share else f"{v:.{digits}f}" for v in interval)
    return f"{CONFIDENCE:.0%} CI {low}–{high}"


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
    (ints), the rates above (float or None), ``tpr_interval`` and ``tnr_interval`` (their
    exact 95 % confidence intervals, :func:`rate_interval`), ``confusion_matrix`` as
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
        "tpr_interval": rate_interval(tp, n_defective),
        "tnr_interval": rate_interval(tn, n_good),
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
         "image_auroc_interval": [low, high]|None (:func:`image_auroc_interval`),
         "confidence": its level, "fpr_limit": float, "n_images": int, "n_good": int, "n_defective": int,
         "per_defect_type": {D: {"image_auroc", "image_auroc_interval", "pixel_auroc", "au_pro",
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
        ranking = PixelRanking._of_checked(maps, masks)

    all_idx = np.arange(n)
    result = _image_and_pixel_metrics(all_idx, labels, scores, ranking, fpr_limit, "", notes)
    result["image_auroc_interval"] = image_auroc_interval(labels, scores)
    result["confidence"] = CONFIDENCE
    result["fpr_limit"] = fpr_limit
    result["n_images"] = int(n)
    result["n_good"] = int(np.sum(~labels))
    result["n_defective"] = int(np.sum(labels))

    good_idx = np.flatnonzero(is_good_type)
    per_type = {}
    for dtype in sorted(set(types[~is_good_type].tolist())):
        idx = np.concatenate([good_idx, np.flatnonzero(types == dtype)])
        entry = _image_and_pixel_metrics(idx, labels, scores, ranking, fpr_limit, f"{dtype}: ", notes)
        entry["image_auroc_interval"] = image_auroc_interval(labels[idx], scores[idx])
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
