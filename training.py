"""Training a CAE into a run folder: setup, callbacks, the (resumable) fit loop.

``train.py`` is only the command line; everything that trains lives here so the
benchmark and the tests drive the same code.
"""

import contextlib
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

import data
import distribution
import regime
import runs
import storage
from settings import TrainConfig
from utils import SettingError, UserError, package_versions, set_seed, stop_point, warn

# Make the run's ONNX twins right after training (while TensorFlow is loaded) rather than at
# their first use; the tests turn it off for runs they only train (tests/conftest.py).
TWINS_AFTER_TRAINING = True
# A training of fewer steps than this (the autoencoder's, or the learned head's) runs them
# eagerly (Keras's ``run_eagerly``: the same arithmetic, step by step) instead of tracing them
# into a graph first: tracing costs ~5 s on 2 cores (a 3-step head: 21 s traced, 6 s eager), an eager step of a tiny
# model ~0.2 s more than a traced one. 0 (never) for users' runs, whose hundreds of steps repay
# the tracing; the tests' 3-20-step runs set it (tests/conftest.py). Never with ``jit`` (XLA
# needs the graph). See :func:`eager`.
EAGER_BELOW_STEPS = 0
FREEZE_SHARE = 0.7  # resnet: encoder frozen for the first 70% of epochs
DEFAULT_OBJECT_SIZE = 128  # px: objects train at this square side unless the size setting says otherwise


def epochs_for(instances: int, n_train: int) -> int:
    """Epochs as in the original suite: ``max(1, instances // number of training images)``."""
    return max(1, int(instances) // max(1, int(n_train)))


def freeze_epochs(architecture: str, epochs: int) -> int:
    """Epochs with the pretrained encoder frozen (resnet only)."""
    return int(math.ceil(FREEZE_SHARE * epochs)) if architecture == "resnet" else 0


class NonFiniteLoss(SettingError):
    """The loss became NaN or infinite: training stops at once, that epoch is not saved."""


def _save_model(model, path):
    """Save atomically (:func:`storage.atomic_path`): a kill never leaves half a model."""
    with storage.atomic_path(path) as tmp:
        model.save(tmp)


def _callbacks(run_dir, model_path, patience, state, clock):
    """Keras callbacks of a run; ``clock()`` gives the run's training seconds so far."""
    import keras

    class StopOnNonFinite(keras.callbacks.Callback):
        """Stop at the first non-finite loss, before anything of that epoch is saved
        (it runs first), so a diverged model never replaces a good one."""

        epoch = 0

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def _check(self, logs, where):
            for key in ("loss", "val_loss"):
                value = (logs or {}).get(key)
                if value is not None and not np.isfinite(float(value)):
                    raise NonFiniteLoss(
                        f"training stopped at epoch {self.epoch + 1}{where}: the {key.replace('_', ' ')} "
                        f"is {float(value)} (diverged; try a smaller `lr`)"
                    )

        def on_train_batch_end(self, batch, logs=None):
            self._check(logs, f", batch {batch + 1}")

        def on_epoch_end(self, epoch, logs=None):
            self._check(logs, "")

    class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
        """Early stopping whose counters survive ``train.py resume``."""

        def on_train_begin(self, logs=None):
            super().on_train_begin(logs)
            if state.get("best_val_loss") is not None:
                self.best = state["best_val_loss"]
                self.wait = state.get("wait", 0)

    class BestModel(keras.callbacks.Callback):
        """Keep the model with the lowest validation loss so far (saved atomically)."""

        def __init__(self):
            super().__init__()
            self.best = state.get("best_val_loss")

        def on_epoch_end(self, epoch, logs=None):
            val = (logs or {}).get("val_loss")
            if val is not None and (self.best is None or float(val) < self.best):
                _save_model(self.model, model_path)
                self.best = float(val)

    class RunBackup(keras.callbacks.Callback):
        """After every epoch, save the whole model (weights + optimizer) under the epoch's own
        name, then the state naming it, so an interrupted run continues exactly where it
        stopped whenever it was killed."""

        def __init__(self, stopper, saver):
            super().__init__()
            self.stopper, self.saver = stopper, saver

        def on_epoch_end(self, epoch, logs=None):
            backup = runs.Layout(run_dir).backup
            backup.mkdir(exist_ok=True)
            name = f"last-e{epoch + 1}.keras"
            _save_model(self.model, backup / name)
            best = self.saver.best
            state.update(
                epoch=epoch + 1,
                best_val_loss=None if best is None or not np.isfinite(best) else float(best),
                wait=int(self.stopper.wait) if self.stopper is not None else 0,
                model=name,
                training_seconds=round(clock(), 1),
            )  # so a crashed run's time is not lost on resume
            storage.write_json(runs.Layout(run_dir).state, state)
            for old in backup.glob("last*.keras"):  # earlier epochs, now that the state names this one
                if old.name != name:
                    old.unlink(missing_ok=True)
            stop_point(f"epoch {epoch + 1} saved")

    stopper = (
        ResumableEarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=False) if patience else None
    )
    saver = BestModel()
    callbacks = [
        StopOnNonFinite(),
        saver,
        keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=0.5, patience=max(2, (patience or 10) // 2), min_lr=1e-6
        ),
        keras.callbacks.CSVLogger(str(runs.Layout(run_dir).history), append=True),
    ]
    if stopper is not None:
        callbacks.append(stopper)
    callbacks.append(RunBackup(stopper, saver))
    return callbacks


