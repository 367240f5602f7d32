"""Generate offline anomaly-detection datasets in MVTec AD layout.

The images are built from real texture photographs that ship inside scikit-image
(no download needed): defect-free images are randomly placed, slightly rotated
crops of a photo under varying lighting, and defective test images are fresh
defect-free images with one painted surface defect (scratch, crack, hole, stain
or contamination by a foreign material). Each defective image comes with an exact
pixel mask: a pixel is defective exactly where the painted defect changed it.

Layout written for each class (as in MVTec AD)::

    <out>/<class>/train/good/000.png ...
    <out>/<class>/test/good/000.png ...
    <out>/<class>/test/<defect>/000.png ...
    <out>/<class>/ground_truth/<defect>/000_mask.png ...   (uint8, values 0 and 255)
    <out>/<class>/.generated.json                          (the settings used)

Output is deterministic for a given ``--seed``: every image has its own random
generator seeded from (seed, class, split, index), so files do not depend on which
classes are generated or in which order, and PNGs are byte-identical across runs.

Example::

    python3 make_dataset.py --classes gravel --size 256
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.spatial import cKDTree

import storage
from utils import UserError, run_cli, warn

GENERATOR_VERSION = 2
SETTINGS_FILE = ".generated.json"

MIN_SIZE, MAX_SIZE = 32, 1024

# A pixel belongs to the mask when the defect changed it by more than this many
# grey levels (of 255) in any channel; smaller changes are undone, so the saved
# defective image differs from its clean image exactly on the mask.
MASK_TOLERANCE = 3
MAX_SHIFT = 0.03  # good images: crop shift, as a share of the window side
MAX_ROTATION = 3.0  # good images: rotation, degrees
BORDER_PROBABILITY = 0.2  # share of defects placed so that they cross the image edge


@dataclass(frozen=True)
class TextureClass:
    """One generated object class: which photo it is cut from and how."""

    description: str
    loader: str  # name of the scikit-image.data function returning the photo
    rgb: bool  # saved as RGB (True) or grayscale "L" PNGs (False)
    window: float  # side of the crop, as a fraction of the photo's shorter side


CLASSES = {
    "brick": TextureClass("grey brick wall seen in slight perspective (grayscale)", "brick", False, 0.6),
    "grass": TextureClass("grass blades and leaves, dense and irregular (grayscale)", "grass", False, 0.6),
    "gravel": TextureClass("small angular gravel stones (grayscale)", "gravel", False, 0.55),
    "tissue": TextureClass(
        "immunohistochemistry-stained tissue: brown-stained cells on pale blue (RGB)",
        "immunohistochemistry",
        True,
        0.7,
    ),
}
DEFECTS = ("scratch", "crack", "hole", "stain", "contamination")

# Photos that contamination patches (foreign material) are cut from.
CONTAMINANTS = ("brick", "grass", "gravel", "immunohistochemistry", "moon", "chelsea", "coffee", "cell")
GRAY_CONTAMINANTS = ("brick", "grass", "gravel", "moon", "cell")


# --------------------------------------------------------------------------- sources


@cache
def _photo(loader, rgb):
    """A scikit-image sample photo as float32 in [0, 1]: (H, W) or (H, W, 3)."""
    import skimage.data

    img = np.asarray(getattr(skimage.data, loader)())
    img = img.astype(np.float32) / (255.0 if img.dtype == np.uint8 else 1.0)
    if img.ndim == 3:
        img = img[..., :3]
        if not rgb:
            img = img @ np.array([0.2125, 0.7154, 0.0721], dtype=np.float32)
    elif rgb:
        img = np.repeat(img[..., None], 3, axis=-1)
    return np.ascontiguousarray(img)


@lru_cache(maxsize=32)
def _blurred_photo(loader, rgb, sigma):
    """The photo low-pass filtered for downsampling (like skimage's anti_aliasing)."""
    img = _photo(loader, rgb)
    if sigma <= 0:
        return img
    sigmas = (sigma, sigma, 0) if img.ndim == 3 else sigma
    return ndimage.gaussian_filter(img, sigmas, mode="reflect")


def _crop(loader, rgb, size, window, theta, centre, flip):
    """Sample a rotated square window of a photo into a size x size image.

    ``window`` is the side of the window in photo pixels, ``centre`` its (y, x)
    centre in photo pixel units, ``theta`` the rotation in radians.
    """
    scale = window / size
    sigma = round(max(0.0, (scale - 1) / 2) * 4) / 4  # cache-friendly steps of 0.25 px
    src = _blurred_photo(loader, rgb, sigma)
    u = (np.arange(size) + 0.5 - size / 2) * scale
    uy, ux = np.meshgrid(u, u, indexing="ij")
    if flip:
        ux = -ux
    c, s = np.cos(theta), np.sin(theta)
    coords = np.stack([centre[0] + c * uy - s * ux - 0.5, centre[1] + s * uy + c * ux - 0.5])
    if src.ndim == 2:
        return ndimage.map_coordinates(src, coords, order=1, mode="reflect")
    return np.stack([ndimage.map_coordinates(src[..., k], coords, order=1, mode="reflect") for k in range(3)], -1)


def _random_window_centre(rng, shape, window, theta):
    """A centre such that the rotated window lies inside the photo."""
    half = window / 2 * (abs(np.cos(theta)) + abs(np.sin(theta))) + 1
    lo = np.minimum(half, np.array(shape[:2]) / 2)
    return rng.uniform(lo, np.array(shape[:2]) - lo)


def _quantise(img):
    """Round to the 8-bit grid, so the float image equals what the PNG will hold."""
    return (np.round(np.clip(img, 0, 1) * 255) / 255).astype(np.float32)


def _to_uint8(img):
    return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)


