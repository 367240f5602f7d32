"""Architectures: shapes, argument checks, weights handling, save/load round trip."""

import numpy as np
import pytest

import models


@pytest.mark.parametrize("architecture,size", [("mvtec", 32), ("mvtec", 64), ("mvtec2", 48), ("mvtec2", 64)])
@pytest.mark.parametrize("channels", [1, 3])
def test_output_shape_equals_input_shape(architecture, size, channels):
    model = models.build_model(architecture, size, channels)
    x = np.random.default_rng(0).random((2, size, size, channels), dtype=np.float32)
    y = model.predict(x, verbose=0)
    assert y.shape == x.shape
    assert 0.0 <= y.min() and y.max() <= 1.0  # sigmoid output


def test_mvtec_at_256_has_extra_stride_and_1x1_latent():
    model = models.mvtec_cae(size=256, channels=1)
    assert model.get_layer("latent_conv").output.shape[1:] == (1, 1, 100)
    assert "enc_block0_0_conv" in [layer.name for layer in model.layers]
    assert model.output_shape == (None, 256, 256, 1)


def test_mvtec2_keeps_spatial_bottleneck():
    model = models.mvtec2_cae(size=256, channels=3, latent_channels=8)
    assert model.get_layer("latent_conv").output.shape[1:] == (8, 8, 8)


def test_bad_size_names_valid_sizes():
    with pytest.raises(ValueError, match=r"size 100 .*valid sizes.*32, 48, 64"):
        models.mvtec_cae(size=100)
    with pytest.raises(ValueError, match="channels must be 1 .* got 2"):
        models.mvtec2_cae(size=64, channels=2)
    with pytest.raises(ValueError, match="unknown architecture 'vgg'"):
        models.build_model("vgg", 64, 1)


def test_resnet_shapes_and_no_lambda():
    model = models.resnet_cae(size=96, channels=1, weights="none")
    assert model.output_shape == (None, 96, 96, 1)
    assert not any(layer.__class__.__name__ == "Lambda" for layer in model.layers)
    assert model.get_layer("encoder").name == "encoder"
    with pytest.raises(ValueError, match="at least 75"):
        models.resnet_cae(size=64)


def test_resnet_imagenet_missing_names_file_cache_and_alternatives(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError) as info:
        models.resnet_cae(size=96, channels=3, weights="imagenet")
    message = str(info.value)
    assert models.IMAGENET_WEIGHTS_FILE in message
    assert str(tmp_path / "models") in message
    assert "`weights=PATH`" in message and "`weights=none`" in message and info.value.setting == "weights"


def test_resnet_weights_from_path(tmp_path):
    source = models.resnet_cae(size=models.RESNET_MIN_SIZE, channels=3, weights="none")
    weights_file = tmp_path / "encoder.weights.h5"
    source.get_layer("encoder").save_weights(weights_file)
    loaded = models.resnet_cae(size=models.RESNET_MIN_SIZE, channels=3, weights=str(weights_file))
    a = source.get_layer("encoder").get_layer("conv_7b").get_weights()[0]
    b = loaded.get_layer("encoder").get_layer("conv_7b").get_weights()[0]
    np.testing.assert_array_equal(a, b)
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        models.resnet_cae(size=96, weights=str(tmp_path / "nope.h5"))


@pytest.mark.parametrize("architecture,size,channels", [("mvtec", 32, 1), ("mvtec2", 48, 3), ("resnet", 80, 3)])
def test_save_load_gives_identical_outputs(tmp_path, architecture, size, channels):
    import keras

    model = models.build_model(architecture, size, channels)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True, compile=False)
    # The weights round-trip exactly; outputs are compared with a tolerance, because two
    # calls on a multi-threaded CPU are not bit-reproducible. Inference-mode calls, not
    # predict: the same computation without tracing a graph (InceptionResNetV2: ~6 s each).
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    x = np.random.default_rng(1).random((2, size, size, channels), dtype=np.float32)
    expected = np.asarray(model(x, training=False))
    assert expected.shape == x.shape and expected.std() > 0  # a real output, not a constant
    np.testing.assert_allclose(np.asarray(loaded(x, training=False)), expected, rtol=1e-5, atol=1e-6)


def test_architecture_names_match_the_keras_free_list():
    """setup.json is checked against settings.ARCHITECTURES (no Keras import); it must name
    exactly the factories models.py offers."""
    import settings

    assert tuple(models.ARCHITECTURES) == settings.ARCHITECTURES
