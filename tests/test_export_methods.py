"""Every default run exports (issue 24, point 5): the learned, median, lowfreq and fused maps,
in the object and the surface regime (each method in every format once; see below), give what :func:`inference.run_maps`
gives: residual maps within 1e-4, anomaly maps within 1e-4, and the same regions and verdicts
(up to pixels within ROUNDING of the threshold, tests/test_export.py's rule). A fused map's
tolerance is 1e-4 times its gain Σ w/spread (:func:`exporting.map_tolerance`): float32 SSIM
differs between runtimes by ~1e-5 on flat images, which a small spread magnifies.

Two tiny runs with a learned head (10 steps): an object run (32 px on 64-px images) and a
surface run on non-square images (40x64, model 32x48), so the resize inside the artefact and
the non-square shape are exercised.
"""

import dataclasses
import json

import numpy as np
import pytest
from conftest import cli, train_args
from PIL import Image
from test_export import PASSES, ROUNDING, assert_same_decision, keras_inference  # noqa: F401 - keras_inference: autouse fixture

import data  # noqa: E402
import exporting  # noqa: E402
import inference  # noqa: E402
import methods  # noqa: E402
import predict_exported as pe  # noqa: E402
import resmaps  # noqa: E402
import runs  # noqa: E402
from settings import MapRequest  # noqa: E402

AREA = 8
FORMATS = tuple(exporting.FORMATS)
MEASURED = {}  # (regime, method, format) -> max abs difference of the residual maps, printed at the end


def _run(root, mode, resize=None):
    import make_dataset
    import training

    (class_dir,) = make_dataset.generate(
        root / "data", classes=("brick",), size=64, n_train=12, n_test_good=2, n_test_defect=1, seed=1
    )
    if resize:  # non-square images (ground truths too, nearest)
        for path in class_dir.rglob("*.png"):
            with Image.open(path) as image:
                mask = "ground_truth" in path.parts
                image.resize(resize, Image.Resampling.NEAREST if mask else Image.Resampling.BILINEAR).save(path)
    overrides = dict(size=32, epochs=2, mode=mode, head_steps=10, patch=None if mode == "object" else 32)
    run_dir, _ = training.new_run(train_args(class_dir, root / "runs", **overrides))
    return run_dir


@pytest.fixture(scope="module")
def object_run(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("object"), "object")


@pytest.fixture(scope="module")
def surface_run(tmp_path_factory):
    run_dir = _run(tmp_path_factory.mktemp("surface"), "surface", resize=(64, 40))
    assert tuple(runs.find_run(run_dir).shape) == (32, 48)
    return run_dir


def check_parity(run_dir, method, regime, formats=FORMATS):
    """Export ``method`` in ``formats``; each artefact's maps and decisions equal the suite's.
    ``fused``, the default of a run with a head, is validated and exported with no method
    given, as ``validate.py -p RUN`` and ``export.py -p RUN`` do."""
    import validation

    given = None if method == "fused" else method
    passes = PASSES if methods.get(method).multiscale else None  # test_export.PASSES: the loop body once
    validation.validate(run_dir, AREA, MapRequest(method=given, passes=passes))
    validated, _ = exporting.open_validated(run_dir, given)
    assert validated.method == method
    run, threshold = validated.run, validated.threshold
    paths = run.validation_paths() + sorted((run.class_dir / "test").rglob("*.png"))
    images, paths = data.load_images(paths, run.color, run.shape)
    _, expected = inference.run_maps(run, images, method, validated.options)
    tolerance = exporting.map_tolerance(method, validated.options)  # 1e-4, more for a fused map (see there)
    rounding = max(ROUNDING, tolerance)
    for fmt in formats:
        folder, meta = exporting.export_run(run_dir, fmt, method=given)
        assert meta["method"] == method and meta["shape"] == list(run.shape)
        detector = pe.Detector(folder)
        worst = 0.0
        for path, ref in zip(paths, expected):
            image = pe.read_image(path, detector.color)
            out = detector.run(image[None])
            worst = max(worst, float(np.abs(out["residual_map"][0] - ref).max()))
            size = (image.shape[1], image.shape[0])
            smoothed = inference.resize_map(resmaps.smooth(ref[None], meta["smooth_sigma"])[0], size)
            assert np.abs(out["anomaly_map"][0] - smoothed).max() <= tolerance
            largest, regions = (int(v[0]) for v in resmaps.region_stats([ref], threshold))
            mask = inference.resize_map(resmaps.defect_mask(ref, threshold, validated.min_area), size)
            result = detector.predict(image)
            defective = largest >= validated.min_area
            assert_same_decision(detector, image, result, mask, largest, regions, defective, rounding)
        MEASURED[regime, method, fmt] = worst, tolerance
        assert worst <= tolerance, (regime, method, fmt, worst)


# ---- the training-free maps and the fusion, as graph ops, against the suite's NumPy/OpenCV ----


