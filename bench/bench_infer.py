"""Inference speed on real MVTec AD bottle: maps/s, metrics time, validate.py and test.py wall
time, peak memory.

    .venv/bin/python bench/bench_infer.py -p RUN       # a trained 256-px bottle run
    .venv/bin/python bench/bench_infer.py --quick      # trains a small 256-px run first (2 epochs)

The run is copied (model, setup and file lists only) to a scratch folder, so its own
results and caches are never touched, then measured in this order:

* ``validate.py -a AREA`` with no cached calibration (it learns the baselines of every pass
  and the mask threshold from the training images), then again with it cached (the
  validation maps made again), then with the validation maps cached too;
* ``test.py`` on the 83 labelled test images (maps, verdicts, metrics, plots, files);
* in one process: residual maps per second with the default map options (model loaded,
  calibration cached, one warm-up batch), and the metrics of the 83 images: smoothing,
  ``metrics.evaluate`` with its curves, and the two curve plots.

Every script runs in its own process: wall time, CPU time (user + system, all threads)
and peak resident memory come from ``os.wait4``. ``--code DIR`` measures the scripts and
library of another checkout of this project (e.g. a ``git worktree`` of an older commit),
for before/after figures on the same machine. Rows are appended to
``bench/results/infer.jsonl``. Without the bottle data the benchmark says so and exits 0.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BOTTLE = ROOT.parent / "shared" / "data" / "mvtec_real" / "bottle"
COPIED = ("setup.json", "validation_files.txt")  # plus every model file of the run and its ONNX twin


def get_parser():
    """Command-line options of the inference benchmark."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = p.add_mutually_exclusive_group()
    which.add_argument("-p", "--path", type=Path, help="a trained run of MVTec bottle (run folder)")
    which.add_argument(
        "--quick",
        action="store_true",
        help="train a small 256-px bottle run first (--epochs epochs) into bench/results/runs/; "
        "its folder is printed, to be measured again with -p",
    )
    p.add_argument("--epochs", type=int, default=2, help="epochs of the --quick run")
    p.add_argument("--data", type=Path, default=BOTTLE, help="the bottle class folder (MVTec layout)")
    p.add_argument(
        "-a", "--area", type=int, default=50, help="minimum defect area for validate.py (px at the model's size)"
    )
    p.add_argument("--code", type=Path, default=ROOT, help="checkout whose scripts and library are measured")
    p.add_argument("--label", default="", help="free text stored with the results (e.g. the commit)")
    p.add_argument(
        "--keras",
        action="store_true",
        help="reconstruct with the Keras model in every measured step (CAE_INFERENCE=keras), "
        "not the run's ONNX twin (networks.py): the figures of before the twin",
    )
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: the in-process measurements
    return p


def timed(cmd, cwd):
    """Run ``cmd``; return (wall s, CPU s, peak RSS MiB, stdout). A failure ends the benchmark."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(
            cmd, cwd=cwd, stdout=out, stderr=err, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "MPLBACKEND": "Agg"}
        )  # CAE_INFERENCE (--keras) reaches the scripts through os.environ
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own CPU time and peak memory
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        text, problem = out.read(), err.read()
    if proc.returncode:
        sys.exit(f"bench_infer: {' '.join(map(str, cmd[1:3]))} failed: {(problem.strip().splitlines() or ['?'])[-1]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024.0, text


def train_quick(code, data, epochs, out):
    """Train the --quick run with the checkout's train.py; return its folder and the wall time."""
    cmd = [
        sys.executable,
        str(code / "train.py"),
        "new",
        "-d",
        str(data),
        "-a",
        "mvtec2",
        "-l",
        "ssim",
        "-c",
        "rgb",
        "--size",
        "256",
        "--epochs",
        str(epochs),
        "--out",
        str(out),
        "--seed",
        "0",
    ]
    help_text = subprocess.run(
        [sys.executable, str(code / "train.py"), "new", "-h"], capture_output=True, text=True, check=True
    ).stdout
    if "--head-steps" in help_text:
        cmd += ["--head-steps", "0"]  # the learned map's head is not measured here
    wall, _, _, out_text = timed(cmd, code)
    return Path(out_text.strip().splitlines()[-1]), wall


def scratch_copy(run, into):
    """The run's model, setup and file lists in a fresh folder (no results, no caches)."""
    dest = Path(into) / run.name
    dest.mkdir(parents=True)
    for f in run.iterdir():
        if f.name in COPIED or f.suffix in (".keras", ".h5", ".onnx"):
            # copy2 keeps the model's mtime, part of the calibration's and the ONNX twin's stamps
            shutil.copy2(f, dest / f.name)
    return dest


