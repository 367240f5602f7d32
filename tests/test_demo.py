"""The README's first command (scripts/demo.sh) end to end on a tiny configuration, twice."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def _train_has(option):
    """True when ``train.py new`` offers ``option`` (the tiny configuration shrinks every costly step it has)."""
    usage = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "new", "--help"], capture_output=True, text=True
    ).stdout
    return option in usage


def test_demo_runs_end_to_end_and_reuses_its_work(tmp_path):
    # 64 px: the smallest side the surface regime's default 64-px training patches fit in.
    extra = "--head-steps 20" if _train_has("--head-steps") else ""
    env = {
        **os.environ,
        "DEMO_SKIP_SETUP": "1",
        "PYTHON": sys.executable,
        "DEMO_SIZE": "64",
        "DEMO_TRAIN": "12",
        "DEMO_TEST_GOOD": "3",
        "DEMO_TEST_DEFECT": "1",
        "DEMO_INSTANCES": "20",
        "DEMO_AREA": "4",
        "DEMO_TRAIN_ARGS": extra,
        "DEMO_DATA": str(tmp_path / "data"),
        "DEMO_OUT": str(tmp_path / "runs"),
    }
    for name in ("DEMO_ARCH", "DEMO_LOSS", "DEMO_COLOR", "DEMO_BATCH", "DEMO_LR"):
        env.pop(name, None)
    first = subprocess.run(
        ["bash", str(ROOT / "scripts" / "demo.sh")], env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    assert first.returncode == 0, first.stderr[-2000:]
    for step in ("[1/5] dataset", "[2/5] train", "[3/5] finetune", "[4/5] validate", "[5/5] test", "Demo finished"):
        assert step in first.stdout, step
    (setup_path,) = (tmp_path / "runs").glob("data/brick/*/*/*/setup.json")
    run = setup_path.parent
    setup = json.loads(setup_path.read_text())
    assert setup["tag"] == "demo"
    # train.py's defaults: only the tiny configuration's overrides are on the command line.
    assert setup["command"] == (
        f"train.py new -d {tmp_path / 'data'}/brick -t demo --out {tmp_path / 'runs'} --size 64 -i 20"
        f"{' ' + extra if extra else ''}"
    )
    (result_path,) = run.glob("test/*/a4_t*/test_result.json")
    result = json.loads(result_path.read_text())
    assert result["n_images"] == 3 + 5
    metrics_path = result_path.parent / "metrics.json"
    assert metrics_path.is_file()
    assert list(result_path.parent.glob("hole/000_overlay.png"))
    assert f"run folder:          {run}" in first.stdout

    # The closing figures are the ones in the result files.
    scores = json.loads(metrics_path.read_text())
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    found = round(result["tpr"] * result["n_defective"])
    (tpr_low, tpr_high), (tnr_low, tnr_high) = result["tpr_interval"], result["tnr_interval"]
    assert f"found {found} of 5 defective images (TPR {result['tpr']:.2f}, 95% CI {tpr_low:.2f}-{tpr_high:.2f})" in (
        first.stdout
    )
    assert re.search(
        rf"passed \d of 3 good ones \(TNR {result['tnr']:.2f}, 95% CI {tnr_low:.2f}-{tnr_high:.2f}\)", first.stdout
    )
    assert (
        f"image AUROC {fmt(scores['image_auroc'])}   pixel AUROC {fmt(scores['pixel_auroc'])}   "
        f"AU-PRO (FPR <= 0.3) {fmt(scores['au_pro'])}"
    ) in first.stdout
    assert "found per defect type: contamination " in first.stdout
    assert first.stdout.index("image AUROC") < first.stdout.index("Demo finished")

    # Again, with everything into one log file, as `bash scripts/demo.sh > demo.log 2>&1` does:
    # echoing progress must not reopen (truncate) that file and leave NUL bytes in it.
    log = tmp_path / "demo.log"
    with open(log, "w") as out:
        second = subprocess.run(
            ["bash", str(ROOT / "scripts" / "demo.sh")],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=600,
            cwd=tmp_path,
        )
    text = log.read_text()
    assert second.returncode == 0, text[-2000:]
    assert "\x00" not in text
    for step in ("[1/5] dataset", "reusing finished demo run", "[5/5] test", "TPR ", "Demo finished"):
        assert step in text, step
    assert text.index("[1/5] dataset") < text.index("[5/5] test") < text.index("TPR ") < text.index("Demo finished")
    assert "skip" in text.lower()
    assert len(list((tmp_path / "runs").glob("data/brick/*/*/*/setup.json"))) == 1
    # Last, as it may skip where no browser starts: the demo's report.html in headless Chromium.
    (result_path,) = run.glob("test/*/a4_t*/test_result.json")
    _demo_report_in_headless_chromium(result_path.parent, tmp_path)


def _demo_report_in_headless_chromium(folder, tmp_path):
    """The demo's report.html in a real browser: one gallery row per classification.csv row, with
    its verdict and score; a screenshot is kept. Skips the browser part (only) where none starts."""
    from test_report import _browser, csv_rows, verdict_of

    expected = {f"{r['defect_type']}/{Path(r['path']).name}": r for r in csv_rows(folder / "classification.csv")}
    browser = _browser()  # skips with one line where no browser starts (the demo was checked before)
    try:
        from selenium.webdriver.common.by import By

        browser.get((folder / "report.html").as_uri())
        rows = browser.find_elements(By.CSS_SELECTOR, "#gallery-body tr")
        assert sorted(r.get_attribute("data-name") for r in rows) == sorted(expected)
        for row in rows:
            record = expected[row.get_attribute("data-name")]
            assert row.get_attribute("data-verdict") == verdict_of(record)
            assert row.get_attribute("data-score") == record["score"]
        assert browser.save_screenshot(str(tmp_path / "demo_report.png"))
    finally:
        browser.quit()
