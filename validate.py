"""Pick the residual-map threshold for a minimum defect area, on held-back good images only.

    python3 validate.py -p saved_models/<...run...> -a 50 [--method ssim]

The threshold is the smallest one at which no validation image (the run's own
``validation_files.txt``, never test images) has a defect region of at least MIN_AREA
pixels: zero false alarms on defect-free images. Writes
``RUN/validation/<method>/a<MIN_AREA>/validation_result.json`` and a plot.
"""

import argparse
import sys

import numpy as np

from utils import UserError, quiet_tensorflow, run_cli

quiet_tensorflow()

import evaluation  # noqa: E402
import figures  # noqa: E402
import inference  # noqa: E402
import resmaps  # noqa: E402
import runs  # noqa: E402

CURVE_POINTS = 120


def get_parser():
    """Command-line options of ``validate.py``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    runs.add_run_arguments(parser)
    parser.add_argument(
        "-a",
        "--area",
        type=int,
        default=None,
        help="minimum defect area in pixels at the model's size (default: 1/800 of the whole image's "
        "pixels, at least 4: 20 px for a 128-px square)",
    )
    return parser


def validate(path, min_area, method=None, batch=16, baseline=None, scales=None, passes=None):
    """Compute, save and return the validation result for ``min_area``."""
    inference.check_area_threshold(min_area=min_area)
    run = runs.find_run(path)
    if min_area is None:
        min_area = inference.default_min_area(run.shape)
    method = run.method(method)
    options = inference.MapOptions.from_args(baseline, scales, passes, method, run.mode)
    seen = inference.inspect(run, run.validation_paths(), method, batch, progress="validation images", options=options)
    if not np.isfinite(seen.maps).all():
        raise UserError(
            f"the residual maps of {run.model_path} are not finite (a diverged model?): no threshold can be chosen"
        )
    threshold = resmaps.min_threshold_for_area(seen.maps, min_area)
    largest, _ = resmaps.region_stats(seen.maps, threshold)
    result = {
        "min_area": int(min_area),
        "threshold": threshold,
        "method": method,
        **options.record(),
        "n_images": len(seen.paths),
        "largest_area_at_threshold": int(largest.max()),
        "validation_files": [str(p) for p in seen.paths],
        "resmap_range": [float(seen.maps.min()), float(seen.maps.max())],
        "model": str(run.model_path),
        **run.model_record(),  # test.py refuses this threshold for other weights
    }
    result["proxy"] = evaluation.proxy_scores(run, method, options, seen.images, seen.maps, threshold, min_area, batch)
    grid = np.unique(np.concatenate([np.linspace(seen.maps.min(), seen.maps.max(), CURVE_POINTS), [threshold]]))
    curve = resmaps.threshold_curve(seen.maps, grid)
    identity = {"kind": "validation", "model_sha256": result["model_sha256"]}
    with runs.StagedOutput(runs.validation_dir(run.dir, method, min_area), identity, archive=True) as out:
        runs.write_json(out / "validation_result.json", result)
        figures.plot_threshold_search(grid, curve, threshold, min_area, out / "threshold_search.png", method=method)
    return result, runs.validation_dir(run.dir, method, min_area)


def main(argv=None):
    """Parse arguments, validate, print the threshold and where it was written."""
    args = get_parser().parse_args(argv)
    result, out = validate(args.path, args.area, args.method, args.batch, args.baseline, args.scales, args.passes)
    options = inference.MapOptions.from_record(result, "this validation result")
    print(
        f"{options.describe(result['method'])}: threshold for minimum area {result['min_area']} px: {result['threshold']:.6f} "
        f"({result['n_images']} validation images, largest region at it {result['largest_area_at_threshold']} px)"
    )
    if result.get("proxy"):
        p = result["proxy"]
        print(
            f"proxy on {p['n_painted']} validation images with painted defects: image AUROC {p['image_auroc']:.3f}, "
            f"pixel AUROC {p['pixel_auroc']:.3f}, AU-PRO {p['au_pro']:.3f}, found at this threshold {p['detected']:.2f}"
        )
    print(out)


if __name__ == "__main__":
    sys.exit(run_cli(main))
