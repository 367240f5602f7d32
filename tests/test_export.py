"""export.py and predict_exported.py: every format reproduces test.py on a tiny run.

One 32-px grayscale run is trained on 64-px images (so the resize inside the artefact is
exercised), validated, tested with ``--save``; then each format's artefact, run through
predict_exported.py, must give test.py's anomaly maps (TIFF) to 1e-4, the same verdicts
and the same masks (up to pixels within rounding of the threshold); on a folder of other sizes (bicubic and box resizes, non-square) the
same scores, verdicts and masks as ``test.py --images``.
"""

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from conftest import cli, train_args
from PIL import Image

import export  # noqa: E402
import exporting  # noqa: E402
import predict_exported as pe  # noqa: E402
import runs  # noqa: E402
import storage  # noqa: E402
from settings import MapRequest  # noqa: E402

AREA = 8
FORMATS = tuple(exporting.FORMATS)


# Runtimes round differently (ONNX Runtime vs TensorFlow: ~1e-7, SSIM on flat patches up to
# ~1e-5 and more), so a map value within this of the threshold may fall on either side: the
# tolerance the maps themselves are held to (export's own check). 1e-5 was once exceeded by a
# pixel of a tiny run's SSIM map (ONNX), which moved a 16-px region across the threshold.
PASSES = 2  # map passes of the exported runs' SSIM maps (see tested)
ROUNDING = exporting.MAP_TOLERANCE


def assert_same_decision(
    detector, image, result, expected_mask, largest=None, regions=None, defective=None, rounding=ROUNDING
):
    """test.py's mask (and area, regions, verdict when given) must be what the artefact's own
    residual map gives, up to pixels within ROUNDING of the threshold.

    Thresholding then dropping small regions is monotone in the threshold, so test.py's mask
    must lie between the masks at threshold + ROUNDING and threshold - ROUNDING; when no pixel
    lies that close, both bounds coincide and everything must be equal exactly.
    """
    residual = detector.run(image[None])["residual_map"][0]
    height, width = image.shape[:2]
    bounds = []
    for shift in (rounding, -rounding):
        mask, big, count = pe.min_area_filter(residual > detector.threshold + shift, detector.min_area)
        bounds.append((pe.resize_nearest(mask, width, height), big, count))
    (strict, big_lo, count_lo), (loose, big_hi, count_hi) = bounds
    if big_lo == big_hi and count_lo == count_hi and np.array_equal(strict, loose):
        np.testing.assert_array_equal(result["mask"], expected_mask)
        assert largest is None or (result["largest_area"], result["n_regions"]) == (largest, regions)
        assert defective is None or result["defective"] == defective
        return
    assert np.all(strict <= expected_mask) and np.all(expected_mask <= loose)
    assert np.all(strict <= result["mask"]) and np.all(result["mask"] <= loose)
    assert largest is None or big_lo <= largest <= big_hi
    assert defective is None or (big_lo >= detector.min_area) <= defective <= (big_hi >= detector.min_area)


