"""Export a validated run as a self-contained detector: SavedModel, ONNX or TFLite.

    python3 export.py -p saved_models/<...run...>                       # SavedModel in RUN/export/saved_model
    python3 export.py -p RUN --format onnx --out detector_onnx/
    python3 predict_exported.py RUN/export/saved_model part1.png part2.png   # anywhere, without this repo

The artefact takes uint8 images of any size and returns the anomaly map, the image score
and the pixels above the run's validated threshold, with the whole map pipeline of
test.py inside; predict_exported.py (copied beside it) adds the minimum-area filter.
Needs a validation result (validate.py) and uses the newest one, or the one for -a.
"""

import argparse
import sys

from utils import HelpFormatter, quiet_tensorflow, run_cli, stop_on_ctrl_c

stop_on_ctrl_c(__name__)  # Ctrl-C from here on: one line and exit code 130, never a traceback
quiet_tensorflow()  # before anything imports TensorFlow (exporting imports it only to build a graph)


def get_parser():
    """Command-line options of ``export.py``."""
    import exporting  # light: TensorFlow is imported when a graph is built
    import methods

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument(
        "-p", "--path", required=True, help="run folder written by train.py (or the .keras model inside it)"
    )
    parser.add_argument(
        "--format",
        default="saved_model",
        help=f"artefact format: {', '.join(exporting.FORMATS)} (default: %(default)s)",
    )
    parser.add_argument("--out", default=None, help="output folder (default: RUN/export/<format>)")
    parser.add_argument(
        "--method",
        choices=methods.names(exportable=True),
        default=None,
        help="residual map of the validation result to export (default: the run's default method)",
    )
    parser.add_argument(
        "-a",
        "--area",
        type=int,
        default=None,
        help="use the validation result for this minimum area (default: the newest)",
    )
    parser.add_argument(
        "--smooth",
        type=float,
        default=None,
        help="Gaussian sigma (px) of the anomaly map and score, as test.py's --smooth (default 4)",
    )
    return parser


def main(argv=None):
    """Parse arguments, export, print what was baked in and the output folder."""
    import exporting

    args = get_parser().parse_args(argv)
    import inference

    out, meta = exporting.export_run(args.path, args.format, args.out, args.method, args.area, args.smooth)
    options = inference.MapOptions.from_record(meta, "the export's detector.json")
    fusion = f" ({options.fusion.describe()})" if options.fusion else ""
    check = meta["check"]
    print(
        f"{meta['format']}: {options.describe(meta['method'])}{fusion}, threshold {meta['threshold']:.6f}, "
        f"min area {meta['min_area']} px (from {meta['validation_result']['path']}); checked in {check['runtime']}: "
        f"max abs difference {check['max_abs_difference_vs_graph']:.1e} (tolerance {check['tolerance']:.1e})"
    )
    print(out)


if __name__ == "__main__":
    sys.exit(run_cli(main, parser=get_parser))
