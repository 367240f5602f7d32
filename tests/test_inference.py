"""Unit tests of inference.py with real arrays and files and a stand-in model (no training):
map options and their record, the refined maps, the calibration cache, verdicts, thresholds."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import data  # noqa: E402
import inference  # noqa: E402
import resmaps  # noqa: E402
import runs  # noqa: E402
import settings  # noqa: E402
import storage  # noqa: E402
from inference import MapOptions  # noqa: E402
from utils import SettingError, UserError  # noqa: E402

SIDE = 32


class Blur:
    """A stand-in autoencoder: reconstructs by a 3×3 box blur (Keras's ``predict`` signature)."""

    def __init__(self):
        self.calls = 0

    def predict(self, x, batch_size=16, verbose=0):
        self.calls += 1
        x = np.asarray(x, np.float32)
        padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
        return sum(padded[:, i : i + SIDE, j : j + SIDE] for i in range(3) for j in range(3)) / 9.0


def classify(maps, threshold, min_area):
    """Per map (verdict, largest area, region count) from :func:`resmaps.regions`, as arrays."""
    found = [resmaps.regions(m, threshold, min_area) for m in maps]
    return tuple(np.array(v) for v in zip(*((mask.any(), largest, count) for mask, largest, count in found)))


def good_images(n, seed=0):
    """Smooth random grayscale images in [0, 1], N×SIDE×SIDE×1."""
    rng = np.random.default_rng(seed)
    base = resmaps.smooth(rng.random((n, SIDE, SIDE)).astype(np.float32), 2.0)
    return ((base - base.min()) / (np.ptp(base) or 1.0))[..., None].astype(np.float32)


@pytest.fixture
def run(tmp_path):
    """A run folder over a class of 8 real 32-px PNGs (2 held back), with a stand-in model file."""
    good = tmp_path / "klass" / "train" / "good"
    good.mkdir(parents=True)
    for i, image in enumerate(good_images(8)):
        Image.fromarray((image[..., 0] * 255).astype(np.uint8), mode="L").save(good / f"{i:03d}.png")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    setup = {
        "architecture": "mvtec2",
        "loss": "ssim",
        "color": "grayscale",
        "size": SIDE,
        "batch": 4,
        "directory": str(tmp_path / "klass"),
    }
    (run_dir / runs.SETUP).write_text(json.dumps(setup))
    (run_dir / runs.VALIDATION_FILES).write_text("train/good/000.png\ntrain/good/005.png\n")
    (run_dir / runs.model_filename("mvtec2", 4)).write_bytes(b"stand-in")
    return runs.find_run(run_dir)


# --------------------------------------------------------------------------- options


def test_map_options_from_args_defaults_and_regimes():
    assert MapOptions.from_args() == MapOptions(True, inference.DEFAULT_SCALES, inference.DEFAULT_PASSES)
    assert MapOptions.from_args(False, 1, 3, "l2") == MapOptions(False, 1, 3)
    assert MapOptions.from_args(mode="surface").baseline is False  # nothing sits at one place on a surface
    assert MapOptions.from_args(method="learned") == MapOptions(False, 1, 1)
    # The library names its settings; the scripts show them as flags (utils.run_cli).
    with pytest.raises(SettingError, match="not to `method=learned`") as caught:
        MapOptions.from_args(scales=2, method="learned")
    assert caught.value.setting == "method" and isinstance(caught.value, ValueError)


def test_map_options_record_round_trip_and_refusals():
    options = MapOptions(True, 2, 3)
    record = options.record()
    assert record["baseline_quantile"] == inference.BASELINE_QUANTILE and record["mask_sigma"] == inference.MASK_SIGMA
    assert MapOptions.from_record(record, "r") == options
    assert MapOptions(False, 1, 1).record()["baseline_quantile"] is None
    assert MapOptions.from_record({}, "an old result") == MapOptions(False, 1, 1)  # older files: 1 scale, 1 pass
    with pytest.raises(UserError, match="older residual baseline"):
        MapOptions.from_record({**record, "baseline_quantile": None}, "r")
    with pytest.raises(UserError, match="other mask settings"):
        MapOptions.from_record({**record, "mask_sigma": 2.0}, "r")
    assert options.describe("ssim") == "ssim at 2 scales, 3 passes, minus baseline"
    assert MapOptions(False, 1, 1).describe("l2") == "l2 at 1 scale"


# --------------------------------------------------------------------------- maps


def test_one_plain_pass_is_the_residual_map_of_one_reconstruction():
    images, model = good_images(4), Blur()
    recons, maps, calibration = inference.refined_maps(model, images, "l2", MapOptions(False, 1, 1), batch=3)
    np.testing.assert_allclose(recons, model.predict(images), atol=1e-6)
    np.testing.assert_allclose(maps, resmaps.residual_maps(images, recons, "l2"), atol=1e-7)
    assert calibration.baselines.shape == (1, SIDE, SIDE) and not calibration.baselines.any()
    assert calibration.mask_threshold == float("inf")


def test_baseline_learnt_on_training_images_is_subtracted_and_never_below_zero():
    train, test = good_images(10, seed=1), good_images(3, seed=2)
    options = MapOptions(True, 1, 2)
    _, train_maps, calibration = inference.refined_maps(Blur(), train, "l2", options)
    assert calibration.baselines.shape == (2, SIDE, SIDE) and np.isfinite(calibration.mask_threshold)
    assert (train_maps >= 0).all()
    _, raw = resmaps.compute_resmaps(Blur(), test, "l2")
    _, maps, again = inference.refined_maps(Blur(), test, "l2", options, calibration=calibration)
    assert again.mask_threshold == calibration.mask_threshold  # a given calibration is used, not relearnt
    assert (maps >= 0).all() and (maps <= raw + 1e-6).all()  # the minimum over passes, minus the usual residual


def test_calibration_is_learnt_on_training_images_only_and_cached(run, monkeypatch):
    options = MapOptions(True, 1, 2)
    seen = []
    real_load = data.load_images

    def spy(paths, *args, **kwargs):
        seen.append([Path(p).name for p in paths])
        return real_load(paths, *args, **kwargs)

    monkeypatch.setattr(data, "load_images", spy)
    first = inference.calibrate(run, "l2", options, model=Blur())
    assert seen == [["001.png", "002.png", "003.png", "004.png", "006.png", "007.png"]]  # not 000/005 (held back)
    cache = run.dir / "calibration_l2_s1_p2.npz"
    assert cache.is_file() and [p.name for p in run.dir.iterdir() if ".tmp" in p.name] == []
    second = inference.calibrate(run, "l2", options, model=Blur())
    assert len(seen) == 1  # from the cache
    np.testing.assert_array_equal(first.baselines, second.baselines)
    run.model_path.write_bytes(b"other weights")  # the model file changed: learnt again
    inference.calibrate(run, "l2", options, model=Blur())
    assert len(seen) == 2


def test_expected_reconstructions_count_passes_and_an_uncached_calibration(run):
    options = MapOptions(True, 1, 3)
    # 6 training images (2 of 8 held back) still to be learnt from, then 10 to map; 3 passes each.
    assert inference.expected_reconstructions(run, "l2", options, 10) == (6 + 10) * 3
    inference.calibrate(run, "l2", options, model=Blur())
    assert inference.expected_reconstructions(run, "l2", options, 10) == 10 * 3
    assert inference.expected_reconstructions(run, "l2", MapOptions(False, 1, 1), 10) == 10  # nothing to learn
    assert inference.expected_reconstructions(run, "learned", options, 10) == 10  # one pass of CAE and head


def test_no_baseline_and_one_pass_reads_no_image(run, monkeypatch):
    monkeypatch.setattr(data, "load_images", lambda *a, **k: pytest.fail("no image should be read"))
    calibration = inference.calibrate(run, "ssim", MapOptions(False, 2, 1))
    assert calibration.baselines.shape == (1, SIDE, SIDE) and not calibration.baselines.any()


# --------------------------------------------------------------------------- verdicts


def test_classify_and_masks_keep_regions_of_the_minimum_area():
    maps = np.zeros((2, 20, 20), np.float32)
    maps[0, 2:6, 2:6] = 0.9  # 16 px
    maps[1, 10:12, 10:12] = 0.9  # 4 px
    defective, largest, counts = classify(maps, 0.5, 10)
    assert defective.tolist() == [True, False] and largest.tolist() == [16, 4] and counts.tolist() == [1, 1]
    masks = [resmaps.regions(m, 0.5, 10)[0] for m in maps]
    assert masks[0].sum() == 16 and not masks[1].any()


def test_resize_map_brings_maps_and_masks_to_the_image_size():
    mask = np.zeros((4, 4), bool)
    mask[:2, :2] = True
    big = inference.resize_map(mask, (8, 6))  # (width, height)
    assert big.dtype == bool and big.shape == (6, 8) and big[:3, :4].all() and not big[3:, 4:].any()
    values = np.arange(16, dtype=np.float32).reshape(4, 4)
    assert inference.resize_map(values, (4, 4)) is values
    assert inference.resize_map(values, (8, 8)).dtype == np.float32


def test_default_area_and_argument_checks():
    assert settings.default_min_area((128, 128)) == 20
    assert settings.default_min_area((16, 16)) == 4
    for bad in ({"min_area": 0}, {"threshold": -1.0}, {"threshold": float("nan")}):
        with pytest.raises(UserError):
            inference.check_area_threshold(**bad)


def test_resolve_threshold_from_the_command_line_or_the_validation_result(run):
    assert inference.resolve_threshold(run, "l2", 0.3, 7) == (0.3, 7, MapOptions(), "command line")
    with pytest.raises(UserError, match="no validation result"):
        inference.resolve_threshold(run, "l2")
    record = MapOptions(True, 1, 2).record()
    folder = runs.Layout(run.dir).validation("l2", 9)
    storage.write_json(
        folder / "validation_result.json", {"threshold": 0.2, "min_area": 9, **record, **run.model_record()}
    )
    assert inference.resolve_threshold(run, "l2") == (0.2, 9, MapOptions(True, 1, 2), "validation")
    assert inference.resolve_threshold(run, "l2", threshold=0.5)[:2] == (0.5, 9)
    with pytest.raises(SettingError, match="computed with `scales=1`; run validate.py again with `scales=2`") as caught:
        inference.resolve_threshold(run, "l2", scales=2)
    assert caught.value.setting == "scales"
    run.model_path.write_bytes(b"other weights")
    with pytest.raises(UserError, match="other weights"):
        inference.resolve_threshold(run, "l2")


def test_ground_truth_of_a_defective_test_image_only(run):
    class_dir = run.class_dir
    (class_dir / "test" / "hole").mkdir(parents=True)
    (class_dir / "test" / "good").mkdir(parents=True)
    (class_dir / "ground_truth" / "hole").mkdir(parents=True)
    (class_dir / "ground_truth" / "hole" / "000_mask.png").write_bytes(b"")
    assert inference.ground_truth_for(run, class_dir / "test" / "hole" / "000.png") == (
        class_dir / "ground_truth" / "hole" / "000_mask.png"
    )
    assert inference.ground_truth_for(run, class_dir / "test" / "hole" / "001.png") is None
    assert inference.ground_truth_for(run, class_dir / "test" / "good" / "000.png") is None
    assert inference.ground_truth_for(run, class_dir / "train" / "good" / "000.png") is None
