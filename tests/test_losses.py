"""Losses: per-image values, zero on identical images, agreement with references, serialization."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from skimage.metrics import structural_similarity

import custom_loss_functions as clf
import ssim


def _pair(channels, size=48, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((3, size, size, channels), dtype=np.float32)
    y = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1).astype(np.float32)
    return x, y


@pytest.mark.parametrize("name", clf.LOSSES)
@pytest.mark.parametrize("channels", [1, 3])
def test_zero_for_identical_positive_otherwise_one_value_per_image(name, channels):
    x, y = _pair(channels)
    loss = clf.get_loss(name, 48)
    fn = {
        "ssim": clf.ssim_loss,
        "mssim": lambda a, b: clf.mssim_loss(a, b, scales=loss.scales),
        "l2": clf.l2_loss,
        "mse": clf.mse_loss,
    }[name]
    same = fn(tf.constant(x), tf.constant(x)).numpy()
    diff = fn(tf.constant(x), tf.constant(y)).numpy()
    assert same.shape == (3,) and diff.shape == (3,)
    np.testing.assert_allclose(same, 0.0, atol=1e-5)
    assert (diff > 1e-3).all()
    assert float(loss(x, y)) == pytest.approx(float(diff.mean()), rel=1e-5)


def test_ssim_loss_matches_tensorflow_and_skimage():
    x, y = _pair(3)
    ours = clf.ssim_loss(x, y).numpy()
    reference = 1.0 - tf.image.ssim(x, y, max_val=1.0, filter_size=11, filter_sigma=1.5).numpy()
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    # Every channel counts (the 2020 suite used the red one only).
    y_green = x.copy()
    y_green[..., 1] = y[..., 1]
    assert clf.ssim_loss(x, y_green).numpy().min() > 1e-3


def test_ssim_map_full_matches_skimage_everywhere():
    x, y = _pair(1, size=40)
    ours = ssim.ssim_map(x, y, full=True).numpy()[..., 0]
    for i in range(3):
        _, ref = structural_similarity(
            x[i, ..., 0],
            y[i, ..., 0],
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
            full=True,
        )
        np.testing.assert_allclose(ours[i], ref, atol=1e-4)


def test_mse_and_l2_formulas():
    x = np.zeros((2, 4, 4, 1), np.float32)
    y = x.copy()
    y[0, 0, 0, 0] = 0.5
    np.testing.assert_allclose(clf.l2_loss(x, y).numpy(), [0.25, 0.0])
    np.testing.assert_allclose(clf.mse_loss(x, y).numpy(), [0.25 / 16, 0.0])


def test_msssim_scales_follow_image_size():
    assert clf.msssim_scales(161) == 5 and clf.msssim_scales(256) == 5
    assert clf.msssim_scales(160) == 4
    assert clf.msssim_scales(64) == 3
    assert clf.get_loss("mssim", 64).scales == 3
    with pytest.raises(ValueError, match="`size=16`") as caught:
        clf.get_loss("mssim", 16)
    assert caught.value.setting == "size"
    with pytest.raises(ValueError, match="unknown loss 'huber'"):
        clf.get_loss("huber", 64)


@pytest.mark.parametrize("name", clf.LOSSES)
def test_losses_serialize_round_trip(name):
    loss = clf.get_loss(name, 64)
    config = keras.saving.serialize_keras_object(loss)
    assert config["registered_name"].startswith("cae>")
    restored = keras.saving.deserialize_keras_object(config)
    x, y = _pair(1, size=64)
    assert float(restored(x, y)) == pytest.approx(float(loss(x, y)), rel=1e-6)
