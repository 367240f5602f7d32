"""Training throughput: the whole ``fit`` (tf.data pipeline + augmentation) against the
model's bare train step on the same batches, and peak memory.

    .venv/bin/python bench/bench_train.py [--sizes 128 256] [--losses ssim l2] [--architecture mvtec]

Each configuration runs in its own process so its peak resident memory (ru_maxrss) is its
own. Images are random arrays (throughput does not depend on content). ``pipeline
overhead`` = (fit time − bare step time) / bare step time; the target is under 10%.
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
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one config as size:loss
    return p


def measure(args, size, loss):
    """Time bare train steps and full fit epochs for one configuration; return a dict."""
    from utils import quiet_tensorflow

    quiet_tensorflow()
    import keras
    import numpy as np

    import custom_loss_functions as clf
    import data
    import models

    keras.utils.set_random_seed(0)
    channels = data.channels_of(args.color)
    images = np.random.default_rng(0).random((args.images, size, size, channels), dtype=np.float32)
    model = models.build_model(args.architecture, size, channels, weights="none")
    model.compile(optimizer=keras.optimizers.Adam(2e-4), loss=clf.get_loss(loss, size))
    ds = data.make_dataset(images, args.batch, training=True, seed=0)
    batches = [x.numpy() for x, _ in ds]  # the same augmented batches for the bare step
    model.fit(ds, epochs=1, verbose=0)  # warm-up: tracing and compilation
    started = time.perf_counter()
    for _ in range(args.epochs):
        for x in batches:
            model.train_on_batch(x, x)
    bare = time.perf_counter() - started
    started = time.perf_counter()
    model.fit(ds, epochs=args.epochs, verbose=0)
    fit = time.perf_counter() - started
    n = args.images * args.epochs
    return {"architecture": args.architecture, "color": args.color, "size": size, "loss": loss, "batch": args.batch,
            "bare_images_per_s": n / bare, "fit_images_per_s": n / fit, "pipeline_overhead": fit / bare - 1.0,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}


def main(argv=None):
    """Run every configuration in a fresh process and print a Markdown table."""
    args = get_parser().parse_args(argv)
    if args.one:
        size, loss = args.one.split(":")
        print(json.dumps(measure(args, int(size), loss)))
        return
    rows = []
    for size in args.sizes:
        for loss in args.losses:
            cmd = [sys.executable, __file__, "--one", f"{size}:{loss}", "--architecture", args.architecture,
                   "--color", args.color, "--batch", str(args.batch), "--images", str(args.images),
                   "--epochs", str(args.epochs)]
            out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
            if out.returncode:
                sys.exit(f"bench_train: {size}:{loss} failed: {out.stderr.strip().splitlines()[-1]}")
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n| architecture | colour | size | loss | batch | bare step img/s | fit img/s | pipeline overhead | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['architecture']} | {r['color']} | {r['size']} | {r['loss']} | {r['batch']} | {r['bare_images_per_s']:.1f} | "
              f"{r['fit_images_per_s']:.1f} | {100 * r['pipeline_overhead']:+.1f}% | {r['peak_rss_mib']:.0f} |")


if __name__ == "__main__":
    main()