def _spec(class_name):
    try:
        return CLASSES[class_name]
    except KeyError:
        raise UserError(f"unknown class {class_name!r}; choose from {', '.join(CLASSES)}") from None


def make_good(class_name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One defect-free image of a class: float32 in [0, 1], (size, size) or (size, size, 3).

    A crop of the class photo around its centre, like a part under a fixed camera: the
    window is shifted by up to +-MAX_SHIFT of its side, its side jittered by +-4% and it
    is rotated by up to +-MAX_ROTATION degrees, under random lighting: gain 0.9-1.1,
    offset +-0.03 and a gentle linear gradient; RGB classes also get a slight
    white-balance jitter. (Crops from anywhere in the photo would make every good image a
    different pattern, which no inspection line produces.)
    """
    spec = _spec(class_name)
    photo = _photo(spec.loader, spec.rgb)
    window = spec.window * min(photo.shape[:2]) * rng.uniform(0.96, 1.04)
    theta = np.deg2rad(rng.uniform(-MAX_ROTATION, MAX_ROTATION))
    centre = np.array(photo.shape[:2], dtype=np.float64) / 2 + rng.uniform(-MAX_SHIFT, MAX_SHIFT, size=2) * window
    img = _crop(spec.loader, spec.rgb, size, window, theta, centre, flip=False)

    gain, offset = rng.uniform(0.9, 1.1), rng.uniform(-0.03, 0.03)
    phi, slope = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.05)
    t = (np.arange(size) + 0.5) / size - 0.5
    gradient = slope * (np.cos(phi) * t[None, :] + np.sin(phi) * t[:, None])
    if spec.rgb:
        gradient = gradient[..., None]
        gain = gain * rng.uniform(0.985, 1.015, size=3)
    return _quantise(img * gain + offset + gradient)


# --------------------------------------------------------------------------- geometry


def _loguniform(rng, lo, hi):
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _place(rng, size, extent):
    """(y, x) centre of a defect of radius ``extent``: inside, or crossing an edge."""
    if rng.random() < BORDER_PROBABILITY:
        along = rng.uniform(0, size)
        inward = rng.uniform(-0.3, 0.7) * extent  # < 0: centre outside the image
        side = rng.integers(4)
        y, x = [(inward, along), (size - 1 - inward, along), (along, inward), (along, size - 1 - inward)][side]
        return np.array([y, x])
    margin = min(extent, size / 2)
    return rng.uniform(margin, size - margin, size=2)


def _grid(size):
    return np.mgrid[0:size, 0:size].astype(np.float32)


def _blob(rng, size, centre, radius, harmonics, irregularity, aspect):
    """Polar coordinates of every pixel relative to an irregular blob.

    Returns (rho, phi, rad): rho is the distance from the centre divided by the blob's
    radius in that direction (blob = rho < 1), phi the angle, rad the local radius.
    """
    yy, xx = _grid(size)
    dy, dx = yy - centre[0], xx - centre[1]
    a = rng.uniform(0, np.pi)
    u = np.cos(a) * dx + np.sin(a) * dy
    v = (-np.sin(a) * dx + np.cos(a) * dy) / aspect
    r = np.hypot(u, v)
    phi = np.arctan2(v, u)
    rad = np.ones_like(r)
    for k in range(2, harmonics + 1):
        rad += rng.uniform(0, irregularity) / np.sqrt(k - 1) * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
    rad = radius * np.maximum(rad, 0.35)
    # r is measured in the stretched frame; convert back to pixels for edge widths
    scale = np.hypot(np.cos(phi), np.sin(phi) * aspect)
    return r / rad, phi, rad * scale


def _smooth_noise(rng, size, sigma):
    """Smooth random field with zero mean and unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal((size, size)), max(sigma, 0.5), mode="reflect")
    return (field - field.mean()) / (field.std() + 1e-8)


