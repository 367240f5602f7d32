"""train.py new/resume: the run folder, resuming, and one-line errors for bad input."""

import datetime as dt
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, SIZE, cli, train_args
from PIL import Image

import networks
import runs
import train
import training


def test_run_folder_has_every_file(tiny_run, tiny_dataset):
    parts = tiny_run.parts
    assert parts[-5:-1] == (tiny_dataset.parent.name, "brick", "mvtec2", "SSIM")
    dt.datetime.strptime(parts[-1], "%Y-%m-%d_%H-%M-%S")  # timestamp, no colons
    for name in (
        "CAE_mvtec2_b4.keras",
        "CAE_mvtec2_b4.onnx",
        "setup.json",
        "history.csv",
        "loss_curve.png",
        "validation_files.txt",
    ):
        assert (tiny_run / name).is_file(), name
    assert not (tiny_run / runs.BACKUP).exists()
    setup = json.loads((tiny_run / "setup.json").read_text())
    assert setup["epochs_run"] == 2 and setup["status"] == "done" and setup["seed"] == 0
    assert setup["n_images"] == 14 and setup["n_train"] + setup["n_validation"] == 14
    assert {"keras", "numpy", "python"} <= set(setup["versions"])
    history = pd.read_csv(tiny_run / "history.csv")
    assert list(history["epoch"]) == [0, 1] and {"loss", "val_loss"} <= set(history.columns)
    assert setup["best_val_loss"] == pytest.approx(history["val_loss"].min())


def test_validation_files_are_held_back_and_hashed(tiny_run, tiny_dataset):
    import data

    names = (tiny_run / "validation_files.txt").read_text().split()
    setup = json.loads((tiny_run / "setup.json").read_text())
    assert len(names) == setup["n_validation"] == 3  # 20% of 14
    assert all((tiny_dataset / n).is_file() and n.startswith("train/good/") for n in names)
    assert data.files_hash(names) == setup["validation_files_sha256"]


