"""Memory of ``test.py --images`` on large folders: peak resident memory against folder size.

    .venv/bin/python bench/bench_stream.py                        # 500 and 5000 images
    .venv/bin/python bench/bench_stream.py --counts 500 5000 --code /tmp/before --label before

Builds a small world under ``--out`` (generated ``brick`` at 256 px, a 1-epoch object run at
``--size`` px, validated), then a folder of N copies of its test images (names differ, files
identical: reading them costs what reading new ones costs), and runs ``test.py -p RUN
--images FOLDER --overlays none`` once per N (every mask and row written; ``--overlays``
to draw figures too), each in its own process: wall time, CPU time and peak resident
memory come from ``os.wait4`` (see bench_infer.py). Streaming holds ``inference.STREAM_CHUNK``
images at a time, so the peak should not grow with N. Rows are appended to
``bench/results/stream.jsonl``.
"""

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_infer import timed  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def get_parser():
    """Command-line options of the streaming benchmark."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--counts", type=int, nargs="+", default=[500, 5000], help="folder sizes (images) to measure")
    p.add_argument("--size", type=int, default=128, help="model size (px) of the run")
    p.add_argument("--out", type=Path, default=Path("/tmp/cae_bench_stream"), help="scratch folder (made anew)")
    p.add_argument("--code", type=Path, default=ROOT, help="checkout whose test.py is measured")
    p.add_argument(
        "--overlays",
        default="none",
        choices=("all", "defective", "none"),
        help="test.py --overlays: the overlay figures cost ~0.4 s of CPU per image, 10x the map",
    )
    p.add_argument("--label", default="", help="free text stored with the results (e.g. the commit)")
    return p


def build_world(out, size):
    """Generated brick, a 1-epoch run validated at area 20: returns (run folder, test images)."""
    py = sys.executable
    subprocess.run(
        [py, str(ROOT / "make_dataset.py"), "--classes", "brick", "--train", "40", "--out", str(out / "data")],
        check=True,
        capture_output=True,
    )
    cls = out / "data" / "brick"
    text = subprocess.run(
        [py, str(ROOT / "train.py"), "new", "-d", str(cls), "--mode", "object", "--size", str(size), "--epochs", "1"]
        + ["--head-steps", "0", "--out", str(out / "runs")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    run = Path(text.strip().splitlines()[-1])
    subprocess.run([py, str(ROOT / "validate.py"), "-p", str(run), "-a", "20"], check=True, capture_output=True)
    return run, sorted((cls / "test").rglob("*.png"))


def main(argv=None):
    """Measure test.py --images at every count; print a table and append rows to results/stream.jsonl."""
    args = get_parser().parse_args(argv)
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    run, sources = build_world(args.out, args.size)
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in args.counts:
        folder = args.out / f"images_{n}"
        folder.mkdir()
        for i in range(n):
            shutil.copy(sources[i % len(sources)], folder / f"{i:05d}.png")
        wall, cpu, peak, _ = timed(
            [sys.executable, str(args.code / "test.py"), "-p", str(run), "--images", str(folder)]
            + ["--out", str(args.out / f"predictions_{n}")]
            + ["--overlays", args.overlays],
            args.code,
        )
        written = len(list((args.out / f"predictions_{n}").rglob("*_overlay.png")))
        rows.append(
            {
                "images": n,
                "written": written,
                "wall_s": round(wall, 1),
                "cpu_s": round(cpu, 1),
                "peak_mib": round(peak),
                "size": args.size,
                "label": args.label,
                "code": str(args.code),
                "date": time.strftime("%Y-%m-%d %H:%M"),
            }
        )
        print(f"{n} images: wall {wall:.1f} s, CPU {cpu:.1f} s, peak {peak:.0f} MiB, {written} overlays", flush=True)
        with open(results / "stream.jsonl", "a") as f:  # each row as soon as it is measured
            f.write(json.dumps(rows[-1]) + "\n")
        shutil.rmtree(folder)
        shutil.rmtree(args.out / f"predictions_{n}")
    print("| images | wall s | CPU s | images/s (wall) | peak MiB |")
    print("|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['images']} | {r['wall_s']} | {r['cpu_s']} | {r['images'] / r['wall_s']:.1f} | {r['peak_mib']} |")


if __name__ == "__main__":
    main()
