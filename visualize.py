"""Show the stages of chosen images of a run: input → reconstruction → residual map →
thresholded mask (→ ground truth), one figure per image in ``RUN/visualize/``.

    python3 visualize.py -p saved_models/<...run...> -i test/broken_large/000.png test/good/003.png

The figures themselves live in figures.py, the work in :func:`evaluation.stage_figures`;
this is only their command line.
"""

import argparse
import sys

from utils import HelpFormatter, quiet_tensorflow, run_cli, stop_on_ctrl_c

stop_on_ctrl_c(__name__)  # Ctrl-C from here on: one line and exit code 130, never a traceback
quiet_tensorflow()  # before anything imports TensorFlow; the heavy imports wait until main has parsed

import runs  # noqa: E402  (light: the shared options)
from settings import MapRequest  # noqa: E402


def get_parser():
    """Command-line options of ``visualize.py``."""
    parser = argparse.ArgumentParser(
        description="Show the stages input → reconstruction → residual map → thresholded mask (→ ground truth) "
        "for chosen images of a run; figures go to RUN/visualize/. -t is --threshold and -a --area, as in test.py.",
        formatter_class=HelpFormatter,
    )
    runs.add_run_arguments(parser)
    parser.add_argument(
        "-i",
        "--images",
        nargs="+",
        required=True,
        help="image files (absolute, or relative to the current folder or to the class folder)",
    )
    parser.add_argument(
        "-t", "--threshold", type=float, default=None, help="residual threshold (default: validation result)"
    )
    parser.add_argument(
        "-a", "--area", type=int, default=None, help="minimum defect area in px (default: validation result)"
    )
    return parser


def main(argv=None):
    """Write one stages figure per image into ``RUN/visualize/`` and print the folder."""
    args = get_parser().parse_args(argv)
    import evaluation

    print(evaluation.stage_figures(args.path, args.images, MapRequest.from_args(args), args.threshold, args.area))


if __name__ == "__main__":
    sys.exit(run_cli(main, parser=get_parser))
