"""What OpenVINO's bfloat16 costs in quality: test.py's threshold-free metrics of trained runs
with the twins computed in float32 (the default, ``networks.PRECISION``) and in bfloat16.

    .venv/bin/python bench/bench_precision.py -p RUN [RUN ...] [--precisions f32 bf16]

Each run's model files, twins, setup and validation list are copied to ``--out/<time>/<precision>/``
(no calibration, no maps, no results), so the per-pixel baselines are learnt again in that
precision; then ``evaluation.test_run`` scores every test image in a fresh process with
``networks.PRECISION`` set, at a fixed threshold and area (the metrics below do not depend
on them). Prints image AUROC, pixel AUROC, AU-PRO and the wall time per run and precision
(including learning the calibration where the run has a baseline); rows are appended to
``bench/results/precision.jsonl``. A row says ``keras: true`` if TensorFlow computed it
(the twin was not used), which would make the comparison void.
"""

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COPIED = ("*.keras", "*.onnx", "setup.json", "validation_files.txt")

WORKER = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
import networks
networks.PRECISION = sys.argv[3]
import evaluation
start = time.perf_counter()
result = evaluation.test_run(sys.argv[2], threshold=0.5, min_area=10)[1]
print(json.dumps({k: result[k] for k in ("image_auroc", "pixel_auroc", "au_pro", "method")}
                 | {"seconds": time.perf_counter() - start, "keras": "tensorflow" in sys.modules}))
"""


def get_parser():
    """Command-line options of the precision benchmark."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-p", "--path", nargs="+", required=True, help="trained run folders (only read)")
    p.add_argument("--precisions", nargs="+", default=["f32", "bf16"], help="OpenVINO inference precisions")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("/tmp/cae_bench_precision"),
        help="scratch folder: each call copies into a new timestamped folder in it",
    )
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "precision.jsonl", help="rows appended")
    return p


def measure(run: Path, precision: str, scratch: Path) -> dict:
    """Metrics of ``run`` copied to ``scratch``, scored with the twins in ``precision``."""
    copy = scratch / precision / run.name
    copy.mkdir(parents=True)
    for pattern in COPIED:
        for f in run.glob(pattern):
            shutil.copy2(f, copy / f.name)  # copy2 keeps the model's stamp, so its twin stays valid
    done = subprocess.run(
        [sys.executable, "-c", WORKER, str(ROOT), str(copy), precision], capture_output=True, text=True, cwd=ROOT
    )
    if done.returncode:
        raise SystemExit(f"{run}: {done.stderr.strip().splitlines()[-1]}")
    return {"run": str(run), "precision": precision, **json.loads(done.stdout.strip().splitlines()[-1])}


def main(argv=None) -> int:
    """Measure every run in every precision, print the table, append the rows."""
    args = get_parser().parse_args(argv)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    # A new folder per call under --out: nothing there from before is deleted or reused.
    scratch = args.out / time.strftime("%Y-%m-%d_%H-%M-%S")
    scratch.mkdir(parents=True)
    print(
        "| run | method | precision | image AUROC | pixel AUROC | AU-PRO | wall s | Keras? |\n|---|---|---|---|---|---|---|---|"
    )
    for run in map(Path, args.path):
        for precision in args.precisions:
            row = {**measure(run, precision, scratch), "when": stamp}
            with args.results.open("a") as out:
                out.write(json.dumps(row) + "\n")
            print(
                f"| {run.name} | {row['method']} | {precision} | {row['image_auroc']:.4f} | {row['pixel_auroc']:.4f} "
                f"| {row['au_pro']:.4f} | {row['seconds']:.1f} | {row['keras']} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
