"""Real-data benchmark: train on MVTec AD ``bottle`` and report the field's metrics.

    .venv/bin/python bench/bench_bottle.py --config mvtec:ssim mvtec:l2 [--size 128] [--epochs N]

For each ``architecture:loss`` configuration: trains on ``../shared/data/mvtec_real/bottle``
(read only; never copied into the repo), picks the threshold with ``validate.py``'s code on
the held-back good images, then runs labelled testing and reports image AUROC, pixel
AUROC, AU-PRO (FPR ≤ 0.3), TPR/TNR at the validated threshold, training time and the time
the maps take per test image (loading, every pass, baseline), next to the published
autoencoders. ``--run PATH`` re-evaluates an existing run instead of
training. Results are appended to ``bench/results/bottle.jsonl`` and printed as a table.
"""

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from utils import UserError, quiet_tensorflow, run_cli  # noqa: E402

quiet_tensorflow()

import data  # noqa: E402
import detector  # noqa: E402
import evaluation  # noqa: E402
import inference  # noqa: E402
import methods  # noqa: E402
import runs  # noqa: E402
import settings  # noqa: E402
import training  # noqa: E402
import validation  # noqa: E402
from settings import MapRequest, TrainConfig  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "mvtec_real" / "bottle"
PUBLISHED = {  # bottle, full resolution: Bergmann et al. CVPR 2019 (pixel ROC AUC), CVPR 2020 (AU-PRO 0.3)
    "AE-SSIM (published)": {"pixel_auroc": 0.93, "au_pro": 0.834},
    "AE-L2 (published)": {"pixel_auroc": 0.86, "au_pro": 0.910},
}


