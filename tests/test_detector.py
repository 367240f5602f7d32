"""detector.Detector: the Python API gives test.py's rows for paths and for arrays."""

import numpy as np
import pandas as pd
import pytest

import data
import evaluation
import validation
from detector import Detector
from settings import MapRequest


def test_detector_predicts_what_test_py_writes(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    validation.validate(run, 4, MapRequest(method="ssim"))
    _, _, _, folder = evaluation.test_run(run, MapRequest(method="ssim"))
    frame = pd.read_csv(folder / "classification.csv")
    detector = Detector.open(run, MapRequest(method="ssim"))
    assert detector.method == "ssim" and detector.min_area == 4
    results = detector.predict(frame["path"])
    assert [str(r.path) for r in results] == list(frame["path"])
    for r, row in zip(results, frame.itertuples()):
        assert r.score == pytest.approx(row.score, rel=1e-5) and r.defective == (row.verdict == "defective")
        assert r.largest_area == row.largest_area and r.verdict == row.verdict
        assert r.mask.sum() >= (4 if r.defective else 0) and (r.mask.any() == r.defective)
    # The same images as an array give the same scores.
    run_obj = detector.mapper.run
    images, _ = data.load_images(list(frame["path"][:3]), run_obj.color, run_obj.shape)
    again = detector.predict(images)
    np.testing.assert_allclose([r.score for r in again], [r.score for r in results[:3]], rtol=1e-5)
    assert again[0].path is None and again[0].size is None
    with pytest.raises(ValueError, match="images must be"):
        detector.predict(np.zeros((1, 5, 5, 1), np.float32))
    with pytest.raises(ValueError, match="smooth must be"):
        Detector(detector.mapper, smooth=-1)
