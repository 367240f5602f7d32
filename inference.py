"""From a run and image files to residual maps, verdicts and result files.

The one place where the post-training scripts load images for a run, reconstruct them,
compute residual maps, and turn them into verdicts; ``validate.py``, ``test.py``,
``finetune.py`` and ``visualize.py`` only call these.
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import data
import resmaps
import runs
from utils import UserError


@dataclass
class Inspected:
    """Images of one set with their reconstructions and residual maps (model size)."""

    paths: list
    images: np.ndarray
    recons: np.ndarray
    maps: np.ndarray
    sizes: list  # original (width, height) per image


def inspect(run, paths, method, batch=16, progress=None):
    """Load ``paths`` at the run's size and colour, reconstruct them and compute residual maps."""
    if batch < 1:
        raise UserError(f"--batch must be >= 1, got {batch}")
    images, kept = data.load_images(paths, run.color, run.size, progress=progress)
    model = run.load_model()
    recons, maps = resmaps.compute_resmaps(model, images, method, batch)
    return Inspected(kept, images, recons, maps, [data.image_size(p) for p in kept])


def check_area_threshold(min_area=None, threshold=None):
    """Reject negative or zero areas and negative thresholds with a one-line error."""
    if min_area is not None and min_area < 1:
        raise UserError(f"minimum area must be a positive number of pixels, got {min_area}")
    if threshold is not None and not threshold >= 0:  # "not >=" also rejects NaN
        raise UserError(f"threshold must be >= 0, got {threshold}")


def resolve_threshold(run, method, threshold=None, min_area=None):
    """Threshold and minimum area to classify with: as given, else the newest validation result.

    Returns ``(threshold, min_area, source)``.
    """
    check_area_threshold(min_area, threshold)
    if threshold is not None and min_area is not None:
        return float(threshold), int(min_area), "command line"
    found = runs.find_validation_result(run.dir, method, min_area)
    if found is None:
        which = f"method {method}" + (f", area {min_area}" if min_area is not None else "")
        raise UserError(
            f"no validation result for {which} in {run.dir}: run validate.py -p {run.dir} -a MIN_AREA"
            f"{' --method ' + method} first, or pass both -t THRESHOLD and -a MIN_AREA"
        )
    if threshold is not None:
        return float(threshold), int(found["min_area"]), f"area from validation, threshold from command line"
    return float(found["threshold"]), int(found["min_area"]), "validation"


def classify(maps, threshold, min_area):
    """Verdicts for residual maps: defective when a region ≥ ``min_area`` lies above ``threshold``.

    Returns ``(defective bool array, largest areas, region counts)``.
    """
    largest, counts = resmaps.region_stats(maps, threshold)
    return largest >= min_area, largest, counts


def resize_map(array, size, nearest=False):
    """Bring a model-size H×W map (float or bool) to an image's (width, height)."""
    from PIL import Image

    width, height = size
    if array.shape == (height, width):
        return array
    if array.dtype == bool or nearest:
        img = Image.fromarray(array.astype(np.uint8) * 255)
        return np.asarray(img.resize((width, height), Image.Resampling.NEAREST)) > 127
    img = Image.fromarray(array.astype(np.float32), mode="F")
    return np.asarray(img.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)


def defect_masks(maps, threshold, min_area):
    """Bool masks of the regions ≥ ``min_area`` above ``threshold``, one per map."""
    return [resmaps.defect_mask(m, threshold, min_area) for m in maps]


def resolve_sample(run, name, base, allowed=None, what="image"):
    """Path of a sample image given relative to ``base`` (or absolute); a one-line error
    listing a few that exist when it does not (or is not among ``allowed``)."""
    path = Path(name)
    candidates = [path] if path.is_absolute() else [Path(base) / path, Path(name)]
    found = next((p for p in candidates if p.is_file()), None)
    options = allowed if allowed is not None else data.list_images(base, recursive=True)
    examples = ", ".join(data.relative_to(p, base) for p in list(options)[:5])
    if found is None:
        raise UserError(f"{what} not found: {name} (relative to {base}); some that exist: {examples}")
    if allowed is not None and found.resolve() not in {Path(p).resolve() for p in allowed}:
        raise UserError(f"{name} is not one of this run's validation images; some that are: {examples}")
    return found


def ground_truth_for(run, image_path):
    """The ground-truth mask of a test image of the run's dataset, or None."""
    image_path = Path(image_path).resolve()
    test_dir = (run.class_dir / "test").resolve()
    if test_dir not in image_path.parents or image_path.parent.name == data.GOOD:
        return None
    mask = run.class_dir / "ground_truth" / image_path.parent.name / f"{image_path.stem}_mask.png"
    return mask if mask.is_file() else None
