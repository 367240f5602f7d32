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


def test_each_prediction_matches_an_independent_computation_from_its_raw_map(tiny_run, tiny_dataset):
    """Mask, largest area, region count, verdict, score, smoothed map and size, recomputed from
    each raw map with scikit-image, SciPy and Pillow (not the suite's own region code)."""
    from PIL import Image
    from scipy import ndimage
    from skimage.measure import label

    paths = sorted((tiny_dataset / "test").rglob("*.png"))[:6]
    area = 3
    probe = Detector.open(tiny_run, MapRequest(method="ssim"), threshold=1.0, min_area=area)
    raw = np.stack([p.raw_map for p in probe.predict(paths)])
    threshold = float(np.quantile(raw, 0.97))  # some images defective, some not
    detector = Detector.open(tiny_run, MapRequest(method="ssim"), threshold=threshold, min_area=area, smooth=2.0)
    results = detector.predict(paths)
    verdicts = []
    for p, path in zip(results, paths):
        labels = label(p.raw_map > threshold, connectivity=2)
        areas = np.bincount(labels.ravel())[1:]
        keep = np.isin(labels, 1 + np.flatnonzero(areas >= area))
        np.testing.assert_array_equal(p.mask, keep)
        assert p.largest_area == (areas.max() if areas.size else 0) and p.n_regions == areas.size
        assert p.defective == bool((areas >= area).any())
        peak = next(
            v
            for v in np.unique(p.raw_map)
            if np.bincount(label(p.raw_map > v, connectivity=2).ravel())[1:].max(initial=0) < area
        )
        assert p.score == pytest.approx(peak / threshold, rel=1e-6)
        assert (p.score > 1) == p.defective
        np.testing.assert_allclose(p.anomaly_map, ndimage.gaussian_filter(p.raw_map, 2.0), atol=1e-5)
        with Image.open(path) as image:
            assert p.size == image.size
        verdicts.append(p.defective)
    assert 0 < sum(verdicts) < len(verdicts)


def test_the_readme_python_example_runs(tiny_run, tiny_dataset, tmp_path, capsys):
    """README's "From Python" block, run as written on a validated copy of the tiny run."""
    import re
    import shutil

    from conftest import ROOT

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    validation.validate(run, 4)
    (block,) = re.findall(r"^## From Python\n\n```python\n(.*?)^```", (ROOT / "README.md").read_text(), re.M | re.S)
    images = sorted((tiny_dataset / "test").rglob("*.png"))[:2]
    code = block.replace('"RUN"', repr(str(run)))
    code = code.replace('"part1.png"', repr(str(images[0]))).replace('"part2.png"', repr(str(images[1])))
    assert code != block and str(images[1]) in code
    exec(compile(code, "README.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    frame = pd.read_csv(evaluation.test_run(run)[3] / "classification.csv").set_index("path")
    assert len(lines) == 2
    for line, image in zip(lines, images):
        path, verdict, score, largest = line.split()
        assert path == str(image) and verdict == frame.loc[str(image), "verdict"]
        assert float(score) == pytest.approx(frame.loc[str(image), "score"], rel=1e-5)
        assert int(largest) == frame.loc[str(image), "largest_area"]


def test_a_detector_reads_each_calibration_once_and_one_opened_for_maps_gives_no_verdicts(
    tiny_run, tiny_dataset, tmp_path, monkeypatch
):
    """Opened once, a detector reads its calibration once however many chunks it maps (it was
    read again for every 32-image chunk); opened for maps only (validate.py, finetune.py,
    export.py), it maps paths and arrays alike and refuses verdicts."""
    import shutil

    import inference

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    paths = sorted((tiny_dataset / "test").rglob("*.png"))[:5]
    request = MapRequest(method="ssim", passes=2)  # a baseline and a repaint threshold to calibrate
    maps_only = Detector.open_maps(run, request)
    whole = maps_only.maps(paths)  # learns the calibration and caches it in the run
    reads = []
    real = inference.cached_calibration
    monkeypatch.setattr(inference, "cached_calibration", lambda *a: reads.append(a[1]) or real(*a))
    monkeypatch.setattr(inference, "STREAM_CHUNK", 2)  # three chunks
    results = Detector.open(run, request, threshold=1.0, min_area=4).predict(paths)
    assert reads == ["ssim"]
    np.testing.assert_allclose(np.stack([r.raw_map for r in results]), whole.maps, atol=1e-5)
    with pytest.raises(ValueError, match="opened for maps only"):
        maps_only.predict(paths)
    np.testing.assert_allclose(maps_only.maps(whole.images).maps, whole.maps, atol=1e-5)
    assert maps_only.calibration() is maps_only.calibration() and maps_only.calibration().baselines.shape[0] == 2
