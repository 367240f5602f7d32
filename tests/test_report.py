"""report.html (report.py): built from a result folder's files, checked against them.

Unit tests write small result folders by hand (images, maps, CSV, JSON) and parse the page;
the browser test opens the page test.py writes for the session's tiny run in headless
Chromium (selenium), sorts and filters it, and saves a screenshot. It is skipped with one
line where Chromium, its driver or selenium are missing (scripts/setup_env.sh installs them
as root on Debian).
"""

import csv
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from conftest import cli, load_script, run_quietly
from PIL import Image
from scipy.stats import beta

import report  # noqa: E402
import runs  # noqa: E402
import storage  # noqa: E402
from utils import UserError  # noqa: E402

THRESHOLD, AREA = 0.5, 5
# (defect type, file, truth, prediction as classification.csv writes it, score)
LABELLED = [
    ("good", "000.png", "good", "False", "0.41"),
    ("good", "001.png", "good", "True", "1.37"),  # false alarm
    ("good", "002.png", "good", "False", "0.93"),
    ("crack", "000.png", "defective", "False", "0.88"),  # miss
    ("crack", "001.png", "defective", "True", "2.5"),
    ("hole", "000.png", "defective", "False", "0.2"),  # miss
    ("hole", "000.bmp", "defective", "True", "1.05"),  # same stem as hole/000.png: maps 000_png, 000_bmp
]
OUTCOME_RANK = {"miss": 0, "false-alarm": 1, "found": 2, "passed": 3}


# --------------------------------------------------------------------------- helpers


class Page(HTMLParser):
    """What the tests read from report.html: gallery rows (their data-* attributes and cell
    texts), image sources, section ids, filter menus and all visible text."""

    def __init__(self, text):
        super().__init__()
        self.rows, self.images, self.sections, self.selects, self.text = [], [], [], {}, []
        self._body = self._select = None
        self._cell = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tbody" and attrs.get("id") == "gallery-body":
            self._body = True
        elif tag == "tr" and self._body:
            self.rows.append({**attrs, "cells": []})
        elif tag == "td" and self._body:
            self.rows[-1]["cells"].append("")
            self._cell = True
        elif tag == "img":
            self.images.append(attrs)
        elif tag == "section":
            self.sections.append(attrs["id"])
        elif tag == "select":
            self._select = attrs["id"]
            self.selects[self._select] = []
        elif tag == "option" and self._select:
            self.selects[self._select].append(attrs["value"])

    def handle_endtag(self, tag):
        if tag == "tbody":
            self._body = None
        elif tag == "td":
            self._cell = None
        elif tag == "select":
            self._select = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell and self.rows:
            self.rows[-1]["cells"][-1] += data.strip()


def read_page(path):
    return Page(Path(path).read_text(encoding="utf-8"))


def csv_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def outcome(truth, verdict):
    return {("defective", "good"): "miss", ("good", "defective"): "false-alarm"}.get(
        (truth, verdict), "found" if truth == "defective" else "passed"
    )


def verdict_of(record):
    """A CSV row's verdict: test.py writes good/defective; the hand-made folder the older True/False."""
    value = record.get("verdict", record.get("prediction"))
    return {"True": "defective", "False": "good"}.get(value, value)


