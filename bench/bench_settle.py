"""The learned head's BatchNormalization statistics: as trained (moving averages) against
settled on the final weights (``learned.settle_batch_norm``), on finished runs.

    .venv/bin/python bench/bench_settle.py RUN [RUN ...]

Heads trained before the fix kept the moving averages of training, which trail the weights;
this re-settles a copy in memory (the run folder is only read) from the run's own training
images with simulated defects, exactly as ``learned.train_head`` now does before saving, and
scores both on the run's test images: image AUROC (maximum of the map smoothed σ 4 px), pixel
AUROC and AU-PRO at the ground truth's resolution, as test.py computes them.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils import quiet_tensorflow  # noqa: E402

quiet_tensorflow()

import data  # noqa: E402
import inference  # noqa: E402
import learned  # noqa: E402
import metrics  # noqa: E402
import resmaps  # noqa: E402
import runs  # noqa: E402


def get_parser():
    """Command-line options of the settling benchmark."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="finished run folders with a learned head")
    p.add_argument("--seed", type=int, default=1, help="seed of the settling batches")
    return p


def scores(model, head, images, kept, masks):
    """(image AUROC, pixel AUROC, AU-PRO) of the head's maps, smoothed σ 4 px."""
    _, maps = learned.learned_maps(model, head, images, 8)
    smoothed = resmaps.smooth(maps, 4.0)
    labels = np.array([p.parent.name != data.GOOD for p in kept], int)
    full = [inference.resize_map(m, data.image_size(p)) for m, p in zip(smoothed, kept)]
    return (
        metrics.image_auroc(labels, [m.max() for m in smoothed]),
        metrics.pixel_auroc(full, masks),
        metrics.au_pro(full, masks),
    )


def main(argv=None):
    """Print one row per run and statistics."""
    args = get_parser().parse_args(argv)
    print("| run | head statistics | image AUROC | pixel AUROC | AU-PRO |\n|---|---|---|---|---|")
    for folder in args.runs:
        run = runs.find_run(folder)
        model = run.load_model(keras=True)  # the head's training batches call it on tensors
        items = data.list_test_images(run.class_dir)
        images, kept = data.load_images([p for p, _, _ in items], run.color, run.shape)
        mask_of = {Path(p): m for p, _, m in items}
        masks = [
            data.load_mask(mask_of[p], data.image_size(p)) if mask_of[p] else np.zeros(data.image_size(p)[::-1], bool)
            for p in kept
        ]
        train, _ = data.load_images(run.training_paths(), run.color, run.shape)
        patch = run.setup.patch or learned.OBJECT_HEAD_PATCH
        rng = np.random.default_rng(args.seed)

        reconstruct = learned.traced_reconstruction(model)  # as train_head reconstructs its batches

        def draw(train=train, patch=patch, rng=rng, model=model, reconstruct=reconstruct):
            return learned.training_batch(model, train, patch, rng, reconstruct=reconstruct)

        for name in ("as trained", "settled"):
            head = run.load_head(keras=True)  # a fresh Keras head: settling changes its statistics
            if name == "settled":
                learned.settle_batch_norm(head, draw)
            image, pixel, pro = scores(model, head, images, kept, masks)
            print(f"| {folder} | {name} | {image:.3f} | {pixel:.3f} | {pro:.3f} |", flush=True)


if __name__ == "__main__":
    main()
