"""Input reading (data.py): every pixel depth and layout read the one same way, and nothing
skipped without a note. Tiny generated files, no model."""

import os

import numpy as np
import pytest
import tifffile
from PIL import Image

import data
from utils import UserError

GRADIENT = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (16, 1))  # 16x16, 0..240, every column its own value


def _gray(path, color="grayscale"):
    return np.rint(data.load_image(path, color)[..., 0] * 255).astype(int)


def test_float_tiff_in_0_1_is_read_as_its_8_bit_image_not_black(tmp_path):
    tifffile.imwrite(tmp_path / "unit.tif", GRADIENT.astype(np.float32) / 255.0)
    tifffile.imwrite(tmp_path / "byte.tif", GRADIENT.astype(np.float32))  # floats in 0..255: kept
    tifffile.imwrite(tmp_path / "half.tiff", GRADIENT.astype(np.float16) / 255.0)  # other float depths alike
    for name in ("unit.tif", "byte.tif"):
        np.testing.assert_array_equal(_gray(tmp_path / name), GRADIENT, err_msg=name)
    np.testing.assert_allclose(_gray(tmp_path / "half.tiff"), GRADIENT, atol=1)
    # Colour and grayscale runs agree on it; and so do load_images and image_size.
    np.testing.assert_array_equal(_gray(tmp_path / "unit.tif", "rgb"), GRADIENT)
    images, kept = data.load_images([tmp_path / "unit.tif"], "grayscale", 16)
    np.testing.assert_array_equal(np.rint(images[0, ..., 0] * 255), GRADIENT)
    assert data.image_size(tmp_path / "unit.tif") == (16, 16)


def test_float_colour_tiff_and_16_bit_colour_tiff_pillow_cannot_open(tmp_path):
    rgb = np.stack([GRADIENT, GRADIENT[::-1], np.full_like(GRADIENT, 128)], axis=-1)
    tifffile.imwrite(tmp_path / "float_rgb.tif", rgb.astype(np.float32) / 255.0)
    tifffile.imwrite(tmp_path / "wide_rgb.tif", rgb.astype(np.uint16) * 257)  # 16 bits: high byte is the value
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(rgb, -1, 0).astype(np.float32) / 255.0, photometric="rgb")
    for name in ("float_rgb.tif", "wide_rgb.tif", "planar.tif"):
        got = np.rint(data.load_image(tmp_path / name, "rgb") * 255).astype(int)
        np.testing.assert_array_equal(got, rgb, err_msg=name)
        assert data.image_size(tmp_path / name) == (16, 16)
    # Grayscale from them: Pillow's luminance of the same 8-bit colours (as from a PNG).
    Image.fromarray(rgb).save(tmp_path / "same.png")
    np.testing.assert_array_equal(_gray(tmp_path / "float_rgb.tif"), _gray(tmp_path / "same.png"))


def test_16_bit_palette_and_alpha_read_as_their_8_bit_image(tmp_path):
    Image.fromarray(GRADIENT.astype(np.uint16) * 257).save(tmp_path / "wide.png")  # I;16, full range
    Image.fromarray(GRADIENT.astype(np.uint16)).save(tmp_path / "narrow.png")  # 8-bit values in 16 bits
    Image.fromarray(GRADIENT).convert("P").save(tmp_path / "palette.png")
    rgba = np.dstack([np.stack([GRADIENT] * 3, axis=-1), np.zeros_like(GRADIENT)])  # fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    Image.fromarray(np.dstack([GRADIENT, np.full_like(GRADIENT, 7)]), "LA").save(tmp_path / "gray_alpha.png")
    for name in ("wide.png", "narrow.png", "palette.png", "alpha.png", "gray_alpha.png"):
        np.testing.assert_array_equal(_gray(tmp_path / name), GRADIENT, err_msg=name)
        np.testing.assert_array_equal(_gray(tmp_path / name, "rgb"), GRADIENT, err_msg=name)


def test_to_uint8_rules_and_non_finite_pixels_refused(tmp_path):
    assert data.to_uint8(np.array([0.0, 0.5, 1.0], np.float32)).tolist() == [0, 128, 255]
    assert data.to_uint8(np.array([0.0, 2.0, 255.0])).tolist() == [0, 2, 255]
    assert data.to_uint8(np.array([0.0, 65535.0])).tolist() == [0, 255]
    assert data.to_uint8(np.array([-0.5, 0.5])).tolist() == [0, 128]
    assert data.to_uint8(np.array([0, 255, 65535], np.uint16)).tolist() == [0, 0, 255]
    assert data.to_uint8(np.array([3, 255], np.uint16)).tolist() == [3, 255]
    bad = GRADIENT.astype(np.float32) / 255
    bad[3, 3] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", bad)
    with pytest.raises(UserError, match="NaN or infinite") as caught:
        data.load_image(tmp_path / "nan.tif", "grayscale")
    assert "\n" not in str(caught.value)


def test_broken_symlinks_and_hidden_files_are_skipped_with_a_note(tmp_path, capsys):
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    (folder / ".ipynb_checkpoints").mkdir()
    for name in ("a.png", "sub/b.png", ".hidden.png", ".ipynb_checkpoints/a-checkpoint.png"):
        Image.fromarray(GRADIENT).save(folder / name)
    (folder / ".DS_Store").write_bytes(b"\0")
    os.symlink(tmp_path / "gone.png", folder / "link.png")
    capsys.readouterr()
    found = data.list_images(folder, recursive=True)
    assert [p.relative_to(folder).as_posix() for p in found] == ["a.png", "sub/b.png"]
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2, err
    assert "link.png" in err[0] and "broken symbolic link" in err[0] and "gone.png" in err[0]
    assert "3 hidden file(s)" in err[1] and str(folder) in err[1]
    # Not recursive: the hidden folder's file is not seen at all, the rest is the same.
    assert [p.name for p in data.list_images(folder)] == ["a.png"]
    err = capsys.readouterr().err
    assert "2 hidden file(s)" in err and "broken symbolic link" in err
