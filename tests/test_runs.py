"""Unit tests of runs.py on real files: atomic writes, staged folders, a run's images, finding runs."""

import argparse
import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import runs  # noqa: E402
import storage  # noqa: E402
from settings import MapRequest  # noqa: E402
from utils import UserError  # noqa: E402

SETUP = {"architecture": "mvtec2", "loss": "ssim", "color": "grayscale", "size": 32, "batch": 4}


def make_class(root, n=6):
    """A class folder with ``n`` (empty but listable) good training images."""
    good = root / "klass" / "train" / "good"
    good.mkdir(parents=True)
    for i in range(n):
        (good / f"{i:03d}.png").write_bytes(b"")
    return root / "klass"


def make_run(root, class_dir, held_back=("train/good/001.png", "train/good/004.png"), model=True):
    """A run folder as train.py leaves it, with a stand-in model file (never loaded here)."""
    run = root / "run"
    run.mkdir()
    setup = {**SETUP, "directory": str(class_dir)}
    (run / runs.SETUP).write_text(json.dumps(setup))
    (run / runs.VALIDATION_FILES).write_text("\n".join(held_back) + "\n")
    if model:
        (run / runs.model_filename("mvtec2", 4)).write_bytes(b"model")
    return run


# --------------------------------------------------------------------------- atomic writes


def test_atomic_path_replaces_in_one_step_and_keeps_the_suffix(tmp_path):
    target = tmp_path / "model.keras"
    target.write_text("old")
    with storage.atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".keras" and tmp.name.startswith(".")
        assert str(os.getpid()) in tmp.name
        tmp.write_text("new")
        assert target.read_text() == "old"  # not yet replaced inside the block
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keras"]


def test_atomic_path_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "a.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with storage.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_write_json_round_trip_creates_folders(tmp_path):
    path = tmp_path / "x" / "y" / "r.json"
    storage.write_json(path, {"threshold": 0.25, "path": Path("a/b")})
    assert storage.read_json(path) == {"threshold": 0.25, "path": "a/b"}
    assert sorted(p.name for p in path.parent.iterdir()) == ["r.json"]


