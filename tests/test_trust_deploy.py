"""The deployment path's guards (predict_exported.py), without TensorFlow: --out never
overwrites a user's folder nor writes into an input, detector.json's numbers are checked,
a damaged artefact is one line. A stand-in detector scores; tests/test_export.py runs the
same guards on a real export."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import predict_exported as pe


class FakeDetector:
    """What predict_files uses of a Detector: its folder, colour and predict."""

    def __init__(self, folder):
        self.folder, self.color = Path(folder), "grayscale"

    def predict(self, image):
        mask = image[..., 0] > 127
        return {"defective": bool(mask.any()), "score": float(image.max()), "largest_area": int(mask.sum()),
                "n_regions": int(mask.any()), "mask": mask}  # fmt: skip


@pytest.fixture
def setup(tmp_path):
    detector = tmp_path / "export" / "onnx"
    detector.mkdir(parents=True)
    images = tmp_path / "images"
    images.mkdir()
    for i, value in enumerate((0, 200)):
        Image.fromarray(np.full((8, 8), value, np.uint8)).save(images / f"{i}.png")
    return FakeDetector(detector), images


def snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in Path(folder).rglob("*") if p.is_file()}


def test_out_is_written_whole_with_a_marker_and_replaced_by_the_same_prediction(setup, tmp_path):
    detector, images = setup
    out = tmp_path / "out"
    rows = pe.predict_files(detector, [images], out)
    assert [r["verdict"] for r in rows] == ["good", "defective"]
    assert sorted(snapshot(out)) == [pe.MARKER, "0_mask.png", "1_mask.png", "predictions.csv"]
    assert json.loads((out / pe.MARKER).read_text())["inputs"] == [os.path.realpath(images)]
    assert all(Path(r["mask"]).parent == out for r in rows)
    pe.predict_files(detector, [images], out)  # the same prediction again: replaced
    assert sorted(snapshot(out)) == [pe.MARKER, "0_mask.png", "1_mask.png", "predictions.csv"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "images", "out"]  # no staging left


def test_out_holding_a_users_files_or_other_predictions_is_refused_untouched(setup, tmp_path):
    detector, images = setup
    user = tmp_path / "results"
    user.mkdir()
    (user / "predictions.csv").write_text("the user's own table\n")
    (user / "0_mask.png").write_bytes(b"the user's mask")
    before = snapshot(user)
    with pytest.raises(pe.OutputError, match="not an output of predict_exported.py") as caught:
        pe.predict_files(detector, [images], user)
    assert "\n" not in str(caught.value) and snapshot(user) == before
    (tmp_path / "empty").mkdir()  # even an empty folder of the user's: refused, never filled
    with pytest.raises(pe.OutputError, match="not an output"):
        pe.predict_files(detector, [images], tmp_path / "empty")
    ours = tmp_path / "ours"
    pe.predict_files(detector, [images / "0.png"], ours)
    before = snapshot(ours)
    with pytest.raises(pe.OutputError, match="other images"):
        pe.predict_files(detector, [images], ours)
    assert snapshot(ours) == before


@pytest.mark.parametrize(
    "where",
    ["images", "images/masks", "tmp", "images/0.png:images", "export/onnx", "export/onnx/out", "export"],
    ids=[
        "input-folder",
        "inside-input",
        "holds-input",
        "folder-of-input-file",
        "detector",
        "inside-detector",
        "holds-detector",
    ],  # fmt: skip
)
def test_out_never_overlaps_an_input_or_the_detector(setup, tmp_path, where):
    detector, images = setup
    given, _, out = where.partition(":")
    items = [tmp_path / given] if out else [images]
    out = tmp_path / (out or given) if where != "tmp" else tmp_path
    before = snapshot(tmp_path)
    with pytest.raises(pe.OutputError, match="overlaps|is the folder of the input") as caught:
        pe.predict_files(detector, items, out)
    assert "\n" not in str(caught.value) and snapshot(tmp_path) == before


def test_interrupted_prediction_leaves_the_earlier_output_and_no_staging(setup, tmp_path, monkeypatch):
    detector, images = setup
    out = tmp_path / "out"
    pe.predict_files(detector, [images], out)
    before = snapshot(out)

    def interrupted(image):
        raise KeyboardInterrupt

    monkeypatch.setattr(detector, "predict", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pe.predict_files(detector, [images], out)
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "images", "out"]


def write_detector(folder, **changes):
    meta = {"format": "onnx", "artefact": "detector.onnx", "input": {"color": "grayscale"}, "threshold": 0.25,
            "min_area": 8, **changes}  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "detector.json").write_text(json.dumps(meta))
    return folder


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"threshold": None}, "threshold must be a finite number >= 0, got None"),
        ({"threshold": "0.3"}, "threshold must be a finite number >= 0, got '0.3'"),
        ({"threshold": -1}, "threshold must be a finite number >= 0, got -1"),
        ({"threshold": True}, "threshold must be a finite number >= 0, got True"),
        ({"min_area": 2.5}, "min_area must be a whole number >= 1, got 2.5"),
        ({"input": {"color": "cmyk"}}, "input color must be grayscale or rgb, got 'cmyk'"),
    ],
)
def test_detector_json_numbers_are_checked_in_one_line(tmp_path, capsys, changes, message):
    folder = write_detector(tmp_path / "detector", **changes)
    code = pe.main([str(folder), str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err


def test_non_finite_threshold_is_refused(tmp_path, capsys):
    folder = write_detector(tmp_path / "detector")
    (folder / "detector.json").write_text((folder / "detector.json").read_text().replace("0.25", "NaN"))
    assert pe.main([str(folder), str(tmp_path)]) == 2
    assert "threshold must be a finite number >= 0, got nan" in capsys.readouterr().err


@pytest.mark.parametrize("content", [b"", b"\x08\x07\x12\x04truncated", None], ids=["empty", "truncated", "missing"])
def test_damaged_or_missing_artefact_is_one_line(tmp_path, capsys, content):
    folder = write_detector(tmp_path / "detector")
    if content is not None:
        (folder / "detector.onnx").write_bytes(content)
    code = pe.main([str(folder), str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert ("is missing" if content is None else "is damaged or truncated") in err and "export the run again" in err


def test_export_out_is_replaced_only_for_this_runs_own_export(tmp_path):
    import exporting
    import runs
    import storage
    from utils import UserError

    def fake_run(name, weights):
        run = tmp_path / name
        run.mkdir()
        setup = {"architecture": "mvtec2", "loss": "ssim", "color": "grayscale", "size": 32, "batch": 4}
        (run / runs.SETUP).write_text(json.dumps({**setup, "directory": str(tmp_path / "klass")}))
        (run / runs.model_filename("mvtec2", 4)).write_bytes(weights)
        return runs.find_run(run)

    own, copy = fake_run("run", b"weights"), fake_run("copy", b"weights")  # the same weights, another run
    out = tmp_path / "shipped"
    with storage.StagedOutput(out, exporting.export_identity(own, "ssim")) as staged:
        (staged / "detector.json").write_text("first")
    with storage.StagedOutput(out, exporting.export_identity(own, "ssim")) as staged:  # its own: replaced
        (staged / "detector.json").write_text("again")
    assert (out / "detector.json").read_text() == "again"
    with pytest.raises(UserError, match="another run's result"):
        storage.StagedOutput(out, exporting.export_identity(copy, "ssim")).check()
    own.model_path.write_bytes(b"retrained")  # this run, other weights: refused too
    with pytest.raises(UserError, match="other weights"):
        storage.StagedOutput(out, exporting.export_identity(runs.find_run(own.dir), "ssim")).check()
    assert (out / "detector.json").read_text() == "again"
