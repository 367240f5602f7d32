"""The README's first command (scripts/demo.sh) end to end on a tiny configuration, twice."""
import json
import os
import subprocess
import sys

from conftest import ROOT


def test_demo_runs_end_to_end_and_reuses_its_work(tmp_path):
    env = {**os.environ, "DEMO_SKIP_SETUP": "1", "PYTHON": sys.executable, "DEMO_SIZE": "48",
           "DEMO_TRAIN": "12", "DEMO_TEST_GOOD": "3", "DEMO_TEST_DEFECT": "1", "DEMO_INSTANCES": "20",
           "DEMO_AREA": "4", "DEMO_DATA": str(tmp_path / "data"), "DEMO_OUT": str(tmp_path / "runs")}
    first = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh")], env=env, capture_output=True, text=True,
                           timeout=600, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    for step in ("[1/5] dataset", "[2/5] train", "[3/5] finetune", "[4/5] validate", "[5/5] test", "Demo finished"):
        assert step in first.stdout, step
    (setup_path,) = (tmp_path / "runs").glob("data/brick/mvtec2/SSIM/*/setup.json")
    run = setup_path.parent
    assert json.loads(setup_path.read_text())["tag"] == "demo"
    (result,) = run.glob("test/ssim/a4_t*/test_result.json")
    assert json.loads(result.read_text())["n_images"] == 3 + 5
    assert (run / "test" / "ssim" / "metrics.json").is_file()
    assert list(run.glob("test/ssim/a4_t*/hole/000_overlay.png"))
    assert f"run folder:          {run}" in first.stdout

    # Again, with everything into one log file, as `bash scripts/demo.sh > demo.log 2>&1` does:
    # echoing progress must not reopen (truncate) that file and leave NUL bytes in it.
    log = tmp_path / "demo.log"
    with open(log, "w") as out:
        second = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh")], env=env, stdout=out,
                                stderr=subprocess.STDOUT, timeout=600, cwd=tmp_path)
    text = log.read_text()
    assert second.returncode == 0, text[-2000:]
    assert "\x00" not in text
    for step in ("[1/5] dataset", "reusing finished demo run", "[5/5] test", "TPR ", "Demo finished"):
        assert step in text, step
    assert text.index("[1/5] dataset") < text.index("[5/5] test") < text.index("TPR ") < text.index("Demo finished")
    assert "skip" in text.lower()
    assert len(list((tmp_path / "runs").glob("data/brick/mvtec2/SSIM/*/setup.json"))) == 1
