"""Residual maps, regions and the exact threshold search."""

import numpy as np
import pytest
from skimage.metrics import structural_similarity

import networks
import resmaps
import ssim


def test_ssim_resmap_matches_skimage_interior_and_is_defined_at_borders():
    rng = np.random.default_rng(0)
    x = rng.random((2, 48, 48, 3), dtype=np.float32)
    y = np.clip(x + rng.normal(0, 0.15, x.shape), 0, 1).astype(np.float32)
    maps = resmaps.residual_maps(x, y, "ssim")
    assert maps.shape == (2, 48, 48) and maps.dtype == np.float32
    assert np.isfinite(maps).all()
    for i in range(2):
        ref = np.mean(
            [
                structural_similarity(
                    x[i, ..., c],
                    y[i, ..., c],
                    gaussian_weights=True,
                    sigma=1.5,
                    use_sample_covariance=False,
                    data_range=1.0,
                    full=True,
                )[1]
                for c in range(3)
            ],
            axis=0,
        )
        np.testing.assert_allclose(maps[i, 5:-5, 5:-5], 1 - ref[5:-5, 5:-5], atol=1e-3)
        np.testing.assert_allclose(maps[i], 1 - ref, atol=1e-3)  # borders too (same reflect padding)


def test_l2_resmap_keeps_darker_and_brighter_differences():
    x = np.full((1, 8, 8, 3), 0.5, np.float32)
    y = x.copy()
    y[0, 0, 0] = 0.2  # reconstruction darker
    y[0, 7, 7] = 0.9  # reconstruction brighter
    maps = resmaps.residual_maps(x, y, "l2")
    assert maps[0, 0, 0] == pytest.approx(0.09, abs=1e-6)
    assert maps[0, 7, 7] == pytest.approx(0.16, abs=1e-6)
    assert maps[0, 3, 3] == 0.0
    with pytest.raises(ValueError, match="unknown residual method 'l1'"):
        resmaps.residual_maps(x, y, "l1")


def test_multiscale_map_is_the_mean_of_the_scales():
    # Analytic: a uniform difference d gives d² at every scale, so any number of scales gives d².
    x = np.full((1, 16, 16, 1), 0.5, np.float32)
    np.testing.assert_allclose(resmaps.residual_maps(x, x + 0.2, "l2", scales=3), 0.04, atol=1e-6)
    big = np.full((1, 32, 32, 1), 0.5, np.float32)
    np.testing.assert_allclose(resmaps.residual_maps(big, big, "ssim", scales=2), 0.0, atol=1e-6)
    # Independent: a 2×2 defect seen at full and half size (scipy zoom for the upsampling
    # gives the same bilinear, half-pixel-centred interpolation away from the borders).
    from scipy.ndimage import zoom

    y = x.copy()
    y[0, 6:8, 6:8] = 0.9
    fine = resmaps.residual_maps(x, y, "l2")[0]
    pooled = lambda a: a.reshape(1, 8, 2, 8, 2, 1).mean(axis=(2, 4))  # noqa: E731
    coarse = resmaps.residual_maps(pooled(x), pooled(y), "l2")[0]
    assert coarse[3, 3] == pytest.approx(0.16, abs=1e-6)  # the defect fills one pooled pixel exactly
    expected = (fine + zoom(coarse, 2, order=1, grid_mode=True, mode="nearest")) / 2
    np.testing.assert_allclose(resmaps.residual_maps(x, y, "l2", scales=2)[0], expected, atol=1e-6)


def test_maps_equal_the_tensorflow_graph_version():
    # residual_maps runs in NumPy/OpenCV; ssim.scale_maps_tf keeps the same maps as
    # TensorFlow ops for graphs (the exported detector). Both must agree, odd sizes and
    # grey images included.
    import tensorflow as tf

    def graph_maps(images, recons, method, scales):
        x, y = tf.constant(images), tf.constant(recons)
        total = ssim.scale_maps_tf(x, y, method)
        for _ in range(scales - 1):
            x, y = tf.nn.avg_pool2d(x, 2, 2, "VALID"), tf.nn.avg_pool2d(y, 2, 2, "VALID")
            coarse = ssim.scale_maps_tf(x, y, method)[..., None]
            total += tf.image.resize(coarse, images.shape[1:3], method="bilinear")[..., 0]
        return (total / scales).numpy()

    rng = np.random.default_rng(2)
    for shape in ((2, 48, 48, 3), (2, 45, 37, 1)):
        x = rng.random(shape, dtype=np.float32)
        y = np.clip(x + rng.normal(0, 0.2, shape), 0, 1).astype(np.float32)
        for method in ("ssim", "l2"):
            for scales in range(1, resmaps.max_scales(min(shape[1:3]), method) + 1):
                np.testing.assert_allclose(
                    resmaps.residual_maps(x, y, method, scales), graph_maps(x, y, method, scales), rtol=0, atol=2e-5
                )