def _densify(points, values, step=0.3):
    """Resample a polyline (and per-vertex values) at roughly ``step`` pixel spacing."""
    seg = np.hypot(*np.diff(points, axis=0).T)
    dist = np.concatenate([[0], np.cumsum(seg)])
    n = max(2, int(dist[-1] / step) + 1)
    t = np.linspace(0, dist[-1], n)
    pts = np.stack([np.interp(t, dist, points[:, 0]), np.interp(t, dist, points[:, 1])], 1)
    return pts, np.interp(t, dist, values)


def _stroke(size, points, widths):
    """Anti-aliased coverage of a thick polyline with per-vertex widths.

    Returns (alpha, index, t): alpha in [0, 1] per pixel (exact 1-D box-filter
    coverage across the line), index the nearest densified vertex per pixel (-1 far
    from the line) and t the densified vertices' positions along the line in [0, 1],
    so that callers can vary attributes along the line.
    """
    t = np.linspace(0, 1, len(points))
    pts, w = _densify(points, widths)
    _, tt = _densify(points, t)
    alpha = np.zeros((size, size), np.float32)
    index = np.full((size, size), -1)
    pad = w.max() / 2 + 1.5
    y0, x0 = np.maximum(np.floor(pts.min(0) - pad).astype(int), 0)
    y1, x1 = np.minimum(np.ceil(pts.max(0) + pad).astype(int) + 1, size)
    if y0 >= y1 or x0 >= x1:
        return alpha, index, tt
    yy, xx = np.mgrid[y0:y1, x0:x1]
    d, idx = cKDTree(pts).query(np.c_[yy.ravel(), xx.ravel()], distance_upper_bound=pad)
    ok = np.isfinite(d)
    half = w[idx[ok]] / 2
    cover = np.clip(np.minimum(d[ok] + 0.5, half) - np.maximum(d[ok] - 0.5, -half), 0, 1)
    a = np.zeros(d.shape, np.float32)
    a[ok] = cover
    ind = np.full(d.shape, -1)
    ind[ok] = idx[ok]
    alpha[y0:y1, x0:x1] = a.reshape(yy.shape)
    index[y0:y1, x0:x1] = ind.reshape(yy.shape)
    return alpha, index, tt


def _smoothstep(x):
    x = np.clip(x, 0, 1)
    return x * x * (3 - 2 * x)


def _expand(field, img):
    """Broadcast an (H, W) field against an image that may have a channel axis."""
    return field[..., None] if img.ndim == 3 else field


def _local_mean(img, sigma):
    sigmas = (sigma, sigma, 0) if img.ndim == 3 else sigma
    return ndimage.gaussian_filter(img, sigmas, mode="reflect")


def _gray(img):
    return img.mean(-1) if img.ndim == 3 else img


def _ensure_change(clean, painted, core):
    """Nudge pixels inside a defect's core that the defect left (almost) unchanged.

    A pasted texture or a tint can match the original at some pixels by chance; moving
    those by a few grey levels keeps the defect, and hence its mask, free of pin-holes.
    """
    step = (MASK_TOLERANCE + 1.6) / 255
    delta = painted - clean
    size = np.abs(delta).max(-1) if delta.ndim == 3 else np.abs(delta)
    weak = core & (size < step)
    if not weak.any():
        return painted
    sign = np.where(_gray(clean) < 0.5, 1.0, -1.0)
    nudged = clean + _expand(sign * step, clean)
    return np.where(_expand(weak, clean), nudged, painted)