def save_png(path, size=(20, 12), seed=0, value=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, size[::-1], dtype=np.uint8) if value is None else np.full(size[::-1], value, np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def make_labelled(tmp_path, optional=True):
    """A run folder with a finished labelled test of LABELLED (and, with ``optional``, every
    optional file: metrics.json, curves, anomaly maps in the result folder, setup.json, loss curve)."""
    import tifffile

    data_dir, run = tmp_path / "data" / "brick", tmp_path / "run"
    method_dir = run / "test" / "ssim"
    out = method_dir / f"a{AREA}_t{runs.format_threshold(THRESHOLD)}"
    out.mkdir(parents=True)
    with open(out / "classification.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "defect_type", "truth", "prediction", "largest_area", "n_regions", "score"])
        for i, (defect, name, truth, prediction, score) in enumerate(LABELLED):
            image = save_png(data_dir / "test" / defect / name, size=(20 + i, 12), seed=i)
            writer.writerow([image, defect, truth, prediction, 7 if prediction == "True" else 2, 1, score])
    n_def = sum(t == "defective" for _, _, t, _, _ in LABELLED)
    result = {
        "threshold": THRESHOLD,
        "min_area": AREA,
        "method": "ssim",
        "threshold_source": "validation",
        "tpr": 2 / n_def,
        "tnr": 2 / 3,
        "notes": [],
    }
    storage.write_json(out / "test_result.json", result)
    if optional:
        storage.write_json(
            out / "metrics.json",
            {
                "image_auroc": 0.75,
                "image_auroc_interval": [0.5, 0.9375],
                "pixel_auroc": 0.9,
                "au_pro": 0.6,
                "smooth_sigma": 4.0,
                "per_defect_type": {
                    "crack": {
                        "image_auroc": 0.8,
                        "image_auroc_interval": [0.25, 1.0],
                        "pixel_auroc": 0.91,
                        "au_pro": 0.7,
                    }
                },
                "notes": [],
            },
        )
        save_png(out / "roc_curves.png", value=200)
        for i, (defect, name, *_) in enumerate(LABELLED):
            stem = name.replace(".", "_") if defect == "hole" else Path(name).stem  # hole/000.png and 000.bmp
            (out / "anomaly_maps" / defect).mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(out / "anomaly_maps" / defect / f"{stem}.tiff", np.full((12, 20 + i), 0.1 * i, np.float32))
        setup = {"directory": str(data_dir), "architecture": "mvtec2", "loss": "ssim", "color": "grayscale", "size": 48}
        storage.write_json(run / runs.SETUP, {**setup, "batch": 4, "tag": "unit", "epochs_run": 2, "n_train": 11})
        save_png(run / runs.LOSS_PLOT, value=100)
    return run, out


def make_predictions(tmp_path):
    """A --images result folder: three images, masks for two, predictions.csv, prediction_setup.json."""
    images, out = tmp_path / "new", tmp_path / "pred"
    rows = []
    for i, (name, verdict, score) in enumerate([("a.png", "good", "0.3"), ("sub/b.png", "defective", "1.8")]):
        image = save_png(images / name, seed=i)
        mask = save_png(out / Path(name).parent / f"{Path(name).stem}_mask.png", value=255 if verdict != "good" else 0)
        rows.append([image, verdict, score, 9 if verdict == "defective" else 0, 1, mask, ""])
    rows.append([save_png(images / "c.png", seed=5), "defective", "3.1", 40, 2, "", ""])  # its mask went missing
    with open(out / "predictions.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "verdict", "score", "largest_area", "n_regions", "mask", "overlay"])
        writer.writerows(rows)
    storage.write_json(
        out / "prediction_setup.json",
        {"threshold": THRESHOLD, "min_area": AREA, "method": "ssim", "images": str(images)},
    )
    return images, out


# --------------------------------------------------------------------------- unit tests


def test_labelled_page_rows_are_the_csv_misses_and_false_alarms_first(tmp_path):
    run, out = make_labelled(tmp_path)
    page_path = report.write_report(out, run)
    assert page_path == out / "report.html"
    page = read_page(page_path)

    expected = {
        (
            f"{r['defect_type']}/{Path(r['path']).name}",
            r["defect_type"],
            r["truth"],
            verdict_of(r),
            r["score"],
        )
        for r in csv_rows(out / "classification.csv")
    }
    shown = {(r["data-name"], r["data-defect"], r["data-truth"], r["data-verdict"], r["data-score"]) for r in page.rows}
    assert len(page.rows) == len(LABELLED) and shown == expected
    # Outcomes agree with truth and verdict; misses, then false alarms, come first (highest score first).
    assert all(r["data-outcome"] == outcome(r["data-truth"], r["data-verdict"]) for r in page.rows)
    ranks = [OUTCOME_RANK[r["data-outcome"]] for r in page.rows]
    assert ranks == sorted(ranks)
    assert [r["data-name"] for r in page.rows[:3]] == ["crack/000.png", "hole/000.png", "good/001.png"]
    assert [int(r["data-i"]) for r in page.rows] == list(range(len(LABELLED)))
    # The cells say good/defective, the score as the CSV gives it (3 decimals), never True/False.
    for row in page.rows:
        assert row["data-truth"] in row["cells"] and row["data-verdict"] in row["cells"]
        assert f"{float(row['data-score']):.3f}" in row["cells"]
    text = " ".join(page.text)
    assert "True" not in text and "False" not in text
    assert report.SCORE_MEANING in text
    assert "validation" in text and "0.500000" in text and f"{AREA} px" in text
    for label in ("image AUROC", "pixel AUROC", "AU-PRO", "TPR", "TNR"):
        assert label in text
    # Each count-based rate with its exact 95 % interval (Beta quantiles: Clopper-Pearson by hand).
    for k, n, said in ((2, 3, "good images judged good"), (2, 4, "minimum area"), (1, 2, "found")):
        low, high = beta.ppf(0.025, k, n - k + 1), beta.ppf(0.975, k + 1, n - k)
        assert f"{said}: {k} of {n} ({k / n:.0%}, 95% CI {low:.0%}–{high:.0%})" in text
    assert "0.750" in text and "(95% CI 0.500–0.938)" in text  # the image AUROC with its bootstrap interval
    assert "0.800 (95% CI 0.250–1.000)" in text  # crack's, in the defect table
    assert f"false alarms: 1 of 3 (33%, 95% CI {beta.ppf(0.025, 1, 3):.0%}–{beta.ppf(0.975, 2, 2):.0%})" in text

    # Every image has its thumbnail and its map on the shared scale, small files in report_files/.
    sources = [img["data-src"] for img in page.images if "data-src" in img]  # set by the page when in view
    assert len(sources) == 2 * len(LABELLED)
    for src in sources:
        assert src.startswith("report_files/") and img_is_lazy(page, src)
        with Image.open(out / src) as im:
            assert max(im.size) <= report.THUMB
    assert "2 × threshold = 1" in text  # the scale: 0 .. 2 x threshold
    # One colour scale for all: each (flat) map shows the colour of its value on 0 .. 2 x threshold.
    lut = report.colormap()
    for row in page.rows:
        i = [f"{d}/{n}" for d, n, *_ in LABELLED].index(row["data-name"])  # its map's value is 0.1 i
        with Image.open(out / "report_files" / f"{int(row['data-i']):05d}_m.jpg") as im:
            colour = np.asarray(im.convert("RGB"), dtype=float).reshape(-1, 3).mean(axis=0)
        np.testing.assert_allclose(colour, lut[int(0.1 * i / (2 * THRESHOLD) * 255)], atol=6)

    # Sections: the optional files that exist are in, those missing (PRO curve, validation, finetune) are out.
    assert page.sections == ["decision", "metrics", "curves", "defects", "gallery", "setup", "training"]
    assert sum(img.get("src", "").startswith("data:image/png") for img in page.images) == 2  # ROC curves, loss curve
    assert set(page.selects) == {"filter-verdict", "filter-truth", "filter-defect", "filter-outcome"}
    assert page.selects["filter-defect"] == ["", "crack", "good", "hole"]
    # Self-contained: nothing fetched from the network.
    assert "http://" not in page_path.read_text() and "https://" not in page_path.read_text()


def img_is_lazy(page, src):
    return any(img.get("data-src") == src and img.get("loading") == "lazy" for img in page.images)


def test_missing_optional_files_are_left_out_and_present_ones_appear(tmp_path):
    run, out = make_labelled(tmp_path, optional=False)
    page = read_page(report.write_report(out, run))
    assert page.sections == ["decision", "metrics", "defects", "gallery"]
    assert len(page.rows) == len(LABELLED)
    text = " ".join(page.text)
    assert "image AUROC" not in text and "TPR" in text  # without metrics.json only the verdict rates
    assert not any(img.get("src", "").startswith("data:") for img in page.images)
    assert "–" in [r["cells"][1] for r in page.rows][0]  # no anomaly map: a dash, no broken image

    # The run's story appears once its files exist: validation (threshold choice) and finetune plots.
    storage.write_json(
        run / "validation" / "ssim" / f"a{AREA}" / "validation_result.json",
        {"threshold": THRESHOLD, "min_area": AREA, "n_images": 3, "largest_area_at_threshold": 4},
    )
    save_png(run / "validation" / "ssim" / f"a{AREA}" / "threshold_search.png")
    save_png(run / "finetune" / "ssim" / "regions_vs_threshold.png")
    save_png(run / "finetune" / "l2" / "other_method.png")  # another method's plots stay out
    page = read_page(report.write_report(out, run))
    assert page.sections == ["decision", "metrics", "defects", "gallery", "validation", "finetune"]
    assert sum(img.get("src", "").startswith("data:image/png") for img in page.images) == 2
    assert "other method" not in " ".join(page.text)


def test_predictions_page(tmp_path):
    images, out = make_predictions(tmp_path)
    page = read_page(report.write_report(out, tmp_path / "no_run"))
    frame = csv_rows(out / "predictions.csv")
    shown = {(r["data-name"], r["data-verdict"], r["data-score"]) for r in page.rows}
    assert shown == {(Path(r["path"]).relative_to(images).as_posix(), r["verdict"], r["score"]) for r in frame}
    assert [r["data-verdict"] for r in page.rows] == ["defective", "defective", "good"]  # defective first
    assert [r["data-name"] for r in page.rows] == ["c.png", "sub/b.png", "a.png"]  # then by score
    assert set(page.selects) == {"filter-verdict"}  # no truth, no defect types
    assert page.sections == ["decision", "gallery"]
    # The mask thumbnail marks the defect in red; the row without a mask file shows a dash.
    b = next(r for r in page.rows if r["data-name"] == "sub/b.png")
    with Image.open(out / "report_files" / f"{int(b['data-i']):05d}_m.jpg") as im:
        red = np.asarray(im.convert("RGB"), dtype=float)
    assert (red[..., 0] - red[..., 1]).mean() > 80
    assert next(r for r in page.rows if r["data-name"] == "c.png")["cells"][1] == "–"
    assert "command line" in " ".join(page.text)  # no validation result of this threshold to credit


def test_written_again_and_never_over_foreign_files(tmp_path, monkeypatch):
    run, out = make_labelled(tmp_path)
    report.write_report(out, run)
    first = (out / "report_files" / "00000.jpg").read_bytes()
    report.write_report(out, run)  # replaces its own page and thumbnails
    assert (out / "report_files" / "00000.jpg").read_bytes() == first
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # no staging left

    # A failure half-way leaves the previous report as it was, and nothing half-written.
    before = {p: p.read_bytes() for p in [out / "report.html", *(out / "report_files").iterdir()]}

    def broken(*args, **kwargs):
        raise UserError("disk full (simulated)")

    monkeypatch.setattr(report, "_gallery_rows", broken)
    with pytest.raises(UserError, match="disk full"):
        report.write_report(out, run)
    assert {p: p.read_bytes() for p in [out / "report.html", *(out / "report_files").iterdir()]} == before
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
    monkeypatch.undo()

    # A report_files/ or report.html this tool did not write is never replaced.
    shutil.rmtree(out / "report_files")
    (out / "report_files").mkdir()
    (out / "report_files" / "mine.txt").write_text("user's file")
    with pytest.raises(UserError, match="not written by this tool"):
        report.write_report(out, run)
    assert (out / "report_files" / "mine.txt").read_text() == "user's file"
    shutil.rmtree(out / "report_files")
    (out / "report.html").write_text("<p>my own notes</p>")
    with pytest.raises(UserError, match="not written by this tool"):
        report.write_report(out, run)
    assert (out / "report.html").read_text() == "<p>my own notes</p>" and not (out / "report_files").exists()

    with pytest.raises(UserError, match="neither classification.csv nor predictions.csv"):
        report.write_report(tmp_path, run)


# --------------------------------------------------------------------------- test.py and the browser


@pytest.fixture(scope="module")
def tested(tiny_run, tmp_path_factory):
    """A copy of the session's tiny run, validated at area 10 and tested by test.py (in-process):
    ``(run folder, stdout, result folder)``."""
    import validate

    run = tmp_path_factory.mktemp("report") / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("validation", "test", "predictions"))
    code, _, err = run_quietly(validate.main, ["-p", str(run), "-a", "10"])
    assert code == 0, err
    code, out, err = run_quietly(load_script("test").main, ["-p", str(run)])
    assert code == 0, err
    return run, out, Path(out.strip().splitlines()[-1])


def test_test_py_writes_the_report_and_ends_with_the_result_folder(tested, tmp_path, tiny_dataset, capsys):
    run, out, folder = tested
    lines = out.strip().splitlines()
    assert lines[-1] == str(folder) and folder.parent == run / "test" / "ssim"
    assert lines[-2] == f"report: {folder / 'report.html'}"
    page = read_page(folder / "report.html")
    assert len(page.rows) == len(csv_rows(folder / "classification.csv"))
    assert {"validation", "setup", "training", "curves"} <= set(page.sections)
    validated = json.loads(next(run.glob("validation/ssim/a*/validation_result.json")).read_text())
    low, high = validated["validation_tnr_interval"]
    assert f"held-back good images passed {validated['validation_tnr']:.2f} (95% CI {low:.0%}–{high:.0%})" in " ".join(
        page.text
    )

    # --images predictions get their page too, and the last line stays the folder.
    images = tmp_path / "new"
    for defect in ("good", "crack"):
        shutil.copytree(tiny_dataset / "test" / defect, images / defect)
    code, out, err = cli(
        load_script("test").main, ["-p", str(run), "--images", str(images), "--overlays", "none"], capsys
    )
    assert code == 0, err
    lines = out.strip().splitlines()
    pred = Path(lines[-1])
    assert lines[-2] == f"report: {pred / 'report.html'}"
    page = read_page(pred / "report.html")
    assert {r["data-name"] for r in page.rows} == {
        Path(r["path"]).relative_to(images).as_posix() for r in csv_rows(pred / "predictions.csv")
    }


def _browser():
    """A headless Chromium driven by selenium, or a skip with one line saying what is missing."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install selenium): browser test of report.html skipped")
    binary = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = shutil.which("chromedriver")
    if binary is None or driver is None:
        pytest.skip(
            "chromium or chromedriver not found (Debian: apt-get install chromium chromium-driver): "
            "browser test of report.html skipped"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,900"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        return webdriver.Chrome(options=options, service=Service(driver))
    except Exception as exc:  # noqa: BLE001 - a browser that cannot start is a missing browser here
        pytest.skip(f"headless chromium did not start ({str(exc).splitlines()[0][:120]}): browser test skipped")


def test_report_in_headless_chromium(tested, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    _, _, folder = tested
    expected = csv_rows(folder / "classification.csv")
    browser = _browser()
    try:
        browser.get((folder / "report.html").as_uri())
        rows = browser.find_elements(By.CSS_SELECTOR, "#gallery-body tr")

        def seen(attribute, only_visible=False):
            return [r.get_attribute(attribute) for r in rows if not only_visible or r.is_displayed()]

        def names(only_visible=False):
            return seen("data-name", only_visible)

        # The rows are classification.csv's, with its truth, verdict and score; problems first.
        by_name = {f"{r['defect_type']}/{Path(r['path']).name}": r for r in expected}
        assert sorted(names()) == sorted(by_name)
        for row in rows:
            record = by_name[row.get_attribute("data-name")]
            assert row.get_attribute("data-score") == record["score"]
            assert row.get_attribute("data-truth") == record["truth"]
            assert row.get_attribute("data-verdict") == verdict_of(record)
        ranks = [OUTCOME_RANK[o] for o in seen("data-outcome")]
        assert ranks == sorted(ranks)
        # Thumbnails load once their row comes near the screen (image and map of each), none broken.
        for which in ("firstElementChild", "lastElementChild"):
            row = f"document.getElementById('gallery-body').{which}"
            browser.execute_script(f"{row}.scrollIntoView()")
            loaded = f"return Array.from({row}.querySelectorAll('img')).filter(i => i.complete && i.naturalWidth > 0)"
            WebDriverWait(browser, 10).until(lambda b, loaded=loaded: len(b.execute_script(loaded)) == 2)
        broken = "return Array.from(document.images).filter(i => i.src && i.complete && i.naturalWidth === 0).length"
        assert browser.execute_script(broken) == 0

        # Sort by score: high to low, then low to high; back to the default order.
        browser.find_element(By.ID, "sort-score").click()
        rows = browser.find_elements(By.CSS_SELECTOR, "#gallery-body tr")
        scores = [float(s) for s in seen("data-score")]
        assert scores == sorted(scores, reverse=True)
        browser.find_element(By.ID, "sort-score").click()
        rows = browser.find_elements(By.CSS_SELECTOR, "#gallery-body tr")
        assert [float(s) for s in seen("data-score")] == sorted(scores)
        browser.find_element(By.ID, "sort-name").click()
        rows = browser.find_elements(By.CSS_SELECTOR, "#gallery-body tr")
        assert names() == sorted(by_name)

        # Filter by verdict: only those rows stay visible; with the defect type as well, both apply.
        for verdict in ("defective", "good"):
            Select(browser.find_element(By.ID, "filter-verdict")).select_by_value(verdict)
            want = sorted(n for n, r in by_name.items() if verdict_of(r) == verdict)
            assert sorted(names(only_visible=True)) == want
            assert browser.find_element(By.ID, "gallery-count").text == f"{len(want)} of {len(rows)} images shown"
        Select(browser.find_element(By.ID, "filter-defect")).select_by_value("good")
        want = sorted(n for n, r in by_name.items() if verdict_of(r) == "good" and n.startswith("good/"))
        assert sorted(names(only_visible=True)) == want
        Select(browser.find_element(By.ID, "filter-verdict")).select_by_value("")
        Select(browser.find_element(By.ID, "filter-defect")).select_by_value("")
        assert len(names(only_visible=True)) == len(by_name)

        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
        shot = tmp_path / "report.png"
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    finally:
        browser.quit()


def test_unreadable_score_is_refused(tmp_path):
    """A score the CSV cannot parse is refused with one line (a hand-edited file), nothing written."""
    run, out = make_labelled(tmp_path, optional=False)
    text = (out / "classification.csv").read_text().replace("2.5", "lots")
    (out / "classification.csv").write_text(text)
    with pytest.raises(UserError, match="score 'lots' is not a number"):
        report.write_report(out, run)
    assert not (out / "report.html").exists() and not (out / "report_files").exists()