def test_model_loads_in_safe_mode_without_custom_objects(tiny_run):
    model = tiny_run / "CAE_mvtec2_b4.keras"
    code = (
        f"import keras, numpy as np; m = keras.models.load_model(r'{model}', safe_mode=True, compile=False); "
        f"print(m.predict(np.zeros((1, {SIZE}, {SIZE}, 1), 'float32'), verbose=0).shape)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=300)
    assert out.returncode == 0, out.stderr[-500:]
    assert f"(1, {SIZE}, {SIZE}, 1)" in out.stdout


def _validation_loss(run_dir, model_name):
    import keras

    import custom_loss_functions as clf
    import data

    setup = json.loads((run_dir / "setup.json").read_text())
    model = keras.models.load_model(run_dir / model_name, compile=False)
    names = (run_dir / "validation_files.txt").read_text().split()
    images, _ = data.load_images([runs.Path(setup["directory"]) / n for n in names], setup["color"], setup["size"])
    return float(np.mean(clf.ssim_loss(images, model.predict(images, verbose=0))))


def test_best_model_is_saved_not_the_last(tiny_dataset, tmp_path, monkeypatch):
    """The last epoch is made clearly worse (strong noise is added to its weights before it
    starts), so the saved model must be an earlier one: the test fails if the last model is kept."""
    import keras

    real = training._callbacks

    class SpoilLastEpoch(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                rng = np.random.default_rng(0)
                self.model.set_weights(
                    [w + rng.normal(0, 1.0, w.shape).astype(w.dtype) for w in self.model.get_weights()]
                )

    monkeypatch.setattr(training, "_callbacks", lambda *a, **k: [SpoilLastEpoch()] + real(*a, **k))
    run_dir, setup = training.new_run(train_args(tiny_dataset, tmp_path, epochs=3, architecture="mvtec", size=32))
    history = pd.read_csv(run_dir / "history.csv")
    assert list(history["epoch"]) == [0, 1, 2]
    last = float(history["val_loss"].iloc[-1])
    assert setup["best_epoch"] < 3 and setup["best_val_loss"] == pytest.approx(history["val_loss"][:2].min())
    assert last > setup["best_val_loss"] + 0.05  # the spoilt epoch is far worse
    saved = _validation_loss(run_dir, "CAE_mvtec_b4.keras")
    assert saved == pytest.approx(setup["best_val_loss"], abs=5e-3)
    assert abs(saved - last) > 0.04


def test_best_model_of_the_session_run_matches_its_recorded_loss(tiny_run):
    setup = json.loads((tiny_run / "setup.json").read_text())
    assert _validation_loss(tiny_run, "CAE_mvtec2_b4.keras") == pytest.approx(setup["best_val_loss"], abs=5e-3)


def test_resume_extends_a_finished_run(tiny_dataset, tmp_path, capsys):
    run_dir, first = training.new_run(train_args(tiny_dataset, tmp_path, epochs=1, architecture="mvtec", size=32))
    code, out, err = cli(train.main, ["resume", "-p", str(run_dir / "CAE_mvtec_b4.keras"), "-e", "2"], capsys)
    assert code == 0, err
    assert out.strip().splitlines()[-1] == str(run_dir)
    setup = json.loads((run_dir / "setup.json").read_text())
    assert setup["epochs_run"] == 3
    assert setup["training_seconds"] > first["training_seconds"]
    assert setup["rotation"] == 10.0 and setup["denoise"] == 0.0  # augmentation settings are recorded
    assert list(pd.read_csv(run_dir / "history.csv")["epoch"]) == [0, 1, 2]
    code, _, err = cli(train.main, ["resume", "-p", str(run_dir)], capsys)
    assert code == 2 and "already finished 3 epochs" in err


def test_interrupted_run_resumes_from_last_finished_epoch(tiny_dataset, tmp_path, monkeypatch, capsys):
    import keras

    real = training._callbacks

    class Crash(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt  # like Ctrl-C right after epoch 2 was backed up

    monkeypatch.setattr(training, "_callbacks", lambda *a, **k: real(*a, **k) + [Crash()])
    with pytest.raises(KeyboardInterrupt):
        training.new_run(train_args(tiny_dataset, tmp_path, epochs=4, architecture="mvtec", size=32))
    (run_dir,) = list(tmp_path.glob("*/*/*/*/*"))
    state = json.loads((run_dir / "backup" / "state.json").read_text())
    assert state["epoch"] == 2
    assert state["training_seconds"] > 0
    monkeypatch.setattr(training, "_callbacks", real)
    code, out, err = cli(train.main, ["resume", "-p", str(run_dir)], capsys)
    assert code == 0, err
    assert "resuming interrupted run at epoch 3" in out
    assert list(pd.read_csv(run_dir / "history.csv")["epoch"]) == [0, 1, 2, 3]
    setup = json.loads((run_dir / "setup.json").read_text())
    assert setup["epochs_run"] == 4
    assert setup["training_seconds"] > state["training_seconds"]  # the time before the crash still counts
    assert not (run_dir / "backup").exists()


def test_new_cli_prints_run_folder_last_and_absolute_path_stays_in_out(tiny_dataset, tmp_path, capsys):
    out_dir = tmp_path / "out"
    code, out, err = cli(
        train.main,
        [
            "new",
            "-d",
            str(tiny_dataset.resolve()),
            "-a",
            "mvtec",
            "--size",
            "32",
            "--epochs",
            "1",
            "-b",
            "4",
            "-l",
            "l2",
            "--out",
            str(out_dir),
            "--mode",
            "object",
            "--head-steps",
            "0",
        ],
        capsys,
    )
    assert code == 0, err
    run_dir = runs.Path(out.strip().splitlines()[-1])
    assert out_dir in run_dir.parents and run_dir.parts[-3:-1] == ("mvtec", "L2")
    assert "trained 1 epochs" in out


def test_same_second_runs_get_a_suffix(tmp_path):
    now = dt.datetime(2026, 1, 2, 3, 4, 5)
    a = runs.new_run_dir(tmp_path, tmp_path / "ds" / "cls", "mvtec", "ssim", now=now)
    b = runs.new_run_dir(tmp_path, tmp_path / "ds" / "cls", "mvtec", "ssim", now=now)
    assert a.name == "2026-01-02_03-04-05" and b.name == "2026-01-02_03-04-05_1"


def test_epochs_from_instances():
    assert training.epochs_for(10000, 188) == 53
    assert training.epochs_for(10, 188) == 1
    assert training.freeze_epochs("resnet", 10) == 7 and training.freeze_epochs("mvtec", 10) == 0


def _bad(tmp_path, name):
    root = tmp_path / name / "cls"
    (root / "train" / "good").mkdir(parents=True)
    return root


@pytest.mark.parametrize(
    "case,extra,message",
    [
        ("missing_dir", None, "directory not found"),
        ("no_train_good", None, "no train/good folder"),
        ("empty", None, "no images in"),
        ("only_broken", None, "no readable images"),
        ("one_image", None, "too few for a validation split"),
        ("bad_size", ["--size", "100"], "size 100 does not fit"),
        ("bad_batch", ["-b", "0"], "--batch must be >= 1"),
        ("bad_split", ["--val-split", "0"], "--val-split must be between 0 and 1"),
        ("bad_lr", ["--lr", "-1"], "--lr must be a finite number > 0"),
        ("nan_lr", ["--lr", "nan"], "--lr must be a finite number > 0, got nan"),
        ("inf_lr", ["--lr", "inf"], "--lr must be a finite number > 0, got inf"),
        ("bad_rotation", ["--rotation", "200"], "--rotation must be 0 to 180 degrees, got 200"),
        ("bad_denoise", ["--denoise", "1.5"], "--denoise must be a share from 0 to 1, got 1.5"),
        ("weights_missing", ["-a", "resnet", "--size", "96", "--weights", "imagenet"], "not in Keras's cache"),
    ],
)
def test_bad_input_one_line_error_no_run_folder(tmp_path, capsys, monkeypatch, case, extra, message, tiny_dataset):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    if case == "missing_dir":
        directory = tmp_path / "nope"
    elif case == "no_train_good":
        directory = tmp_path / "plain"
        directory.mkdir()
    else:
        directory = _bad(tmp_path, case)
        good = directory / "train" / "good"
        if case == "only_broken":
            (good / "x.png").write_bytes(b"garbage")
        elif case == "one_image":
            Image.fromarray(np.zeros((32, 32), np.uint8)).save(good / "a.png")
        elif case != "empty":
            directory = tiny_dataset
    out_dir = tmp_path / "out"
    argv = ["new", "-d", str(directory), "--epochs", "1", "--size", "32", "--out", str(out_dir), "--mode", "object"] + (
        extra or []
    )
    code, _, err = cli(train.main, argv, capsys)
    assert code == 2
    lines = [line for line in err.strip().splitlines() if not line.startswith("warning:")]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err
    assert not any(p.is_dir() and any(p.iterdir()) for p in out_dir.glob("*/*/*/*")) if out_dir.exists() else True
    assert not list(out_dir.rglob("setup.json"))


def test_non_image_file_is_skipped_with_warning(tiny_dataset, tmp_path, capsys):
    import shutil

    copy = tmp_path / "ds" / "cls"
    shutil.copytree(tiny_dataset / "train", copy / "train")
    (copy / "train" / "good" / "readme.txt").write_text("not an image")
    (copy / "train" / "good" / "broken.png").write_bytes(b"garbage")
    code, out, err = cli(
        train.main,
        [
            "new",
            "-d",
            str(copy),
            "-a",
            "mvtec",
            "--size",
            "32",
            "--epochs",
            "1",
            "--out",
            str(tmp_path / "out"),
            "--mode",
            "object",
            "--head-steps",
            "0",
        ],
        capsys,
    )
    assert code == 0
    assert "readme.txt" in err and "broken.png" in err
    setup = json.loads((runs.Path(out.strip().splitlines()[-1]) / "setup.json").read_text())
    assert setup["n_images"] == 14


def test_unknown_option_values_and_bad_resume_paths(tmp_path, capsys):
    code, _, err = cli(train.main, ["new", "-d", "x", "-a", "vgg"], capsys)
    assert code == 2 and "invalid choice: 'vgg'" in err
    code, _, err = cli(train.main, ["resume", "-p", str(tmp_path)], capsys)
    assert code == 2 and "is not a run folder" in err
    code, _, err = cli(train.main, ["resume", "-p", str(tmp_path / "missing")], capsys)
    assert code == 2 and "not a run folder" in err


def test_help_lists_every_option_with_default():
    out = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "new", "--help"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    for flag in (
        "--directory",
        "--architecture",
        "--batch",
        "--loss",
        "--color",
        "--instances",
        "--tag",
        "--size",
        "--epochs",
        "--lr",
        "--seed",
        "--val-split",
        "--patience",
        "--no-augment",
        "--rotation",
        "--flip",
        "--denoise",
        "--weights",
        "--out",
        "--precision",
        "--jit",
    ):
        assert flag in text, flag
    assert "(default: 8)" in text and "(default: saved_models)" in text


def test_resnet_encoder_frozen_for_first_70_percent(tiny_dataset, tmp_path, monkeypatch, capsys):
    """The freeze schedule, on a stand-in model with an ``encoder`` sub-model (the real
    InceptionResNetV2 is too slow to train in the test suite; its build is tested in test_models)."""
    import keras

    import models

    def small_resnet(architecture, size, channels, weights="none", **options):
        inputs = keras.Input((size, size, channels))
        enc_in = keras.Input((size, size, channels))
        encoder = keras.Model(enc_in, keras.layers.Conv2D(4, 3, padding="same")(enc_in), name="encoder")
        outputs = keras.layers.Conv2D(channels, 3, padding="same", activation="sigmoid")(encoder(inputs))
        return keras.Model(inputs, outputs)

    monkeypatch.setattr(models, "build_model", small_resnet)
    weights = {}

    class Snapshot(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            weights[epoch] = self.model.get_layer("encoder").get_weights()[0].copy()

    real = training._callbacks
    monkeypatch.setattr(training, "_callbacks", lambda *a, **k: real(*a, **k) + [Snapshot()])
    run_dir, setup = training.new_run(
        train_args(tiny_dataset, tmp_path, architecture="resnet", epochs=4, size=32, lr=1e-2)
    )
    out = capsys.readouterr().out
    assert setup["freeze_epochs"] == 3
    assert "encoder frozen for epochs 1-3" in out and "encoder trainable for epochs 4-4" in out
    np.testing.assert_array_equal(weights[0], weights[2])  # frozen
    assert not np.array_equal(weights[2], weights[3])  # trained after unfreezing


# --------------------------------------------------------------------------- divergence, early stopping, options end to end


def _prepend_callback(monkeypatch, callback):
    real = training._callbacks
    monkeypatch.setattr(training, "_callbacks", lambda *a, **k: [callback] + real(*a, **k))


def _poison_at(epoch_to_poison):
    import keras

    class Poison(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == epoch_to_poison:
                self.model.set_weights([np.full_like(w, np.nan) for w in self.model.get_weights()])

    return Poison()


def test_nan_from_the_start_stops_at_once_and_saves_nothing(tiny_dataset, tmp_path, monkeypatch, capsys):
    _prepend_callback(monkeypatch, _poison_at(0))
    out_dir = tmp_path / "out"
    code, out, err = cli(
        train.main,
        [
            "new",
            "-d",
            str(tiny_dataset),
            "-a",
            "mvtec",
            "--size",
            "32",
            "--epochs",
            "3",
            "--out",
            str(out_dir),
            "--mode",
            "object",
            "--head-steps",
            "0",
        ],
        capsys,
    )
    assert code == 2 and "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if not line.startswith("warning:")]
    assert (
        len(lines) == 1 and "training stopped at epoch 1, batch 1: the loss is nan" in lines[0] and "--lr" in lines[0]
    )
    assert not list(out_dir.rglob("setup.json")) and not list(out_dir.rglob("*.keras"))


def test_nan_later_keeps_the_finite_best_model_and_finishes_the_run(tiny_dataset, tmp_path, monkeypatch, capsys):
    import validate

    _prepend_callback(monkeypatch, _poison_at(1))
    with pytest.raises(runs.UserError, match="training stopped at epoch 2, batch 1: the loss is nan") as info:
        training.new_run(train_args(tiny_dataset, tmp_path, epochs=3, architecture="mvtec", size=32))
    assert "keeps its best model (epoch 1" in str(info.value)
    (run_dir,) = list(tmp_path.glob("*/*/*/*/*"))
    setup = json.loads((run_dir / "setup.json").read_text())
    assert setup["status"] == "done" and setup["epochs_run"] == 1 and setup["best_epoch"] == 1
    assert np.isfinite(setup["best_val_loss"]) and "stopped" in setup
    assert list(pd.read_csv(run_dir / "history.csv")["epoch"]) == [0]
    assert not (run_dir / "backup").exists()
    monkeypatch.undo()
    code, _, err = cli(validate.main, ["-p", str(run_dir), "-a", "5", "--passes", "1", "--scales", "1"], capsys)
    assert code == 0, err
    assert np.isfinite(json.loads((run_dir / "validation/ssim/a5/validation_result.json").read_text())["threshold"])


def test_early_stopping_stops_and_keeps_the_best_epoch(tiny_dataset, tmp_path, monkeypatch):
    import keras

    class RisingValidationLoss(keras.callbacks.Callback):
        """Every later epoch looks worse: early stopping with patience 2 must stop after epoch 3."""

        def on_epoch_end(self, epoch, logs=None):
            logs["val_loss"] = 1.0 + epoch

    _prepend_callback(monkeypatch, RisingValidationLoss())
    run_dir, setup = training.new_run(
        train_args(tiny_dataset, tmp_path, epochs=8, patience=2, architecture="mvtec", size=32)
    )
    assert setup["epochs"] == 8 and setup["epochs_run"] == 3
    assert setup["best_epoch"] == 1 and setup["best_val_loss"] == 1.0
    assert list(pd.read_csv(run_dir / "history.csv")["val_loss"]) == [1.0, 2.0, 3.0]


def test_flip_and_no_augment_reach_the_input_pipeline(tiny_dataset, tmp_path, monkeypatch):
    import data

    seen, real = [], data.tf_dataset
    monkeypatch.setattr(data, "tf_dataset", lambda *a, **k: seen.append(k) or real(*a, **k))
    _, setup = training.new_run(
        train_args(tiny_dataset, tmp_path, epochs=1, architecture="mvtec", size=32, flip=True, no_augment=True)
    )
    assert setup["flip"] is True and setup["augment"] is False
    assert seen[0]["training"] and seen[0]["flip"] is True and seen[0]["augment"] is False
    assert not seen[1]["training"]  # the validation pipeline is never augmented
    assert [type(layer).__name__ for layer in data.augmenter(flip=True).layers][-1] == "RandomFlip"
    assert "RandomFlip" not in [type(layer).__name__ for layer in data.augmenter(flip=False).layers]


def test_no_augment_feeds_the_images_unchanged_and_augment_changes_them():
    import data

    images = np.random.default_rng(0).random((6, 32, 32, 1)).astype(np.float32)
    plain = list(data.tf_dataset(images, 3, training=True, augment=False, seed=0).as_numpy_iterator())
    inputs = np.concatenate([x for x, _ in plain])
    assert all(np.array_equal(x, y) for x, y in plain)
    assert sorted(map(bytes, inputs)) == sorted(map(bytes, images))  # the same images, only shuffled
    augmented = np.concatenate([x for x, _ in data.tf_dataset(images, 3, training=True, augment=True, seed=0)])
    assert not any(np.allclose(a, b, atol=1e-3) for a in augmented for b in images)


# MS-SSIM, the loss with the most graph code, trains traced as users' runs do (SSIM: the shared run).
@pytest.mark.parametrize(
    "color,loss",
    [("rgb", "ssim"), pytest.param("grayscale", "mssim", marks=pytest.mark.graph_training), ("grayscale", "mse")],
)
def test_other_colours_and_losses_train_and_validate_end_to_end(tiny_dataset, tmp_path, capsys, color, loss):
    import validate

    run_dir, setup = training.new_run(
        train_args(tiny_dataset, tmp_path, epochs=1, architecture="mvtec", size=32, color=color, loss=loss)
    )
    assert setup["status"] == "done" and setup["color"] == color and setup["loss"] == loss
    assert np.isfinite(setup["best_val_loss"])
    if loss == "mssim":
        assert setup["msssim_scales"] >= 1
    assert run_dir.parts[-2] == loss.upper()
    code, out, err = cli(validate.main, ["-p", str(run_dir), "-a", "5", "--passes", "1", "--scales", "1"], capsys)
    assert code == 0, err
    method = "ssim" if loss in ("ssim", "mssim") else "l2"
    result = json.loads((run_dir / "validation" / method / "a5" / "validation_result.json").read_text())
    assert result["method"] == method and np.isfinite(result["threshold"]) and result["largest_area_at_threshold"] < 5


@pytest.mark.graph_training
def test_mixed_precision_trains_in_half_resumes_so_and_maps_in_float32(tiny_dataset, tmp_path, capsys):
    """--precision mixed (issue 13): the saved autoencoder computes in bfloat16 on a CPU-only
    machine, float16 where TensorFlow sees a GPU, and a resumed run keeps it; the model the maps
    use is the same network in float32."""
    import zipfile

    import keras
    import tensorflow as tf

    half = "float16" if tf.config.list_physical_devices("GPU") else "bfloat16"

    run_dir, setup = training.new_run(
        train_args(tiny_dataset, tmp_path, epochs=1, architecture="mvtec", size=32, precision="mixed")
    )
    assert (setup["precision"], setup["dtype_policy"], setup["jit"]) == ("mixed", f"mixed_{half}", False)
    model_path = run_dir / setup["model_file"]
    assert f"mixed_{half}" in zipfile.ZipFile(model_path).read("config.json").decode()
    code, _, err = cli(train.main, ["resume", "-p", str(run_dir), "-e", "1"], capsys)
    assert code == 0, err
    assert f"mixed_{half}" in zipfile.ZipFile(model_path).read("config.json").decode()
    raw = keras.models.load_model(model_path, compile=False)
    assert {layer.compute_dtype for layer in raw.layers[1:]} == {half}
    model = runs.find_run(run_dir).load_model(keras=True)
    assert {layer.compute_dtype for layer in model.layers} == {"float32"}
    x = np.random.default_rng(0).random((2, 32, 32, 1), dtype=np.float32)
    float32, rounded = np.asarray(model(x)), np.asarray(raw(x)).astype(np.float32)
    assert float32.dtype == np.float32
    assert 0 < np.abs(float32 - rounded).max() < 0.02  # the same weights, rounded differently
    # The ONNX twin that scripts score with (networks.py) is made from the float32 copy.
    twin = runs.find_run(run_dir).load_model()
    assert isinstance(twin, networks.OpenVinoNetwork)
    np.testing.assert_allclose(twin.predict(x), float32, atol=1e-5)
    # The default stays float32 throughout: nothing to convert.
    assert keras.mixed_precision.global_policy().name == "float32"


@pytest.mark.graph_training
def test_precision_and_jit_options(tiny_dataset, tmp_path, capsys):
    import tensorflow as tf

    code, _, err = cli(train.main, ["new", "-d", str(tiny_dataset), "--precision", "half"], capsys)
    assert code == 2 and "invalid choice: 'half'" in err
    with pytest.raises(training.SettingError, match="`precision` must be one of float32, mixed, got 'half'"):
        training.precision_policy("half")
    assert training.precision_policy("float32") == "float32"
    model = __import__("models").build_model("mvtec", 32, 1)
    base = {"lr": 1e-3, "loss": "ssim", "size": 32, "architecture": "mvtec", "color": "grayscale", "batch": 4}
    typed = lambda record: runs.RunSetup.from_record(runs.upgrade_setup({**record, "directory": "."}))  # noqa: E731
    training._compile(model, typed({**base, "jit": True}))
    assert model.jit_compile is True
    training._compile(model, typed(base))  # no jit recorded (older runs): Keras's "auto"
    accelerated = any(d.device_type != "CPU" for d in tf.config.list_physical_devices())
    assert model.jit_compile is accelerated  # Keras's "auto": XLA with an accelerator, none on a CPU-only machine
    run_dir, setup = training.new_run(
        train_args(tiny_dataset, tmp_path, epochs=1, architecture="mvtec", size=32, jit=True)
    )
    assert setup["jit"] is True and setup["epochs_run"] == 1


def test_only_trainings_shorter_than_the_eager_limit_run_eagerly(monkeypatch):
    """``runs_eagerly``: steps left = ceil(images or patches per epoch / global batch) x epochs
    left, eager below :data:`training.EAGER_BELOW_STEPS` (users' 0: never), never with XLA."""
    base = {"lr": 1e-3, "loss": "ssim", "size": 32, "architecture": "mvtec", "color": "grayscale", "batch": 4}
    typed = lambda **k: runs.RunSetup.from_record(runs.upgrade_setup({**base, "directory": ".", **k}))  # noqa: E731
    obj = typed(epochs=2)
    monkeypatch.setattr(training, "EAGER_BELOW_STEPS", 0)
    assert not training.runs_eagerly(obj, 11)
    monkeypatch.setattr(training, "EAGER_BELOW_STEPS", 7)
    assert training.runs_eagerly(obj, 11)  # 3 steps x 2 epochs = 6 < 7
    assert not training.runs_eagerly(obj, 13)  # 4 x 2 = 8
    assert training.runs_eagerly(typed(epochs=5), 11, start_epoch=3)  # 3 x 2 epochs left
    assert not training.runs_eagerly(typed(epochs=2, jit=True), 11)
    surface = typed(epochs=1, mode="surface", patch=16, patches_per_epoch=28, shape=[32, 32])
    assert not training.runs_eagerly(surface, 2)  # the patches count: 7 steps, not 1
    monkeypatch.setattr(training, "EAGER_BELOW_STEPS", 8)
    assert training.runs_eagerly(surface, 2)


def test_the_learned_head_trains_eagerly_when_asked_and_a_run_asks_below_the_same_limit(tmp_path, monkeypatch):
    """train_head compiles its head with run_eagerly=eager (traced: stopped at compile, a traced
    head costs ~20 s; eager: trained, and the head it saves works); a run's head is eager when
    its head steps are fewer than training.EAGER_BELOW_STEPS."""
    import keras

    import learned
    import storage

    compiled = []
    original = keras.Model.compile

    class Compiled(Exception):
        pass

    def compile_(self, *args, **kwargs):
        compiled.append(kwargs.get("run_eagerly"))
        if not kwargs.get("run_eagerly"):
            raise Compiled
        return original(self, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "compile", compile_)
    inp = keras.Input((None, None, 1))
    identity = keras.Model(inp, keras.layers.Identity()(inp))
    images = np.random.default_rng(0).uniform(0.3, 0.7, (4, 32, 32, 1)).astype(np.float32)
    with pytest.raises(Compiled):
        learned.train_head(identity, images, tmp_path / "traced.keras", steps=3, patch=16, progress=False)
    summary = learned.train_head(
        identity, images, tmp_path / "head.keras", steps=3, patch=16, progress=False, eager=True
    )
    assert compiled == [False, True] and summary["steps"] == 3
    head = keras.saving.load_model(tmp_path / "head.keras", compile=False)
    assert head([images[:1], images[:1]]).shape == (1, 32, 32, 1)

    asked = []
    monkeypatch.setattr(learned, "train_head", lambda *args, **kwargs: asked.append(kwargs["eager"]) or {})
    monkeypatch.setattr(runs, "load_keras", lambda *args, **kwargs: identity)
    monkeypatch.setattr(storage, "model_id", lambda path: "sha")
    record = {"lr": 1e-3, "loss": "ssim", "size": 32, "architecture": "mvtec", "color": "grayscale", "batch": 4}
    setup = runs.RunSetup.from_record(runs.upgrade_setup({**record, "directory": ".", "head_steps": 3}))
    for limit in (3, 4):
        monkeypatch.setattr(training, "EAGER_BELOW_STEPS", limit)
        training._train_head(setup, tmp_path, images)
    assert asked == [False, True]


def test_train_new_defaults_are_the_configs_own():
    """`train.py new -d X` builds exactly TrainConfig(directory=X): one place for each default,
    and the ones that once disagreed (mode, head steps, strategy) are the command line's."""
    from dataclasses import fields

    from settings import TrainConfig

    parsed = TrainConfig.from_args(train.get_parser().parse_args(["new", "-d", "somewhere"]))
    assert parsed == TrainConfig(directory="somewhere")
    assert (parsed.mode, parsed.head_steps, parsed.strategy, parsed.color) == ("auto", 1500, "auto", "auto")
    assert all(TrainConfig.default(f.name) == getattr(parsed, f.name) for f in fields(TrainConfig)[1:])
    help_text = " ".join(train.get_parser()._subparsers._group_actions[0].choices["new"].format_help().split())
    assert "0: none (default: 1500)" in help_text and "default: mvtec2" in help_text
