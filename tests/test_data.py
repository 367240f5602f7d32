"""Data layout, loading, the validation split and the input pipeline."""

import numpy as np
import pytest
from PIL import Image

import data
import settings
from utils import UserError


def _write(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)


def test_list_images_any_case_and_warns_on_other_files(tmp_path, capsys):
    for name in ("a.png", "b.JPG", "c.jpeg", "d.BMP", "e.tif", "f.TIFF"):
        _write(tmp_path / name, np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / ".hidden.png").write_bytes(b"")
    names = [p.name for p in data.list_images(tmp_path)]
    assert names == ["a.png", "b.JPG", "c.jpeg", "d.BMP", "e.tif", "f.TIFF"]
    assert "notes.txt" in capsys.readouterr().err


def test_load_image_modes_range_and_area_resize(tmp_path):
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[:, :32] = (255, 0, 0)  # left half red
    _write(tmp_path / "x.png", rgb)
    gray = data.load_image(tmp_path / "x.png", "grayscale", 32)
    color = data.load_image(tmp_path / "x.png", "rgb", 32)
    assert gray.shape == (32, 32, 1) and color.shape == (32, 32, 3)
    assert gray.dtype == np.float32 and color.max() == pytest.approx(1.0)
    np.testing.assert_allclose(color[:, :16, 0], 1.0)
    np.testing.assert_allclose(color[:, 16:, 0], 0.0)
    # Area interpolation: a 2x2 checkerboard shrunk 2x averages to grey exactly.
    checker = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)
    _write(tmp_path / "c.png", checker)
    np.testing.assert_allclose(data.load_image(tmp_path / "c.png", "grayscale", 32), 127.5 / 255, atol=1 / 255)


def test_load_image_16_bit_and_palette(tmp_path):
    arr16 = np.full((16, 16), 65535, np.uint16)
    Image.fromarray(arr16).save(tmp_path / "h.png")
    assert data.load_image(tmp_path / "h.png", "grayscale", 16).min() == pytest.approx(1.0)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).convert("P").save(tmp_path / "p.png")
    assert data.load_image(tmp_path / "p.png", "rgb", 16).shape == (16, 16, 3)


def test_unreadable_image_is_skipped_with_warning(tmp_path, capsys):
    _write(tmp_path / "ok.png", np.zeros((8, 8), np.uint8))
    (tmp_path / "broken.png").write_bytes(b"not a png")
    images, kept = data.load_images(data.list_images(tmp_path), "grayscale", 8)
    assert images.shape == (1, 8, 8, 1) and [p.name for p in kept] == ["ok.png"]
    assert "broken.png" in capsys.readouterr().err
    with pytest.raises(UserError, match="no readable images"):
        data.load_images([tmp_path / "broken.png"], "grayscale", 8)


def test_split_is_seeded_random_and_disjoint():
    paths = [f"{i:03d}.png" for i in range(50)]
    train, val = data.split_validation(paths, 0.2, seed=0)
    assert len(val) == 10 and len(train) == 40
    assert not set(train) & set(val) and set(train) | set(val) == set(paths)
    assert val != sorted(paths)[:10]  # not simply the first names
    assert data.split_validation(paths, 0.2, seed=0) == (train, val)
    assert data.split_validation(paths, 0.2, seed=1)[1] != val


def test_split_needs_two_images():
    with pytest.raises(UserError, match="too few"):
        data.split_validation(["a.png"], 0.1, 0)
    with pytest.raises(UserError, match="between 0 and 1"):
        data.split_validation(["a.png", "b.png"], 1.5, 0)