def test_threaded_batches_equal_one_pass_over_all_images(monkeypatch):
    rng = np.random.default_rng(3)
    x = rng.random((7, 32, 32, 3), dtype=np.float32)
    y = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1).astype(np.float32)
    whole = resmaps.residual_maps(x, y, "ssim", 2)
    for threads, batch in ((2, 16), (2, 2), (3, 1), (1, 4)):
        monkeypatch.setattr(resmaps, "MAP_THREADS", threads)
        np.testing.assert_array_equal(resmaps.batched_residual_maps(x, y, "ssim", batch, 2), whole)


class _Count:
    """A stand-in Keras model that records the batch sizes it is given (identity output)."""

    def __init__(self):
        self.seen = []

    def predict(self, x, batch_size=16, verbose=0):
        self.seen.append(len(x))
        return x


class _Twin(networks.Network):
    """A stand-in backend: a :class:`networks.Network` is asked as it is, unpadded."""

    def __init__(self):
        self.seen = []

    def predict(self, x, batch_size=16):
        self.seen.append(len(x))
        return x


def test_keras_input_is_padded_to_whole_batches_and_a_backends_is_not():
    """Keras retraces for every new batch shape (networks.KerasNetwork pads); the twin computes
    one image at a time, so a backend is given exactly the images."""
    images = np.random.default_rng(0).random((5, 8, 8, 1), dtype=np.float32)
    for net, fed in ((_Count(), 8), (_Twin(), 5)):
        np.testing.assert_array_equal(resmaps.reconstruct(net, images, 4), images)
        assert net.seen == [fed]


def test_scales_are_limited_by_the_ssim_window():
    assert [resmaps.max_scales(s, "ssim") for s in (16, 32, 48, 128, 256)] == [1, 2, 3, 4, 4]
    assert resmaps.max_scales(16, "l2") == 4
    x = np.zeros((1, 32, 32, 1), np.float32)
    with pytest.raises(ValueError, match="scales must be 1 to 2 for 32×32 images, got 3"):
        resmaps.residual_maps(x, x, "ssim", scales=3)


def _blob_map():
    m = np.zeros((32, 32), np.float32)
    m[5:10, 5:10] = 1.0  # 25-px blob
    m[20, 20] = m[21, 21] = m[22, 22] = 0.8  # diagonal 3-px speck, one region with 8-connectivity
    return m


def test_regions_are_8_connected_with_exact_areas():
    _, areas = resmaps.label_regions(_blob_map(), 0.5)
    assert sorted(areas.tolist()) == [3, 25]
    assert resmaps.largest_area(_blob_map(), 0.9) == 25
    assert resmaps.largest_area(_blob_map(), 1.0) == 0
    mask = resmaps.defect_mask(_blob_map(), 0.5, 4)
    assert mask.sum() == 25 and mask[5:10, 5:10].all()


def test_exact_threshold_agrees_with_brute_force():
    rng = np.random.default_rng(3)
    for _ in range(5):
        maps = np.round(rng.random((4, 24, 24)), 2).astype(np.float32)  # ties on purpose
        values = np.unique(maps)
        for area in (1, 2, 5, 20, 100):
            brute = min(v for v in values if max(resmaps.largest_area(m, v) for m in maps) < area)
            assert resmaps.min_threshold_for_area(maps, area) == pytest.approx(float(brute))


