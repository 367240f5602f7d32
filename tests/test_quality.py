"""The quality regime of issue 12: object/surface choice, simulated defects, the learned
residual head, the validation proxy, and surface runs end to end on tiny data."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from conftest import cli, load_script, run_quietly, with_twins
from PIL import Image

import data
import regime
import synthetic
import validation


def _texture(side=256, seed=0):
    """A random blob texture with structure at several scales (a stand-in for a surface)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    t = sum(gaussian_filter(rng.standard_normal((side, side)), s, mode="wrap") * s for s in (1, 3, 8))
    return ((t - t.min()) / (t.max() - t.min()) * 200 + 25).astype(np.uint8)


def _write_class(root, images, name="part"):
    good = root / name / "train" / "good"
    good.mkdir(parents=True)
    for i, img in enumerate(images):
        Image.fromarray(img).save(good / f"{i:03d}.png")
    return root / name


def aligned_class(root, n=12, side=48, seed=0):
    """The same object (a disc with a notch) in every image, with pixel noise and lighting changes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side]
    obj = np.where((yy - side / 2) ** 2 + (xx - side / 2) ** 2 < (side / 3) ** 2, 200.0, 40.0)
    obj[side // 2 - 3 : side // 2 + 3, : side // 2] = 90.0
    imgs = [
        np.clip(obj * rng.uniform(0.9, 1.1) + rng.normal(0, 6, obj.shape), 0, 255).astype(np.uint8) for _ in range(n)
    ]
    return _write_class(root, imgs, "aligned")


def shifted_texture_class(root, n=12, side=48, width=None, seed=0):
    """Random crops of one texture: the pattern sits somewhere else in every image."""
    rng = np.random.default_rng(seed)
    tex = _texture(256, seed)
    width = width or side
    crops = []
    for _ in range(n):
        y, x = rng.integers(0, 256 - side), rng.integers(0, 256 - width)
        crops.append(tex[y : y + side, x : x + width])
    return _write_class(root, crops, "texture")


# ---- regime ----


def test_alignment_separates_an_aligned_object_from_a_shifted_texture(tmp_path):
    aligned = data.list_images(aligned_class(tmp_path) / "train" / "good")
    texture = data.list_images(shifted_texture_class(tmp_path) / "train" / "good")
    assert regime.alignment(aligned) > 0.9
    assert regime.alignment(texture) < 0.3
    assert regime.choose_mode("auto", aligned)[0] == "object"
    assert regime.choose_mode("auto", texture)[0] == "surface"
    mode, score = regime.choose_mode("object", texture)  # an explicit choice wins and the score is still recorded
    assert mode == "object" and score < 0.3


def test_alignment_of_identical_images_is_one_and_of_the_mean_is_exact(tmp_path):
    img = _texture(64)
    paths = data.list_images(_write_class(tmp_path, [img, img, img]) / "train" / "good")
    assert regime.alignment(paths) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="unknown mode 'plane'"):
        regime.choose_mode("plane", paths)


def test_surface_shape_keeps_the_aspect_ratio_in_stride_multiples():
    assert regime.surface_shape([(256, 640)] * 3 + [(100, 100)], None) == (640, 256)  # native, most common size
    assert regime.surface_shape([(256, 640)], 128) == (320, 128)
    assert regime.surface_shape([(1000, 500)], None) == (256, 512)  # native capped at 256 on the shorter side
    h, w = regime.surface_shape([(250, 333)], None)
    assert h % 16 == 0 and w % 16 == 0 and abs(w / h - 250 / 333) < 0.05


# ---- simulated defects ----


def test_corrupt_marks_exactly_the_changed_pixels_and_is_seeded():
    rng = np.random.default_rng(0)
    images = (rng.uniform(0.3, 0.7, (12, 48, 64, 1))).astype(np.float32)
    out, masks = synthetic.corrupt(images, seed=3, share=1.0)
    changed = np.abs(out - images).max(-1) > synthetic.VISIBLE
    np.testing.assert_array_equal(masks, changed)
    assert masks.reshape(12, -1).any(axis=1).sum() >= 10  # (almost) every image got a visible defect
    assert (masks.mean(axis=(1, 2)) < 0.2).all()  # defects are local
    again, masks_again = synthetic.corrupt(images, seed=3, share=1.0)
    np.testing.assert_array_equal(out, again)
    np.testing.assert_array_equal(masks, masks_again)
    untouched, none = synthetic.corrupt(images, seed=3, share=0.0)
    np.testing.assert_array_equal(untouched, images)
    assert not none.any()
    with pytest.raises(ValueError, match="share must be in"):
        synthetic.corrupt(images, 0, share=1.5)


# ---- the head ----


def test_segmentation_head_is_fully_convolutional_and_saves_in_safe_mode(tmp_path):
    import keras

    import models

    head = models.segmentation_head(channels=3)
    x = np.random.default_rng(0).uniform(size=(2, 40, 72, 3)).astype(np.float32)
    out = head.predict([x, x], verbose=0)
    assert out.shape == (2, 40, 72, 1) and 0 <= out.min() <= out.max() <= 1
    head.save(tmp_path / "h.keras")
    again = keras.models.load_model(tmp_path / "h.keras", safe_mode=True)
    np.testing.assert_allclose(again.predict([x, x], verbose=0), out, atol=1e-5)
    with pytest.raises(ValueError, match=r"filters must be 4 positive counts, got \(8, 16\)"):
        models.segmentation_head(filters=(8, 16))
    with pytest.raises(ValueError, match="channels must be 1 .* got 2"):
        models.segmentation_head(channels=2)


def test_trained_head_marks_simulated_defects_above_good_pixels(tmp_path, monkeypatch):
    """A copying 'autoencoder' (identity) hides nothing, so the head must learn from the image:
    after a short training its probability inside fresh simulated defects beats the rest."""
    import keras
    from conftest import PRODUCT_SETTLE_BATCHES

    import learned

    monkeypatch.setattr(learned, "SETTLE_BATCHES", PRODUCT_SETTLE_BATCHES)  # the measured figure's settling

    inp = keras.Input((None, None, 1))
    identity = keras.Model(inp, keras.layers.Identity()(inp))
    images = np.stack([_texture(128, s)[..., None] / 255.0 for s in range(6)]).astype(np.float32)
    summary = learned.train_head(identity, images, tmp_path / "head.keras", steps=120, patch=48, seed=0, progress=False)
    assert (tmp_path / "head.keras").is_file() and summary["steps"] == 120 and summary["patch"] == 48
    head = keras.models.load_model(tmp_path / "head.keras")
    test, masks = synthetic.corrupt(images[:, :64, :64], seed=99, share=1.0)
    _, maps = learned.learned_maps(identity, head, test, batch=4)
    assert maps.shape == masks.shape
    from sklearn.metrics import roc_auc_score

    # 120 steps make a weak head: measured 0.68-0.69 with settled statistics (chance: 0.5).
    assert roc_auc_score(masks.ravel(), maps.ravel()) > 0.62
    with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
        learned.train_head(identity, images, tmp_path / "x.keras", steps=0)


def test_settled_batch_norm_makes_inference_equal_training_mode():
    """settle_batch_norm: with every drawn batch the same, the moving statistics become that
    batch's own, so the head in inference mode computes exactly what it computes in training
    mode (before settling, fresh statistics 0/1 give another output); momenta are restored."""
    import keras

    import learned
    import models

    keras.utils.set_random_seed(0)
    head = models.segmentation_head(channels=1)
    rng = np.random.default_rng(0)
    x = rng.random((4, 32, 32, 1), dtype=np.float32)
    recon = np.clip(x + 0.1 * rng.standard_normal(x.shape), 0, 1).astype(np.float32)
    training = np.asarray(head([x, recon], training=True))
    assert np.abs(np.asarray(head([x, recon], training=False)) - training).max() > 1e-2
    learned.settle_batch_norm(head, lambda: (x, recon, None), batches=3)
    np.testing.assert_allclose(np.asarray(head([x, recon], training=False)), training, atol=2e-4)
    bns = [layer for layer in head.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bns and {layer.momentum for layer in bns} == {0.99}


def test_settled_statistics_are_the_mean_of_each_batchs_own():
    """Over distinct batches, every BatchNormalization layer keeps the mean of the batches'
    means and of their (biased) variances, computed here from the layers' inputs."""
    import keras

    import learned
    import models

    keras.utils.set_random_seed(1)
    head = models.segmentation_head(channels=1)
    rng = np.random.default_rng(1)
    batches = [rng.random((2, 2, 16, 16, 1), dtype=np.float32) * (k + 1) / 3 for k in range(3)]
    bns = [layer for layer in head.layers if isinstance(layer, keras.layers.BatchNormalization)]
    inputs = keras.Model(head.inputs, [layer.input for layer in bns])  # what each layer normalises
    means = [[] for _ in bns]
    variances = [[] for _ in bns]
    for x, recon in batches:
        for k, value in enumerate(inputs([x, recon], training=True)):
            value = np.asarray(value, np.float64)
            means[k].append(value.mean(axis=(0, 1, 2)))
            variances[k].append(value.var(axis=(0, 1, 2)))
    drawn = iter(batches)
    learned.settle_batch_norm(head, lambda: (*next(drawn), None), batches=3)
    for k, layer in enumerate(bns):
        np.testing.assert_allclose(np.asarray(layer.moving_mean), np.mean(means[k], axis=0), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(
            np.asarray(layer.moving_variance), np.mean(variances[k], axis=0), rtol=1e-3, atol=1e-6
        )


# ---- command lines, end to end ----


def _cli(script, *args):
    """``script`` run in this process (conftest.run_quietly); its exit code must be 0."""
    code, out, err = run_quietly(load_script(script.removesuffix(".py")).main, args)
    assert code == 0, err[-2000:]
    return SimpleNamespace(returncode=code, stdout=out, stderr=err)


@pytest.fixture(scope="module")
def surface_run(tmp_path_factory):
    """A surface run on a non-square texture class (48x80 images) with a test set."""
    root = tmp_path_factory.mktemp("surface")
    klass = shifted_texture_class(root, n=14, side=48, width=80)
    tex = _texture(256, 7)
    for folder, n in (("good", 3), ("stain", 3)):
        d = klass / "test" / folder
        d.mkdir(parents=True)
        for i in range(n):
            img = tex[i * 50 : i * 50 + 48, :80].copy()
            if folder == "stain":
                mask = np.zeros(img.shape, bool)
                mask[10:22, 20:40] = True
                img[mask] = 10
                gt = klass / "ground_truth" / folder
                gt.mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask.astype(np.uint8) * 255).save(gt / f"{i:03d}_mask.png")
            Image.fromarray(img).save(d / f"{i:03d}.png")
    train = ("train.py", "new", "-d", klass, "--epochs", 2, "--head-steps", 10, "--patch", 32, "--out", root / "runs")
    out = with_twins(lambda: _cli(*train))  # twins at once, as train.py's own process makes them
    return Path(out.stdout.strip().splitlines()[-1]), klass