def test_read_json_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="file not found"):
        storage.read_json(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(UserError, match="not valid JSON"):
        storage.read_json(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(UserError, match="instead of a JSON object"):
        storage.read_json(tmp_path / "list.json")


# --------------------------------------------------------------------------- staged folders


def test_staged_folder_replaces_whatever_is_there_only_on_success(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with storage.StagedFolder(final) as staged:
            (staged / "new.txt").write_text("new")
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in final.iterdir()) == ["old.txt"]
    with storage.StagedFolder(final) as staged:
        assert staged.name.startswith(".out.partial-")
        (staged / "new.txt").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]  # no marker: not a result folder


def test_staged_folder_creates_missing_parents(tmp_path):
    with storage.StagedFolder(tmp_path / "a" / "b" / "c") as staged:
        (staged / "f").write_text("1")
    assert (tmp_path / "a" / "b" / "c" / "f").read_text() == "1"


def test_staged_output_replaces_the_same_result_and_refuses_foreign_folders(tmp_path):
    final = tmp_path / "res"
    identity = {"kind": "test", "model_sha256": "abc"}
    for text in ("first", "second"):
        with storage.StagedOutput(final, identity) as out:
            (out / "r.txt").write_text(text)
    assert (final / "r.txt").read_text() == "second"
    assert json.loads((final / storage.MARKER).read_text()) == {"tool": "cae", **identity}
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    with pytest.raises(UserError, match="not a result folder of this tool"):
        with storage.StagedOutput(foreign, identity):
            pass
    assert list(foreign.iterdir()) == []


def test_staged_output_archive_moves_other_weights_aside(tmp_path):
    final = tmp_path / "res"
    with storage.StagedOutput(final, {"kind": "test", "model_sha256": "a" * 64}, archive=True) as out:
        (out / "r.txt").write_text("old weights")
    with storage.StagedOutput(final, {"kind": "test", "model_sha256": "b" * 64}, archive=True) as out:
        (out / "r.txt").write_text("new weights")
    assert (final / "r.txt").read_text() == "new weights"
    assert (tmp_path / storage.OTHER_WEIGHTS / ("a" * 12) / "res" / "r.txt").read_text() == "old weights"


# --------------------------------------------------------------------------- a run and its images


def test_training_paths_are_train_good_without_the_held_back_images(tmp_path):
    class_dir = make_class(tmp_path)
    run = runs.find_run(make_run(tmp_path, class_dir))
    good = class_dir / "train" / "good"
    assert run.validation_paths() == [(good / "001.png").resolve(), (good / "004.png").resolve()]
    assert [p.name for p in run.training_paths()] == ["000.png", "002.png", "003.png", "005.png"]
    assert set(run.training_paths()).isdisjoint(run.validation_paths())


def test_validation_list_does_not_need_the_files_but_validation_paths_does(tmp_path):
    class_dir = make_class(tmp_path)
    run = runs.find_run(make_run(tmp_path, class_dir))
    (class_dir / "train" / "good" / "004.png").unlink()
    assert [p.name for p in run.validation_list()] == ["001.png", "004.png"]
    assert [p.name for p in run.training_paths()] == ["000.png", "002.png", "003.png", "005.png"]
    with pytest.raises(UserError, match="1 validation image"):
        run.validation_paths()


def test_validation_list_outside_the_class_folder_is_refused(tmp_path):
    class_dir = make_class(tmp_path)
    run = runs.find_run(make_run(tmp_path, class_dir, held_back=("../../etc/passwd",)))
    with pytest.raises(UserError, match="points outside"):
        run.training_paths()


def test_find_run_from_folder_or_model_file_and_its_one_line_errors(tmp_path):
    class_dir = make_class(tmp_path)
    run_dir = make_run(tmp_path, class_dir)
    model = run_dir / runs.model_filename("mvtec2", 4)
    assert runs.find_run(run_dir).model_path == model
    assert runs.find_run(model).dir == run_dir
    run = runs.find_run(run_dir)
    assert (run.size, run.shape, run.mode, run.color, run.class_dir) == (32, (32, 32), "object", "grayscale", class_dir)
    assert run.method() == "ssim" and run.method("l2") == "l2"
    with pytest.raises(UserError, match="unknown method"):
        run.method("nope")
    with pytest.raises(UserError, match="run not found"):
        runs.find_run(tmp_path / "nowhere")
    with pytest.raises(UserError, match="not a run folder"):
        runs.find_run(class_dir)
    model.unlink()
    with pytest.raises(UserError, match="is missing"):
        runs.find_run(run_dir)


def test_run_arguments_become_one_map_request():
    parser = runs.add_run_arguments(argparse.ArgumentParser())
    assert MapRequest.from_args(parser.parse_args(["-p", "RUN"])) == MapRequest()
    args = parser.parse_args(
        ["-p", "R", "--method", "l2", "--no-baseline", "--scales", "1", "--passes", "3", "--batch", "2"]
    )
    assert MapRequest.from_args(args) == MapRequest("l2", False, 1, 3, 2)


# --------------------------------------------------------------------------- the layout


def test_layout_names_every_path_the_readme_table_gives(tmp_path):
    """Spelled out here as the README's table of a run's files spells them (an independent copy)."""
    layout = runs.Layout(str(tmp_path))
    assert layout.dir == tmp_path
    top = {
        layout.setup: "setup.json",
        layout.validation_files: "validation_files.txt",
        layout.history: "history.csv",
        layout.loss_plot: "loss_curve.png",
        layout.head: "head.keras",
        layout.backup: "backup",
        layout.state: "backup/state.json",
        layout.validation("fused"): "validation/fused",
        layout.validation("fused", 12.0): "validation/fused/a12",
        layout.validation_result("l2", 7): "validation/l2/a7/validation_result.json",
        layout.test("ssim"): "test/ssim",
        layout.test("ssim", 5, 0.25): "test/ssim/a5_t0.250000",
        layout.test("ssim", 5, 1e-7): "test/ssim/a5_t0.000000",  # fixed decimals, never an exponent
        layout.predictions("learned"): "predictions/learned",
        layout.predictions("learned", "imgs-abc123_a5_t0.500000"): "predictions/learned/imgs-abc123_a5_t0.500000",
        layout.finetune("median"): "finetune/median",
        layout.visualize: "visualize",
        layout.export("onnx"): "export/onnx",
    }
    for path, relative in top.items():
        assert path == tmp_path / relative


def test_only_runs_py_spells_a_run_folders_paths():
    """Every library module and script takes a run's paths from :class:`runs.Layout`: none
    joins a run folder with a result folder's or a training file's name itself."""
    import re

    from conftest import ROOT

    spelled = re.compile(
        r'/ "(validation|test|predictions|finetune|visualize|export|backup)"|"state\.json"|"validation_result\.json"'
    )
    found = {
        path.name: [line.strip() for line in path.read_text().splitlines() if spelled.search(line)]
        for path in ROOT.glob("*.py")
        if path.name != "runs.py"
    }
    # A class folder's "test" is the dataset's (the MVTec layout, data.py's), not a run's.
    found = {name: [line for line in lines if "class_dir" not in line] for name, lines in found.items()}
    assert {name: lines for name, lines in found.items() if lines} == {}