def in_process(run_dir):
    """Maps/s and the metrics' time, measured inside one process (the checkout on sys.path)."""
    from utils import quiet_tensorflow

    quiet_tensorflow()
    import numpy as np

    import data
    import detector
    import inference
    import metrics
    import resmaps
    import runs

    try:
        import figures
    except ImportError:  # a checkout from before the figures left visualize.py
        import visualize as figures

    run = runs.find_run(run_dir)
    method = run.method(None)
    options = inference.MapOptions()
    items = data.list_test_images(run.class_dir)
    images, kept = data.load_images([p for p, _, _ in items], run.color, run.size)
    model = run.load_model()
    calibration = inference.calibrate(run, method, options, model)
    inference.refined_maps(model, images[:16], method, options, calibration=calibration)  # warm-up: tracing
    started, cpu = time.perf_counter(), time.process_time()
    _, maps, _ = inference.refined_maps(model, images, method, options, calibration=calibration)
    maps_s, maps_cpu = time.perf_counter() - started, time.process_time() - cpu

    started = time.perf_counter()
    smoothed = resmaps.smooth(maps, detector.DEFAULT_SMOOTH)
    sizes = [data.image_size(p) for p in kept]
    full = [inference.resize_map(m, s) for m, s in zip(smoothed, sizes)]
    masks = [
        data.load_mask(m, s) if m is not None else np.zeros((s[1], s[0]), bool) for (_, _, m), s in zip(items, sizes)
    ]
    prepared = time.perf_counter() - started
    truth = np.array([d != data.GOOD for _, d, _ in items])
    scores = np.array([m.max() for m in smoothed])
    types = [d for _, d, _ in items]
    started, cpu = time.perf_counter(), time.process_time()
    try:
        result, curves = metrics.evaluate(full, masks, truth, scores, types, return_curves=True)
        roc, (fprs, pros) = curves["pixel_roc"], curves["pro"]
    except TypeError:  # a checkout from before metrics.evaluate returned its curves
        result = metrics.evaluate(full, masks, truth, scores, types)
        roc = metrics.pixel_roc_curve(full, masks)
        _, fprs, pros = metrics.au_pro(full, masks, return_curve=True)
    metrics_s, metrics_cpu = time.perf_counter() - started, time.process_time() - cpu
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        figures.plot_roc_curves({"pixel": (*roc, result["pixel_auroc"])}, Path(tmp) / "roc.png")
        figures.plot_pro_curve(fprs, pros, result["au_pro"], Path(tmp) / "pro.png")
        plots_s = time.perf_counter() - started
    return {
        "images": len(images),
        "size": run.size,
        "maps": options.describe(method),
        "maps_per_s": len(images) / maps_s,
        "maps_cpu_s_per_image": maps_cpu / len(images),
        "map_prep_s": prepared,
        "metrics_s": metrics_s,
        "metrics_cpu_s": metrics_cpu,
        "plots_s": plots_s,
        "pixels": int(sum(m.size for m in full)),
        "pixel_auroc": result["pixel_auroc"],
        "au_pro": result["au_pro"],
    }


def main(argv=None):
    """Measure, print a Markdown table and append the row to bench/results/infer.jsonl."""
    args = get_parser().parse_args(argv)
    code = args.code.resolve()
    if args.one:
        sys.path.insert(0, str(code))
        print(json.dumps(in_process(args.one)))
        return
    if not args.path and not args.quick:
        get_parser().error("give a run with -p RUN, or --quick to train a small one")
    if not (args.data / "test").is_dir():
        print(f"bench_infer: skipped, no bottle data at {args.data}")
        return
    if args.keras:
        os.environ["CAE_INFERENCE"] = "keras"
    row = {
        "label": args.label,
        "code": str(code),
        "cores": os.cpu_count(),
        "inference": "keras" if os.environ.get("CAE_INFERENCE", "").lower() == "keras" else "onnx twin",
    }
    with tempfile.TemporaryDirectory(prefix="bench_infer_") as tmp:
        if args.quick:
            run, row["quick_train_s"] = train_quick(
                code, args.data.resolve(), args.epochs, ROOT / "bench" / "results" / "runs"
            )
            print(f"trained {run} in {row['quick_train_s']:.0f} s", flush=True)
        else:
            run = args.path.resolve()
            if run.suffix in (".keras", ".h5"):
                run = run.parent
        run = scratch_copy(run, Path(tmp) / "copy")
        py = sys.executable
        validate = [py, str(code / "validate.py"), "-p", str(run), "-a", str(args.area)]
        for name, cmd in (
            ("validate_cold", validate),
            ("validate_cached", validate),  # calibration cached, the validation maps made again
            ("validate_maps_cached", validate),  # both cached (validation.validation_maps), e.g. another area
            ("test", [py, str(code / "test.py"), "-p", str(run)]),
        ):
            if name == "validate_cached":
                for kept in run.glob("validation_maps_*.npz"):
                    kept.unlink()
            wall, cpu, rss, _ = timed(cmd, code)
            row.update({f"{name}_s": wall, f"{name}_cpu_s": cpu, f"{name}_peak_mib": rss})
            print(f"{name}: {wall:.1f} s wall, {cpu:.1f} s CPU, peak {rss:.0f} MiB", flush=True)
        wall, cpu, rss, out = timed([py, __file__, "--one", str(run), "--code", str(code)], code)
        row.update(json.loads(out.strip().splitlines()[-1]), in_process_peak_mib=rss)
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    with open(results / "infer.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row))
    print(f"\n| {row['images']} images at {row['size']} px, {row['maps']} | value |\n|---|---|")
    for key, label in (
        ("maps_per_s", "maps/s (one process, warm)"),
        ("maps_cpu_s_per_image", "CPU s per map (all threads)"),
        ("metrics_s", "metrics.evaluate + curves, s"),
        ("metrics_cpu_s", "  of which CPU, s"),
        ("plots_s", "ROC + PRO plots, s"),
        ("validate_cold_s", "validate.py, calibration learnt, wall s"),
        ("validate_cached_s", "validate.py, calibration cached, wall s"),
        ("validate_maps_cached_s", "validate.py, calibration and validation maps cached, wall s"),
        ("test_s", "test.py wall s"),
        ("test_cpu_s", "test.py CPU s"),
        ("test_peak_mib", "test.py peak RSS MiB"),
    ):
        print(f"| {label} | {row[key]:.2f} |")


if __name__ == "__main__":
    main()