def test_regions_and_thresholds_equal_skimage_labelling():
    # OpenCV labels the regions; scikit-image (what it replaced) is the independent reference.
    from scipy.ndimage import gaussian_filter
    from skimage.measure import label

    rng = np.random.default_rng(5)
    maps = gaussian_filter(rng.random((6, 40, 33)), (0, 1.5, 1.5)).astype(np.float32)
    for m in maps:
        for t in np.quantile(m, [0.1, 0.5, 0.9, 0.99]):
            ref = label(m > t, connectivity=2)
            labels, areas = resmaps.label_regions(m, t)
            # the same partition: every reference region is exactly one of ours, of the same area
            pairs = np.unique(np.stack([ref.ravel(), labels.ravel()]), axis=1)
            assert pairs.shape[1] == ref.max() + 1 == areas.size + 1
            np.testing.assert_array_equal(np.sort(areas), np.sort(np.bincount(ref.ravel())[1:]))
            ref_keep = np.concatenate([[False], np.bincount(ref.ravel())[1:] >= 12])
            np.testing.assert_array_equal(resmaps.defect_mask(m, t, 12), ref_keep[ref])

    def ref_largest(m, t):
        return int(np.bincount(label(m > t, connectivity=2).ravel())[1:].max(initial=0))

    maps = np.round(maps, 2)  # few distinct values (ties on purpose), so the brute force stays quick
    for area in (1, 7, 40, 300):
        values = np.unique(maps)
        candidates = [v for v in values[::-1] if max(ref_largest(m, v) for m in maps) < area]
        brute = candidates[-1]  # the smallest value that passes (the check is monotone)
        assert resmaps.min_threshold_for_area(maps, area) == float(brute)


def test_smoothing_equals_scipy_gaussian_filter():
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(6)
    for shape in ((3, 48, 40), (2, 7, 5)):  # the second smaller than the σ-4 kernel
        maps = rng.random(shape, dtype=np.float32)
        for sigma in (0.7, 1.0, 1.5, 4.0):
            expected = gaussian_filter(maps.astype(np.float64), (0, sigma, sigma), mode="reflect")
            out = resmaps.smooth(maps, sigma)
            assert out.dtype == np.float32 and out.shape == shape
            np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(resmaps.smooth(maps.astype(np.float64), 1.0), resmaps.smooth(maps, 1.0))


def test_threshold_search_on_known_blob():
    m = _blob_map()
    m[5:10, 5:10] = 0.6  # 25-px blob with a 3x3 core at 1.0
    m[6:9, 6:9] = 1.0
    maps = np.stack([m])
    assert resmaps.min_threshold_for_area(maps, 26) == 0.0  # nothing reaches 26 px even at 0
    assert resmaps.min_threshold_for_area(maps, 25) == pytest.approx(0.6)  # above 0.6 only the 9-px core
    assert resmaps.min_threshold_for_area(maps, 10) == pytest.approx(0.6)
    assert resmaps.min_threshold_for_area(maps, 9) == pytest.approx(1.0)
    assert resmaps.min_threshold_for_area(maps, 4) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="min_area must be >= 1, got 0"):
        resmaps.min_threshold_for_area(maps, 0)


def test_smoothing_preserves_shape_and_mass():
    maps = np.stack([_blob_map(), np.zeros((32, 32), np.float32)])
    out = resmaps.smooth(maps, 2.0)
    assert out.shape == maps.shape and out[1].max() == 0.0
    assert out[0].sum() == pytest.approx(maps[0].sum(), rel=1e-3)
    assert resmaps.smooth(maps, 0) is maps


def _spilling_model(size=32, k=7):
    """A linear stand-in for an autoencoder: ``0.25 + 0.5 · box_k(x)`` per channel.

    It reproduces flat grey 0.5 exactly but, like a real CAE, lets a defect disturb its
    reconstruction k/2 px around it (half the defect's contrast, blurred), so the residual
    map spills onto good pixels next to the defect.
    """
    import keras

    inputs = keras.Input((size, size, 3))
    conv = keras.layers.DepthwiseConv2D(k, padding="same", name="box")
    outputs = conv(inputs)
    conv.set_weights([np.full((k, k, 3, 1), 0.5 / k**2, np.float32), np.full(3, 0.25, np.float32)])
    return keras.Model(inputs, outputs)