# --------------------------------------------------------------------------- defects
# Each painter takes the clean image (float, [0, 1]) and returns the painted image
# (float, not yet clipped or quantised). The mask is computed afterwards from the
# difference, so painters only need to make the defect look right.


def _paint_scratch(clean, rng, class_name):
    size = clean.shape[0]
    length = size * _loguniform(rng, 0.12, 0.8)
    c = _place(rng, size, length / 2)
    a = rng.uniform(0, np.pi)
    d = np.array([np.sin(a), np.cos(a)])
    n = np.array([d[1], -d[0]])
    bend = rng.normal(0, 0.18 * length, size=2)
    ctrl = np.array(
        [c - d * length / 2, c - d * length / 6 + n * bend[0], c + d * length / 6 + n * bend[1], c + d * length / 2]
    )
    t = np.linspace(0, 1, max(8, int(length / 2)))[:, None]
    curve = (1 - t) ** 3 * ctrl[0] + 3 * (1 - t) ** 2 * t * ctrl[1] + 3 * (1 - t) * t**2 * ctrl[2] + t**3 * ctrl[3]
    # small lateral wobble, as from a hand-held tool
    phase, cycles = rng.uniform(0, 1), rng.uniform(2, 4)
    curve += n * (0.01 * length * np.sin(2 * np.pi * (phase + cycles * t)))
    tt = t[:, 0]
    w0 = max(0.8, rng.uniform(0.9, 2.8) * size / 256)
    widths = w0 * (0.35 + 0.65 * np.sin(np.pi * np.clip(tt, 0.02, 0.98)) ** 0.4)
    alpha, index, tdense = _stroke(size, curve, widths)
    # intensity varies along the scratch (pressure changes)
    phase, freq = rng.uniform(0, 2 * np.pi), rng.uniform(1, 4)
    strength = 0.7 + 0.3 * np.sin(2 * np.pi * freq * tdense + phase)
    alpha = alpha * np.where(index >= 0, strength[np.maximum(index, 0)], 0)
    # The groove reflects light evenly: a line brighter (or darker) than the local mean
    # that keeps only a little of the texture underneath.
    sd = float(_gray(clean).std())
    local = _local_mean(clean, max(2.0, size / 64))
    delta = max(0.1, sd * rng.uniform(1.2, 2.2)) * (1 if rng.random() < 0.7 else -1)
    target = local + 0.3 * (clean - local) + delta
    if clean.ndim == 3:  # the groove shows the bare, colourless material
        target = 0.4 * target + 0.6 * _gray(target)[..., None]
    return clean + _expand(alpha, clean) * (target - clean)


def _crack_branch(rng, start, heading, length, width, step, depth, out):
    n = max(3, int(length / step))
    pts = [np.asarray(start, float)]
    target = heading
    for _ in range(n):
        target += rng.normal(0, 0.08)
        theta = target + rng.normal(0, 0.4)
        pts.append(pts[-1] + step * np.array([np.sin(theta), np.cos(theta)]))
    pts = np.array(pts)
    t = np.linspace(0, 1, len(pts))
    widths = width * (1 - 0.6 * t)
    out.append((pts, widths))
    if depth >= 2:
        return
    for _ in range(rng.poisson(1.6 if depth == 0 else 0.6)):
        j = int(rng.uniform(0.15, 0.85) * len(pts))
        turn = rng.uniform(0.4, 1.1) * rng.choice([-1, 1])
        sub_len = length * rng.uniform(0.15, 0.5) * (1 - t[j] * 0.5)
        _crack_branch(rng, pts[j], heading + turn, sub_len, max(0.6, widths[j] * 0.7), step, depth + 1, out)


