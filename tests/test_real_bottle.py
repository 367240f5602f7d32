"""The whole command-line pipeline on real MVTec AD files (``../shared/data/mvtec_real/bottle``).

Real PNGs, real ``ground_truth/<defect>/*_mask.png`` names and RGB images: the layout code
must read them exactly as MVTec ships them. The model is trained for one epoch at 32 px,
without the learned head, so only the plumbing is checked here, not quality (that is
``bench/bench_bottle.py``). The shared folder is only read; the test checks that nothing in
it changed. Skipped when the shared data is absent (e.g. on a machine without ``../shared``).
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, cli

import data  # noqa: E402
import test as test_script  # noqa: E402
import train  # noqa: E402
import validate  # noqa: E402

BOTTLE = ROOT.parent / "shared" / "data" / "mvtec_real" / "bottle"
DEFECTS = {"good": 20, "broken_large": 20, "broken_small": 22, "contamination": 21}

pytestmark = pytest.mark.skipif(not (BOTTLE / "train" / "good").is_dir(), reason=f"real MVTec bottle not at {BOTTLE}")


def _listing(folder):
    return sorted((p.relative_to(folder).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*"))


def test_real_layout_reads_every_image_with_its_mask():
    items = data.list_test_images(BOTTLE)
    assert {d: sum(1 for _, t, _ in items if t == d) for d in DEFECTS} == DEFECTS
    for path, defect, mask_path in items:
        if defect == "good":
            assert mask_path is None
            continue
        assert mask_path == BOTTLE / "ground_truth" / defect / f"{path.stem}_mask.png"
    path, _, mask_path = next(it for it in items if it[1] == "contamination")
    mask = data.load_mask(mask_path, data.image_size(path))
    assert mask.dtype == bool and mask.shape == (256, 256) and 0 < mask.sum() < mask.size


def test_train_validate_test_on_real_bottle(tmp_path, capsys):
    import tifffile

    before = _listing(BOTTLE)
    code, out, err = cli(
        train.main,
        [
            "new",
            "-d",
            str(BOTTLE),
            "-c",
            "rgb",
            "--size",
            "32",
            "--epochs",
            "1",
            "-b",
            "16",
            "--seed",
            "1",
            "--head-steps",  # the learned head (1500 steps, 2 min) is not on the SSIM path checked here
            "0",
            "--out",
            str(tmp_path),
        ],
        capsys,
    )
    assert code == 0, err
    run_dir = Path(out.strip().splitlines()[-1])
    setup = json.loads((run_dir / "setup.json").read_text())
    # 10% of the 209 good training images are held back, by name, for validation.
    held_back = (run_dir / "validation_files.txt").read_text().split()
    assert len(held_back) == 21 and all(n.startswith("train/good/") for n in held_back)
    assert setup["color"] == "rgb" and setup["epochs_run"] == 1

    code, out, err = cli(validate.main, ["-p", str(run_dir), "-a", "2"], capsys)
    assert code == 0, err
    code, out, err = cli(test_script.main, ["-p", str(run_dir)], capsys)
    assert code == 0, err

    (folder,) = (run_dir / "test" / "ssim").glob("a*_t*")
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["n_images"] == 83 and metrics["n_defective"] == 63
    assert set(metrics["per_defect_type"]) == set(DEFECTS) - {"good"}
    assert "256x256" in metrics["pixel_resolution"]
    for key in ("image_auroc", "pixel_auroc", "au_pro"):
        assert 0.0 <= metrics[key] <= 1.0
    maps = sorted((folder / "anomaly_maps").rglob("*.tiff"))
    assert len(maps) == 83
    array = tifffile.imread(maps[0])
    assert array.shape == (256, 256) and array.dtype == np.float32
    (result_dir,) = [p.parent for p in (run_dir / "test" / "ssim").glob("*/classification.csv")]
    frame = pd.read_csv(result_dir / "classification.csv")
    assert frame["defect_type"].value_counts().to_dict() == DEFECTS
    assert _listing(BOTTLE) == before  # the shared data was only read
