"""Every map method on trained runs: validation (proxy) and test figures side by side.

For each run: ``validate`` and ``test`` with each method (``learned``, ``ssim``, ``median``,
``fused``; the run's default minimum area and threshold policy), then one JSON row per run and
method with the proxy's figures (overall and per synthetic family) and the real test figures
(image AUROC, pixel AUROC, AU-PRO, TPR, TNR), plus the trivial detectors of bench/trivial.py
on the same test set. Nothing is chosen here: it measures.

    .venv/bin/python bench/bench_methods.py RUN [RUN ...] [--methods fused learned] [--out rows.jsonl]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from utils import quiet_tensorflow  # noqa: E402

quiet_tensorflow()

import evaluation  # noqa: E402
import runs  # noqa: E402
import validation  # noqa: E402
from settings import MapRequest  # noqa: E402

METHODS = ("fused", "fused-proxy", "learned", "ssim", "median", "lowfreq")  # fused-proxy: --fusion proxy
KEEP = ("image_auroc", "pixel_auroc", "au_pro")


def measure(run_dir: Path, name: str, false_alarms: float | None = None) -> dict:
    """Validate and test ``run_dir`` with the map method ``name`` (``fused-RULE``: the fused map
    with that fusion rule): one row of figures."""
    started = time.time()
    method, _, rule = name.partition("-")
    result, _ = validation.validate(
        run_dir, None, MapRequest(method=method), false_alarms, rule or validation.DEFAULT_FUSION_RULE
    )
    tested, scores, _, _ = evaluation.test_run(run_dir, MapRequest(method=method))
    proxy = result.get("proxy") or {}
    return {
        "run": str(run_dir),
        "category": "/".join(Path(runs.find_run(run_dir).class_dir).parts[-2:]),
        "method": name,
        "policy": result.get("policy"),
        "fusion_search": result.get("fusion_search"),
        "threshold": result["threshold"],
        "min_area": result["min_area"],
        "fusion": result.get("fusion"),
        "proxy": {k: proxy.get(k) for k in (*KEEP, "detected")},
        "proxy_families": {f: {k: v.get(k) for k in KEEP} for f, v in (proxy.get("families") or {}).items()},
        "test": {k: scores.get(k) for k in KEEP} | {"tpr": tested["tpr"], "tnr": tested["tnr"]},
        "test_per_defect": {d: {k: v.get(k) for k in KEEP} for d, v in (scores.get("per_defect_type") or {}).items()},
        "seconds": round(time.time() - started, 1),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="trained run folders")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), help="map methods (default: %(default)s)")
    parser.add_argument("--false-alarms", type=float, default=None, help="threshold policy (default: balanced)")
    parser.add_argument("--out", default=None, help="append the JSON rows to this file")
    parser.add_argument(
        "--suite-rows",
        default=None,
        help="also append one bench_suite.py row per run to this file (its default method first, every method "
        "in 'methods', the trivial detectors): `bench_suite.py --report FILE --leave-one-out` tables them",
    )
    args = parser.parse_args(argv)
    import trivial

    for run_dir in args.runs:
        run = runs.find_run(run_dir)
        floor = trivial.trivial_metrics(run.class_dir)
        print(json.dumps({"run": run_dir, "trivial": floor}), flush=True)
        measured = {}
        for method in args.methods:
            if method == "learned" and not run.head_path.is_file():
                continue
            row = measure(Path(run_dir), method, args.false_alarms)
            measured[method] = row
            line = json.dumps(row)
            print(line, flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(line + "\n")
        if args.suite_rows and measured:
            with open(args.suite_rows, "a") as f:
                f.write(json.dumps(suite_row(run, measured, floor)) + "\n")


def suite_row(run, measured: dict, floor: dict) -> dict:
    """A bench_suite.py row of one trained run: the run's default method's figures, every method's."""
    default = run.method()
    first = measured.get(default) or next(iter(measured.values()))
    figures_ = {m: {**r["test"], "proxy": r["proxy"].get("au_pro")} for m, r in measured.items()}
    return {
        "category": first["category"],
        "seed": run.setup.seed,
        "status": "ok",
        "error": None,
        "run": str(run.dir),
        "mode": run.mode,
        "size": run.size,
        "method": first["method"],
        "min_area": first["min_area"],
        "threshold": first["threshold"],
        "training_minutes": run.setup.training_seconds / 60,
        "proxy": first["proxy"].get("au_pro"),
        **first["test"],
        "per_defect_type": first["test_per_defect"],
        "methods": figures_,
        "trivial": floor,
    }


if __name__ == "__main__":
    main()
