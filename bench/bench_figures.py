"""Seconds per overlay figure (``figures.plot_overlay``, drawn for every test image with
``test.py --save`` and every unlabelled image with ``--images``), at the figures' resolution.

    .venv/bin/python bench/bench_figures.py [--dpi 150] [--repeats 10]

Each image shape is drawn once to warm up, then ``--repeats`` times; the median is printed as a
Markdown row. The images are random, the masks two rectangles (ground truth one), as a
defective test image's are.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import figures  # noqa: E402

SHAPES = {
    "64x64 gray": (64, 64),
    "256x256 gray": (256, 256),
    "256x256 RGB": (256, 256, 3),
    "256x640 strip (W x H)": (640, 256),
}


def get_parser():
    """Command-line options of the figure benchmark."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dpi", type=int, default=figures.DPI, help="resolution of the saved PNGs (default: the product's)")
    p.add_argument("--repeats", type=int, default=10, help="timed figures per image shape (default 10)")
    return p


def time_overlay(shape, repeats, folder):
    """Median seconds of ``plot_overlay`` for one image of ``shape``."""
    rng = np.random.default_rng(0)
    image = rng.random(shape).astype(np.float32)
    h, w = shape[:2]
    resmap = rng.random((h, w)).astype(np.float32)
    pred = np.zeros((h, w), bool)
    pred[h // 8 : h // 4, w // 8 : w // 4] = True
    pred[h // 2 : h // 2 + h // 10, w // 3 : w // 2] = True
    gt = np.roll(pred, 3, axis=0) & (np.arange(w) < w // 3)
    kwargs = dict(gt_mask=gt, title="hole/000.png", verdict=True, score=1.25, threshold=0.4)
    figures.plot_overlay(image, image, resmap, pred, folder / "warm.png", **kwargs)
    seconds = []
    for k in range(repeats):
        started = time.perf_counter()
        figures.plot_overlay(image, image, resmap, pred, folder / f"{k}.png", **kwargs)
        seconds.append(time.perf_counter() - started)
    return float(np.median(seconds))


def main(argv=None):
    """Print one Markdown row per image shape."""
    args = get_parser().parse_args(argv)
    if args.dpi < 10 or args.repeats < 1:
        get_parser().error(f"--dpi must be >= 10 and --repeats >= 1, got {args.dpi} and {args.repeats}")
    figures.DPI = args.dpi
    print(f"| image | seconds per overlay ({args.dpi} dpi, median of {args.repeats}) |\n|---|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, shape in SHAPES.items():
            print(f"| {name} | {time_overlay(shape, args.repeats, Path(tmp)):.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
