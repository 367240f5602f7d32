"""Image score's smoothing: image AUROC of "maximum of the map smoothed by σ" for several σ,
chosen on the proxy, confirmed on the labelled test images, on runs already trained.

    .venv/bin/python bench/bench_score.py -p RUN [RUN ...] [--method learned] [--sigmas 0 1 2 4]

For each run, with its map method (default: the run's own) and default map options:

- **proxy**: validate.py's maps of the held-back good images and of their painted copies
  (``RUN/validation_maps_*.npz``, computed and cached as validate.py does when absent);
  image AUROC of copies against originals. No test image is read.
- **test**: the test images' raw maps, computed once; image AUROC of defective against good.

Pixel AUROC and AU-PRO use the anomaly maps (``--smooth``), which the score's σ does not
change. Prints one markdown row per run and σ; rows are appended to
``bench/results/score.jsonl``.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import data  # noqa: E402
import metrics  # noqa: E402
import resmaps  # noqa: E402
import validation  # noqa: E402
from detector import Detector  # noqa: E402
from settings import MapRequest  # noqa: E402


def get_parser():
    """Command-line options of the score benchmark."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-p", "--path", nargs="+", required=True, help="run folders (trained; any validation is reused)")
    p.add_argument("--method", default=None, help="map method (default: each run's own)")
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.0, 1.0, 2.0, 4.0], help="score σ values (px)")
    p.add_argument(
        "--results", type=Path, default=ROOT / "bench" / "results" / "score.jsonl", help="rows appended here"
    )
    return p


def _aurocs(maps: np.ndarray, labels: np.ndarray, sigmas) -> dict[float, float]:
    return {s: metrics.image_auroc(labels, resmaps.smooth(maps, s).reshape(len(maps), -1).max(axis=1)) for s in sigmas}


def score_run(path, method: str | None, sigmas) -> list[dict]:
    """One row per σ: proxy and test image AUROC of the run at ``path``."""
    opened = Detector.open_maps(path, MapRequest(method=method))
    run = opened.run
    _, good, painted = validation.validation_maps(opened)
    if painted is None:
        raise SystemExit(f"{run.dir}: no painted validation copies (maps not finite?)")
    proxy = _aurocs(np.concatenate([good, painted[0]]), np.r_[np.zeros(len(good)), np.ones(len(painted[0]))], sigmas)
    listed = data.list_test_images(run.class_dir)
    opened.load(len(listed))
    maps = np.concatenate([seen.maps for seen in opened.mapper.stream([p for p, _, _ in listed])])
    test = _aurocs(maps, np.array([d != data.GOOD for _, d, _ in listed], float), sigmas)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return [
        {
            "run": str(run.dir),
            "class": run.class_dir.name,
            "method": opened.method,
            "sigma": s,
            "proxy_image_auroc": proxy[s],
            "test_image_auroc": test[s],
            "n_test": len(listed),
            "n_proxy": len(good) + len(painted[0]),
            "when": stamp,
        }
        for s in sigmas
    ]


def main(argv=None) -> int:
    """Score every run, print the table, append the rows."""
    args = get_parser().parse_args(argv)
    print("| run | class | method | score σ | proxy image AUROC | test image AUROC |\n|---|---|---|---|---|---|")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    for path in args.path:
        rows = score_run(path, args.method, args.sigmas)
        with args.results.open("a") as out:
            out.writelines(json.dumps(r) + "\n" for r in rows)
        for r in rows:
            print(
                f"| {r['class']} | {r['method']} | {r['sigma']:g} | {r['proxy_image_auroc']:.3f} | {r['test_image_auroc']:.3f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