@pytest.mark.parametrize("shape", [(32, 48, 1), (40, 25, 3), (15, 30, 1)])
def test_median_and_lowfreq_graphs_equal_resmaps(shape):
    """The 21-px median exactly (ties, replicated borders, a window larger than the image),
    the low-frequency map to float32 rounding (OpenCV's and the graph's Gaussian kernels)."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (2, *shape)).astype(np.float32)
    pixels[:, :5] = 7  # a run of equal values
    np.testing.assert_array_equal(
        exporting.median_residual(tf.constant(pixels)).numpy(), resmaps.median_residual(pixels / 255.0)
    )
    got = exporting.lowfreq_residual(tf.constant(pixels / 255.0)).numpy()
    assert np.abs(got - resmaps.lowfreq_residual(pixels / 255.0)).max() < 1e-6
    for n in ((2, 3, 4, 1), (2, 3, 5, 1)):  # even and odd pixel counts: NumPy's median either way
        x = rng.random(n, dtype=np.float32)
        expected = np.median(x, axis=(1, 2), keepdims=True)
        np.testing.assert_array_equal(exporting.image_median(tf.constant(x)).numpy(), expected)


def test_fusion_combines_alike_in_numpy_and_tensorflow():
    import tensorflow as tf

    fusion = inference.Fusion(("learned", "ssim", "median"), (0.5, 0.0, 0.5), (0.1, 0.2, 0.01), (0.3, 0.4, 0.2))
    maps = list(np.random.default_rng(1).random((3, 2, 8, 8), dtype=np.float32))
    expected = fusion.combine(maps)
    given = [tf.constant(m) if w else None for m, w in zip(maps, fusion.weights)]
    got = fusion.combine(given, exporting._GraphOps).numpy()
    assert expected.dtype == np.float32 and np.abs(got - expected).max() < 1e-6
    minus = dataclasses.replace(fusion, usual=True)
    usual = [m[0] * 0.5 if w else None for m, w in zip(maps, fusion.weights)]
    expected = minus.combine(maps, usual=usual)
    got = minus.combine(given, exporting._GraphOps, [None if u is None else tf.constant(u) for u in usual]).numpy()
    assert np.abs(got - expected).max() < 1e-6 and np.abs(expected - fusion.combine(maps)).max() > 0.01
    z = np.concatenate([[0.0, 1e-30, 1e-9, 1e-7, 3e-7], np.geomspace(1e-6, 1e6, 200)]).astype(np.float32)
    np.testing.assert_allclose(exporting.log1p(tf.constant(z)).numpy(), np.log1p(z), rtol=1e-6, atol=0)


# ---- whole runs: every method, each in every format once ----
# Each method's graph is converted to every format in one test here or in tests/test_export.py
# (SSIM: test_every_format_equals_test_py); the same graph on the other run is checked as a
# SavedModel only, which tests that run's wiring (regime, shape, options, threshold): its quickest
# format (the fused object map: 7.5 s, against 10.5 s to TFLite and 24.5 s to ONNX, 2026-12-03).
# The defaults (learned on an object run, fused on a surface run) go to all.
ONE_FORMAT = ("saved_model",)


@pytest.mark.parametrize("method, formats", [("learned", FORMATS), ("fused", ONE_FORMAT)])
def test_object_run_exports(object_run, method, formats):
    check_parity(object_run, method, "object", formats)


@pytest.mark.parametrize(
    "method, formats",
    [("fused", FORMATS), ("learned", ONE_FORMAT), ("ssim", ONE_FORMAT), ("median", FORMATS), ("lowfreq", FORMATS)],
)
def test_surface_run_exports(surface_run, method, formats):
    check_parity(surface_run, method, "surface", formats)


def test_fused_map_minus_usual_maps_exports(surface_run, monkeypatch):
    """A fusion that subtracts its components' usual maps (validate.py's choice when the proxy
    prefers it; forced here) bakes them into the graph: the artefacts equal test.py's maps."""
    import dataclasses

    import validation

    monkeypatch.setattr(
        validation, "choose_usual", lambda fusion, *a: (dataclasses.replace(fusion, usual=True), {"usual": True})
    )
    check_parity(surface_run, "fused", "surface", ("onnx",))  # the strictest converter (SavedModel: the graph itself)
    validated, _ = exporting.open_validated(surface_run)
    assert validated.options.fusion.usual


def test_export_py_exports_the_default_fused_map(object_run, capsys):
    """``export.py -p RUN`` with no method: the fused map test.py uses, and it says so."""
    import export
    import validation

    validation.validate(object_run, AREA)
    # SavedModel: the quickest conversion (the fused graph's ONNX conversion is checked above).
    code, out, err = cli(export.main, ["-p", str(object_run), "--format", "saved_model"], capsys)
    assert code == 0, err
    assert out.startswith("saved_model: fused at 2 scales, 4 passes, minus baseline (") and "tolerance" in out
    folder = object_run / "export" / "saved_model"
    assert json.loads((folder / "detector.json").read_text())["method"] == "fused"


def test_report_measured_differences():
    """Not a check: prints the measured maximum differences (pytest -s)."""
    for key, (value, tolerance) in sorted(MEASURED.items()):
        print(*key, f"max abs difference {value:.2e} (tolerance {tolerance:.1e})")