def test_surface_run_records_its_regime_and_keeps_the_aspect_ratio(surface_run):
    run, _ = surface_run
    setup = json.loads((run / "setup.json").read_text())
    assert setup["mode"] == "surface" and setup["mode_requested"] == "auto" and setup["alignment"] < 0.8
    assert setup["shape"] == [48, 80] and setup["patch"] == 32 and setup["size"] == 32
    assert setup["color"] == "grayscale" and setup["head"]["steps"] == 10 and (run / "head.keras").is_file()


def test_surface_run_validates_and_tests_with_the_fused_map_by_default(surface_run):
    import tifffile

    run, klass = surface_run
    v = _cli("validate.py", "-p", run, "-a", 4)
    assert v.stdout.startswith("fused")
    result = json.loads((run / "validation" / "fused" / "a4" / "validation_result.json").read_text())
    # The head's map, the loss's fixed map and the training-free maps, on one scale each.
    assert result["fusion"]["components"] == ["learned", "ssim", "median", "lowfreq"]
    assert result["fusion_rule"] == "equal" and [m["component"] for m in result["fusion_search"]] == [
        "learned",
        "ssim",
        "median",
        "lowfreq",
    ]
    kept = [m["skill"] > validation.MIN_SKILL for m in result["fusion_search"]]
    assert result["fusion"]["weights"] == [1 / sum(kept) if k else 0.0 for k in kept] or sum(kept) == 0
    proxy = result["proxy"]
    # Every family painted into every validation image (few images: under PROXY_MAX_COPIES).
    assert proxy["n_painted"] == result["n_images"] * len(synthetic.PROXY_FAMILIES)
    assert set(proxy["families"]) == set(synthetic.PROXY_FAMILIES)
    assert result["baseline"] is False and result["scales"] == 2 and result["passes"] == 4  # for its ssim part
    t = _cli("test.py", "-p", run)
    out = Path(t.stdout.strip().splitlines()[-1])
    assert out.parent.name == "fused"
    tiff = tifffile.imread(out / "anomaly_maps" / "stain" / "000.tiff")
    assert tiff.shape == (48, 80)  # the ground truth's own (non-square) resolution
    # The image score is in the threshold's units: above 1 exactly for the images judged defective.
    scored = json.loads((out / "metrics.json").read_text())
    assert scored["smooth_sigma"] == 4.0 and scored["image_score"] == proxy["image_score"]
    frame = pd.read_csv(out / "classification.csv")
    assert ((frame["score"] > 1) == (frame["verdict"] == "defective")).all()
    learned = _cli("validate.py", "-p", run, "-a", 4, "--method", "learned")
    learned_result = json.loads((run / "validation" / "learned" / "a4" / "validation_result.json").read_text())
    assert learned.returncode == 0 and learned_result["scales"] == 1 and learned_result["passes"] == 1
    ssim = _cli("validate.py", "-p", run, "-a", 4, "--method", "ssim")
    ssim_result = json.loads((run / "validation" / "ssim" / "a4" / "validation_result.json").read_text())
    assert ssim.returncode == 0 and ssim_result["baseline"] is False  # no per-pixel baseline on surfaces