def _paint_crack(clean, rng, class_name):
    size = clean.shape[0]
    length = size * _loguniform(rng, 0.2, 0.9)
    c = _place(rng, size, length / 2)
    heading = rng.uniform(0, 2 * np.pi)
    start = c - length / 2 * np.array([np.sin(heading), np.cos(heading)])
    branches = []
    w0 = max(0.9, rng.uniform(1.0, 2.2) * size / 256)
    _crack_branch(rng, start, heading, length, w0, max(0.8, size / 120), 0, branches)
    alpha = np.zeros(clean.shape[:2], np.float32)
    for pts, widths in branches:
        alpha = np.maximum(alpha, _stroke(size, pts, widths)[0])
    depth = rng.uniform(0.55, 0.8)
    return clean * (1 - _expand(alpha, clean) * depth)


def _paint_hole(clean, rng, class_name):
    size = clean.shape[0]
    radius = max(1.6, size * _loguniform(rng, 0.02, 0.12))
    c = _place(rng, size, radius * 1.2)
    rho, phi, rad = _blob(rng, size, c, radius, harmonics=4, irregularity=0.1, aspect=rng.uniform(0.7, 1.0))
    inside = np.clip((1 - rho) * rad / 0.8 + 0.5, 0, 1)  # ~1 px anti-aliased rim
    depth = rng.uniform(0.6, 0.85)
    dark = depth * (0.4 + 0.6 * _smoothstep((1 - rho) / 0.6))  # walls lighter, bottom darkest
    # Light falls from one side: it lights the opposite inner wall and the near outer lip.
    light = rng.uniform(0, 2 * np.pi)
    amp = rng.uniform(0.08, 0.16)
    shade = np.cos(phi - light)
    wall = np.clip(1 - np.abs(rho - 0.78) / 0.22, 0, 1)
    lip = np.exp(-(((rho - 1.12) / 0.1) ** 2)) * (rho > 1)
    mean = _local_mean(clean, max(1.0, radius))
    inner = (0.15 * clean + 0.85 * mean) * _expand(1 - dark, clean) + _expand(amp * shade * wall, clean)
    outer = clean - _expand(0.5 * amp * shade * lip, clean)
    painted = outer * (1 - _expand(inside, clean)) + inner * _expand(inside, clean)
    return _ensure_change(clean, painted, inside > 0.5)


def _paint_stain(clean, rng, class_name):
    size = clean.shape[0]
    radius = max(2.5, size * _loguniform(rng, 0.06, 0.28))
    c = _place(rng, size, radius)
    rho, _, _ = _blob(rng, size, c, radius, harmonics=6, irregularity=0.15, aspect=rng.uniform(0.5, 1.0))
    soft = rng.uniform(0.25, 0.6)
    alpha = _smoothstep((1 - rho) / soft)
    alpha *= np.clip(0.85 + 0.15 * _smooth_noise(rng, size, radius / 3), 0.5, 1.2)
    if rng.random() < 0.35:  # dried "coffee ring": darker edge
        alpha = 0.6 * alpha + 0.6 * np.exp(-(((rho - 1 + 0.4 * soft) / 0.08) ** 2))
    if clean.ndim == 3:
        palette = np.array([[0.3, 0.6, 1.0], [0.8, 0.3, 0.7], [0.9, 0.8, 0.3], [0.2, 0.9, 0.8], [1.0, 1.0, 1.0]])
        absorb = palette[rng.integers(len(palette))] * rng.uniform(0.9, 1.1, 3)
        absorb *= rng.uniform(0.15, 0.3) / absorb.max()
        a = alpha[..., None]
        painted = clean * (1 - a * absorb) - a * rng.uniform(0.015, 0.03)
    elif rng.random() < 0.7:  # darker (oil, water) stain
        painted = clean * (1 - alpha * rng.uniform(0.12, 0.26)) - alpha * rng.uniform(0.02, 0.05)
    else:  # bleached
        painted = clean + alpha * (rng.uniform(0.03, 0.05) + rng.uniform(0.1, 0.2) * (1 - clean))
    return _ensure_change(clean, painted, alpha > 0.5)