def eager(steps: int, jit: bool = False) -> bool:
    """Whether a training of ``steps`` steps runs them eagerly: fewer than
    :data:`EAGER_BELOW_STEPS` (read at call time), never with ``jit``."""
    return not jit and steps < EAGER_BELOW_STEPS


def runs_eagerly(setup: runs.RunSetup, n_train: int, start_epoch: int = 0) -> bool:
    """Whether the training left (``start_epoch`` to ``setup.epochs`` over ``n_train`` images,
    or ``patches_per_epoch`` patches on a surface) runs eagerly (:func:`eager`)."""
    per_epoch = n_train if setup.patch is None else setup.patches_per_epoch
    steps = math.ceil(per_epoch / distribution.global_batch(setup.to_record()))
    return eager(steps * (setup.epochs - start_epoch), setup.jit)


def _compile(model, setup: runs.RunSetup, run_eagerly: bool = False):
    import keras

    import custom_loss_functions as clf

    with distribution.scope(setup.to_record()):  # optimizer variables live where the model's do
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=setup.lr),
            loss=clf.get_loss(setup.loss, setup.size),  # Keras losses compute in float32 under mixed precision
            jit_compile=True if setup.jit else "auto",  # auto: XLA on GPUs, not on CPU-only machines
            run_eagerly=run_eagerly,
        )
    distribution.adapt(model, setup.to_record())


def _geometry(config, mode, paths):
    """``(model size, whole-image (height, width), training patch or None)`` of a new run.

    Objects: every image is squeezed to a ``size`` square (default
    :data:`DEFAULT_OBJECT_SIZE`). Surfaces: images keep their aspect ratio (shorter side
    ``size``, default native up to 256 px, see :func:`regime.surface_shape`) and the
    fully convolutional model trains on ``patch`` crops, so its size is the patch's.
    """
    if mode == "object":
        if config.patch is not None:
            warn("`patch` only applies to surface runs (`mode=surface`); ignored for this object run", settings=True)
        size = config.size or DEFAULT_OBJECT_SIZE
        return size, (size, size), None
    if config.architecture == "resnet":
        raise SettingError(
            "`architecture=resnet` needs whole square images: use `architecture=mvtec` or mvtec2 for surface runs, "
            "or `mode=object`"
        )
    shape = regime.surface_shape([data.image_size(p) for p in paths], config.size)
    # Default: the usual patch, or the whole shorter side of images smaller than it.
    patch = min(regime.DEFAULT_PATCH, min(shape)) if config.patch is None else config.patch
    if patch < 32 or patch % regime.STRIDE or patch > min(shape):
        raise SettingError(
            f"`patch` must be a multiple of {regime.STRIDE} from 32 to the image's shorter side "
            f"({min(shape)} px here), got {patch}"
        )
    return patch, shape, patch