@pytest.fixture(scope="module", autouse=True)
def keras_inference():
    """test.py on Keras here: the artefact is built from the Keras layers and must give the
    very same verdicts and masks; the ONNX twin (networks.py) agrees only to ~1e-6, enough to
    move a pixel at the threshold (tests/test_networks.py checks the twin)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CAE_INFERENCE", "keras")
        yield


@pytest.fixture(scope="module")
def tested(tmp_path_factory):
    """A validated and tested 32-px run on 64-px images: ``(run folder, test output folder, dataset)``."""
    import evaluation
    import make_dataset
    import training
    import validation

    root = tmp_path_factory.mktemp("export")
    (class_dir,) = make_dataset.generate(
        root / "data", classes=("brick",), size=64, n_train=12, n_test_good=2, n_test_defect=1, seed=1
    )
    run_dir, _ = training.new_run(
        train_args(class_dir, root / "runs", size=32, epochs=2, mode="object", head_steps=0, patch=None)
    )
    # 2 passes, not the default 4: the artefact repeats the pass loop's body (one more
    # reconstruction) per pass and every format converts each copy; 2 run that body once.
    # (export_methods' fused surface map to every format: 85 s at 4 passes, 50 s at 2.)
    validation.validate(run_dir, AREA, MapRequest(passes=PASSES))
    _, _, _, out = evaluation.test_run(run_dir, save=True)
    return run_dir, out, class_dir


@pytest.fixture(scope="module")
def exported(tested):
    """Each format exported once (module-wide): ``{format: folder}``."""
    run_dir = tested[0]
    return {fmt: exporting.export_run(run_dir, fmt)[0] for fmt in FORMATS}


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_equals_test_py(tested, exported, fmt):
    run_dir, out, class_dir = tested
    detector = pe.Detector(exported[fmt])
    frame = pd.read_csv(out / "classification.csv")
    maps_dir = out / "anomaly_maps"
    assert len(frame) == 7
    worst = 0.0
    for row in frame.itertuples():
        path = Path(row.path)
        image = pe.read_image(path, detector.color)
        result = detector.predict(image)
        expected_map = tifffile.imread(maps_dir / row.defect_type / f"{path.stem}.tiff")
        assert result["anomaly_map"].shape == expected_map.shape == (64, 64)
        worst = max(worst, float(np.abs(result["anomaly_map"] - expected_map).max()))
        # The score is a map value over the threshold, and a region peak moves no more than the map
        # does (1-Lipschitz): runtimes that agree to 1e-4 on maps agree to 1e-4 / threshold on it.
        assert result["score"] == pytest.approx(row.score, abs=1e-4 / detector.threshold)
        expected_mask = np.asarray(Image.open(out / row.defect_type / f"{path.stem}_mask.png")) > 127
        assert_same_decision(
            detector, image, result, expected_mask, row.largest_area, row.n_regions, (row.verdict == "defective")
        )
    assert worst <= 1e-4


@pytest.mark.parametrize("fmt", FORMATS)
def test_other_sizes_equal_predictions(tested, exported, fmt, tmp_path):
    """Images of other sizes (enlarged: bicubic; shrunk non-square: box, both pass orders)."""
    import evaluation

    run_dir, _, class_dir = tested
    folder = tmp_path / "parts"
    folder.mkdir()
    sources = sorted((class_dir / "test").rglob("*.png"))[:3]
    for src, size in zip(sources, [(24, 40), (70, 150), (130, 45)]):
        Image.open(src).resize(size, Image.Resampling.BILINEAR).save(folder / f"{src.parent.name}_{src.name}")
    frame, out = evaluation.predict_images(run_dir, folder, out=tmp_path / "pred")
    detector = pe.Detector(exported[fmt])
    for row in frame.itertuples():
        image = pe.read_image(row.path, detector.color)
        result = detector.predict(image)
        # The score is a map value over the threshold, and a region peak moves no more than the map
        # does (1-Lipschitz): runtimes that agree to 1e-4 on maps agree to 1e-4 / threshold on it.
        assert result["score"] == pytest.approx(row.score, abs=1e-4 / detector.threshold)
        expected_mask = np.asarray(Image.open(row.mask)) > 127
        assert_same_decision(detector, image, result, expected_mask, defective=row.verdict == "defective")


def test_metadata_records_validation_result(tested, exported):
    run_dir = tested[0]
    result_file = run_dir / "validation" / "ssim" / f"a{AREA}" / "validation_result.json"
    validation = json.loads(result_file.read_text())
    for fmt, folder in exported.items():
        meta = json.loads((folder / "detector.json").read_text())
        assert meta["format"] == fmt and (folder / meta["artefact"]).exists()
        assert meta["validation_result"]["path"] == str(result_file)
        assert meta["threshold"] == validation["threshold"] and meta["min_area"] == AREA
        assert meta["passes"] == validation["passes"] and meta["scales"] == validation["scales"]
        assert meta["check"]["max_abs_difference_vs_graph"] <= 1e-4
        assert (folder / "predict_exported.py").is_file()
    assert json.loads((exported["tflite"] / "detector.json").read_text())["resize_inside"] is False


def test_predict_exported_cli_without_the_repo(tested, exported, tmp_path):
    """The copied script runs from another folder with only its own imports."""
    import subprocess
    import sys

    _, out, class_dir = tested
    folder = shutil.copytree(exported["onnx"], tmp_path / "shipped")
    image = sorted((class_dir / "test" / "good").glob("*.png"))[0]
    done = subprocess.run(
        [
            sys.executable,
            "-I",
            str(folder / "predict_exported.py"),
            str(folder),
            str(image),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    rows = pd.read_csv(tmp_path / "out" / "predictions.csv")
    expected = pd.read_csv(out / "classification.csv").set_index("path").loc[str(image)]
    detector = pe.Detector(folder)
    assert rows["score"][0] == pytest.approx(expected["score"], abs=1e-4 / detector.threshold)
    pixels = pe.read_image(image, detector.color)
    result = detector.predict(pixels)
    assert rows["verdict"][0] == ("defective" if result["defective"] else "good")
    assert_same_decision(detector, pixels, result, result["mask"], defective=expected["verdict"] == "defective")


def test_refusals_one_line(tested, tmp_path, capsys):
    run_dir = tested[0]
    code, _, err = cli(export.main, ["-p", str(run_dir), "--format", "pmml"], capsys)
    assert code == 2 and "unknown export format 'pmml'" in err and len(err.strip().splitlines()) == 1
    bare = shutil.copytree(run_dir, tmp_path / "bare", ignore=shutil.ignore_patterns("validation", "export", "test"))
    code, _, err = cli(export.main, ["-p", str(bare)], capsys)
    assert code == 2 and "no validation result" in err and len(err.strip().splitlines()) == 1
    assert not (bare / "export").exists()
    moded = shutil.copytree(run_dir, tmp_path / "moded", ignore=shutil.ignore_patterns("export", "test"))
    result_file = moded / "validation" / "ssim" / f"a{AREA}" / "validation_result.json"
    result = json.loads(result_file.read_text())
    result_file.write_text(json.dumps({**result, "mode": "sideways"}))
    code, _, err = cli(export.main, ["-p", str(moded)], capsys)
    assert code == 2 and "object and surface modes" in err and len(err.strip().splitlines()) == 1


def test_unknown_method_refused(monkeypatch, tested):
    import methods

    l2 = dataclasses.replace(methods.get("l2"), exportable=False)
    monkeypatch.setattr(methods, "METHODS", {**methods.METHODS, "l2": l2})
    from utils import UserError

    with pytest.raises(UserError, match="map methods ssim, learned, median, lowfreq, fused, not 'l2'"):
        exporting._check_supported(
            type("R", (), {"setup": {}, "mode": "object", "size": 32, "shape": (32, 32)})(), "l2", {}
        )


# ---- the pieces, against the libraries they reproduce ----


@pytest.mark.parametrize("seed", range(3))
def test_resize_matches_pillow(seed):
    """Graph (float64) and NumPy ports of Pillow's resize equal Pillow exactly, both pass orders,
    to square and to non-square (surface) model shapes."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    for i in range(8):
        side = int(rng.choice([16, 32, 48]))
        target = side if i % 2 else (side, int(rng.choice([16, 32, 48, 80])))  # int or (height, width)
        th, tw = (target, target) if i % 2 else target
        h, w = (int(v) for v in rng.integers(5, 4 * side, 2))
        channels = int(rng.choice([1, 3]))
        image = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
        pil = Image.fromarray(image[..., 0] if channels == 1 else image)
        filt = Image.Resampling.BOX if h >= th and w >= tw else Image.Resampling.BICUBIC
        expected = np.asarray(pil.resize((tw, th), filt)).reshape(th, tw, channels)
        graph = exporting.pillow_resize_uint8(tf.constant(image[None]), target, tf.float64).numpy()[0]
        np.testing.assert_array_equal(graph, expected, err_msg=f"{h}x{w} -> {target}")
        np.testing.assert_array_equal(pe.resize_uint8(image, target), expected, err_msg=f"{h}x{w} -> {target}")
        maps = rng.random((1, side, side), dtype=np.float32)
        expected = np.asarray(Image.fromarray(maps[0], mode="F").resize((w, h), Image.Resampling.BILINEAR))
        assert (
            np.abs(exporting.pillow_resize_float(tf.constant(maps), h, w, tf.float64).numpy()[0] - expected).max()
            < 1e-6
        )
        assert np.abs(pe.resize_float(maps, w, h)[0] - expected).max() < 1e-6
        mask = rng.random((side, side)) > 0.5
        expected = (
            np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.Resampling.NEAREST)) > 127
        )
        np.testing.assert_array_equal(pe.resize_nearest(mask, w, h), expected)


