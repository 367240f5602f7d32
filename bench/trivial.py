"""Trivial detectors with no training, the floor every default must clear (issue 22, point 5).

* ``median``: ``|image − its 21-px median|`` (resmaps.median_residual), smoothed by a Gaussian
  of σ 4 px, at each test image's own resolution; the image score is the smoothed map's
  maximum. Scored for pixels (pixel AUROC, AU-PRO) and images (image AUROC).
* ``brightness``: an image's mean brightness distance from the training images' mean
  brightness, in units of their standard deviation; images only.

    .venv/bin/python bench/trivial.py ../shared/data/kolektorsdd/commutator [...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import data  # noqa: E402
import metrics  # noqa: E402
import resmaps  # noqa: E402

SIGMA = 4.0


def _load(path, color):
    return data.load_image(path, color)


def trivial_metrics(class_dir: Path) -> dict:
    """Both trivial detectors on ``class_dir``'s test set: ``{"median": {...}, "brightness": {...}}``."""
    class_dir = Path(class_dir)
    _, good_dir = data.check_class_dir(class_dir)
    train = data.list_images(good_dir)
    color = data.detect_color(train)
    listed = data.list_test_images(class_dir)
    truth = np.array([d != data.GOOD for _, d, _ in listed])
    types = [d for _, d, _ in listed]
    maps, gts, scores, means = [], [], [], []
    for path, _, mask_path in listed:
        image = _load(path, color)
        m = resmaps.smooth(resmaps.median_residual(image[None]), SIGMA)[0]
        maps.append(m)
        scores.append(float(m.max()))
        means.append(float(image.mean()))
        size = (image.shape[1], image.shape[0])
        gts.append(data.load_mask(mask_path, size) if mask_path else np.zeros(image.shape[:2], bool))
    train_means = np.array([float(_load(p, color).mean()) for p in train])
    distance = np.abs(np.array(means) - train_means.mean()) / (train_means.std() + 1e-8)
    has_masks = any(m is not None for _, _, m in listed)
    median = metrics.evaluate(maps if has_masks else None, gts if has_masks else None, truth, np.array(scores), types)
    keep = ("image_auroc", "pixel_auroc", "au_pro")
    return {
        "median": {k: median.get(k) for k in keep},
        "brightness": {"image_auroc": metrics.image_auroc(truth, distance)},
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("classes", nargs="+", help="class folders in the MVTec AD layout")
    args = parser.parse_args(argv)
    for c in args.classes:
        print(c, json.dumps(trivial_metrics(Path(c))))


if __name__ == "__main__":
    main()
