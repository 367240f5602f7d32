"""setup.json's format (runs.SETUP_FORMAT): every shape older code wrote is converted once by
runs.upgrade_setup into the current record, what the code cannot read is refused in one line,
and the typed view (runs.RunSetup) gives back the record it was made from. Files and records
only: nothing is trained, TensorFlow is not imported."""

import ast
import json
import re

import pytest
from conftest import ROOT, cli

import runs
import settings
from utils import UserError

# The oldest setup.json train.py wrote (3ef541f): no regime, head, strategy, precision,
# rotation or denoise fields.
FIRST = {
    "directory": "/data/bottle",
    "architecture": "mvtec2",
    "batch": 8,
    "loss": "ssim",
    "color": "grayscale",
    "channels": 1,
    "size": 256,
    "instances": 10000,
    "epochs": 50,
    "epochs_requested": None,
    "lr": 0.0002,
    "seed": 0,
    "val_split": 0.1,
    "patience": 10,
    "augment": True,
    "flip": False,
    "weights": None,
    "tag": "",
    "msssim_scales": None,
    "freeze_epochs": 0,
    "n_images": 209,
    "n_train": 188,
    "n_validation": 21,
    "validation_files_sha256": "abc",
    "versions": {"keras": "3.0"},
    "command": "train.py new -d bottle",
    "status": "done",
    "epochs_run": 50,
    "best_val_loss": 0.12,
    "training_seconds": 600.0,
    "model_file": "CAE_mvtec2_b8.keras",
    "best_epoch": 48,
}
# What the fields added since meant while they were missing.
FIRST_ADDED = {
    "format": runs.SETUP_FORMAT,
    "color_requested": "grayscale",
    "mode": "object",
    "mode_requested": "object",
    "alignment": None,
    "shape": [256, 256],
    "patch": None,
    "patches_per_epoch": None,
    "head_steps": 0,
    "head": None,
    "precision": "float32",
    "dtype_policy": "float32",
    "jit": False,
    "instances_requested": 10000,
    "rotation": settings.DEFAULT_ROTATION,
    "denoise": 0.0,
    "strategy": "one",
    "strategy_class": None,
    "replicas": 1,
    "per_replica_batch": 8,
    "global_batch": 8,
}
# A surface run with a learned head from before the strategies (d75439c): mode as a name with
# the mode asked beside it, a head record without the autoencoder's hash.
SURFACE = {
    **FIRST,
    "mode": "surface",
    "mode_requested": "auto",
    "alignment": 0.31,
    "shape": [256, 640],
    "patch": 96,
    "head_steps": 1500,
    "head": {"file": "head.keras", "steps": 1500, "patch": 96},
    "rotation": 5.0,
    "denoise": 0.5,
    "color_requested": "auto",
}
# A run of the last code before the format field (f3b46aa on): every field, no "format".
LAST = {
    **SURFACE,
    "patches_per_epoch": 256,
    "head": {"model_sha256": "def", "file": "head.keras", "steps": 1500},
    "precision": "mixed",
    "dtype_policy": "mixed_bfloat16",
    "jit": True,
    "instances_requested": None,
    "strategy": "mirrored",
    "strategy_class": "MirroredStrategy",
    "replicas": 2,
    "per_replica_batch": 8,
    "global_batch": 16,
}


def current(record):
    """``record`` as the current format writes it: every field (RunSetup's order), then any others."""
    names = [f for f in runs._FIELDS if f in record] + [f for f in runs._WHEN_SET if f in record]
    return {**{k: record[k] for k in names}, **{k: v for k, v in record.items() if k not in names}}


def test_first_runs_get_every_field_added_since():
    upgraded = runs.upgrade_setup(dict(FIRST))
    assert upgraded == {**FIRST, **FIRST_ADDED}
    assert list(upgraded) == list(current(upgraded))  # and the field order is the current one


