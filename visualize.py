"""Show the stages of chosen images of a run: input → reconstruction → residual map →
thresholded mask (→ ground truth), one figure per image in ``RUN/visualize/``.

    python3 visualize.py -p saved_models/<...run...> -i test/broken_large/000.png test/good/003.png

The figures themselves live in figures.py; this is only their command line.
"""

# Re-exported for modules that still draw through ``visualize`` (issue 11 moves them to figures).
from figures import (  # noqa: F401
    DPI,
    plot_loss_curve,
    plot_overlay,
    plot_pro_curve,
    plot_roc_curves,
    plot_stages,
    save_mask_png,
)


def get_parser():
    """Command-line options of ``visualize.py``."""
    import argparse

    import runs

    parser = argparse.ArgumentParser(
        description="Show the stages input → reconstruction → residual map → thresholded mask (→ ground truth) "
        "for chosen images of a run; figures go to RUN/visualize/."
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
    from pathlib import Path

    from utils import quiet_tensorflow

    quiet_tensorflow()
    import data
    import inference
    import runs

    args = get_parser().parse_args(argv)
    run = runs.find_run(args.path)
    method = run.method(args.method)
    threshold, min_area, options, _ = inference.resolve_threshold(
        run, method, args.threshold, args.area, args.baseline, args.scales, args.passes
    )
    paths = [inference.resolve_sample(run, name, run.class_dir, what="image") for name in args.images]
    seen = inference.inspect(run, paths, method, args.batch, options=options)
    masks = inference.defect_masks(seen.maps, threshold, min_area)
    out_dir = run.dir / "visualize"
    for i, path in enumerate(seen.paths):
        gt_path = inference.ground_truth_for(run, path)
        gt = inference.resize_map(data.load_mask(gt_path, data.image_size(path)), run.shape[::-1]) if gt_path else None
        name = data.relative_to(path, run.class_dir).replace("/", "_").replace("..", "up")
        plot_stages(
            seen.images[i],
            seen.recons[i],
            seen.maps[i],
            masks[i],
            out_dir / f"{Path(name).stem}_{method}.png",
            gt_mask=gt,
            threshold=threshold,
            min_area=min_area,
            title=str(path),
            method=method,
        )
    print(out_dir)


if __name__ == "__main__":
    import sys

    from utils import run_cli

    sys.exit(run_cli(main))