@pytest.mark.parametrize(
    "args, message",
    [
        (["--mode", "plane"], "invalid choice: 'plane'"),
        (
            ["--patch", "40"],
            "--patch must be a multiple of 16 from 32 to the image's shorter side (48 px here), got 40",
        ),
        (["--patch", "64"], "--patch must be a multiple of 16"),
        (["--head-steps", "-1"], "--head-steps must be >= 0"),
        (["--mode", "surface", "-a", "resnet"], "-a resnet needs whole square images"),
    ],
)
def test_bad_regime_options_get_one_line_errors(surface_run, tmp_path, capsys, args, message):
    import train

    _, klass = surface_run
    argv = ["new", "-d", str(klass), "--epochs", "1", "--out", str(tmp_path / "runs"), *args]
    code, _, err = cli(train.main, argv, capsys)  # in-process: the script's process is tested end to end above
    assert code == 2 and message in err.strip().splitlines()[-1] and "Traceback" not in err, (
        err
    )  # argparse: usage first
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("setup.json"))


def test_learned_method_refuses_map_options_and_a_missing_head(surface_run, tmp_path, capsys):
    import shutil

    import validate

    run, _ = surface_run
    code, _, err = cli(validate.main, ["-p", str(run), "-a", "4", "--method", "learned", "--scales", "2"], capsys)
    assert code == 2 and "--scales and --passes apply to ssim, l2 and fused maps" in err
    copy = tmp_path / "nohead"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("head.keras", "validation", "test", ".lock"))
    code, _, err = cli(validate.main, ["-p", str(copy), "-a", "4", "--method", "learned"], capsys)
    assert code == 2 and "has no learned residual head" in err and len(err.strip().splitlines()) == 1, err


def test_head_trains_on_crops_of_an_object_autoencoder_that_takes_whole_images(tmp_path):
    """Object CAEs have a fixed input size: the head's crops are cut after reconstructing whole images."""
    import learned
    import models

    cae = models.mvtec2_cae(size=64, channels=1)
    images = np.stack([_texture(64, s)[..., None] / 255.0 for s in range(4)]).astype(np.float32)
    summary = learned.train_head(cae, images, tmp_path / "head.keras", steps=3, patch=32, progress=False)
    assert summary["patch"] == 32 and (tmp_path / "head.keras").is_file()


def test_mvtec_cae_is_fully_convolutional_for_surface_runs():
    """Bergmann's CAE with its whole-patch code convolution slides over larger images too."""
    import models

    cae = models.mvtec_cae(size=32, channels=1, fully_convolutional=True)
    x = np.random.default_rng(0).uniform(size=(1, 64, 96, 1)).astype(np.float32)
    assert cae.predict(x, verbose=0).shape == (1, 64, 96, 1)
    assert models.mvtec_cae(size=32, channels=1).count_params() == cae.count_params()