def test_later_passes_remove_the_spill_around_a_defect_and_keep_the_defect():
    from scipy.ndimage import gaussian_filter

    import inference

    rng = np.random.default_rng(0)
    model = _spilling_model()
    train = (0.5 + 0.02 * rng.standard_normal((20, 32, 32, 3))).astype(np.float32)
    good = (0.5 + 0.02 * rng.standard_normal((1, 32, 32, 3))).astype(np.float32)
    defect = np.full((1, 32, 32, 3), 0.5, np.float32)
    defect[0, 12:20, 12:20] = 1.0
    inside = np.zeros((32, 32), bool)
    inside[12:20, 12:20] = True
    ring = np.zeros((32, 32), bool)
    ring[8:24, 8:24] = True
    ring &= ~inside  # good pixels within 4 px of the defect

    found = {}
    for passes in (1, 2, 3):
        options = inference.MapOptions(baseline=True, scales=1, passes=passes)
        _, train_maps, calibration = inference.refined_maps(model, train, "l2", options)
        assert calibration.baselines.shape == (passes, 32, 32)
        found[passes] = {
            name: inference.refined_maps(model, images, "l2", options, calibration=calibration)[1][0]
            for name, images in (("defect", defect), ("good", good))
        }
        if passes == 1:
            assert calibration.mask_threshold == np.inf
            first_pass_train = train_maps
        else:
            assert calibration.mask_threshold == pytest.approx(
                np.quantile(gaussian_filter(first_pass_train, (0, 4, 4)), 0.999)
            )
    one, three = found[1]["defect"], found[3]["defect"]
    # The result is the minimum over passes, so it never exceeds the first pass ...
    assert (found[2]["defect"] <= one).all() and (three <= found[2]["defect"]).all()
    # ... the spill onto the good ring shrinks (measured: 0.33 -> 0.04 -> 0.00) ...
    assert one[ring].sum() > 0.3 and found[2]["defect"][ring].sum() < 0.2 * one[ring].sum() and three[ring].sum() < 0.01
    # ... while the defect keeps its full first-pass residual, and a good image, which
    # nothing repaints, keeps its map (up to the later passes' own baselines near the
    # border, where zero padding makes every image's residual high).
    np.testing.assert_allclose(three[inside], one[inside], rtol=1e-6)
    assert one[inside].min() > 0.05
    assert (found[3]["good"] <= found[1]["good"]).all()
    np.testing.assert_allclose(found[3]["good"], found[1]["good"], atol=1e-3)


def _refined_maps_every_image_every_pass(model, images, options, calibration):
    """The later passes as before issue 13's shortcut: every image through the model each pass."""
    import inference

    recons, raw = resmaps.compute_resmaps(model, images, "l2", 16, options.scales)
    maps = np.maximum(raw - calibration.baselines[0], 0)
    for k in range(1, options.passes):
        smoothed = resmaps.smooth(maps, inference.MASK_SIGMA)
        mask = resmaps.smooth((smoothed > calibration.mask_threshold).astype(np.float32), inference.MASK_FEATHER)
        mask = mask[..., None]
        recons = resmaps.reconstruct(model, images * (1 - mask) + recons * mask, 16)
        raw = resmaps.batched_residual_maps(images, recons, "l2", 16, options.scales)
        maps = np.minimum(maps, np.maximum(raw - calibration.baselines[k], 0))
    return recons, maps


def test_later_passes_reconstruct_only_the_repainted_images_and_give_the_same_maps():
    import inference

    rng = np.random.default_rng(1)
    model = _spilling_model()
    train = (0.5 + 0.02 * rng.standard_normal((20, 32, 32, 3))).astype(np.float32)
    images = (0.5 + 0.02 * rng.standard_normal((6, 32, 32, 3))).astype(np.float32)
    images[1, 12:20, 12:20] = 1.0  # two defective images among four good ones
    images[4, 3:9, 20:30] = 0.0
    options = inference.MapOptions(baseline=True, scales=1, passes=3)
    _, _, calibration = inference.refined_maps(model, train, "l2", options)
    seen = []
    real = resmaps.reconstruct
    try:
        resmaps.reconstruct = lambda m, x, batch=16: seen.append(len(x)) or real(m, x, batch)
        recons, maps, _ = inference.refined_maps(model, images, "l2", options, calibration=calibration)
    finally:
        resmaps.reconstruct = real
    assert seen[0] == 6 and 1 <= max(seen[1:]) < 6  # later passes: only images with something to repaint
    expected_recons, expected = _refined_maps_every_image_every_pass(model, images, options, calibration)
    np.testing.assert_allclose(maps, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(recons, expected_recons, rtol=1e-5, atol=1e-6)