@pytest.mark.parametrize("denoise, share", [(True, settings.DEFAULT_DENOISE), (False, 0.0), (0.25, 0.25), (None, 0.0)])
def test_denoise_flag_becomes_a_share(denoise, share):
    raw = {**FIRST} if denoise is None else {**FIRST, "denoise": denoise}  # None: before --denoise (2e59a23)
    assert runs.upgrade_setup(raw)["denoise"] == share


def test_surface_run_before_the_strategies():
    upgraded = runs.upgrade_setup(dict(SURFACE))
    assert upgraded == {
        **FIRST_ADDED,
        **SURFACE,
        "instances_requested": 10000,
        "shape": [256, 640],
        "per_replica_batch": 8,
        "global_batch": 8,
    }
    setup = runs.RunSetup.from_record(upgraded)
    assert (setup.mode, setup.mode_requested, setup.shape) == ("surface", "auto", (256, 640))
    assert (setup.head_file, setup.head_model_sha256) == ("head.keras", None)


def test_head_record_without_its_file_names_the_default():
    upgraded = runs.upgrade_setup({**SURFACE, "head": {"steps": 10}})
    assert upgraded["head"] == {"file": runs.HEAD_FILE, "steps": 10}
    assert runs.upgrade_setup({**SURFACE, "head": "head.keras"})["head"] is None  # not a record: no head known


def test_last_unversioned_shape_only_gains_the_format():
    upgraded = runs.upgrade_setup(dict(LAST))
    assert upgraded == {**LAST, "format": runs.SETUP_FORMAT}
    assert upgraded["instances_requested"] is None  # None was "the regime's default", kept as it is


def test_mode_as_a_record_of_asked_and_chosen():
    upgraded = runs.upgrade_setup({**FIRST, "mode": {"requested": "auto", "chosen": "surface"}})
    assert (upgraded["mode"], upgraded["mode_requested"]) == ("surface", "auto")
    upgraded = runs.upgrade_setup({**FIRST, "mode": "surface"})  # a name without the mode asked
    assert (upgraded["mode"], upgraded["mode_requested"]) == ("surface", None)


def test_missing_or_null_batches_and_model_file_come_from_batch():
    upgraded = runs.upgrade_setup({**FIRST, "model_file": None, "global_batch": None, "replicas": None})
    assert upgraded["model_file"] == "CAE_mvtec2_b8.keras"
    assert (upgraded["replicas"], upgraded["per_replica_batch"], upgraded["global_batch"]) == (1, 8, 8)


def test_hand_made_setup_with_only_the_required_fields():
    required = {"directory": "/d", "architecture": "mvtec", "loss": "l2", "color": "rgb", "size": 64, "batch": 2}
    setup = runs.RunSetup.from_record(runs.upgrade_setup(required))
    assert (setup.channels, setup.shape, setup.model_file, setup.global_batch) == (3, (64, 64), "CAE_mvtec_b2.keras", 2)
    assert setup.lr is None and setup.status is None and setup.training_seconds == 0.0


def test_current_record_round_trips_exactly():
    record = {"format": runs.SETUP_FORMAT, **LAST, "workers": 2, "stopped": "diverged", "someday": [1]}
    record = current(record)
    assert runs.upgrade_setup(record) == record
    setup = runs.RunSetup.from_record(record)
    assert setup.extra == {"someday": [1]}
    assert setup.to_record() == record and list(setup.to_record()) == list(record)
    again = runs.RunSetup.from_record(setup.to_record())
    assert again == setup
    # Fields written only when they apply stay out while unset.
    setup.workers = setup.stopped = setup.best_epoch = None
    assert not {"workers", "stopped", "best_epoch"} & set(setup.to_record())


