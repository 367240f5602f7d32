"""Training throughput: the whole ``fit`` (tf.data pipeline + augmentation) against the
model's bare train step on the same batches, and peak memory.

    .venv/bin/python bench/bench_train.py [--sizes 128 256] [--losses ssim l2] [--architecture mvtec]
        [--precision float32 mixed] [--jit]

Each configuration runs in its own process so its peak resident memory (ru_maxrss) is its
own. Images are random arrays (throughput does not depend on content). ``pipeline
overhead`` = (fit time − bare step time) / bare step time; the target is under 10%.

Every size also gets a **reference row**, measured in the same run: a plain Bergmann CAE
(``-a mvtec``) trained with ``1 − tf.image.ssim`` and nothing else of this suite (no
augmentation, no tf.data: ``train_on_batch`` on arrays), so every figure can be read as a
ratio on the same machine (``× reference`` = fit images/s over the reference's bare
images/s). ``--precision mixed`` computes in bfloat16 (loss and SSIM in float32); ``--jit``
compiles the train step with XLA.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def get_parser():
    """Command-line options of the throughput benchmark."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", type=int, default=[128, 256], help="square image sides (px)")
    p.add_argument("--losses", nargs="+", default=["ssim", "l2"], help="training losses")
    p.add_argument("--architecture", default="mvtec", help="mvtec, mvtec2 or resnet")
    p.add_argument("--color", default="rgb", choices=("rgb", "grayscale"))
    p.add_argument("--batch", type=int, default=8, help="batch size")
    p.add_argument("--images", type=int, default=96, help="images per epoch")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs (after one warm-up epoch)")
    p.add_argument(
        "--precision",
        nargs="+",
        choices=("float32", "mixed"),
        default=["float32"],
        help="compute precision(s) to measure; mixed: bfloat16 layers, float32 loss",
    )
    p.add_argument("--jit", action="store_true", help="also measure each configuration with XLA (jit_compile)")
    p.add_argument("--no-reference", action="store_true", help="skip the reference row (plain CAE + tf.image.ssim)")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: one config as size:loss:precision:jit
    return p


def _reference_loss(y_true, y_pred):
    """1 − tf.image.ssim per image: the plain SSIM loss of the reference row."""
    import tensorflow as tf

    return 1.0 - tf.image.ssim(tf.cast(y_true, tf.float32), tf.cast(y_pred, tf.float32), max_val=1.0)


def _float32_loss(loss):
    """``loss`` on float32 copies of its inputs (bfloat16 outputs under mixed precision)."""
    import tensorflow as tf

    def wrapped(y_true, y_pred):
        return loss(tf.cast(y_true, tf.float32), tf.cast(y_pred, tf.float32))

    return wrapped


def measure(args, size, loss, precision="float32", jit=False):
    """Time bare train steps and full fit epochs for one configuration; return a dict.

    ``loss`` "reference": the reference row (see the module docstring).
    """
    from utils import quiet_tensorflow

    quiet_tensorflow()
    import keras
    import numpy as np

    import custom_loss_functions as clf
    import data
    import models

    keras.utils.set_random_seed(0)
    reference = loss == "reference"
    architecture = "mvtec" if reference else args.architecture
    channels = data.channels_of(args.color)
    images = np.random.default_rng(0).random((args.images, size, size, channels), dtype=np.float32)
    if reference:  # no augmentation, no tf.data: batches straight from the array
        batches = [images[i : i + args.batch] for i in range(0, len(images) - args.batch + 1, args.batch)]
        ds = None
    else:
        ds = data.tf_dataset(images, args.batch, training=True, seed=0)  # augmentation stays float32
        batches = [x.numpy() for x, _ in ds]  # the same augmented batches for the bare step
    if precision == "mixed":  # the model's layers compute in bfloat16 (variables stay float32)
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model = models.build_model(architecture, size, channels, weights="none")
    fn = _reference_loss if reference else clf.get_loss(loss, size)
    model.compile(
        optimizer=keras.optimizers.Adam(2e-4), loss=_float32_loss(fn) if precision == "mixed" else fn, jit_compile=jit
    )
    for x in batches:  # warm-up: tracing and compilation
        model.train_on_batch(x, x)
    if ds is not None:
        model.fit(ds, epochs=1, verbose=0)
    started, cpu = time.perf_counter(), time.process_time()
    for _ in range(args.epochs):
        for x in batches:
            model.train_on_batch(x, x)
    bare, bare_cpu = time.perf_counter() - started, time.process_time() - cpu
    n = sum(len(x) for x in batches) * args.epochs
    fit = None
    if ds is not None:
        started = time.perf_counter()
        model.fit(ds, epochs=args.epochs, verbose=0)
        fit = time.perf_counter() - started
    return {
        "architecture": architecture,
        "color": args.color,
        "size": size,
        "loss": "1 - tf.image.ssim (reference)" if reference else loss,
        "batch": args.batch,
        "precision": precision,
        "jit": jit,
        "bare_images_per_s": n / bare,
        "bare_cpu_s_per_image": bare_cpu / n,
        "fit_images_per_s": None if fit is None else n / fit,
        "pipeline_overhead": None if fit is None else fit / bare - 1.0,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }


def main(argv=None):
    """Run every configuration in a fresh process and print a Markdown table."""
    args = get_parser().parse_args(argv)
    if args.one:
        size, loss, precision, jit = args.one.split(":")
        print(json.dumps(measure(args, int(size), loss, precision, jit == "jit")))
        return
    rows = []
    for size in args.sizes:
        configs = [] if args.no_reference else [("reference", "float32", "nojit")]
        configs += [
            (loss, precision, jit)
            for loss in args.losses
            for precision in args.precision
            for jit in (("nojit", "jit") if args.jit else ("nojit",))
        ]
        for loss, precision, jit in configs:
            cmd = [
                sys.executable,
                __file__,
                "--one",
                f"{size}:{loss}:{precision}:{jit}",
                "--architecture",
                args.architecture,
                "--color",
                args.color,
                "--batch",
                str(args.batch),
                "--images",
                str(args.images),
                "--epochs",
                str(args.epochs),
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
            if out.returncode:
                sys.exit(f"bench_train: {size}:{loss}:{precision}:{jit} failed: {out.stderr.strip().splitlines()[-1]}")
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    reference = {r["size"]: r["bare_images_per_s"] for r in rows if r["loss"].endswith("(reference)")}
    print(
        "\n| architecture | colour | size | loss | precision | XLA | batch | bare step img/s | fit img/s | "
        "pipeline overhead | × reference | bare step CPU s/img | peak RSS MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        fit = r["fit_images_per_s"] or r["bare_images_per_s"]
        ratio = f"{fit / reference[r['size']]:.2f}" if r["size"] in reference else "n/a"
        overhead = "n/a" if r["pipeline_overhead"] is None else f"{100 * r['pipeline_overhead']:+.1f}%"
        fit_text = "n/a" if r["fit_images_per_s"] is None else f"{r['fit_images_per_s']:.1f}"
        print(
            f"| {r['architecture']} | {r['color']} | {r['size']} | {r['loss']} | {r['precision']} | "
            f"{'yes' if r['jit'] else 'no'} | {r['batch']} | {r['bare_images_per_s']:.1f} | {fit_text} | {overhead} | "
            f"{ratio} | {r['bare_cpu_s_per_image']:.3f} | {r['peak_rss_mib']:.0f} |"
        )


if __name__ == "__main__":
    main()
