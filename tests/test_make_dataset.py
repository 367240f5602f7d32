"""Tests for make_dataset.py: MVTec AD layout, exact masks, determinism, CLI behaviour."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import make_dataset as md  # noqa: E402
from utils import UserError, run_cli  # noqa: E402

SIZE = 48
COUNTS = dict(n_train=3, n_test_good=2, n_test_defect=2)
RGB_CLASSES = [name for name, spec in md.CLASSES.items() if spec.rgb]
GRAY_CLASSES = [name for name, spec in md.CLASSES.items() if not spec.rgb]


def files_under(folder):
    """Relative paths of all files under a folder (including hidden ones)."""
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*") if p.is_file())


def read_bytes(folder):
    return {name: (Path(folder) / name).read_bytes() for name in files_under(folder)}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("mvtec")
    folders = md.generate(out, size=SIZE, seed=0, **COUNTS)
    return out, folders


def test_default_classes_include_gray_and_rgb():
    assert set(md.CLASSES) >= {"brick", "grass", "gravel"}
    assert RGB_CLASSES and GRAY_CLASSES
    assert md.DEFECTS == ("scratch", "crack", "hole", "stain", "contamination")


def test_layout_counts_and_names(dataset):
    out, folders = dataset
    assert folders == [out / name for name in md.CLASSES]
    assert sorted(p.name for p in out.iterdir()) == sorted(md.CLASSES)  # no leftovers
    for folder in folders:
        expected = {".generated.json"}
        expected |= {f"train/good/{i:03d}.png" for i in range(COUNTS["n_train"])}
        expected |= {f"test/good/{i:03d}.png" for i in range(COUNTS["n_test_good"])}
        for defect in md.DEFECTS:
            for i in range(COUNTS["n_test_defect"]):
                expected.add(f"test/{defect}/{i:03d}.png")
                expected.add(f"ground_truth/{defect}/{i:03d}_mask.png")
        assert set(files_under(folder)) == expected
        assert not (folder / "ground_truth" / "good").exists()
        settings = json.loads((folder / ".generated.json").read_text())
        assert settings["size"] == SIZE and settings["seed"] == 0 and settings["defects"] == list(md.DEFECTS)


def test_image_modes_and_sizes(dataset):
    out, _ = dataset
    for name in md.CLASSES:
        mode = "RGB" if md.CLASSES[name].rgb else "L"
        for path in sorted((out / name).glob("t*/*/*.png")):
            with Image.open(path) as img:
                assert img.mode == mode, path
                assert img.size == (SIZE, SIZE), path


def test_masks_binary_nonempty_and_match_images(dataset):
    out, _ = dataset
    for name in md.CLASSES:
        for defect in md.DEFECTS:
            for image_path in sorted((out / name / "test" / defect).glob("*.png")):
                mask_path = out / name / "ground_truth" / defect / f"{image_path.stem}_mask.png"
                with Image.open(mask_path) as m, Image.open(image_path) as img:
                    assert m.mode == "L" and m.size == img.size
                    mask = np.asarray(m)
                assert mask.dtype == np.uint8
                assert set(np.unique(mask)) == {0, 255}, mask_path  # binary and non-empty


def test_good_and_defective_images_differ(dataset):
    out, _ = dataset
    images = [np.asarray(Image.open(p)) for p in sorted((out / "brick").glob("t*/*/*.png"))]
    flat = {img.tobytes() for img in images}
    assert len(flat) == len(images)  # no two images identical


@pytest.mark.parametrize("class_name", list(md.CLASSES))
@pytest.mark.parametrize("defect", md.DEFECTS)
def test_mask_covers_exactly_the_changed_pixels(class_name, defect):
    for i in range(4):
        rng = np.random.default_rng([123, i])
        clean, defective, mask = md.make_pair(class_name, defect, 64, rng)
        assert clean.shape == defective.shape
        assert clean.shape[:2] == mask.shape == (64, 64)
        assert clean.ndim == (3 if md.CLASSES[class_name].rgb else 2)
        assert set(np.unique(mask)) <= {0.0, 1.0} and mask.sum() > 0
        diff = np.abs(defective.astype(np.float64) - clean)
        if diff.ndim == 3:
            diff = diff.max(-1)
        changed = diff > 0.5 / 255  # any change at all (images lie on the 8-bit grid)
        assert not (changed & (mask == 0)).any(), "changed pixels outside the mask"
        inside = mask > 0
        assert changed[inside].mean() >= 0.9, "mask much bigger than the changed area"
        assert (diff[inside] > md.MASK_TOLERANCE / 255).mean() >= 0.9  # visible, not tiny changes


def test_make_pair_is_deterministic_and_matches_make_good():
    a = md.make_pair("gravel", "hole", 48, np.random.default_rng(5))
    b = md.make_pair("gravel", "hole", 48, np.random.default_rng(5))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a[0], md.make_good("gravel", 48, np.random.default_rng(5)))


def test_same_seed_identical_bytes_other_seed_differs(dataset, tmp_path):
    out, _ = dataset
    classes = ["gravel", RGB_CLASSES[0]]
    md.generate(tmp_path / "again", classes=classes, size=SIZE, seed=0, **COUNTS)
    md.generate(tmp_path / "other", classes=classes, size=SIZE, seed=1, **COUNTS)
    for name in classes:
        # also shows that files do not depend on which classes were generated together
        assert read_bytes(tmp_path / "again" / name) == read_bytes(out / name)
        first, other = read_bytes(out / name), read_bytes(tmp_path / "other" / name)
        assert sorted(first) == sorted(other)
        pngs = [k for k in first if k.endswith(".png") and "ground_truth" not in k]
        assert all(first[k] != other[k] for k in pngs)


def test_rerun_skips_mismatch_needs_force(tmp_path, capsys):
    out = tmp_path / "mv"
    args = dict(classes=["brick"], size=32, n_train=2, n_test_good=1, n_test_defect=1, seed=3)
    md.generate(out, **args)
    before = {p: p.stat().st_mtime_ns for p in (out / "brick").rglob("*")}
    capsys.readouterr()

    md.generate(out, **args)
    assert "skipped" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in (out / "brick").rglob("*")} == before

    with pytest.raises(UserError, match="--force"):
        md.generate(out, **{**args, "seed": 4})
    assert {p: p.stat().st_mtime_ns for p in (out / "brick").rglob("*")} == before  # untouched

    md.generate(out, **{**args, "seed": 4, "force": True})
    assert json.loads((out / "brick" / ".generated.json").read_text())["seed"] == 4

    (out / "brick" / "test" / "good" / "000.png").unlink()  # incomplete folder
    with pytest.raises(UserError, match="incomplete"):
        md.generate(out, **{**args, "seed": 4})
    md.generate(out, **{**args, "seed": 4, "force": True})
    assert (out / "brick" / "test" / "good" / "000.png").is_file()
    assert sorted(p.name for p in out.iterdir()) == ["brick"]


def test_foreign_folder_is_not_overwritten_without_force(tmp_path):
    (tmp_path / "gravel" / "train" / "good").mkdir(parents=True)
    with pytest.raises(UserError, match="--force"):
        md.generate(tmp_path, classes=["gravel"], size=32, n_train=2, n_test_good=0, n_test_defect=0)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(size=31),
        dict(size=1025),
        dict(n_train=1),
        dict(n_test_good=-1),
        dict(n_test_defect=-2),
        dict(seed=-1),
        dict(classes=["wood"]),
        dict(defects=["dent"]),
    ],
)
def test_generate_rejects_bad_arguments(tmp_path, kwargs):
    with pytest.raises(UserError):
        md.generate(tmp_path / "mv", **kwargs)
    assert not (tmp_path / "mv").exists()


def test_cli_bad_size_is_one_line_exit_2(tmp_path, capsys):
    code = run_cli(md.main, ["--out", str(tmp_path / "mv"), "--size", "16"])
    assert code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--size" in err
    assert not (tmp_path / "mv").exists()


def test_cli_unknown_class_rejected_by_argparse(capsys):
    with pytest.raises(SystemExit) as exc:
        md.main(["--classes", "wood"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_cli_generates_and_help_shows_defaults(tmp_path, capsys):
    code = run_cli(
        md.main,
        [
            "--out",
            str(tmp_path / "mv"),
            "--classes",
            "grass",
            "--size",
            "32",
            "--train",
            "2",
            "--test-good",
            "1",
            "--test-defect",
            "1",
            "--defects",
            "crack",
        ],
    )
    assert code == 0
    assert files_under(tmp_path / "mv" / "grass") == [
        ".generated.json",
        "ground_truth/crack/000_mask.png",
        "test/crack/000.png",
        "test/good/000.png",
        "train/good/000.png",
        "train/good/001.png",
    ]
    help_text = " ".join(md.get_parser().format_help().split())
    for flag in (
        "--out",
        "--classes",
        "--size",
        "--train",
        "--test-good",
        "--test-defect",
        "--defects",
        "--seed",
        "--force",
    ):
        assert flag in help_text
    assert "(default: 256)" in help_text and "(default: mvtec)" in help_text
    assert f"(default: {' '.join(md.CLASSES)})" in help_text
