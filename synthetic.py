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

The validation proxy paints other families (:data:`PROXY_FAMILIES`: large faint shading,
low-opacity texture, missing and frayed edges, dark areas, long thin cracks, contamination)
with other painters, so the proxy does not score the head on exactly what it trained on.
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
PROXY_PHOTOS = ("chelsea", "coffee", "immunohistochemistry", "colorwheel")  # the proxy's contaminants only
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


def _photo_patch(rng: np.random.Generator, shape: tuple[int, int], channels: int, photos=FILL_PHOTOS) -> np.ndarray:
    photo = _photo(photos[rng.integers(len(photos))])
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


# --------------------------------------------------------------------------- proxy families
# What real defects look like beyond the demo's five painted ones (issue 22): large faint
# changes, low-opacity texture, missing or frayed edges, dark inactive areas and long thin
# cracks. Each family is a function (image H×W×C in [0, 1], rng) -> (painted, soft mask);
# the proxy reports each one by name. Material comes from the image itself (another place,
# scale and angle), from procedural noise or from scikit-image's photographs, never from a
# download.


def _smooth_blob(rng, shape, share, sigma_share, soft):
    """A soft blob covering about ``share`` of the image, built from smooth noise around a
    random centre; ``soft`` px Gaussian edge."""
    h, w = shape
    side = min(h, w)
    field = _noise_field(rng, shape, sigma_share * side)
    cy, cx = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
    yy, xx = np.ogrid[:h, :w]
    reach = np.sqrt(share * h * w / np.pi)
    field = 0.6 * field + 3.0 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * reach**2))
    hard = field > np.quantile(field, 1.0 - share)
    return gaussian_filter(hard.astype(np.float32), soft)


def _fractal_noise(rng, shape):
    """Fractal (1/f) noise in [0, 1]: a sum of smooth noise fields at halving scales."""
    total = np.zeros(shape, np.float32)
    for k, sigma in enumerate((16.0, 8.0, 4.0, 2.0, 1.0)):
        total += 0.6**k * _noise_field(rng, shape, sigma)
    return (total - total.min()) / (np.ptp(total) + 1e-8)


def _shading(image, rng):
    """Large low-contrast shading: 5–33 % of the image 3–25 % darker or brighter, soft edges."""
    h, w, _ = image.shape
    soft = _smooth_blob(rng, (h, w), rng.uniform(0.05, 0.33), 0.15, rng.uniform(2.0, 0.05 * min(h, w) + 2))
    gain = 1.0 + rng.choice([-1.0, 1.0]) * np.exp(rng.uniform(np.log(0.03), np.log(0.25)))
    return np.clip(image * gain, 0, 1), soft


def _texture(image, rng):
    """Texture replacement at low opacity: another place of the image itself, rescaled and
    turned, or fractal noise, blended at 25–70 % into a blob of 1–15 % of the image."""
    h, w, c = image.shape
    soft = _smooth_blob(rng, (h, w), rng.uniform(0.01, 0.15), 0.05, 1.0)
    if rng.random() < 0.6:
        pil = (
            Image.fromarray(np.ascontiguousarray(image[..., 0]), mode="F")
            if c == 1
            else Image.fromarray((image * 255).astype(np.uint8))
        )
        scale = rng.uniform(0.5, 2.0)
        turned = pil.rotate(float(rng.uniform(0, 360)), resample=Image.Resampling.BILINEAR).resize(
            (max(1, int(w * scale)), max(1, int(h * scale))), Image.Resampling.BILINEAR
        )
        arr = np.asarray(turned, np.float32)
        arr = arr[..., None] if c == 1 else arr / 255.0
        arr = np.tile(arr, (int(np.ceil(h / arr.shape[0])) + 1, int(np.ceil(w / arr.shape[1])) + 1, 1))
        y, x = int(rng.integers(0, arr.shape[0] - h + 1)), int(rng.integers(0, arr.shape[1] - w + 1))
        source = arr[y : y + h, x : x + w]
    else:
        noise = _fractal_noise(rng, (h, w))[..., None]
        source = image.mean() + (noise - 0.5) * rng.uniform(0.2, 0.8)
    return np.clip(source, 0, 1), soft * rng.uniform(0.25, 0.7)


def _edge_missing(image, rng):
    """Material missing at an edge: a half-disc or a bite at one image border filled with the
    image's darkest or brightest tone (the background showing through)."""
    h, w, _ = image.shape
    side = min(h, w)
    border = int(rng.integers(4))
    along = rng.uniform(0.1, 0.9)
    cy, cx = [(0.0, along * w), (h - 1.0, along * w), (along * h, 0.0), (along * h, w - 1.0)][border]
    radius = rng.uniform(0.05, 0.25) * side
    yy, xx = np.ogrid[:h, :w]
    wobble = 1.0 + 0.25 * _noise_field(rng, (h, w), 0.03 * side)
    hard = ((yy - cy) ** 2 + (xx - cx) ** 2) < (radius * wobble) ** 2
    tone = np.quantile(image, 0.01 if rng.random() < 0.7 else 0.99, axis=(0, 1))
    return np.broadcast_to(tone, image.shape), gaussian_filter(hard.astype(np.float32), 0.7)


