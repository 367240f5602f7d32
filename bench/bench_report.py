"""Size and load time of ``report.html`` for a large ``test.py --images`` result (issue 23).

    .venv/bin/python bench/bench_report.py                    # 5,000 images of 128 px
    .venv/bin/python bench/bench_report.py --count 500 --size 256 --loads 5

No training: writes ``--count`` synthetic grayscale images (noise on a brick-like pattern),
a mask for the tenth judged defective, ``predictions.csv`` and ``prediction_setup.json`` as
``test.py --images`` writes them, and a run folder with ``setup.json``; then times
``report.write_report`` (thumbnails included), and prints the page's size (HTML bytes,
``report_files/`` bytes and files) and its load time in headless Chromium (selenium): from
navigation start to DOMContentLoaded and to the load event (Navigation Timing), median of
``--loads`` fresh loads, and how long sorting by score and filtering by verdict take in
the page. Rows are appended to ``bench/results/report.jsonl``.
"""

import argparse
import csv
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import report  # noqa: E402
import runs  # noqa: E402
import storage  # noqa: E402


def get_parser():
    """Command-line options of the report benchmark."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=5000, help="images in the fake prediction result")
    p.add_argument("--size", type=int, default=128, help="side of each synthetic image (px)")
    p.add_argument("--loads", type=int, default=3, help="page loads measured in Chromium (median reported)")
    p.add_argument("--out", type=Path, default=Path("/tmp/cae_bench_report"), help="scratch folder (made anew)")
    return p


def build(out: Path, count: int, size: int) -> tuple[Path, Path]:
    """Fake images, masks and prediction files: returns ``(result folder, run folder)``."""
    if out.exists():
        shutil.rmtree(out)
    images, result, run = out / "images", out / "result", out / "run"
    for folder in (images, result, run):
        folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:size, :size]
    bricks = (((y // 16) % 2 == 0) ^ ((x // 32) % 2 == 0)).astype(np.float32) * 40 + 100
    rows = []
    for i in range(count):
        pixels = np.clip(bricks + rng.normal(0, 12, bricks.shape), 0, 255).astype(np.uint8)
        defective = i % 10 == 0
        mask = np.zeros_like(pixels)
        if defective:
            r, c = rng.integers(8, size - 24, 2)
            pixels[r : r + 16, c : c + 4] = 20
            mask[r : r + 16, c : c + 4] = 255
        path = images / f"{i // 1000:02d}" / f"{i:05d}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(pixels).save(path)
        mask_path = result / path.parent.name / f"{path.stem}_mask.png"
        mask_path.parent.mkdir(exist_ok=True)
        Image.fromarray(mask).save(mask_path)
        score = rng.uniform(1.0, 3.0) if defective else rng.uniform(0.1, 0.99)
        rows.append(
            [path, "defective" if defective else "good", score, 64 if defective else 0, int(defective), mask_path]
        )
    with open(result / "predictions.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "verdict", "score", "largest_area", "n_regions", "mask", "overlay"])
        writer.writerows([*row, ""] for row in rows)
    storage.write_json(
        result / "prediction_setup.json", {"threshold": 0.3, "min_area": 20, "method": "ssim", "images": str(images)}
    )
    storage.write_json(
        run / runs.SETUP,
        {"directory": str(images), "architecture": "mvtec2", "loss": "ssim", "color": "grayscale", "size": size},
    )
    return result, run


def folder_bytes(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


def browser_times(page: Path, loads: int) -> dict:
    """Median navigation → DOMContentLoaded / load (ms) over ``loads`` fresh loads, and the
    in-page time of a sort by score and a filter by verdict."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    timing = (
        "const n = performance.getEntriesByType('navigation')[0];"
        "return [n.domContentLoadedEventEnd - n.startTime, n.loadEventEnd - n.startTime];"
    )
    sort = "const t = performance.now(); document.getElementById('sort-score').click(); return performance.now() - t;"
    filt = (
        "const s = document.getElementById('filter-verdict'); s.value = 'defective'; const t = performance.now();"
        "s.dispatchEvent(new Event('change')); return performance.now() - t;"
    )
    try:
        dom, load, sorts, filters = [], [], [], []
        for _ in range(loads):
            driver.get("about:blank")
            driver.get(page.as_uri())
            while driver.execute_script("return document.readyState") != "complete":
                time.sleep(0.05)
            time.sleep(0.1)  # loadEventEnd is set just after readyState turns complete
            d, lo = driver.execute_script(timing)
            dom.append(d)
            load.append(lo)
            sorts.append(driver.execute_script(sort))
            filters.append(driver.execute_script(filt))
        images = driver.execute_script(
            "return [document.images.length, Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).length]"
        )
    finally:
        driver.quit()
    return {
        "dom_content_loaded_ms": statistics.median(dom),
        "load_ms": statistics.median(load),
        "sort_by_score_ms": statistics.median(sorts),
        "filter_by_verdict_ms": statistics.median(filters),
        "img_elements": images[0],
        "img_loaded_at_load": images[1],
    }


def main(argv=None):
    """Build the fake result, write its report, measure it, print and record one row."""
    args = get_parser().parse_args(argv)
    started = time.perf_counter()
    result, run = build(args.out, args.count, args.size)
    built = time.perf_counter() - started
    started, cpu = time.perf_counter(), time.process_time()
    page = report.write_report(result, run)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    files_bytes, n_files = folder_bytes(result / report.FILES)
    row = {
        "count": args.count,
        "size": args.size,
        "inputs_s": round(built, 1),
        "write_report_s": round(wall, 1),
        "write_report_cpu_s": round(cpu, 1),
        "html_bytes": page.stat().st_size,
        "report_files_bytes": files_bytes,
        "report_files": n_files,
        **{k: round(v, 1) if isinstance(v, float) else v for k, v in browser_times(page, args.loads).items()},
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    print(json.dumps(row, indent=2))
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    with open(results / "report.jsonl", "a") as handle:
        handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
