"""Residual maps, defect regions and thresholds: from reconstructions to defect masks.

* :func:`residual_maps` — batched SSIM or L2 residual maps, float32, full image size.
* :func:`reconstruct` / :func:`compute_resmaps` / :func:`batched_residual_maps` — in batches.
* :func:`label_regions`, :func:`region_stats` — 8-connected regions of ``resmap > t``.
* :func:`min_threshold_for_area` — the exact smallest threshold with no region ≥ an area.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

import methods
import networks
import ssim
from settings import BATCH

MAP_THREADS = min(4, os.cpu_count() or 1)  # threads that compute residual maps (batched_residual_maps)


def max_scales(side: int, method: str) -> int:
    """How many scales :func:`residual_maps` can use for ``side``-px images: the smallest
    scale must still hold one 11-px SSIM window (any size for l2, capped at 4): the method's
    :attr:`methods.Method.min_scale_side`."""
    smallest = methods.get(method).min_scale_side
    n = 1
    while n < 4 and side // 2**n >= smallest:
        n += 1
    return n


def _halve(planes):
    """2×2 mean pooling of C×H×W planes, dropping an odd last row/column (as ``VALID``)."""
    return (planes[:, 0:-1:2, 0:-1:2] + planes[:, 1::2, 0:-1:2] + planes[:, 0:-1:2, 1::2] + planes[:, 1::2, 1::2]) / 4.0


def residual_maps(images: np.ndarray, reconstructions: np.ndarray, method: str, scales: int = 1) -> np.ndarray:
    """Residual maps of a batch, N×H×W float32.

    ``ssim``: 1 − SSIM map, mean over channels (values in [0, 2]; kept unclipped, so
    darker and brighter defects both show). ``l2``: squared difference, mean over channels.
    ``scales`` > 1 averages the map of the full-size pair with the maps of the pair
    halved ``scales − 1`` times (2×2 mean pooling), each brought back to full size
    bilinearly: ``(1/S) Σ_s up_s(map(down_s(x), down_s(y)))``. The coarser maps see
    larger structures with less pixel noise; on MVTec bottle this raised AU-PRO by
    about 0.01 (bench/README.md).

    Computed per image with NumPy and OpenCV: about 3× faster on CPU than the same maps
    in TensorFlow (:func:`ssim.scale_maps_tf`), equal to within ~3e-6 (bench/README.md,
    "Speed").
    """
    residuals = methods.names(calibrated=True)  # the formulas of image and reconstruction (ssim.py)
    if method not in residuals:
        raise ValueError(f"unknown residual method {method!r}; choose {methods.listing(residuals)}")
    x_all = np.asarray(images, dtype=np.float32)
    y_all = np.asarray(reconstructions, dtype=np.float32)
    height, width = x_all.shape[1], x_all.shape[2]
    most = max_scales(min(height, width), method)
    if not 1 <= scales <= most:
        raise ValueError(f"scales must be 1 to {most} for {height}×{width} images, got {scales!r}")
    out = np.empty(x_all.shape[:3], dtype=np.float32)
    for i, (x, y) in enumerate(zip(x_all, y_all)):
        x, y = np.moveaxis(x, -1, 0), np.moveaxis(y, -1, 0)  # planes: contiguous per channel below
        total = ssim.scale_map_numpy(x, y, method)
        for _ in range(scales - 1):
            x, y = _halve(x), _halve(y)
            # Bilinear with half-pixel centres and clamped borders, as tf.image.resize.
            total += cv2.resize(ssim.scale_map_numpy(x, y, method), (width, height), interpolation=cv2.INTER_LINEAR)
        out[i] = total / scales
    return out


MEDIAN_SIZE = 21  # px: window of the training-free median residual (the suite's trivial detector)


def median_images(images: np.ndarray, size: int = MEDIAN_SIZE) -> np.ndarray:
    """Each image's ``size``-px median filter (N×H×W×C float32 in [0, 1]): what its
    neighbourhood says the pixel should be, the "reconstruction" of the ``median`` map.
    OpenCV's median takes 8-bit input for windows above 5 px; the images come from 8-bit files."""
    if size < 3 or size % 2 == 0:
        raise ValueError(f"median window must be an odd number of pixels >= 3, got {size!r}")
    x = np.asarray(images, dtype=np.float32)
    out = np.empty_like(x)
    for i, image in enumerate(np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)):
        for ch in range(x.shape[-1]):
            out[i, ..., ch] = cv2.medianBlur(np.ascontiguousarray(image[..., ch]), size)
    return out / 255.0