def get_parser():
    """Command-line options of the bottle benchmark."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA), help="class folder in MVTec layout")
    p.add_argument("--config", nargs="*", default=["mvtec:ssim", "mvtec:l2"], help="architecture:loss pairs to train")
    p.add_argument("--run", nargs="*", default=[], help="existing run folders to evaluate instead of training")
    p.add_argument("--size", type=int, default=128, help="training size (px); metrics at the images' own 256 px")
    p.add_argument("--color", default="rgb", choices=("rgb", "grayscale"))
    p.add_argument("--batch", type=int, default=TrainConfig.default("batch"), help="training batch size")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: from --instances)")
    p.add_argument("--instances", type=int, default=10000)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--flip", action="store_true")
    p.add_argument(
        "--rotation",
        type=float,
        default=settings.DEFAULT_ROTATION,
        help="largest random rotation (degrees) in augmentation",
    )
    p.add_argument("--area", type=int, default=None, help="minimum defect area (px at model size); default size²/800")
    p.add_argument(
        "--methods", nargs="*", default=None, help="residual methods to evaluate (default: the loss's family)"
    )
    p.add_argument(
        "--smooth", nargs="*", type=float, default=[detector.DEFAULT_SMOOTH], help="smoothing sigmas to evaluate"
    )
    p.add_argument(
        "--scales",
        nargs="*",
        type=int,
        default=[inference.DEFAULT_SCALES],
        help="numbers of image scales the residual map is averaged over, to evaluate",
    )
    p.add_argument(
        "--passes",
        nargs="*",
        type=int,
        default=[inference.DEFAULT_PASSES],
        help="numbers of reconstruction passes (repaint what was found, reconstruct again) to evaluate",
    )
    p.add_argument(
        "--baseline",
        nargs="*",
        choices=("on", "off"),
        default=["on"],
        help="evaluate with and/or without subtracting the training images' usual residual (the baseline)",
    )
    p.add_argument(
        "--denoise",
        type=float,
        nargs="?",
        const=settings.DEFAULT_DENOISE,
        default=0.0,
        metavar="SHARE",
        help=f"train as a denoising autoencoder: share of inputs with a pasted patch (bare: {settings.DEFAULT_DENOISE})",
    )
    p.add_argument("--tag", default="", help="label added to each configuration in the table")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "runs"), help="where run folders go")
    return p


def _evaluate(run_dir, area, names, smooths, baselines, scales_list, passes_list, train_seconds, label):
    rows = []
    for method, baseline, scales, passes in itertools.product(names, baselines, scales_list, passes_list):
        request = MapRequest(method, baseline, scales, passes)
        val, _ = validation.validate(run_dir, area, request)
        # Inference cost of these maps (the calibration on training images is cached by now).
        opened = detector.Detector.open_maps(run_dir, request)
        paths = [p for p, _, _ in data.list_test_images(opened.run.class_dir)]
        started = time.perf_counter()
        opened.maps(paths)
        ms_per_image = 1000 * (time.perf_counter() - started) / len(paths)
        for smooth in smooths:
            result, scores, table, _ = evaluation.test_run(run_dir, request, smooth=smooth)
            row = {
                "config": label,
                "method": method,
                "baseline": baseline,
                "scales": scales,
                "passes": passes,
                "smooth": smooth,
                "min_area": area,
                "threshold": val["threshold"],
                "image_auroc": scores["image_auroc"],
                "pixel_auroc": scores["pixel_auroc"],
                "au_pro": scores["au_pro"],
                "tpr": result["tpr"],
                "tnr": result["tnr"],
                "train_seconds": train_seconds,
                "ms_per_image": ms_per_image,
                "run": str(run_dir),
                "per_defect_type": scores["per_defect_type"],
            }
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "per_defect_type"}), flush=True)
    return rows


def bench(args):
    """Train/evaluate every configuration; append rows to bottle.jsonl and print a table."""
    data_dir = Path(args.data)
    if not (data_dir / "train" / "good").is_dir():
        raise UserError(
            f"bottle data not found at {data_dir} (expected ../shared/data/mvtec_real/bottle beside the repo)"
        )
    area = args.area or max(1, args.size * args.size // 800)
    baselines = [b == "on" for b in args.baseline]
    rows = []
    for run_dir in args.run:
        setup = runs.read_setup(run_dir)  # any run's setup.json, in the current format
        label = f"{setup.architecture}:{setup.loss}@{setup.size}"
        chosen = args.methods or [methods.default_for_loss(setup.loss)]
        rows += _evaluate(
            run_dir,
            args.area or max(1, setup.size**2 // 800),
            chosen,
            args.smooth,
            baselines,
            args.scales,
            args.passes,
            setup.training_seconds,
            label + args.tag,
        )
    for config in [] if args.run else args.config:
        arch, loss = config.split(":")
        train_config = TrainConfig(
            directory=str(data_dir),
            architecture=arch,
            batch=args.batch,
            loss=loss,
            color=args.color,
            instances=args.instances,
            tag=f"bench {config}",
            size=args.size,
            epochs=args.epochs,
            lr=args.lr,
            seed=args.seed,
            val_split=0.1,
            patience=args.patience,
            no_augment=False,
            rotation=args.rotation,
            flip=args.flip,
            weights="none",
            out=args.out,
            denoise=args.denoise,
            mode="object",  # this benchmark measures the plain object-mode autoencoder (round 1's setting)
            head_steps=0,
            strategy="one",
        )
        started = time.time()
        run_dir, setup = training.new_run(train_config)
        seconds = time.time() - started
        print(f"{config}: trained {setup['epochs_run']} epochs in {seconds:.0f} s -> {run_dir}", flush=True)
        rows += _evaluate(
            run_dir,
            area,
            args.methods or [methods.default_for_loss(loss)],
            args.smooth,
            baselines,
            args.scales,
            args.passes,
            seconds,
            f"{config}@{args.size}" + (f"+denoise{args.denoise:g}" if args.denoise else "") + args.tag,
        )
    out = ROOT / "bench" / "results" / "bottle.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    print(
        "| config | residual | scales | passes | smooth | image AUROC | pixel AUROC | AU-PRO 0.3 | TPR | TNR | train s | maps ms/image |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        f = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        residual = r["method"] + (" − baseline" if r["baseline"] else "")
        print(
            f"| {r['config']} | {residual} | {r.get('scales', 1)} | {r.get('passes', 1)} | {r['smooth']:g} | {f(r['image_auroc'])} | {f(r['pixel_auroc'])} | "
            f"{f(r['au_pro'])} | {f(r['tpr'])} | {f(r['tnr'])} | {r['train_seconds'] or 0:.0f} | {r['ms_per_image']:.0f} |"
        )
    for name, ref in PUBLISHED.items():
        print(f"| {name} | | | | | | {ref['pixel_auroc']:.2f} | {ref['au_pro']:.3f} | | | | |")
    print(f"\nrows appended to {out}")


def main(argv=None):
    bench(get_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(run_cli(main))
