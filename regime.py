"""Object or surface: whether a class's good images are aligned, and what follows from it.

* **object** (centred, aligned parts such as MVTec bottle): every image is resized to one
  square, the autoencoder sees whole images, and the residual map subtracts the usual
  residual *of each pixel* on training images (a rim that is always hard to reconstruct
  sits at the same place in every image).
* **surface** (textures, unaligned parts: a brick wall, a commutator strip, cookies placed
  anywhere): images keep their aspect ratio, the autoencoder and the learned head train on
  random patches and run fully convolutionally over the whole image, and no per-pixel
  baseline is subtracted (there is no "same place" to learn it for).

``auto`` decides from the training images alone: the share of their variance that the
pixel-wise mean image explains (:func:`alignment`). Aligned objects score near 1 (MVTec
bottle 0.99); textures and unaligned parts score low (KolektorSDD commutator 0.10,
generated brick 0.14, gravel 0.19, Lookout cookies 0.71). The threshold lies in the wide
gap between the bottle and everything else.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

MODES = ("auto", "object", "surface")
ALIGNMENT_SIDE = 64  # px: images are compared at this size (fine texture does not count, structure does)
ALIGNMENT_THRESHOLD = 0.8  # explained variance at or above which a class counts as aligned
STRIDE = 16  # surface images are resized to multiples of this (the autoencoder's total stride below 256 px)
MAX_SURFACE_SIDE = 256  # default shorter side of surface images: native resolution up to this
MIN_PATCHES_PER_EPOCH = 256  # a surface epoch repeats the training images until it holds this many patches
DEFAULT_PATCH = 96  # px: side of the random training crops of surface runs (6x6 code positions)
# Images (object) or patches (surface) a run shows its autoencoder when -i is not given.
# Object runs: at 15000 (80 bottle epochs) the validation loss was still falling with the
# learning rate untouched; at 30000 they stop early near 110 epochs with a lower validation
# loss and a higher proxy score (bench/README.md). Surface runs keep 15000: the head, not the
# reconstruction, makes their map, and twice the epochs would double their training time.
DEFAULT_INSTANCES = {"object": 30000, "surface": 15000}


def alignment(paths: list[Path]) -> float:
    """Share of the good images' pixel variance that their pixel-wise mean explains.

    Images are read in grayscale at :data:`ALIGNMENT_SIDE` px, each minus its own mean
    brightness (so lighting changes do not count against alignment):
    ``1 − Σ(x − mean_image)² / Σ x²`` over all images and pixels. 1 = every image is the
    mean image; 0 = the mean image explains nothing (a texture that moves).
    """
    from data import load_image
    from utils import UserError

    def readable(p):  # undecodable files are skipped here; load_images warns about them by name
        try:
            return load_image(p, "grayscale", ALIGNMENT_SIDE)[..., 0]
        except UserError:
            return None

    x = [a for a in map(readable, paths) if a is not None]
    if not x:
        raise UserError(f"no readable images among {len(paths)} file(s)")
    x = np.stack(x)
    x = x - x.mean(axis=(1, 2), keepdims=True)
    total = float((x**2).sum())
    if total == 0.0:
        return 1.0  # identical flat images: trivially aligned
    return float(1.0 - ((x - x.mean(axis=0)) ** 2).sum() / total)


def choose_mode(requested: str, paths: list[Path]) -> tuple[str, float | None]:
    """``(mode, alignment or None)`` for ``requested`` ∈ :data:`MODES` (``auto`` measures it)."""
    if requested not in MODES:
        raise ValueError(f"unknown mode {requested!r}; choose one of {', '.join(MODES)}")
    if len(paths) < 2:
        return ("object" if requested == "auto" else requested), None
    score = alignment(paths)
    if requested != "auto":
        return requested, score
    return ("object" if score >= ALIGNMENT_THRESHOLD else "surface"), score


def surface_shape(sizes: list[tuple[int, int]], size: int | None) -> tuple[int, int]:
    """Model input ``(height, width)`` for surface images of original ``(width, height)`` sizes.

    The most common original size is scaled so that its shorter side becomes ``size``
    (default: itself, at most :data:`MAX_SURFACE_SIDE`), aspect ratio kept, each side
    rounded to a multiple of :data:`STRIDE`. Thin defects are not lost to a square squeeze.
    """
    width, height = Counter(sizes).most_common(1)[0][0]
    short = min(width, height)
    target = size if size is not None else min(short, MAX_SURFACE_SIDE)
    scale = target / short
    return tuple(max(STRIDE, int(round(side * scale / STRIDE)) * STRIDE) for side in (height, width))