def median_residual(images: np.ndarray, medians: np.ndarray | None = None, size: int = MEDIAN_SIZE) -> np.ndarray:
    """``|image − its size-px median|``, largest over channels, N×H×W float32: a map that needs
    no training and flags what differs from its own neighbourhood (small spots, cracks, edges
    of stains). ``medians``: :func:`median_images` of ``images`` when already computed."""
    x = np.asarray(images, dtype=np.float32)
    medians = median_images(x, size) if medians is None else medians
    return np.abs(x - medians).max(axis=-1).astype(np.float32)


LOWFREQ_SHARE = 1 / 32  # σ of the low-frequency map's blur, as a share of the shorter image side


def lowfreq_sigma(shape: tuple[int, int]) -> float:
    """σ (px) of the ``lowfreq`` map's blur for images of ``shape`` (height, width)."""
    return max(1.0, LOWFREQ_SHARE * min(shape))


def median_rank(size: int = MEDIAN_SIZE) -> int:
    """1-based rank of the median among the ``size``² pixels of a window (odd ``size``)."""
    return (size * size + 1) // 2


def lowfreq_images(images: np.ndarray) -> np.ndarray:
    """What the ``lowfreq`` map compares each image with: its own median brightness per channel,
    as an N×H×W×C image (the "reconstruction" of a surface with no large shading)."""
    x = np.asarray(images, dtype=np.float32)
    return np.broadcast_to(np.median(x, axis=(1, 2), keepdims=True), x.shape).astype(np.float32)


def lowfreq_residual(images: np.ndarray) -> np.ndarray:
    """``|blur(image) − its median brightness|``, largest over channels, N×H×W float32: a map that
    needs no training and sees large faint changes (shading, dark inactive areas) that a
    21-px median or a reconstruction copies. The blur's σ is :data:`LOWFREQ_SHARE` of the
    shorter side, so fine texture does not count."""
    x = np.asarray(images, dtype=np.float32)
    sigma = lowfreq_sigma(x.shape[1:3])
    blurred = np.stack([smooth(x[..., c], sigma) for c in range(x.shape[-1])], axis=-1)
    return np.abs(blurred - lowfreq_images(x)).max(axis=-1).astype(np.float32)


def reconstruct(model, images: np.ndarray, batch: int = BATCH) -> np.ndarray:
    """Reconstructions of an N×H×W×C array by ``model`` (a :class:`networks.Network`, or a Keras
    model), in batches (float32)."""
    if len(images) == 0:
        return np.zeros_like(images, dtype=np.float32)
    return networks.network(model).predict(images, batch)