def _frayed(image, rng):
    """Frayed or rough edge: a band along a random line whose boundary is ragged (high-frequency
    noise), darkened or brightened by 15–50 %."""
    h, w, _ = image.shape
    side = min(h, w)
    angle = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
    distance = (yy - cy) * np.cos(angle) - (xx - cx) * np.sin(angle)
    along = (yy - cy) * np.sin(angle) + (xx - cx) * np.cos(angle)
    width = rng.uniform(0.02, 0.08) * side
    ragged = width * (1.0 + 0.8 * _noise_field(rng, (h, w), rng.uniform(0.5, 2.0)))
    length = rng.uniform(0.2, 0.6) * side
    hard = (np.abs(distance) < ragged) & (np.abs(along) < length / 2)
    gain = rng.uniform(0.5, 0.85) if rng.random() < 0.6 else rng.uniform(1.15, 1.5)
    return np.clip(image * gain, 0, 1), gaussian_filter(hard.astype(np.float32), 0.5)


def _dark_area(image, rng):
    """Dark inactive area: a polygon (2–20 % of the image) darkened to 20–70 % of its tone, as
    a dead cell region of a solar panel or a burnt spot."""
    h, w, _ = image.shape
    side = min(h, w)
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    radius = np.sqrt(rng.uniform(0.02, 0.2) * h * w / np.pi)
    corners = int(rng.integers(3, 8))
    angles = np.sort(rng.uniform(0, 2 * np.pi, corners))
    radii = radius * rng.uniform(0.6, 1.4, corners)
    points = [(cx + r * np.cos(a), cy + r * np.sin(a)) for a, r in zip(angles, radii)]
    canvas = Image.new("L", (w, h), 0)
    ImageDraw.Draw(canvas).polygon(points, fill=255)
    hard = np.asarray(canvas, np.float32) / 255.0
    return image * rng.uniform(0.2, 0.7), gaussian_filter(hard, rng.uniform(0.5, 0.02 * side + 0.5))


def _long_crack(image, rng):
    """A long thin crack (30–90 % of the shorter side, 1–3 px) of any contrast, from 10 %
    darker (barely visible) to 70 %."""
    h, w, _ = image.shape
    side = min(h, w)
    length = rng.uniform(0.3, 0.9) * side
    steps = int(rng.integers(8, 20))
    heading = rng.uniform(0, 2 * np.pi)
    turns = np.cumsum(rng.normal(0, 0.25, steps))
    y, x = rng.uniform(0.1, 0.9) * h, rng.uniform(0.1, 0.9) * w
    points = [(x, y)]
    for turn in turns:
        x, y = x + length / steps * np.cos(heading + turn), y + length / steps * np.sin(heading + turn)
        points.append((x, y))
    canvas = Image.new("L", (w, h), 0)
    ImageDraw.Draw(canvas).line(points, fill=255, width=int(rng.integers(1, 4)), joint="curve")
    depth = np.exp(rng.uniform(np.log(0.1), np.log(0.7)))
    return image * (1.0 - depth), gaussian_filter(np.asarray(canvas, np.float32) / 255.0, 0.4)


def _contamination(image, rng):
    """Foreign material: a piece of a scikit-image photograph in a smooth blob (0.3–5 %); other
    photographs than the head trains with (:data:`PROXY_PHOTOS`), so the proxy does not score the
    head on its own training material."""
    h, w, c = image.shape
    soft = _smooth_blob(rng, (h, w), rng.uniform(0.003, 0.05), 0.04, 0.7)
    return _photo_patch(rng, (h, w), c, PROXY_PHOTOS), soft * rng.uniform(0.6, 1.0)


PROXY_PAINTERS = {
    "shading": _shading,
    "texture": _texture,
    "edge": _edge_missing,
    "frayed": _frayed,
    "dark_area": _dark_area,
    "long_crack": _long_crack,
    "contamination": _contamination,
}
PROXY_FAMILIES = tuple(PROXY_PAINTERS)
PROXY_MAX_COPIES = 160  # painted copies at most (each image gets several families while below it)


def paint_family(image: np.ndarray, family: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One proxy defect of ``family`` (:data:`PROXY_FAMILIES`) in an H×W×C image in [0, 1]:
    ``(painted, mask)``, the mask true where the image changed visibly (> 3/255)."""
    if family not in PROXY_PAINTERS:
        raise ValueError(f"unknown defect family {family!r}; choose one of {', '.join(PROXY_FAMILIES)}")
    image = np.asarray(image, np.float32)
    source, soft = PROXY_PAINTERS[family](image, rng)
    blend = np.clip(soft, 0, 1)[..., None]
    out = np.clip(image * (1 - blend) + np.asarray(source, np.float32) * blend, 0, 1).astype(np.float32)
    out = np.round(out * 255) / 255  # as an 8-bit file would hold it
    return out, np.abs(out - image).max(-1) > VISIBLE


def proxy_copies(images: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Painted copies of good images for the validation proxy: ``(copies, masks, families)``.

    Every image gets every :data:`PROXY_FAMILIES` defect while that makes at most
    :data:`PROXY_MAX_COPIES` copies (so a handful of held-back images still gives every family
    several times); beyond it the families take turns over the images, each family painted
    into as many images as the others. Copies whose defect changed no pixel visibly are left
    out. Deterministic for a seed.
    """
    rng = np.random.default_rng(seed)
    n, families = len(images), PROXY_FAMILIES
    total = min(n * len(families), max(PROXY_MAX_COPIES, n))
    out, masks, names = [], [], []
    for k in range(total):
        f = k % len(families)
        image = np.asarray(images[(k // len(families) + f) % n], np.float32)
        painted, mask = paint_family(image, families[f], rng)
        if mask.any():
            out.append(painted)
            masks.append(mask)
            names.append(families[f])
    if not out:
        return np.zeros((0, *images.shape[1:]), np.float32), np.zeros((0, *images.shape[1:3]), bool), []
    return np.stack(out), np.stack(masks), names