def test_test_listing_and_masks(tmp_path, capsys):
    _write(tmp_path / "test" / "good" / "000.png", np.zeros((8, 8), np.uint8))
    _write(tmp_path / "test" / "hole" / "000.png", np.zeros((8, 8), np.uint8))
    _write(tmp_path / "test" / "hole" / "001.png", np.zeros((8, 8), np.uint8))
    big = np.zeros((16, 16), np.uint8)
    big[:8, :8] = 255
    _write(tmp_path / "ground_truth" / "hole" / "000_mask.png", big)
    items = data.list_test_images(tmp_path)
    assert [(p.name, d, m.name if m else None) for p, d, m in items] == [
        ("000.png", "good", None),
        ("000.png", "hole", "000_mask.png"),
        ("001.png", "hole", None),
    ]
    mask = data.load_mask(items[1][2], (8, 8))
    assert mask.shape == (8, 8) and mask.sum() == 16
    assert "resized (nearest neighbour)" in capsys.readouterr().err


def test_pipeline_batches_augments_and_keeps_range():
    images = np.random.default_rng(0).random((10, 32, 32, 1), dtype=np.float32)
    batches = list(data.tf_dataset(images, 4, training=True, seed=0))
    assert [b[0].shape[0] for b in batches] == [4, 4, 2]
    x, y = batches[0]
    np.testing.assert_array_equal(x.numpy(), y.numpy())  # autoencoder target = input
    assert 0.0 <= float(x.numpy().min()) and float(x.numpy().max()) <= 1.0
    # Training batches are augmented: no batch image equals a source image exactly.
    flat = {img.tobytes() for img in images}
    assert not any(img.tobytes() in flat for img in x.numpy())
    val = np.concatenate([b[0].numpy() for b in data.tf_dataset(images, 4, training=False)])
    np.testing.assert_array_equal(val, images)  # validation: untouched, in order


def test_rotation_range_is_the_augmenters():
    import tensorflow as tf

    # A 90° rotation is impossible at ±10° but happens at ±180°: compare a square image's
    # rotations. An image with one bright corner shows where that corner went.
    image = np.zeros((1, 32, 32, 1), np.float32)
    image[0, :8, :8] = 1.0
    tf.random.set_seed(0)

    def moved(rot):
        return [
            float(data.augmenter(seed=s, rotation=rot)(image, training=True)[0, :16, :16].numpy().mean())
            for s in range(12)
        ]

    assert min(moved(10.0)) > 0.15  # the corner stays in its quadrant
    assert min(moved(180.0)) < 0.05  # some rotations take it out of the quadrant


def test_output_stems_are_unique_per_folder():
    paths = ["a/x.png", "a/x.bmp", "a/y.png", "b/x.png"]
    assert data.output_stems(paths) == ["x_png", "x_bmp", "y", "x"]


def test_denoise_pipeline_corrupts_inputs_not_targets():
    import tensorflow as tf

    tf.random.set_seed(0)
    images = np.random.default_rng(0).random((16, 32, 32, 3), dtype=np.float32)
    x, y = next(
        iter(data.tf_dataset(images, 16, training=True, augment=False, denoise=settings.DEFAULT_DENOISE, seed=0))
    )
    x, y = x.numpy(), y.numpy()
    assert {img.tobytes() for img in y} == {img.tobytes() for img in images}  # targets: the clean images
    changed = [not np.array_equal(a, b) for a, b in zip(x, y)]
    assert 0 < sum(changed) < 16  # about half the inputs get a patch
    assert 0.0 <= x.min() and x.max() <= 1.0
    for a, b in zip(x, y):
        frac = np.mean(np.any(np.abs(a - b) > 1e-6, axis=-1))
        assert frac < 0.25  # one patch, not a whole new image
    # The share is a parameter: 1.0 corrupts every input, 0 none.
    x, y = next(iter(data.tf_dataset(images, 16, training=True, augment=False, denoise=1.0, seed=0)))
    assert all(not np.array_equal(a, b) for a, b in zip(x.numpy(), y.numpy()))
    x, y = next(iter(data.tf_dataset(images, 16, training=True, augment=False, denoise=0.0, seed=0)))
    np.testing.assert_array_equal(x.numpy(), y.numpy())