def _paint_contamination(clean, rng, class_name):
    size = clean.shape[0]
    spec = CLASSES[class_name]
    radius = max(2.0, size * _loguniform(rng, 0.03, 0.18))
    c = _place(rng, size, radius)
    aspect = rng.uniform(0.3, 1.0)
    rho, _, rad = _blob(rng, size, c, radius, harmonics=8, irregularity=0.2, aspect=aspect)
    rho = rho + 0.12 * _smooth_noise(rng, size, max(1.0, radius * aspect / 4))  # ragged edge
    cover = np.clip((1 - rho) * rad / 0.8 + 0.5, 0, 1) * rng.uniform(0.85, 1.0)

    pool = [name for name in CONTAMINANTS if name != spec.loader]
    loader = pool[rng.integers(len(pool))]
    photo = _photo(loader, spec.rgb)
    sd = float(_gray(clean).std())
    for _ in range(10):  # avoid featureless crops (sky, a white cup): they read as glare
        window = min(photo.shape[:2]) * spec.window * rng.uniform(0.5, 1.5)
        window = min(window, 0.95 * min(photo.shape[:2]))
        theta = rng.uniform(0, 2 * np.pi)
        centre = _random_window_centre(rng, photo.shape, window, theta)
        patch = _crop(loader, spec.rgb, size, window, theta, centre, flip=False)
        if float(_gray(patch).std()) > 0.4 * sd:
            break
    if spec.rgb and loader in GRAY_CONTAMINANTS:
        patch = patch * rng.uniform(0.8, 1.2, 3)  # give grey material a colour cast

    # Bring the foreign material into the image's range so it is not glaring.
    pm = patch.mean(axis=(0, 1))
    ps = float(_gray(patch).std())
    k = np.clip(rng.uniform(0.7, 1.3) * sd / max(ps, 1e-3), 0.3, 3.0)
    target = 0.3 * pm + 0.7 * clean.mean(axis=(0, 1)) + rng.choice([-1, 1]) * rng.uniform(0.3, 0.9) * sd
    patch = (patch - pm) * k + target
    painted = clean * (1 - _expand(cover, clean)) + patch * _expand(cover, clean)
    return _ensure_change(clean, painted, cover > 0.5)


PAINTERS = {
    "scratch": _paint_scratch,
    "crack": _paint_crack,
    "hole": _paint_hole,
    "stain": _paint_stain,
    "contamination": _paint_contamination,
}


def _min_area(size):
    return max(4, int(round(3e-4 * size * size)))


def _finalise(clean, painted):
    """Quantise, compute the exact mask and undo changes outside it.

    Returns (defective, mask) as float32 [0, 1] and bool arrays.
    """
    c8, d8 = _to_uint8(clean), _to_uint8(painted)
    diff = np.abs(d8.astype(np.int16) - c8.astype(np.int16))
    if diff.ndim == 3:
        diff = diff.max(-1)
    mask = diff > MASK_TOLERANCE
    # drop isolated specks of one or two pixels (and undo them in the image)
    eight = np.ones((3, 3), bool)
    labels, n = ndimage.label(mask, structure=eight)
    if n:
        sizes = np.bincount(labels.ravel())
        mask &= sizes[labels] >= 3
    # fill one- or two-pixel pin-holes inside the defect (pixels the defect happened not
    # to change); larger enclosed areas, e.g. between crossing crack branches, stay out
    holes = ndimage.binary_fill_holes(mask) & ~mask
    labels, n = ndimage.label(holes)
    if n:
        sizes = np.bincount(labels.ravel())
        mask |= holes & (sizes[labels] <= 2)
    d8[~mask] = c8[~mask]
    return d8.astype(np.float32) / 255, mask


def paint(
    clean: np.ndarray, defect: str, rng: np.random.Generator, max_tries: int = 50
) -> tuple[np.ndarray, np.ndarray] | None:
    """Paint one ``defect`` into a square image of any class (float [0, 1], H×W or H×W×3).

    Returns ``(defective, mask)`` as from :func:`make_pair`, or ``None`` when no visible
    defect could be painted (a flat image). Used by the validation proxy to paste the demo's
    defects into a run's own held-back good images.
    """
    class_name = "tissue" if clean.ndim == 3 else "brick"  # only picks the contaminant photos
    for _ in range(max_tries):
        defective, mask = _finalise(clean, PAINTERS[defect](clean, rng, class_name))
        if mask.sum() >= _min_area(clean.shape[0]):
            return defective, mask
    return None


