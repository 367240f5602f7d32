"""Plots that help choose the minimum defect area, from the run's validation images only.

    python3 finetune.py -p saved_models/<...run...> -v good/000.png -t broken_large/000.png -r 50

Writes into ``RUN/finetune/<method>/``: the number of defect regions against the threshold;
mean and standard deviation of region area against the threshold; the distribution of
region areas at threshold 0 (x range up to ``-r``) and for increasing thresholds; a sample
validation image and a sample test image beside their reconstructions and residual maps.
Pick the minimum area above the areas that noise regions on good images reach, then run
``validate.py -a AREA``. The test image is only shown, never used to choose anything.
Short flags here: -t is --test-image (in test.py and visualize.py it is --threshold).
"""

import argparse
import sys

from utils import HelpFormatter, quiet_tensorflow, run_cli, stop_on_ctrl_c

stop_on_ctrl_c(__name__)  # Ctrl-C from here on: one line and exit code 130, never a traceback
quiet_tensorflow()  # before anything imports TensorFlow; the heavy imports wait until main has parsed

import runs  # noqa: E402  (light: the shared options)
from settings import MapRequest  # noqa: E402


def get_parser():
    """Command-line options of ``finetune.py``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
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


def main(argv=None):
    """Parse arguments, write the plots, print where they are."""
    args = get_parser().parse_args(argv)
    import finetuning

    out = finetuning.finetune(args.path, args.val_image, args.test_image, args.range, MapRequest.from_args(args))
    print(f"finetune plots written; choose a minimum area, then: python3 validate.py -p {args.path} -a AREA")
    print(out)


if __name__ == "__main__":
    sys.exit(run_cli(main, parser=get_parser))
