"""Classify test images with a trained run (threshold + minimum area), score them, write results.

    python3 test.py -p saved_models/<...run...>                  # threshold/area from validate.py
    python3 test.py -p RUN -t 0.35 -a 50 --save                  # explicit, with masks and overlays
    python3 test.py -p RUN --images my_new_images/               # unlabelled images: predictions only

Labelled mode reads ``<class>/test/<good|defect>/`` of the run's dataset (and the
ground-truth masks) and writes one folder, ``RUN/test/<method>/a<AREA>_t<THRESHOLD>/``:
classification.csv, test_result.json, ``metrics.json`` with image AUROC, pixel AUROC and
AU-PRO (FPR ≤ 0.3), ROC and PRO curve plots, anomaly maps as float32 TIFF in
``anomaly_maps/<defect>/<stem>.tiff``, with --save masks and overlays, and ``report.html``.
The folder is written whole and renamed into place at the end: an interrupted run leaves the
earlier result as it was. Predictions (--images) end with ``report.html`` in their folder
too: one page with the run, the metrics and every image.
"""

import argparse
import sys

from utils import HelpFormatter, UserError, quiet_tensorflow, run_cli, stop_on_ctrl_c

stop_on_ctrl_c(__name__)  # Ctrl-C from here on: one line and exit code 130, never a traceback
quiet_tensorflow()

import detector  # noqa: E402
import evaluation  # noqa: E402
import inference  # noqa: E402
import metrics  # noqa: E402
import report  # noqa: E402
import runs  # noqa: E402
import sharding  # noqa: E402
from settings import MapRequest  # noqa: E402


def get_parser():
    """Command-line options of ``test.py``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    runs.add_run_arguments(parser)
    parser.add_argument(
        "-t",
        "--threshold",
        type=float,
        default=None,
        help="residual threshold (default: from the newest validation result)",
    )
    parser.add_argument(
        "-a",
        "--area",
        type=int,
        default=None,
        help="minimum defect area in pixels at the model's size (default: from the validation result)",
    )
    parser.add_argument(
        "--smooth",
        type=float,
        default=detector.DEFAULT_SMOOTH,
        help="Gaussian sigma (px, model resolution) applied to residual maps for the anomaly maps and "
        "pixel AUROC/AU-PRO (0: none); verdicts and image scores use the raw map the threshold was chosen on",
    )
    parser.add_argument("--save", action="store_true", help="also write each image's defect mask PNG and overlay PNG")
    parser.add_argument(
        "--images",
        default=None,
        help="folder of unlabelled images (searched recursively): write predictions only (default: labelled "
        "testing of the run's <class>/test/)",
    )
    parser.add_argument(
        "--overlays",
        choices=evaluation.OVERLAYS,
        default="all",
        help="with --images: which images get an overlay figure (input, reconstruction, map, outline); "
        "a figure costs about 10x the CPU of mapping a 128-px image, so 'defective' or 'none' suits "
        "large folders (every image still gets its mask and its row in predictions.csv)",
    )
    parser.add_argument(
        "--out", default=None, help="with --images or --merge: output folder (default: inside the run folder)"
    )
    parser.add_argument(
        "--shard",
        default=None,
        metavar="K/N",
        help="with --images: score only the K-th of N disjoint parts of the folder (its sorted list cut in N), "
        "e.g. one part per machine; join the parts with --merge (default: the whole folder)",
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        default=None,
        metavar="PART",
        help="join the predictions.csv of every --shard part (their output folders) into one (default: no merge)",
    )
    return parser


def main(argv=None):
    """Parse arguments, run labelled testing or predictions, print a summary and the output folder."""
    args = get_parser().parse_args(argv)
    if args.out and not (args.images or args.merge):
        raise UserError(
            "--out only applies with --images or --merge (labelled results are written inside the run folder)"
        )
    if args.shard and not args.images:
        raise UserError("--shard only applies with --images")
    if args.overlays != "all" and not args.images:
        raise UserError("--overlays only applies with --images (labelled tests draw overlays with --save)")
    if args.merge:
        if args.images:
            raise UserError("--merge joins finished --shard parts: give it without --images")
        frame, out = sharding.merge(args.merge, args.out, args.path)
        print(
            f"{len(frame)} images from {len(args.merge)} parts: {int((frame['verdict'] == 'defective').sum())} defective, "
            f"{int((frame['verdict'] == 'good').sum())} good"
        )
        print(out)
        return
    maps = MapRequest.from_args(args)
    if args.images:
        frame, out = evaluation.predict_images(
            args.path, args.images, maps, args.threshold, args.area, args.smooth, args.out, args.shard, args.overlays
        )
        print(
            f"{len(frame)} images: {int((frame['verdict'] == 'defective').sum())} defective, "
            f"{int((frame['verdict'] == 'good').sum())} good"
        )
        print(f"report: {report.write_report(out, args.path)}")
        print(out)
        return
    result, scores, table, out = evaluation.test_run(
        args.path, maps, args.threshold, args.area, args.smooth, args.save, report_page=True
    )
    options = inference.MapOptions.from_record(result, "this test result")
    print(
        f"{options.describe(result['method'])}, threshold "
        f"{result['threshold']:.6f}, min area {result['min_area']} px ({result['threshold_source']})"
    )
    level = f"{result['confidence']:.0%}"
    columns = {"rate": "detection rate", "low": f"{level} CI low", "high": "high"}
    print(table.rename(columns=columns).to_string(float_format=lambda v: f"{v:.2f}"))
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    ci = lambda v: "" if v is None else f" ({metrics.interval_text(v)})"  # noqa: E731
    print(
        f"TPR {fmt(result['tpr'])}{ci(result['tpr_interval'])}  TNR {fmt(result['tnr'])}{ci(result['tnr_interval'])}  "
        f"balanced accuracy {fmt(result['balanced_accuracy'])}  "
        f"image AUROC {fmt(scores['image_auroc'])}{ci(scores.get('image_auroc_interval'))}  pixel AUROC {fmt(scores.get('pixel_auroc'))}  "
        f"AU-PRO(0.3) {fmt(scores.get('au_pro'))}"
    )
    for note in result["notes"] + scores.get("notes", []):
        print(f"note: {note}")
    print(f"report: {out / report.PAGE}")  # written inside the result, before its commit
    print(out)


if __name__ == "__main__":
    sys.exit(run_cli(main, parser=get_parser))
