"""Plots that help choose the minimum defect area, from the run's validation images only.

    python3 finetune.py -p saved_models/<...run...> -v good/000.png -t broken_large/000.png -r 50

Writes into ``RUN/finetune/<method>/``: the number of defect regions against the threshold;
mean and standard deviation of region area against the threshold; the distribution of
region areas at threshold 0 (x range up to ``-r``) and for increasing thresholds; a sample
validation image and a sample test image beside their reconstructions and residual maps.
Pick the minimum area above the areas that noise regions on good images reach, then run
``validate.py -a AREA``. The test image is only shown, never used to choose anything.
"""

import argparse
import sys

import numpy as np

from utils import UserError, quiet_tensorflow, run_cli

quiet_tensorflow()

import data  # noqa: E402
import figures  # noqa: E402
import inference  # noqa: E402
import resmaps  # noqa: E402
import runs  # noqa: E402

N_THRESHOLDS = 60
N_DISTRIBUTIONS = 8


def get_parser():
    """Command-line options of ``finetune.py``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    runs.add_run_arguments(parser)
    parser.add_argument(
        "-v",
        "--val-image",
        default=None,
        help="sample validation image, relative to <class>/train/ (e.g. good/000.png); "
        "default: the first of the run's validation images",
    )
    parser.add_argument(
        "-t",
        "--test-image",
        default=None,
        help="sample test image, relative to <class>/test/ (e.g. broken_large/000.png); "
        "default: the first defective test image",
    )
    parser.add_argument(
        "-r", "--range", type=int, default=50, help="largest region area (px) shown in the area distributions"
    )
    return parser


def finetune(
    path, val_image=None, test_image=None, max_area=50, method=None, batch=16, baseline=None, scales=None, passes=None
):
    """Compute region statistics over thresholds on validation images and write the plots."""
    if max_area < 1:
        raise UserError(f"-r/--range must be a positive number of pixels, got {max_area}")
    run = runs.find_run(path)
    method = run.method(method)
    val_paths = run.validation_paths()
    train_dir, test_dir = run.class_dir / "train", run.class_dir / "test"
    val_sample = (
        inference.resolve_sample(run, val_image, train_dir, allowed=val_paths, what="validation image")
        if val_image
        else val_paths[0]
    )
    if test_image:
        test_sample = inference.resolve_sample(run, test_image, test_dir, what="test image")
    else:
        # The test sample is only shown: without a test folder there is simply none.
        items = data.list_test_images(run.class_dir) if test_dir.is_dir() else []
        defective = [p for p, d, _ in items if d != data.GOOD]
        test_sample = defective[0] if defective else None
    options = inference.MapOptions.from_args(baseline, scales, passes, method, run.mode)
    seen = inference.inspect(run, val_paths, method, batch, progress="validation images", options=options)
    thresholds = np.linspace(0.0, float(seen.maps.max()), N_THRESHOLDS)
    n_regions, mean_area, std_area, areas_at = [], [], [], {}
    for t in thresholds:
        areas = np.concatenate([resmaps.label_regions(m, t)[1] for m in seen.maps])
        n_regions.append(areas.size)
        mean_area.append(areas.mean() if areas.size else np.nan)
        std_area.append(areas.std() if areas.size else np.nan)
        areas_at[float(t)] = areas
    shown = {float(t): areas_at[float(t)] for t in thresholds[:: max(1, N_THRESHOLDS // N_DISTRIBUTIONS)]}
    out_dir = run.dir / "finetune" / method
    with runs.StagedOutput(
        out_dir, {"kind": "finetune", "model_sha256": runs.model_id(run.model_path)}, archive=True
    ) as out:
        figures.plot_regions_vs_threshold(
            thresholds, np.array(n_regions), out / "regions_vs_threshold.png", method=method
        )
        figures.plot_area_stats_vs_threshold(
            thresholds, np.array(mean_area), np.array(std_area), out / "area_mean_std_vs_threshold.png", method=method
        )
        figures.plot_area_distribution(
            areas_at[float(thresholds[0])],
            max_area,
            out / "area_distribution_t0.png",
            threshold=float(thresholds[0]),
            method=method,
        )
        figures.plot_area_distributions(shown, max_area, out / "area_distributions.png", method=method)
        i = [p.resolve() for p in seen.paths].index(val_sample.resolve())
        figures.plot_sample(
            seen.images[i],
            seen.recons[i],
            seen.maps[i],
            out / "sample_validation.png",
            title=f"validation image {data.relative_to(val_sample, train_dir)}",
            method=method,
        )
        if test_sample is not None:
            sample = inference.inspect(run, [test_sample], method, batch, options=options)
            figures.plot_sample(
                sample.images[0],
                sample.recons[0],
                sample.maps[0],
                out / "sample_test.png",
                title=f"test image {data.relative_to(test_sample, test_dir)} (shown only)",
                method=method,
            )
    return out_dir


def main(argv=None):
    """Parse arguments, write the plots, print where they are."""
    args = get_parser().parse_args(argv)
    out = finetune(
        args.path,
        args.val_image,
        args.test_image,
        args.range,
        args.method,
        args.batch,
        args.baseline,
        args.scales,
        args.passes,
    )
    print(f"finetune plots written; choose a minimum area, then: python3 validate.py -p {args.path} -a AREA")
    print(out)


if __name__ == "__main__":
    sys.exit(run_cli(main))
