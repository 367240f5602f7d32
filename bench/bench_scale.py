"""Scale and export: training on 1 vs 2 replicas, and exported detectors against test.py.

    .venv/bin/python bench/bench_scale.py replicas [--size 128] [--images 64] [--batch 8]
    .venv/bin/python bench/bench_scale.py export -p RUN [--images 20] [--formats saved_model onnx tflite]

``replicas``: the CPU split into 1 and 2 logical devices (``MirroredStrategy``), each in
its own process; one warm-up epoch, then timed epochs of ``model.fit`` on random images
with the same *global* batch (2 × ``--batch`` images per step), so both do the same
arithmetic; prints images/s and the scaling efficiency (speed-up / replicas).

``export``: exports RUN in each format, then on the same test images of the run's dataset
compares each artefact with test.py (anomaly maps at the image's size, max abs difference;
verdicts; masks) and times images/s: test.py's maps (``inference.inspect``, batch 16, as
test.py computes them) against each artefact through ``predict_exported.Detector.predict``
(one image at a time, minimum-area filter included, as a production line calls it).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ONE = """
import json, sys, time
sys.path.insert(0, {root!r})
from utils import quiet_tensorflow; quiet_tensorflow()
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
if {replicas} > 1:
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * {replicas})
import keras, numpy as np
import custom_loss_functions as clf, data, distribution, models
setup = {{"strategy": "mirrored" if {replicas} > 1 else "one", "batch": {batch}, "lr": 1e-3, "loss": "ssim", "size": {size}}}
setup.update(distribution.describe(setup["strategy"], {global_batch} // {replicas}))
keras.utils.set_random_seed(0)
images = np.random.default_rng(0).random(({images}, {size}, {size}, 3), dtype=np.float32)
with distribution.scope(setup):
    model = models.build_model("mvtec2", {size}, 3, weights="none")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=clf.get_loss("ssim", {size}))
ds = data.tf_dataset(images, setup["global_batch"], training=True, seed=0)
model.fit(ds, epochs=1, verbose=0)
started = time.perf_counter()
model.fit(ds, epochs={epochs}, verbose=0)
seconds = time.perf_counter() - started
print(json.dumps({{"replicas": setup["replicas"], "global_batch": setup["global_batch"],
                   "images_per_second": {images} * {epochs} / seconds}}))
"""


def replicas(args):
    """1 vs 2 logical CPU devices at the same global batch."""
    rows = []
    for n in (1, 2):
        code = ONE.format(
            root=str(ROOT),
            replicas=n,
            batch=args.batch,
            global_batch=2 * args.batch,
            size=args.size,
            images=args.images,
            epochs=args.epochs,
        )
        done = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
        if done.returncode:
            sys.exit(done.stderr[-2000:])
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    base = rows[0]["images_per_second"]
    for row in rows:
        row["speed_up"] = row["images_per_second"] / base
        row["efficiency"] = row["speed_up"] / row["replicas"]
        print(
            f"{row['replicas']} replica(s), global batch {row['global_batch']}: {row['images_per_second']:.1f} images/s, "
            f"speed-up {row['speed_up']:.2f}, efficiency {row['efficiency']:.2f}"
        )
    return rows


def export(args):
    """Equivalence with test.py and images/s for each format on the run's test images."""
    from utils import quiet_tensorflow

    quiet_tensorflow()
    import numpy as np
    import pandas as pd
    import tifffile
    from PIL import Image

    import data
    import evaluation
    import exporting
    import inference
    import predict_exported as pe
    import runs

    run = runs.find_run(args.path)
    result, _, _, out = evaluation.test_run(args.path, save=True)
    frame = pd.read_csv(out / "classification.csv")
    items = data.list_test_images(run.class_dir)
    rng = np.random.default_rng(0)
    chosen = [items[i] for i in sorted(rng.choice(len(items), min(args.images, len(items)), replace=False))]
    paths = [p for p, _, _ in chosen]
    method = run.method(None)
    threshold, min_area, options, _ = inference.resolve_threshold(run, method)
    inference.inspect(run, paths[:2], method, options=options)  # warm-up (model load, tracing)
    started = time.perf_counter()
    inference.inspect(run, paths, method, options=options)
    rows = [
        {
            "what": "test.py maps (inference.inspect, batch 16)",
            "images_per_second": len(paths) / (time.perf_counter() - started),
        }
    ]
    for fmt in args.formats:
        started = time.perf_counter()
        folder, meta = exporting.export_run(args.path, fmt, out=Path(args.out) / fmt if args.out else None)
        export_seconds = time.perf_counter() - started
        detector = pe.Detector(folder)
        worst, verdicts, masks = 0.0, 0, 0
        by_path = frame.set_index("path")
        for p, defect, _ in items:
            got = detector.predict(pe.read_image(p, detector.color))
            expected = tifffile.imread(out / "anomaly_maps" / defect / f"{Path(p).stem}.tiff")
            worst = max(worst, float(np.abs(got["anomaly_map"] - expected).max()))
            verdicts += got["defective"] == by_path.loc[str(p), "verdict"] == "defective"
            masks += np.array_equal(
                got["mask"], np.asarray(Image.open(out / defect / f"{Path(p).stem}_mask.png")) > 127
            )
        images = [pe.read_image(p, detector.color) for p in paths]
        detector.predict(images[0])  # warm-up
        started = time.perf_counter()
        for image in images:
            detector.predict(image)
        rows.append(
            {
                "what": f"{fmt} ({detector.runtime}, one image per call)",
                "images_per_second": len(images) / (time.perf_counter() - started),
                "export_seconds": export_seconds,
                "max_abs_map_difference": worst,
                "same_verdicts": f"{verdicts}/{len(items)}",
                "same_masks": f"{masks}/{len(items)}",
                "artefact_mb": sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6,
            }
        )
    print(
        f"run {run.dir} ({run.size} px, {run.color}); {len(items)} test images compared, {len(paths)} timed; "
        f"threshold {threshold:.6f}, min area {min_area}, {options.describe(method)}"
    )
    for row in rows:
        print(json.dumps(row))
    return rows


def get_parser():
    """Command-line options of the scale benchmark."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("replicas", help="training throughput on 1 vs 2 logical CPU devices")
    rep.add_argument("--size", type=int, default=128, help="image side (px)")
    rep.add_argument("--images", type=int, default=64, help="random images per epoch")
    rep.add_argument(
        "--batch", type=int, default=8, help="batch per replica with 2 replicas (global batch: twice this)"
    )
    rep.add_argument("--epochs", type=int, default=2, help="timed epochs after one warm-up epoch")
    exp = sub.add_parser("export", help="exported artefacts against test.py: equivalence and images/s")
    exp.add_argument("-p", "--path", required=True, help="a validated run folder")
    exp.add_argument("--images", type=int, default=20, help="test images timed (all are compared)")
    exp.add_argument(
        "--formats", nargs="+", default=["saved_model", "onnx", "tflite"], help="formats to export and time"
    )
    exp.add_argument("--out", default=None, help="where the artefacts go (default: RUN/export/<format>)")
    return parser


def main(argv=None):
    """Run the chosen benchmark and print its rows."""
    args = get_parser().parse_args(argv)
    (replicas if args.command == "replicas" else export)(args)


if __name__ == "__main__":
    main()