def test_training_writes_every_field_in_the_typed_order():
    """prepare()'s literal setup holds every field RunSetup has, in its order (so a new run's
    file keeps its key order through RunSetup), the strategy's fields after it."""
    tree = ast.parse((ROOT / "training.py").read_text())
    prepare = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "prepare")
    literal = next(
        n.value
        for n in ast.walk(prepare)
        if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", None) == "setup" and isinstance(n.value, ast.Dict)
    )
    keys = [k.value for k in literal.keys if k is not None]
    strategy = ["strategy", "strategy_class", "replicas", "per_replica_batch", "global_batch"]  # distribution.describe
    assert keys + strategy == list(runs._FIELDS)


@pytest.mark.parametrize(
    "raw, message",
    [
        ({**FIRST, "format": runs.SETUP_FORMAT + 1}, f"has format {runs.SETUP_FORMAT + 1}, newer than"),
        ({**FIRST, "format": "2"}, "'format' must be a whole number"),
        ([FIRST], "holds list instead of a JSON object"),
        ({k: v for k, v in FIRST.items() if k != "loss"}, "lacks 'loss': not a setup written by train.py"),
        ({**FIRST, "format": runs.SETUP_FORMAT}, "lacks 'color_requested'"),  # current format: every field
    ],
)
def test_unreadable_setups_are_refused_in_one_line(raw, message):
    with pytest.raises(UserError) as caught:
        runs.upgrade_setup(raw, "RUN/setup.json")
    assert message in str(caught.value) and str(caught.value).startswith("RUN/setup.json")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "setup, message",
    [
        ({**FIRST, "format": 99}, "has format 99, newer than this version of the tool reads"),
        ([1, 2], "holds list instead of a JSON object"),
        ({k: v for k, v in FIRST.items() if k != "size"}, "lacks 'size'"),
        ({**FIRST, "mode": "sideways"}, "'mode' must be one of object, surface"),
    ],
)
def test_scripts_refuse_an_unreadable_setup_in_one_line(tmp_path, capsys, setup, message):
    import test

    run = tmp_path / "run"
    run.mkdir()
    (run / runs.SETUP).write_text(json.dumps(setup))
    (run / "CAE_mvtec2_b8.keras").write_bytes(b"model")
    code, _, err = cli(test.main, ["-p", str(run), "-t", "0.5", "-a", "5"], capsys)
    assert code == 2 and message in err and str(run / runs.SETUP) in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "change, message",
    [
        ({"shape": None}, "'shape' must be [height, width], multiples of 16, got None"),
        ({"model_file": None}, "'model_file' must be a file name, got None"),
        ({"global_batch": 0}, "'global_batch' must be a whole number >= 1, got 0"),
        ({"mode": None}, "'mode' must be one of object, surface, got None"),
    ],
)
def test_fields_the_converter_fills_are_checked_in_the_current_format(tmp_path, change, message):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / runs.SETUP).write_text(json.dumps({**current({"format": runs.SETUP_FORMAT, **LAST}), **change}))
    with pytest.raises(UserError) as caught:
        runs.read_setup(run_dir)
    assert str(caught.value) == f"{run_dir / runs.SETUP}: {message} (edited by hand?)"


def test_old_run_opens_with_the_current_fields(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / runs.SETUP).write_text(json.dumps({**SURFACE, "directory": str(tmp_path / "klass")}))
    (run_dir / "CAE_mvtec2_b8.keras").write_bytes(b"model")
    run = runs.find_run(run_dir)
    assert (run.mode, run.shape, run.head_path) == ("surface", (256, 640), (run_dir / runs.HEAD_FILE).resolve())
    assert run.setup.global_batch == 8 and run.setup.denoise == 0.5


def test_no_module_but_runs_reads_the_setup_as_a_dict():
    """The defaults and older shapes live in runs.py: elsewhere no ``setup.get(...)`` and no
    ``run.setup[...]``."""
    found = []
    for path in sorted(ROOT.glob("*.py")):
        if path.name == "runs.py":
            continue
        text = path.read_text()
        found += [f"{path.name}: {m.group(0)}" for m in re.finditer(r"\bsetup\.get\(|\brun\.setup\[", text)]
    assert found == []
