"""Simulated defects pasted into good images: the training signal of the learned residual.

The learned residual (:mod:`learned`) is a small segmentation network that sees an image
and its reconstruction and marks what does not belong. It is trained on good training
images into which :func:`corrupt` pastes random defects with an exact mask, so no real
defect is ever needed (DRAEM, Zavrtanik et al., ICCV 2021, trains the same way).

Defect families, chosen to cover what the field calls defects without copying any test set:

* ``blob``: a smooth random blob (thresholded Gaussian-filtered noise, Perlin-like) filled
  with foreign material: a piece of one of the photographs that ship inside scikit-image,
  or a flat colour with noise. (Not with pieces of other good images: on a texture such a
  piece is no defect at all, and the network would learn to flag good texture.)
* ``stain``: a blob where the image is darkened or brightened (gain 0.5–0.8 or 1.25–1.6);
* ``stroke``: a thin random polyline 1–4 px wide, darker (×0.2–0.85) or brighter than its
  surroundings (cracks and scratches, subtle to deep).

The photographs used here (:data:`FILL_PHOTOS`) are deliberately *not* those that the
offline demo classes and the validation proxy paint with (``make_dataset``), so the proxy
never scores the network on the very material it was trained on.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from PIL import Image, ImageDraw
from scipy.ndimage import gaussian_filter

FAMILIES = ("blob", "stain", "stroke")
FILL_PHOTOS = (
    "astronaut",
    "camera",
    "coins",
    "rocket",
    "hubble_deep_field",
    "retina",
    "page",
    "text",
    "horse",
    "clock",
)
MIN_AREA_SHARE, MAX_AREA_SHARE = 0.002, 0.06  # blob area as a share of the image
VISIBLE = 3.0 / 255.0  # a pixel is in the mask only where the defect changed it this much


@cache
def _photo(name: str) -> np.ndarray:
    """A scikit-image sample photograph as float32 H×W×3 in [0, 1]."""
    import skimage.data

    img = np.asarray(getattr(skimage.data, name)(), dtype=np.float32)
    if img.max() > 1.0:
        img = img / 255.0
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    return np.ascontiguousarray(img[..., :3])


def _noise_field(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    field = gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-8)


def blob_mask(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A soft blob mask (H×W float32 in [0, 1]) covering 0.2–6 % of the image.

    Thresholded smooth noise (σ 2–12 % of the shorter side), restricted to a random
    window so one defect stays local, with a 1-px soft edge.
    """
    h, w = shape
    side = min(h, w)
    field = _noise_field(rng, shape, rng.uniform(0.02, 0.12) * side)
    # A Gaussian window keeps the defect in one place (noise alone scatters it everywhere).
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    reach = rng.uniform(0.08, 0.3) * side
    yy, xx = np.ogrid[:h, :w]
    field = field + 3.0 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * reach**2))
    share = np.exp(rng.uniform(np.log(MIN_AREA_SHARE), np.log(MAX_AREA_SHARE)))
    hard = field > np.quantile(field, 1.0 - share)
    return gaussian_filter(hard.astype(np.float32), 0.7)


