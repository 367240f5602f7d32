"""Unit tests of training.py without fitting a model: epochs, output checks, the backup state
that resuming relies on, and resume's one-line refusals (real files, tiny, fast)."""

import json
import sys
from pathlib import Path
from types import SimpleNamespace  # the fields of runs.RunSetup _load_state reads

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import runs  # noqa: E402
import training  # noqa: E402
from utils import UserError  # noqa: E402

MODEL = "CAE_mvtec2_b4.keras"


def backup(run_dir, state, model_name="last-e3.keras"):
    folder = run_dir / runs.BACKUP
    folder.mkdir(parents=True, exist_ok=True)
    if model_name:
        (folder / model_name).write_bytes(b"model")
    (folder / "state.json").write_text(json.dumps(state))
    return folder


def test_epochs_and_frozen_epochs():
    assert training.epochs_for(15000, 120) == 125
    assert training.epochs_for(10, 120) == 1  # at least one
    assert training.epochs_for(10, 0) == 10
    assert training.freeze_epochs("resnet", 10) == 7
    assert training.freeze_epochs("mvtec2", 10) == 0


def test_out_folder_must_be_a_folder_outside_the_dataset(tmp_path):
    dataset = tmp_path / "data" / "klass"
    dataset.mkdir(parents=True)
    training._check_out(tmp_path / "runs", dataset)  # not there yet: fine
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        training._check_out(tmp_path / "file", dataset)
    with pytest.raises(UserError, match="inside the dataset"):
        training._check_out(dataset / "runs", dataset)


def test_no_backup_means_nothing_to_resume_and_a_stale_one_of_a_finished_run_goes(tmp_path):
    assert training._load_state(tmp_path, SimpleNamespace(status="training", epochs=5)) is None
    (tmp_path / runs.BACKUP).mkdir()  # left by a kill while a finished run removed it
    assert training._load_state(tmp_path, SimpleNamespace(status="done", epochs=5)) is None
    assert not (tmp_path / runs.BACKUP).exists()


def test_backup_state_names_the_model_to_continue_from(tmp_path):
    folder = backup(tmp_path, {"epoch": 3, "model": "last-e3.keras"})
    state, model = training._load_state(tmp_path, SimpleNamespace(status="training", epochs=5, model_file=MODEL))
    assert state["epoch"] == 3 and model == folder / "last-e3.keras"


def test_backup_of_a_finished_run_is_removed_unless_it_extends_the_run(tmp_path):
    backup(tmp_path, {"epoch": 5, "model": "last-e3.keras"})
    assert training._load_state(tmp_path, SimpleNamespace(status="done", epochs=5, model_file=MODEL)) is None
    assert not (tmp_path / runs.BACKUP).exists()
    backup(tmp_path, {"epoch": 5, "epochs": 8, "model": "last-e3.keras"})  # resume -e 3, killed at its start
    state, _ = training._load_state(tmp_path, SimpleNamespace(status="done", epochs=5, model_file=MODEL))
    assert state["epochs"] == 8


def test_damaged_backup_states_are_one_line_errors(tmp_path):
    backup(tmp_path, {"epoch": -1, "model": "last-e3.keras"})
    with pytest.raises(UserError, match="'epoch' must be a whole number"):
        training._load_state(tmp_path, SimpleNamespace(status="training", epochs=5, model_file=MODEL))
    backup(tmp_path, {"epoch": 2, "model": "last-e2.keras"}, model_name=None)
    with pytest.raises(UserError, match="last-e2.keras, which is missing"):
        training._load_state(tmp_path, SimpleNamespace(status="training", epochs=5, model_file=MODEL))
    backup(tmp_path, {"epoch": 2, "model": "../../x.keras"})
    with pytest.raises(UserError, match="points outside"):
        training._load_state(tmp_path, SimpleNamespace(status="training", epochs=5, model_file=MODEL))


def test_remove_backup_removes_the_state_and_the_folder(tmp_path):
    backup(tmp_path, {"epoch": 1, "model": "last-e3.keras"})
    training._remove_backup(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_resume_refusals_before_any_work(tmp_path):
    with pytest.raises(UserError, match="not a run folder"):
        training.resume_run(tmp_path)
    (tmp_path / runs.SETUP).write_text("{}")
    with pytest.raises(UserError, match="`more_epochs` must be >= 1") as caught:
        training.resume_run(tmp_path, more_epochs=0)
    assert caught.value.setting == "more_epochs"
    with pytest.raises(UserError, match="lacks 'architecture'"):
        training.resume_run(tmp_path)


@pytest.mark.parametrize(
    "mode, requested, instances", [("object", None, 30000), ("surface", None, 15000), ("object", 800, 800)]
)
def test_instances_default_per_regime(tiny_dataset, tmp_path, monkeypatch, mode, requested, instances):
    from conftest import PRODUCT_MIN_PATCHES, train_args

    import regime

    monkeypatch.setattr(regime, "MIN_PATCHES_PER_EPOCH", PRODUCT_MIN_PATCHES)  # users' epochs, not the tests'
    config = train_args(tiny_dataset, tmp_path / "runs", mode=mode, instances=requested, epochs=None, patch=32)
    setup, (train_images, _), _, _ = training.prepare(config)
    assert setup["instances"] == instances and setup["instances_requested"] == requested
    per_epoch = len(train_images) if mode == "object" else max(len(train_images), 256)  # regime.MIN_PATCHES_PER_EPOCH
    assert setup["epochs"] == instances // per_epoch
    assert not (tmp_path / "runs").exists()  # prepare checks and builds, it writes nothing