def test_gaussian_blur_matches_scipy():
    import tensorflow as tf
    from scipy.ndimage import gaussian_filter

    maps = np.random.default_rng(0).random((2, 32, 32)).astype(np.float32)
    for sigma in (1.0, 1.5, 4.0):
        expected = gaussian_filter(maps, (0, sigma, sigma), mode="reflect")
        assert np.abs(exporting.gaussian_blur(tf.constant(maps), sigma).numpy() - expected).max() < 1e-6


def test_read_image_converts_as_pillow(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    Image.fromarray(np.dstack([rgb, rng.integers(0, 256, (20, 30), dtype=np.uint8)])).save(tmp_path / "a.png")
    for name in ("c.png", "a.png"):
        with Image.open(tmp_path / name) as image:
            gray = np.asarray(image.convert("L"))
            colour = np.asarray(image.convert("RGBA").convert("RGB"))
        np.testing.assert_array_equal(pe.read_image(tmp_path / name, "grayscale")[..., 0], gray)
        np.testing.assert_array_equal(pe.read_image(tmp_path / name, "rgb"), colour)


def test_export_out_onto_another_runs_export_or_a_users_folder_is_refused(tested, tmp_path, capsys):
    """Refused before any graph is built, nothing written; this run's own export in that place
    is replaced (tests/test_trust_deploy.py checks the identities)."""
    run_dir = tested[0]
    other_run = shutil.copytree(run_dir, tmp_path / "other_run", ignore=shutil.ignore_patterns("export", "test"))
    shipped = tmp_path / "shipped"  # what export.py -p other_run --out shipped leaves
    shipped.mkdir()
    identity = exporting.export_identity(runs.find_run(other_run), "ssim")
    (shipped / storage.MARKER).write_text(json.dumps({"tool": "cae", **identity}))
    (shipped / "detector.json").write_text("{}")
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep")
    for out, message in ((shipped, "another run's result"), (user, "not a result folder of this tool")):
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        code, _, err = cli(export.main, ["-p", str(run_dir), "--format", "onnx", "--out", str(out)], capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
