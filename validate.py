"""Pick the residual-map threshold for a minimum defect area, from the run's held-back good
images and synthetic defects painted into copies of them (never test images).

    python3 validate.py -p saved_models/<...run...> -a 50 [--method ssim]

Every image has a peak: the highest threshold at which it still holds a defect region of at
least AREA pixels. By default (the balanced policy) the threshold finds the most painted copies
while passing the most validation images, at most 10% of them flagged. The fused map's weights
are chosen on the same copies first. Writes ``RUN/validation/<method>/a<AREA>/``
(validation_result.json, threshold_search.png) and prints that folder last.
Short flags here: -a is --area (in train.py it is --architecture).
"""

import argparse
import sys

from utils import HelpFormatter, UserError, quiet_tensorflow, run_cli, stop_on_ctrl_c

stop_on_ctrl_c(__name__)  # Ctrl-C from here on: one line and exit code 130, never a traceback
quiet_tensorflow()  # before anything imports TensorFlow; the heavy imports wait until main has parsed

import runs  # noqa: E402  (light: the shared options)
from settings import (  # noqa: E402
    DEFAULT_AREA_SHARE,
    DEFAULT_FUSION_RULE,
    FUSION_RULES,
    MIN_AREA_FLOOR,
    MapRequest,
    default_min_area,
)


def get_parser():
    """Command-line options of ``validate.py``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    runs.add_run_arguments(parser)
    parser.add_argument(
        "-a",
        "--area",
        type=int,
        default=None,
        metavar="AREA",
        help="minimum defect area in pixels at the model's size (default: "
        f"1/{round(1 / DEFAULT_AREA_SHARE)} of the whole image's pixels, at least "
        f"{MIN_AREA_FLOOR}: {default_min_area((128, 128))} px "
        "for a 128-px square)",
    )
    parser.add_argument(
        "--fusion",
        choices=FUSION_RULES,
        default=DEFAULT_FUSION_RULE,
        help="how the fused map weighs its component maps: 'equal' (every map that finds the painted defects "
        "clearly better than chance (image AUROC above 0.55) weighs the same) or 'proxy' (the weights that score best on the painted copies)",
    )
    parser.add_argument(
        "--false-alarms",
        type=float,
        default=None,
        metavar="RATE",
        help="threshold policy: the lowest threshold that flags at most this share of the validation images "
        "(0: zero false alarms, the policy of earlier versions); default: the balanced policy, the most "
        "painted copies found with at most 10%% of the validation images flagged",
    )
    return parser


def main(argv=None):
    """Parse arguments, validate, print the threshold and where it was written."""
    args = get_parser().parse_args(argv)
    if args.false_alarms is not None and not 0 <= args.false_alarms < 1:
        raise UserError(f"--false-alarms must be a share in [0, 1), got {args.false_alarms}")
    import inference
    import validation
    from metrics import interval_text

    result, out = validation.validate(args.path, args.area, MapRequest.from_args(args), args.false_alarms, args.fusion)
    options = inference.MapOptions.from_record(result, "this validation result")
    print(
        f"{options.describe(result['method'])}: threshold for minimum area {result['min_area']} px: "
        f"{result['threshold']:.6f}"
    )
    if options.fusion is not None:
        print(f"fused map: {options.fusion.describe()} (weights chosen on the painted copies)")
        usual = result.get("usual_search")
        if usual:
            print(
                f"usual maps {'subtracted' if usual['usual'] else 'not subtracted'}: proxy objective "
                f"{usual['with']['objective']:.3f} with them, {usual['without']['objective']:.3f} without"
            )
    passed = result.get("validation_tnr")
    found = result.get("proxy_tpr")
    ci = lambda v: f" ({interval_text(v, share=True)})" if v else ""  # noqa: E731
    print(
        (f"{passed:.0%}{ci(result.get('validation_tnr_interval'))} of " if passed is not None else "")
        + f"the {result['n_images']} validation images pass (largest region at the threshold "
        f"{result['largest_area_at_threshold']} px)"
        + (
            f", {found:.0%}{ci(result.get('proxy_tpr_interval'))} of their painted copies are found"
            if found is not None
            else ""
        )
        + (f"; policy {result['policy']}" if result.get("policy") else "")
    )
    if result.get("proxy"):
        p = result["proxy"]
        print(
            f"proxy on {p['n_painted']} painted copies of the validation images: image AUROC {p['image_auroc']:.3f}, "
            f"pixel AUROC {p['pixel_auroc']:.3f}, AU-PRO {p['au_pro']:.3f}, found at this threshold {p['detected']:.2f}"
        )
        families = p.get("families") or {}
        if families:
            print("found per defect family: " + ", ".join(f"{f} {v['detected']:.2f}" for f, v in families.items()))
    print(out)


if __name__ == "__main__":
    sys.exit(run_cli(main, parser=get_parser))
