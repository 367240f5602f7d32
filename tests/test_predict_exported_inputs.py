"""predict_exported.py reads every image the way the training code does (data.py), though it
cannot import it: float TIFFs in [0, 1], 16- and 32-bit, palette, RGBA, planar. Files written
by tifffile, Pillow and OpenCV; both readers must give equal arrays. And a folder's skipped
files each get a note (hidden ones, broken links, other files, unreadable ones)."""

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image

import data
import predict_exported as pe

RNG = np.random.default_rng(7)
GRAY = RNG.random((9, 11))
RGB = RNG.random((9, 11, 3))


def _palette(path, transparent=False):
    image = Image.fromarray((RGB * 255).astype(np.uint8)).quantize(7)
    image.save(path, transparency=0) if transparent else image.save(path)


WRITERS = {
    "float32_unit.tif": lambda p: tifffile.imwrite(p, GRAY.astype(np.float32)),
    "float32_unit_rgb.tif": lambda p: tifffile.imwrite(p, RGB.astype(np.float32)),
    "float32_unit_rgba.tif": lambda p: tifffile.imwrite(p, np.dstack([RGB, GRAY]).astype(np.float32)),
    "float64_unit.tif": lambda p: tifffile.imwrite(p, GRAY),
    "float32_255.tif": lambda p: tifffile.imwrite(p, (GRAY * 255).astype(np.float32)),
    "float32_65535.tif": lambda p: tifffile.imwrite(p, (GRAY * 65535).astype(np.float32)),
    "uint16.tif": lambda p: tifffile.imwrite(p, (GRAY * 65535).astype(np.uint16)),
    "uint16_small.tif": lambda p: tifffile.imwrite(p, (GRAY * 255).astype(np.uint16)),  # 8 bits stored in 16
    "uint16_rgb.tif": lambda p: tifffile.imwrite(p, (RGB * 65535).astype(np.uint16)),
    "int32.tif": lambda p: tifffile.imwrite(p, (GRAY * 40000).astype(np.int32)),
    "planar_rgb.tif": lambda p: tifffile.imwrite(
        p, np.moveaxis((RGB * 255).astype(np.uint8), -1, 0), planarconfig="separate"
    ),
    "uint16.png": lambda p: cv2.imwrite(str(p), (GRAY * 65535).astype(np.uint16)),
    "uint16_rgb.png": lambda p: cv2.imwrite(str(p), (RGB * 65535).astype(np.uint16)),
    "uint16_rgba.png": lambda p: cv2.imwrite(str(p), (np.dstack([RGB, GRAY]) * 65535).astype(np.uint16)),
    "palette.png": _palette,
    "palette_transparent.png": lambda p: _palette(p, transparent=True),
    "rgba.png": lambda p: Image.fromarray((np.dstack([RGB, GRAY]) * 255).astype(np.uint8), "RGBA").save(p),
    "la.png": lambda p: Image.fromarray((np.dstack([GRAY, GRAY[::-1]]) * 255).astype(np.uint8), "LA").save(p),
    "bilevel.png": lambda p: Image.fromarray(GRAY > 0.5).save(p),
    "rgb.bmp": lambda p: Image.fromarray((RGB * 255).astype(np.uint8)).save(p),
    "gray.png": lambda p: Image.fromarray((GRAY * 255).astype(np.uint8)).save(p),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("formats")
    for name, write in WRITERS.items():
        write(folder / name)
    return folder


@pytest.mark.parametrize("color", ["grayscale", "rgb"])
@pytest.mark.parametrize("name", sorted(WRITERS))
def test_reads_every_format_as_the_training_code(files, name, color):
    ours = pe.read_image(files / name, color)
    theirs = data.load_image(files / name, color)  # float32 in [0, 1], what a run computes from
    assert ours.dtype == np.uint8 and ours.shape == (9, 11, 3 if color == "rgb" else 1)
    np.testing.assert_array_equal(ours, np.rint(theirs * 255).astype(np.uint8))


def test_float_tiff_in_unit_range_is_not_read_as_black(files):
    """The issue's case: a good float32 image in [0, 1] was read as values 0 and 1 of 255."""
    image = pe.read_image(files / "float32_unit.tif", "grayscale")[..., 0]
    np.testing.assert_array_equal(image, np.rint(GRAY.astype(np.float32).astype(np.float64) * 255).astype(np.uint8))


@pytest.mark.parametrize(
    "array",
    [
        np.array([[0.0, 0.5, 1.0]]),
        np.array([[0.0, 2.0, 255.0]], np.float32),
        np.array([[-3.0, 300.0, 65535.0]]),
        np.array([[0, 255]], np.uint16),
        np.array([[0, 256, 65535]], np.uint16),
        np.array([[-5, 70000]], np.int32),
        np.array([[[1, 2, 3]]], np.uint16) * 300,
        np.array([[True, False]]),
    ],
)
def test_pixel_rule_is_data_to_uint8(array):
    np.testing.assert_array_equal(pe.to_uint8(array), data.to_uint8(array))


def test_non_finite_float_image_is_refused_in_one_line(tmp_path):
    values = GRAY.astype(np.float32)
    values[0, 0] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", values)
    with pytest.raises(ValueError, match="NaN or infinite"):
        pe.read_image(tmp_path / "nan.tif", "grayscale")


class Gray:
    folder, color = Path("/nonexistent-detector"), "grayscale"

    def predict(self, image):
        mask = image[..., 0] > 127
        return {"defective": bool(mask.any()), "score": 0.5, "largest_area": 1, "n_regions": 1, "mask": mask}


def test_skipped_files_each_get_a_note(tmp_path, capsys):
    images = tmp_path / "images"
    (images / ".cache").mkdir(parents=True)
    Image.fromarray((GRAY * 255).astype(np.uint8)).save(images / "good.png")
    Image.fromarray((GRAY * 255).astype(np.uint8)).save(images / ".hidden.png")
    Image.fromarray((GRAY * 255).astype(np.uint8)).save(images / ".cache" / "x.png")
    (images / "notes.txt").write_text("not an image")
    (images / "gone.png").symlink_to(tmp_path / "missing.png")
    (images / "broken.png").write_bytes(b"not a png")
    locked = images / "locked.png"
    Image.fromarray((GRAY * 255).astype(np.uint8)).save(locked)
    locked.chmod(0)
    try:
        rows = pe.predict_files(Gray(), [images])
    finally:
        locked.chmod(0o644)
    err = capsys.readouterr().err
    assert [Path(r["path"]).name for r in rows] == ["good.png"] + (["locked.png"] if os.geteuid() == 0 else [])
    assert "skipping 2 hidden file(s) under" in err and ".cache/x.png" in err
    assert f"skipping {images / 'gone.png'}: a broken symbolic link" in err
    assert f"skipping {images / 'notes.txt'}: not an image file" in err
    assert f"cannot read image {images / 'broken.png'}" in err
    if os.geteuid() != 0:
        assert f"cannot read image {locked}: permission denied" in err
    assert all(line.startswith("predict_exported: warning: ") for line in err.splitlines())


def test_no_readable_image_is_one_error_line(tmp_path, capsys, monkeypatch):
    (tmp_path / "only.png").write_bytes(b"")
    monkeypatch.setattr(pe, "Detector", lambda folder: Gray())
    assert pe.main([str(tmp_path / "det"), str(tmp_path / "only.png")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == "predict_exported: error: no image could be read (see the warnings above); nothing written"