def make_pair(
    class_name: str, defect: str, size: int, rng: np.random.Generator, max_tries: int = 50
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A clean image, the same image with one painted defect, and the defect mask.

    All three are float32 arrays: images in [0, 1] on the 8-bit grid ((size, size) for
    grayscale classes, (size, size, 3) for RGB), mask (size, size) with values 0 and 1.
    The defective image differs from the clean one exactly where mask is 1, apart from
    pin-holes inside a defect that the defect happened not to change.
    """
    if defect not in PAINTERS:
        raise UserError(f"unknown defect {defect!r}; choose from {', '.join(DEFECTS)}")
    clean = make_good(class_name, size, rng)
    for _ in range(max_tries):
        defective, mask = _finalise(clean, PAINTERS[defect](clean, rng, class_name))
        if mask.sum() >= _min_area(size):
            return clean, defective, mask.astype(np.float32)
    raise RuntimeError(f"could not paint a visible {defect} on {class_name} in {max_tries} tries")


# --------------------------------------------------------------------------- dataset


def _settings(class_name, size, n_train, n_test_good, n_test_defect, defects, seed):
    return {
        "generator": "make_dataset.py",
        "version": GENERATOR_VERSION,
        "class": class_name,
        "size": size,
        "train": n_train,
        "test_good": n_test_good,
        "test_defect": n_test_defect,
        "defects": list(defects),
        "seed": seed,
    }


def _expected_files(settings):
    files = [f"train/good/{i:03d}.png" for i in range(settings["train"])]
    files += [f"test/good/{i:03d}.png" for i in range(settings["test_good"])]
    for defect in settings["defects"]:
        for i in range(settings["test_defect"]):
            files += [f"test/{defect}/{i:03d}.png", f"ground_truth/{defect}/{i:03d}_mask.png"]
    return files


def _state(folder, settings):
    """'missing', 'complete' (same settings, all files), 'different' or 'incomplete'."""
    if not folder.exists():
        return "missing"
    try:
        saved = json.loads((folder / SETTINGS_FILE).read_text())
    except (OSError, ValueError):
        return "incomplete"
    if saved != settings:
        return "different"
    if all((folder / f).is_file() for f in _expected_files(settings)):
        return "complete"
    return "incomplete"


def _save(img, path):
    arr = _to_uint8(img)
    Image.fromarray(arr, mode="RGB" if arr.ndim == 3 else "L").save(path)


def _write_class(folder, class_name, settings, progress):
    class_index = list(CLASSES).index(class_name)
    size, seed = settings["size"], settings["seed"]
    jobs = [("train/good", 0, None, settings["train"]), ("test/good", 1, None, settings["test_good"])]
    jobs += [(f"test/{d}", 2 + DEFECTS.index(d), d, settings["test_defect"]) for d in settings["defects"]]
    for sub, split, defect, count in jobs:
        if count == 0:
            continue
        (folder / sub).mkdir(parents=True)
        if defect:
            (folder / "ground_truth" / defect).mkdir(parents=True)
        for i in range(count):
            rng = np.random.default_rng([seed, class_index, split, i])
            if defect is None:
                _save(make_good(class_name, size, rng), folder / sub / f"{i:03d}.png")
            else:
                _, defective, mask = make_pair(class_name, defect, size, rng)
                _save(defective, folder / sub / f"{i:03d}.png")
                Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(
                    folder / "ground_truth" / defect / f"{i:03d}_mask.png"
                )
            progress.update(1)
    (folder / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n")


def generate(
    out: str | Path,
    classes: tuple[str, ...] | list[str] = tuple(CLASSES),
    size: int = 256,
    n_train: int = 120,
    n_test_good: int = 20,
    n_test_defect: int = 10,
    defects: tuple[str, ...] | list[str] = DEFECTS,
    seed: int = 0,
    force: bool = False,
) -> list[Path]:
    """Write each class in MVTec AD layout under ``out``; return the class folders.

    A class folder that already holds exactly these settings is skipped. One with
    other settings, or left incomplete, is only replaced when ``force`` is true;
    otherwise :class:`utils.UserError` is raised before anything is written.
    """
    from tqdm import tqdm

    classes = list(dict.fromkeys(classes))
    defects = list(dict.fromkeys(defects))
    for name in classes:
        _spec(name)
    for name in defects:
        if name not in DEFECTS:
            raise UserError(f"unknown defect {name!r}; choose from {', '.join(DEFECTS)}")
    if not classes:
        raise UserError("no classes to generate")
    if not isinstance(size, (int, np.integer)) or not MIN_SIZE <= size <= MAX_SIZE:
        raise UserError(f"--size must be an integer between {MIN_SIZE} and {MAX_SIZE}, got {size}")
    for flag, value in (("--train", n_train), ("--test-good", n_test_good), ("--test-defect", n_test_defect)):
        if not isinstance(value, (int, np.integer)) or value < 0:
            raise UserError(f"{flag} must be a whole number >= 0, got {value}")
    if n_train < 2:
        raise UserError(f"--train must be at least 2 (a model needs training images), got {n_train}")
    if n_test_defect > 0 and not defects:
        raise UserError("--defects is empty but --test-defect is > 0")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"--seed must be a whole number >= 0, got {seed}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    largest = min(int(CLASSES[c].window * min(_photo(CLASSES[c].loader, CLASSES[c].rgb).shape[:2])) for c in classes)
    if size > largest:
        warn(f"--size {size} is larger than the photo crops (~{largest} px); images will be upsampled and soft")

    # Decide for every class before writing anything, so a refusal leaves no half-done work.
    plans = []
    for name in classes:
        folder = out / name
        settings = _settings(name, int(size), int(n_train), int(n_test_good), int(n_test_defect), defects, int(seed))
        state = _state(folder, settings)
        if state in ("different", "incomplete") and not force:
            why = "was generated with different settings" if state == "different" else "is incomplete or not ours"
            raise UserError(f"{folder} already exists and {why}; use --force to delete and regenerate it")
        plans.append((name, folder, settings, state))

    folders = []
    for name, folder, settings, state in plans:
        folders.append(folder)
        if state == "complete" and not force:
            print(f"{name}: {folder} is already complete with these settings, skipped (--force regenerates)")
            continue
        total = len(_expected_files(settings)) - settings["test_defect"] * len(settings["defects"])
        start = time.perf_counter()
        # Written aside and renamed into place: an interrupted run never leaves half a class.
        with (
            storage.StagedFolder(folder) as staged,
            tqdm(total=total, desc=name, unit="img", disable=None, leave=False) as bar,
        ):
            _write_class(staged, name, settings, bar)
        print(f"{name}: wrote {total} images to {folder} in {time.perf_counter() - start:.1f} s")
    return folders


# --------------------------------------------------------------------------- CLI


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show list defaults as ``a b c`` rather than ``['a', 'b', 'c']``."""

    def _get_help_string(self, action):
        if isinstance(action.default, (list, tuple)) and "%(default)" not in (action.help or ""):
            return f"{action.help} (default: {' '.join(map(str, action.default))})"
        return super()._get_help_string(action)


def get_parser():
    parser = argparse.ArgumentParser(
        description="Generate anomaly-detection datasets in MVTec AD layout from texture photos "
        "shipped with scikit-image (works offline). Classes: "
        + "; ".join(f"{k}: {v.description}" for k, v in CLASSES.items())
        + ".",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--out", default="mvtec", help="folder to write the class folders into")
    parser.add_argument(
        "--classes",
        nargs="+",
        choices=list(CLASSES),
        default=list(CLASSES),
        metavar="CLASS",
        help="classes to generate; pick one for a quick demo",
    )
    parser.add_argument(
        "--size", type=int, default=256, help=f"side of the square images in pixels ({MIN_SIZE}-{MAX_SIZE})"
    )
    parser.add_argument("--train", type=int, default=120, help="defect-free training images per class (>= 2)")
    parser.add_argument("--test-good", type=int, default=20, help="defect-free test images per class")
    parser.add_argument("--test-defect", type=int, default=10, help="defective test images per defect type")
    parser.add_argument(
        "--defects",
        nargs="+",
        choices=list(DEFECTS),
        default=list(DEFECTS),
        metavar="DEFECT",
        help="defect types to generate",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives identical files")
    parser.add_argument(
        "--force",
        action="store_true",
        help="delete and regenerate the chosen class folders, even complete ones (needed when a folder "
        "exists with other settings or is incomplete)",
    )
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    generate(
        args.out,
        classes=args.classes,
        size=args.size,
        n_train=args.train,
        n_test_good=args.test_good,
        n_test_defect=args.test_defect,
        defects=args.defects,
        seed=args.seed,
        force=args.force,
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, parser=get_parser))