def stroke_mask(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A thin random polyline (1–4 px wide, 10–50 % of the shorter side long), soft-edged."""
    h, w = shape
    side = min(h, w)
    length = rng.uniform(0.1, 0.5) * side
    steps = int(rng.integers(4, 12))
    heading = rng.uniform(0, 2 * np.pi)
    turns = np.cumsum(rng.normal(0, 0.35, steps))
    seg = length / steps
    y, x = rng.uniform(0, h), rng.uniform(0, w)
    points = [(x, y)]
    for turn in turns:
        x, y = x + seg * np.cos(heading + turn), y + seg * np.sin(heading + turn)
        points.append((x, y))
    canvas = Image.new("L", (w, h), 0)
    ImageDraw.Draw(canvas).line(points, fill=255, width=int(rng.integers(1, 5)), joint="curve")
    return gaussian_filter(np.asarray(canvas, np.float32) / 255.0, 0.5)


def _photo_patch(rng: np.random.Generator, shape: tuple[int, int], channels: int) -> np.ndarray:
    photo = _photo(FILL_PHOTOS[rng.integers(len(FILL_PHOTOS))])
    h, w = shape
    scale = rng.uniform(0.3, 1.0) * min(photo.shape[:2]) / max(h, w)
    ch, cw = max(1, int(h * scale)), max(1, int(w * scale))
    y = int(rng.integers(0, photo.shape[0] - ch + 1))
    x = int(rng.integers(0, photo.shape[1] - cw + 1))
    crop = Image.fromarray((photo[y : y + ch, x : x + cw] * 255).astype(np.uint8)).resize(
        (w, h), Image.Resampling.BILINEAR
    )
    patch = np.asarray(crop, np.float32) / 255.0
    return patch.mean(-1, keepdims=True) if channels == 1 else patch


def corrupt_one(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One image (H×W×C in [0, 1]) with one simulated defect: ``(corrupted, mask)``.

    The mask (H×W bool) is true exactly where the defect changed the image visibly (> 3/255).
    """
    h, w, c = image.shape
    family = FAMILIES[rng.integers(len(FAMILIES))]
    if family == "stroke":
        soft = stroke_mask(rng, (h, w))
        # Relative to the surface: subtle cracks darken it by only 15 %, deep ones by 80 %.
        if rng.random() < 0.7:
            source = image * rng.uniform(0.2, 0.85)
        else:
            source = image + (1.0 - image) * rng.uniform(0.3, 1.0)
        alpha = rng.uniform(0.6, 1.0)
    elif family == "stain":
        soft = blob_mask(rng, (h, w))
        gain = rng.uniform(0.5, 0.8) if rng.random() < 0.5 else rng.uniform(1.25, 1.6)
        source = image * gain
        alpha = 1.0
    else:
        soft = blob_mask(rng, (h, w))
        if rng.random() < 0.7:
            source = _photo_patch(rng, (h, w), c)
        else:
            source = rng.uniform(0, 1, (1, 1, c)).astype(np.float32) + rng.normal(0, 0.05, image.shape).astype(
                np.float32
            )
        alpha = rng.uniform(0.5, 1.0)
    blend = (alpha * soft)[..., None]
    out = np.clip(image * (1 - blend) + np.clip(source, 0, 1) * blend, 0, 1).astype(np.float32)
    mask = np.abs(out - image).max(-1) > VISIBLE
    return out, mask


def corrupt(images: np.ndarray, seed: int | np.random.Generator, share: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Paste one simulated defect into ``share`` of an N×H×W×C batch.

    Returns ``(corrupted images, masks N×H×W bool)``; images left good have empty masks.
    Deterministic for an integer ``seed``.
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be in [0, 1], got {share!r}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    out = np.array(images, dtype=np.float32, copy=True)
    masks = np.zeros(out.shape[:3], bool)
    for i in np.flatnonzero(rng.random(len(out)) < share):
        out[i], masks[i] = corrupt_one(out[i], rng)
    return out, masks


def painted_copies(images: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Copies of good images with one of the demo's painted defects each (the validation proxy).

    Image ``i`` gets defect ``make_dataset.DEFECTS[i % 5]`` (scratch, crack, hole, stain,
    contamination), painted by the offline dataset generator into a random square window
    (side = the shorter image side) and pasted back. These painters and their photographs
    differ from :func:`corrupt`'s, so a learned head is not scored on its own training
    defects. Returns ``(images, masks N×H×W bool, defect names)``; images on which no visible
    defect could be painted are left out.
    """
    import make_dataset

    rng = np.random.default_rng(seed)
    out, masks, names = [], [], []
    for i, image in enumerate(images):
        h, w, c = image.shape
        side = min(h, w)
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        window = image[y : y + side, x : x + side]
        defect = make_dataset.DEFECTS[i % len(make_dataset.DEFECTS)]
        painted = make_dataset.paint(window[..., 0] if c == 1 else window, defect, rng)
        if painted is None:
            continue
        copy, mask = image.copy(), np.zeros((h, w), bool)
        copy[y : y + side, x : x + side] = painted[0].reshape(window.shape)
        mask[y : y + side, x : x + side] = painted[1]
        out.append(copy)
        masks.append(mask)
        names.append(defect)
    if not out:
        return np.zeros((0, *images.shape[1:]), np.float32), np.zeros((0, *images.shape[1:3]), bool), []
    return np.stack(out).astype(np.float32), np.stack(masks), names
