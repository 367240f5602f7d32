"""Unit tests of evaluation.py's pieces on real arrays and files, without a model: the verdict
table and result, the threshold-free metrics, the anomaly-map files and the curve figures."""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import evaluation  # noqa: E402
import inference  # noqa: E402
import metrics  # noqa: E402
import runs  # noqa: E402
from detector import Detector  # noqa: E402

SIDE = 16


def opened(tmp_path, threshold=0.5, min_area=3):
    record = {"size": SIDE, "color": "grayscale", "directory": str(tmp_path), "architecture": "mvtec", "loss": "ssim"}
    setup = runs.RunSetup.from_record(runs.upgrade_setup({**record, "batch": 1}))
    run = runs.Run(tmp_path, setup, tmp_path / "m.keras")
    return Detector(
        inference.Mapper(run, "ssim", inference.MapOptions(True, 2, 1), 16, threshold, min_area, "command line")
    )


def scored(tmp_path):
    """Two good and two defective images (one found, one missed), with masks where defects are."""
    items = [
        (tmp_path / "test/good/000.png", "good", None),
        (tmp_path / "test/good/001.png", "good", None),
        (tmp_path / "test/hole/000.png", "hole", tmp_path / "ground_truth/hole/000_mask.png"),
        (tmp_path / "test/hole/001.png", "hole", tmp_path / "ground_truth/hole/001_mask.png"),
    ]
    maps, masks = [], []
    for k, (_, defect, _) in enumerate(items):
        m = np.full((SIDE, SIDE), 0.1 * k, np.float32)
        gt = np.zeros((SIDE, SIDE), bool)
        if defect != "good":
            m[4:8, 4:8] += 0.8
            gt[4:8, 4:8] = True
        maps.append(m)
        masks.append(gt)
    frame = pd.DataFrame(
        {
            "path": [str(p) for p, _, _ in items],
            "defect_type": [d for _, d, _ in items],
            "truth": ["good", "good", "defective", "defective"],
            "verdict": ["good", "defective", "defective", "good"],
            "largest_area": [0, 5, 16, 1],
            "n_regions": [0, 1, 1, 1],
            "score": [float(m.max()) for m in maps],
        }
    )
    return evaluation.Scored(items, ["000", "001", "000", "001"], [(SIDE, SIDE)] * 4, maps, masks, frame, True)


def test_detection_table_rates_per_defect_type_and_total(tmp_path):
    table = evaluation.detection_table(scored(tmp_path).frame)
    assert table.loc["good", "images"] == 2 and table.loc["good", "predicted_defective"] == 1
    assert table.loc["hole", "rate"] == 0.5 and table.loc["total", "rate"] == 0.5
    # Each rate's exact interval from its own counts: 1 of 2 per type, 2 of 4 in all.
    # 1 of 2: the exact ends solve 1 - (1 - p)^2 = 0.025 and 1 - p^2 = 0.025.
    assert list(table.loc["hole", ["low", "high"]]) == pytest.approx([1 - 0.975**0.5, 0.975**0.5])
    assert list(table.loc["total", ["low", "high"]]) == pytest.approx(metrics.rate_interval(2, 4))


def test_classification_result_records_threshold_options_and_rates(tmp_path):
    result, table = evaluation.classification_result(opened(tmp_path), scored(tmp_path), ["good", "hole"], [])
    assert (result["threshold"], result["min_area"], result["method"]) == (0.5, 3, "ssim")
    assert result["threshold_source"] == "command line" and result["scales"] == 2 and result["baseline"] is True
    assert result["tpr"] == 0.5 and result["tnr"] == 0.5 and result["n_images"] == 4
    assert result["detection_rate_per_defect_type"] == {"good": 0.5, "hole": 0.5}
    assert result["tpr_interval"] == result["tnr_interval"] == pytest.approx(metrics.rate_interval(1, 2))
    assert result["detection_interval_per_defect_type"]["hole"] == pytest.approx(metrics.rate_interval(1, 2))
    assert result["confidence"] == 0.95
    assert inference.MapOptions.from_record(result, "r") == inference.MapOptions(True, 2, 1)


def test_threshold_free_metrics_of_separable_maps(tmp_path):
    evaluated, curves = evaluation.threshold_free_metrics(
        opened(tmp_path), scored(tmp_path), 4.0, 0.3, {"model_sha256": "x"}
    )
    assert evaluated["image_auroc"] == 1.0 and evaluated["pixel_auroc"] == pytest.approx(1.0)
    assert evaluated["smooth_sigma"] == 4.0 and evaluated["model_sha256"] == "x"
    assert set(curves) >= {"pixel_roc", "pro"}


def test_anomaly_maps_are_float32_tiffs_in_mvtec_layout(tmp_path):
    import tifffile

    s = scored(tmp_path)
    evaluation.write_anomaly_maps(tmp_path / "maps", s)
    written = sorted(str(p.relative_to(tmp_path / "maps")) for p in (tmp_path / "maps").rglob("*.tiff"))
    assert written == ["good/000.tiff", "good/001.tiff", "hole/000.tiff", "hole/001.tiff"]
    back = tifffile.imread(tmp_path / "maps" / "hole" / "001.tiff")
    assert back.dtype == np.float32 and np.array_equal(back, s.full_maps[3])


def test_curve_figures_only_where_defined(tmp_path):
    s = scored(tmp_path)
    evaluated, curves = evaluation.threshold_free_metrics(opened(tmp_path), s, 4.0, 0.3, {})
    evaluation.plot_test_curves(tmp_path, s, evaluated, curves, "ssim", 4.0, 0.3)
    assert (tmp_path / "roc_curves.png").is_file() and (tmp_path / "pro_curve.png").is_file()
    empty = tmp_path / "none"
    empty.mkdir()
    evaluation.plot_test_curves(empty, s, {"image_auroc": None}, {}, "ssim", 4.0, 0.3)
    assert list(empty.iterdir()) == []