def batched_residual_maps(
    images: np.ndarray, reconstructions: np.ndarray, method: str, batch: int = BATCH, scales: int = 1
) -> np.ndarray:
    """:func:`residual_maps` of N images, at most ``batch`` at a time in each of
    :data:`MAP_THREADS` threads (bounded memory). OpenCV and NumPy release the GIL, so on
    2 cores two threads map 256-px images 1.4x faster than one (bench/README.md, "Fourth round")."""
    if not len(images):
        return np.zeros((0,) + images.shape[1:3], np.float32)
    step = max(1, min(batch, -(-len(images) // MAP_THREADS)))
    starts = range(0, len(images), step)

    def part(i):
        return residual_maps(images[i : i + step], reconstructions[i : i + step], method, scales)

    if len(starts) == 1:
        return part(0)
    with ThreadPoolExecutor(MAP_THREADS) as pool:
        return np.concatenate(list(pool.map(part, starts)))


def compute_resmaps(
    model, images: np.ndarray, method: str, batch: int = BATCH, scales: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """``(reconstructions, resmaps)`` for an N×H×W×C array, both computed in batches."""
    recons = reconstruct(model, images, batch)
    return recons, batched_residual_maps(images, recons, method, batch, scales)


def gaussian_radius(sigma: float) -> int:
    """Half-width in pixels of the Gaussian kernel for ``sigma``: ``scipy.ndimage``'s ⌊4σ + ½⌋
    (truncate 4), which :func:`smooth` and the exported graph both use."""
    return int(4.0 * float(sigma) + 0.5)


def smooth(maps: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-smoothed copies of N×H×W maps, float32 (σ in pixels; 0 returns the maps).

    The kernel and borders are ``scipy.ndimage.gaussian_filter``'s (radius ⌊4σ + ½⌋,
    mirrored borders); OpenCV computes it about 6× faster (bench/README.md, "Speed"),
    equal to within float32 rounding (~3e-7).
    """
    if not sigma:
        return maps
    radius = gaussian_radius(sigma)
    size = (2 * radius + 1, 2 * radius + 1)
    maps = np.ascontiguousarray(maps, dtype=np.float32)
    out = np.empty_like(maps)
    for m, o in zip(maps, out):
        cv2.GaussianBlur(m, size, float(sigma), dst=o, sigmaY=float(sigma), borderType=cv2.BORDER_REFLECT)
    return out


# ---- regions ----


def label_regions(resmap: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Label 8-connected regions of ``resmap > threshold``; returns ``(labels, areas)``.

    ``areas[k]`` is the pixel count of region ``k + 1``. Border regions count like others.
    OpenCV's labelling (the same regions as ``skimage.measure.label``, about 1.5–2× faster).
    """
    _, labels, stats, _ = cv2.connectedComponentsWithStats(
        np.ascontiguousarray(resmap > threshold).view(np.uint8), connectivity=8, ltype=cv2.CV_32S
    )
    return labels, stats[1:, cv2.CC_STAT_AREA].astype(np.int64)


def largest_area(resmap: np.ndarray, threshold: float) -> int:
    """Area of the largest region of ``resmap > threshold`` (0 when there is none)."""
    _, areas = label_regions(resmap, threshold)
    return int(areas.max()) if areas.size else 0


def region_stats(resmaps: Iterable[np.ndarray], threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Per image ``(largest area, number of regions)`` at a threshold, as two int arrays."""
    largest, counts = [], []
    for m in resmaps:
        _, areas = label_regions(m, threshold)
        largest.append(int(areas.max()) if areas.size else 0)
        counts.append(int(areas.size))
    return np.array(largest, dtype=np.int64), np.array(counts, dtype=np.int64)


def regions(resmap: np.ndarray, threshold: float, min_area: int) -> tuple[np.ndarray, int, int]:
    """One labelling of ``resmap > threshold``: ``(bool mask of its regions with at least
    min_area pixels, the largest region's area (0 when none), the number of regions)``."""
    labels, areas = label_regions(resmap, threshold)
    mask = np.concatenate([[False], areas >= min_area])[labels]
    return mask, int(areas.max()) if areas.size else 0, int(areas.size)


def defect_mask(resmap: np.ndarray, threshold: float, min_area: int) -> np.ndarray:
    """Bool mask of the regions of ``resmap > threshold`` with at least ``min_area`` pixels."""
    return regions(resmap, threshold, min_area)[0]


def min_threshold_for_area(resmaps: Iterable[np.ndarray], min_area: int) -> float:
    """The smallest threshold at which no map has a region of ``min_area`` pixels or more.

    The largest region area of ``map > t`` never grows with ``t`` and only changes at the
    map's own values, so the answer is one of them: per map, a binary search over its
    sorted unique values finds the first value ``v`` with ``largest_area(map, v) <
    min_area``; the result is the maximum over maps. Exact, no start value, no step.
    """
    if min_area < 1:
        raise ValueError(f"min_area must be >= 1, got {min_area!r}")
    best = -np.inf
    for m in resmaps:
        if np.isfinite(best) and largest_area(m, best) < min_area:
            continue  # already clean at the current answer: it cannot raise the maximum
        values = np.unique(m)
        # Every value <= best is already known to fail; the top value always passes
        # (nothing lies above it), so the answer for this map is in [lo, hi].
        lo = int(np.searchsorted(values, best, side="right")) if np.isfinite(best) else 0
        hi = len(values) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if largest_area(m, values[mid]) < min_area:
                hi = mid
            else:
                lo = mid + 1
        best = float(values[lo])
    return float(best)


def threshold_curve(resmaps: Iterable[np.ndarray], thresholds: Iterable[float]) -> np.ndarray:
    """Largest region area over all maps at each threshold (for the validation plot)."""
    return np.array([max(largest_area(m, t) for m in resmaps) for t in thresholds], dtype=np.int64)


def area_peaks(resmaps: Iterable[np.ndarray], min_area: int) -> np.ndarray:
    """Per map, the highest threshold at which it still holds a region of ``min_area`` pixels:
    :func:`min_threshold_for_area` of that map alone (float64 array).

    A map is judged defective at threshold ``t`` exactly when its peak is above ``t``, so
    ``peak / t`` is an image score in the threshold's units (above 1: defective). Unlike the
    map's maximum, a lone hot pixel does not raise it, and a large faint region does.
    """
    return np.array([min_threshold_for_area([m], min_area) for m in resmaps], dtype=np.float64)
