"""Pick the residual-map threshold for a minimum defect area, on held-back good images only.

    python3 validate.py -p saved_models/<...run...> -a 50 [--method ssim]

The threshold is the smallest one at which no validation image (the run's own
``validation_files.txt``, never test images) has a defect region of at least MIN_AREA
pixels: zero false alarms on defect-free images. Writes
``RUN/validation/<method>/a<MIN_AREA>/validation_result.json`` and a plot.
"""

import argparse
import sys

from utils import quiet_tensorflow, run_cli

quiet_tensorflow()

import inference  # noqa: E402
import runs  # noqa: E402
import validation  # noqa: E402
from settings import MapRequest  # noqa: E402


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


def main(argv=None):
    """Parse arguments, validate, print the threshold and where it was written."""
    args = get_parser().parse_args(argv)
    result, out = validation.validate(args.path, args.area, MapRequest.from_args(args))
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