def _check_out(out, directory):
    """Refuse (one line, before any work) an ``out`` that is a file, cannot be created, or lies
    inside the dataset (a run is never written into its input)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SettingError(f"`out` {out} is a file, not a folder for run folders")
    storage.check_writable(out, f"a run folder under {out}")
    real_out, real_class = Path(os.path.realpath(out)), Path(os.path.realpath(directory))
    if real_out == real_class or real_class in real_out.parents:
        raise SettingError(f"`out` {out} lies inside the dataset {directory}: choose a folder outside it")


PRECISIONS = ("float32", "mixed")


def precision_policy(precision: str) -> str:
    """Keras dtype policy of ``precision``: ``mixed`` is bfloat16 on CPUs (whose bfloat16
    units measured 1.7x less CPU per image here) and float16 on GPUs, where Keras scales
    the loss; variables stay float32 either way."""
    if precision not in PRECISIONS:
        raise SettingError(f"`precision` must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "float32":
        return "float32"
    import tensorflow as tf

    return "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"


@contextlib.contextmanager
def _dtype_policy(name):
    """Layers built inside compute in the policy ``name`` (they keep it when saved and resumed)."""
    import keras

    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


def prepare(config: TrainConfig) -> tuple[dict, tuple, list[str], object]:
    """Check everything a new run needs, before any folder is created.

    Returns ``(setup, train_images, val_images, model)``, ``setup`` the new run's ``setup.json``
    object (:data:`runs.SETUP_FORMAT`); raises :class:`UserError`.
    """
    import custom_loss_functions as clf
    import models

    _check_out(config.out, config.directory)
    if config.batch < 1:
        raise SettingError(f"`batch` must be >= 1, got {config.batch}")
    if not (math.isfinite(config.lr) and config.lr > 0):
        raise SettingError(f"`lr` must be a finite number > 0, got {config.lr}")
    if config.instances is not None and config.instances < 1:
        raise SettingError(f"`instances` must be >= 1, got {config.instances}")
    if config.epochs is not None and config.epochs < 1:
        raise SettingError(f"`epochs` must be >= 1, got {config.epochs}")
    if not 0 <= config.denoise <= 1:
        raise SettingError(f"`denoise` must be a share from 0 to 1, got {config.denoise}")
    if not 0 <= config.rotation <= 180:
        raise SettingError(f"`rotation` must be 0 to 180 degrees, got {config.rotation}")
    if config.patience is not None and config.patience < 0:
        raise SettingError(f"`patience` must be >= 0, got {config.patience}")
    if config.weights not in ("imagenet", "none") and config.architecture != "resnet":
        warn(
            f"`weights={config.weights}` only applies to `architecture=resnet`; "
            f"ignored for `architecture={config.architecture}`",
            settings=True,
        )
    if config.head_steps < 0:
        raise SettingError(f"`head_steps` must be >= 0 (0: no learned residual), got {config.head_steps}")
    if config.size is not None and config.size < 1:
        raise SettingError(f"`size` must be a positive number of pixels, got {config.size}")
    # Before any TensorFlow op: a multi-worker strategy must be created at program start.
    distributed = distribution.describe(config.strategy, config.batch)
    class_dir, good = data.check_class_dir(config.directory)
    paths = data.list_images(good)
    if not paths:
        raise UserError(f"no images in {good} (supported: {', '.join(data.IMAGE_EXTENSIONS)})")
    color = data.detect_color(paths) if config.color == "auto" else config.color
    channels = data.channels_of(color)
    mode, alignment = regime.choose_mode(config.mode, paths)
    size, shape, patch = _geometry(config, mode, paths)
    policy = precision_policy(config.precision)
    set_seed(config.seed)  # the weights' initialisation (and whatever else Keras draws at random)
    # Built once, before the images are loaded: the architecture and the loss check their own
    # arguments, and their message is the user's error.
    try:
        with distribution.scope(distributed), _dtype_policy(policy):  # variables mirrored on every replica
            model = models.build_model(
                config.architecture, size, channels, weights=config.weights, fully_convolutional=mode == "surface"
            )
        loss = clf.get_loss(config.loss, size)
    except SettingError:
        raise  # already worded in settings (an MS-SSIM `size` too small, missing `weights`)
    except (ValueError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from None
    images, kept = data.load_images(paths, color, shape, progress="loading train/good")
    train_paths, val_paths = data.split_validation(kept, config.val_split, config.seed)
    index = {p: i for i, p in enumerate(kept)}
    train_images = images[[index[p] for p in train_paths]]
    val_images = images[[index[p] for p in val_paths]]
    # Surface epochs draw at least MIN_PATCHES_PER_EPOCH patches, so a small class does not spend
    # its time on per-epoch validation and checkpoints (36 cookies: 468 epochs of 32 patches otherwise).
    per_epoch = len(train_paths) if patch is None else max(len(train_paths), regime.MIN_PATCHES_PER_EPOCH)
    instances = regime.DEFAULT_INSTANCES[mode] if config.instances is None else config.instances
    epochs = config.epochs if config.epochs is not None else epochs_for(instances, per_epoch)
    val_names = [data.relative_to(p, class_dir) for p in val_paths]
    setup = {
        "format": runs.SETUP_FORMAT,
        "directory": str(class_dir.resolve()),
        "architecture": config.architecture,
        "batch": config.batch,
        "loss": config.loss,
        "color": color,
        "color_requested": config.color,
        "channels": channels,
        "size": size,
        "mode": mode,
        "mode_requested": config.mode,
        "alignment": alignment,
        "shape": list(shape),
        "patch": patch,
        "patches_per_epoch": None if patch is None else per_epoch,
        "head_steps": config.head_steps,
        "head": None,
        "precision": config.precision,
        "dtype_policy": policy,
        "jit": bool(config.jit),
        "instances": instances,
        "instances_requested": config.instances,
        "epochs": epochs,
        "epochs_requested": config.epochs,
        "lr": config.lr,
        "seed": config.seed,
        "val_split": config.val_split,
        "patience": config.patience,
        "augment": not config.no_augment,
        "rotation": float(config.rotation),
        "denoise": float(config.denoise),
        "flip": config.flip,
        "weights": config.weights if config.architecture == "resnet" else None,
        "tag": config.tag,
        "msssim_scales": getattr(loss, "scales", None),
        "freeze_epochs": freeze_epochs(config.architecture, epochs),
        "n_images": len(kept),
        "n_train": len(train_paths),
        "n_validation": len(val_paths),
        "validation_files_sha256": data.files_hash(val_names),
        "versions": package_versions(),
        "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
        "status": "training",
        "epochs_run": 0,
        "best_val_loss": None,
        "training_seconds": 0.0,
        "model_file": runs.model_filename(config.architecture, config.batch),
        **distributed,
    }
    return setup, (train_images, val_images), val_names, model


def _fit_phases(model, setup, run_dir, datasets, start_epoch, end_epoch, state, clock, run_eagerly=False):
    """Fit from ``start_epoch`` to ``end_epoch``, unfreezing a resnet encoder at its epoch."""

    train_ds, val_ds = datasets
    model_path = run_dir / setup.model_file
    verbose = 1 if sys.stdout.isatty() else 2
    boundary = setup.freeze_epochs
    phases = [(start_epoch, min(boundary, end_epoch), False), (max(start_epoch, boundary), end_epoch, True)]
    stopped = False
    for first, last, trainable in phases:
        if first >= last or stopped:
            continue
        if setup.architecture == "resnet":
            model.get_layer("encoder").trainable = trainable
            _compile(model, setup, run_eagerly)  # changing trainability needs a recompile
            print(f"encoder {'trainable' if trainable else 'frozen'} for epochs {first + 1}-{last}", flush=True)
        callbacks = _callbacks(run_dir, model_path, setup.patience, state, clock)
        model.fit(
            train_ds, validation_data=val_ds, epochs=last, initial_epoch=first, callbacks=callbacks, verbose=verbose
        )
        stopped = bool(model.stop_training)
    return state


def train(
    setup: runs.RunSetup, run_dir: Path, images: tuple, model, start_epoch: int = 0, state: dict | None = None
) -> runs.RunSetup:
    """Train ``model`` in ``run_dir`` from ``start_epoch`` to ``setup.epochs``; finish the run.

    Writes the best model, ``history.csv``, the loss curve and the final ``setup.json``;
    removes the backup on success. Returns ``setup``, updated.
    """
    import pandas as pd

    import figures

    state = dict(state or {})
    train_images, val_images = images
    record = setup.to_record()  # what distribution.py reads of the run
    train_ds = data.tf_dataset(
        train_images,
        distribution.global_batch(record),
        training=True,
        augment=setup.augment,
        flip=setup.flip,
        seed=setup.seed,
        denoise=setup.denoise,
        rotation=setup.rotation,
        patch=setup.patch,
        per_epoch=setup.patches_per_epoch,
    )
    distribution.check_train_count(record, len(train_images))
    train_ds = distribution.drop_short_batches(
        train_ds, record, len(train_images), distribution.global_batch(record), "training"
    )
    val_batch = distribution.validation_batch(record, len(val_images))
    val_ds = distribution.drop_short_batches(
        data.tf_dataset(val_images, val_batch, training=False), record, len(val_images), val_batch, "validation"
    )
    run_eagerly = runs_eagerly(setup, len(train_images), start_epoch)
    if start_epoch == 0 or getattr(model, "optimizer", None) is None:
        _compile(model, setup, run_eagerly)  # a resumed model keeps its compiled optimizer state
    elif run_eagerly:  # a loaded model, compiled from its file: not yet traced
        model.run_eagerly = True
    # Seconds already spent: from the backup after a crash, else from the finished run being extended.
    spent = float(state.get("training_seconds", setup.training_seconds))
    started = time.time()
    clock = lambda: spent + time.time() - started  # noqa: E731
    diverged = None
    try:
        _fit_phases(model, setup, run_dir, (train_ds, val_ds), start_epoch, setup.epochs, state, clock, run_eagerly)
    except NonFiniteLoss as exc:
        diverged = exc
    model_path = run_dir / setup.model_file
    layout = runs.Layout(run_dir)
    history_path = layout.history
    history = pd.read_csv(history_path) if history_path.is_file() and history_path.stat().st_size else pd.DataFrame()
    if history.empty or not model_path.is_file() or "val_loss" not in history:
        raise diverged or UserError("training produced no usable epoch; nothing saved")
    history = history.drop_duplicates("epoch", keep="last")
    # Only epochs the backup confirms count (a kill can leave a logged epoch whose state was not saved).
    history = history[history["epoch"] < int(state.get("epoch", history["epoch"].max() + 1))].reset_index(drop=True)
    history = history[np.isfinite(history["val_loss"])]
    with storage.atomic_path(history_path) as tmp:
        history.to_csv(tmp, index=False)
    best_row = history.loc[history["val_loss"].idxmin()]
    head = setup.head
    if diverged is None and setup.head_steps and head and setup.head_model_sha256 != storage.model_id(model_path):
        print("learned residual: the autoencoder changed, so its head is trained again on it", flush=True)
        head = None
    if diverged is None and setup.head_steps and not head:
        setup.head = _train_head(setup, run_dir, train_images)
    setup.status = "done"
    setup.epochs_run = int(history["epoch"].max()) + 1
    setup.best_epoch = int(best_row["epoch"]) + 1
    setup.best_val_loss = float(best_row["val_loss"])
    setup.training_seconds = round(clock(), 1)
    if diverged is not None:
        setup.stopped = str(diverged)
    with storage.atomic_path(layout.loss_plot) as plot:
        figures.plot_loss_curve(history, plot, title=f"{setup.architecture} / {setup.loss} loss")
    storage.write_json(layout.setup, setup.to_record())
    _remove_backup(run_dir)
    if diverged is None and TWINS_AFTER_TRAINING:
        _write_twins(run_dir, setup)
    if diverged is not None:
        raise SettingError(
            f"{diverged}; the run keeps its best model (epoch {setup.best_epoch}, validation loss "
            f"{setup.best_val_loss:.5f}) and is finished: {run_dir}"
        )
    return setup


def _train_head(setup, run_dir, train_images):
    """Train the learned residual's head on the run's best autoencoder (see learned.py)."""
    import learned

    print(
        f"learned residual: training the segmentation head for {setup.head_steps} steps on simulated defects",
        flush=True,
    )
    model = runs.load_keras(run_dir / setup.model_file, compile=False)
    autoencoder = storage.model_id(run_dir / setup.model_file)  # the head belongs to these weights
    try:
        return {"model_sha256": autoencoder} | learned.train_head(
            model,
            train_images,
            runs.Layout(run_dir).head,
            steps=setup.head_steps,
            patch=setup.patch or min(learned.OBJECT_HEAD_PATCH, setup.size),
            seed=setup.seed,
            eager=eager(setup.head_steps),
        )
    except FloatingPointError as exc:
        raise UserError(
            f"learned residual: {exc}; the autoencoder is kept (its ssim and l2 maps need no head)"
        ) from None


def _write_twins(run_dir, setup):
    """The ONNX twins of the model and head (networks.py), made now while TensorFlow is
    loaded, so validate.py and test.py start without it where the twin is as fast."""
    run = runs.Run(run_dir, setup, run_dir / setup.model_file)  # not find_run: this process holds the lock
    run.load_model()
    if run.head_path.is_file():
        run.load_head()


def _remove_backup(run_dir):
    """Remove the backup, its state first, so a kill half-way leaves no state naming a missing model."""
    layout = runs.Layout(run_dir)
    layout.state.unlink(missing_ok=True)
    storage.remove_tree(layout.backup)


def new_run(config: TrainConfig) -> tuple[Path, dict]:
    """``train.py new``: check inputs, create the run folder, train. Returns the run folder and
    its final ``setup.json`` object."""
    record, images, val_names, model = prepare(config)
    setup = runs.RunSetup.from_record(record)
    chief = distribution.is_chief()  # other multi-worker tasks train in a scratch folder that is removed
    run_dir = (
        runs.new_run_dir(config.out, setup.directory, setup.architecture, setup.loss)
        if chief
        else distribution.scratch_dir()
    )
    lock = storage.RunLock(run_dir, exclusive=True)  # validate/test refuse it while it trains
    layout = runs.Layout(run_dir)
    try:
        layout.validation_files.write_text("\n".join(val_names) + "\n")
        storage.write_json(layout.setup, setup.to_record())
        print(f"run folder: {run_dir}", flush=True)
        train(setup, run_dir, images, model)
    except BaseException as exc:
        # Keep a run that finished at least one epoch (it can be resumed); drop the empty one we created.
        if not layout.state.is_file() and not (run_dir / setup.model_file).is_file():
            lock.release()
            storage.remove_tree(run_dir)
        elif not isinstance(exc, UserError):
            print(f"training stopped; continue it with: python3 train.py resume -p {run_dir}", file=sys.stderr)
        raise
    finally:
        lock.release()
        if not chief:
            storage.remove_tree(run_dir)
    return run_dir, setup.to_record()


def _load_state(run_dir, setup):
    """The backup's state and model file, or None when there is no usable backup.

    A backup left behind by a finished run (killed while removing it) is stale: removed.
    """
    layout = runs.Layout(run_dir)
    backup, state_path = layout.backup, layout.state
    if not state_path.is_file():
        if backup.exists() and setup.status == "done":
            storage.remove_tree(backup)
        return None
    state = storage.read_json(state_path)
    epoch = state.get("epoch")
    if not (storage.is_number(epoch) and epoch == int(epoch) and epoch >= 0):
        raise UserError(f"{state_path}: 'epoch' must be a whole number >= 0, got {epoch!r} (edited by hand?)")
    target = state.get("epochs", setup.epochs)
    if setup.status == "done" and (not storage.is_number(target) or target <= setup.epochs):
        _remove_backup(run_dir)  # the run finished after this backup was written
        return None
    model_file = storage.inside(backup, state.get("model", "last.keras"), f"{state_path}: model")
    if not model_file.is_file():
        raise UserError(
            f"{state_path} names {model_file.name}, which is missing: the backup is damaged; "
            f"{'the run keeps its best model' if (run_dir / setup.model_file).is_file() else 'start a new run'}"
        )
    return state, model_file


def resume_run(path, more_epochs: int | None = None, strategy: str | None = None) -> tuple[Path, dict]:
    """``train.py resume``: continue an interrupted run, or extend a finished one by ``more_epochs``,
    under the strategy setup.json records (or ``strategy``, recorded then). Returns the run
    folder and its final ``setup.json`` object (an older run's in the current format)."""
    path = Path(path)
    run_dir = path.parent if path.is_file() else path
    if not runs.Layout(run_dir).setup.is_file():
        raise UserError(f"{run_dir} is not a run folder: no {runs.SETUP}")
    if more_epochs is not None and more_epochs < 1:
        raise SettingError(f"`more_epochs` must be >= 1, got {more_epochs}")
    lock = storage.RunLock(run_dir, exclusive=True)  # a second resume (or a reader) refuses with one line
    try:
        run_dir, setup = _resume_locked(run_dir, more_epochs, strategy)
        return run_dir, setup.to_record()
    finally:
        lock.release()


def _resume_locked(run_dir, more_epochs, strategy=None):
    layout = runs.Layout(run_dir)
    setup_path = layout.setup
    setup = runs.read_setup(run_dir, training=True)
    name = setup.model_file
    storage.inside(run_dir, name, f"{setup_path}: model_file")  # never load or overwrite a file outside the run
    if Path(name).name != name:
        raise UserError(f"{setup_path}: model_file {name!r} must be a file name inside the run folder")
    best = run_dir / setup.model_file
    found = _load_state(run_dir, setup)
    if found is not None:
        state, model_file = found
        start = int(state["epoch"])
        setup.epochs = int(state.get("epochs", setup.epochs))
        print(f"resuming interrupted run at epoch {start + 1} of {setup.epochs + (more_epochs or 0)}", flush=True)
    elif setup.status == "done":
        if not more_epochs:
            raise SettingError(
                f"run {run_dir} already finished {setup.epochs_run} epochs; pass `more_epochs=MORE_EPOCHS` "
                "to train longer"
            )
        if not best.is_file():
            raise UserError(f"no model in {run_dir}: {best.name} is missing, nothing to extend")
        start = int(setup.epochs_run)
        state = {
            "best_val_loss": setup.best_val_loss,
            "wait": 0,
            "epoch": start,
            "training_seconds": setup.training_seconds,
        }
        model_file = best
        print(f"extending finished run by {more_epochs} epochs from its best model", flush=True)
    elif not best.is_file():
        raise UserError(runs.run_is_empty_message(run_dir))
    else:
        raise UserError(
            f"run {run_dir} has no backup to resume from, but status {setup.status!r}: "
            "its best model is kept; validate or test it"
        )
    if more_epochs:
        setup.epochs = max(int(setup.epochs), start) + more_epochs
    listing = layout.validation_files
    if not listing.is_file():
        raise UserError(f"{listing} is missing: this run cannot be resumed")
    val_names = [n.strip() for n in listing.read_text().splitlines() if n.strip()]
    if data.files_hash(val_names) != setup.validation_files_sha256:
        raise UserError(f"{runs.VALIDATION_FILES} in {run_dir} does not match setup.json (edited?)")
    run = runs.Run(run_dir, setup, best)
    # Best epochs are compared on one validation set: a missing validation image is refused.
    val_paths, train_paths = run.validation_paths(), run.training_paths()
    if len(train_paths) != setup.n_train:
        warn(
            f"{run.class_dir / 'train' / data.GOOD} now holds {len(train_paths)} training images, not "
            f"{setup.n_train}: training continues on the current ones (n_train updated); the validation "
            "images are unchanged"
        )
        setup.n_train = len(train_paths)
    set_seed(setup.seed + start)  # a fresh but reproducible shuffle order after resuming
    train_images, _ = data.load_images(train_paths, setup.color, setup.shape, progress="loading train/good")
    val_images, _ = data.load_images(sorted(val_paths), setup.color, setup.shape, progress="loading validation")
    # Replicas are counted again: the machine may differ from the one that started the run.
    for key, value in distribution.describe(strategy or setup.strategy, setup.batch).items():
        setattr(setup, key, value)
    with distribution.scope(setup.to_record()):  # the run's strategy (recorded in setup.json), or the one asked for
        model = runs.load_keras(model_file, compile=True)
    if found is None:
        # Extending a finished run: first a backup at its current epoch (the state names the
        # epochs to reach), then the status, so a kill at any moment leaves it resumable.
        backup = layout.backup
        backup.mkdir(exist_ok=True)
        name = f"last-e{start}.keras"
        with storage.atomic_path(backup / name) as tmp:
            shutil.copy2(model_file, tmp)
        state.update(model=name, epochs=setup.epochs)
        storage.write_json(layout.state, state)
        stop_point("extension backed up")
    state["epochs"] = setup.epochs
    setup.status = "training"
    storage.write_json(layout.setup, setup.to_record())
    train(setup, run_dir, (train_images, val_images), model, start_epoch=start, state=state)
    return run_dir, setup
