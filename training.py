"""Training a CAE into a run folder: setup, callbacks, the (resumable) fit loop.

``train.py`` is only the command line; everything that trains lives here so the
benchmark and the tests drive the same code.
"""
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

import data
import runs
from utils import UserError, package_versions, set_seed, warn

FREEZE_SHARE = 0.7  # resnet: encoder frozen for the first 70% of epochs


def epochs_for(instances, n_train):
    """Epochs as in the original suite: ``max(1, instances // number of training images)``."""
    return max(1, int(instances) // max(1, int(n_train)))


def freeze_epochs(architecture, epochs):
    """Epochs with the pretrained encoder frozen (resnet only)."""
    return int(math.ceil(FREEZE_SHARE * epochs)) if architecture == "resnet" else 0


def _callbacks(run_dir, model_path, patience, state, clock):
    """Keras callbacks of a run; ``clock()`` gives the run's training seconds so far."""
    import keras

    class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
        """Early stopping whose counters survive ``train.py resume``."""

        def on_train_begin(self, logs=None):
            super().on_train_begin(logs)
            if state.get("best_val_loss") is not None:
                self.best = state["best_val_loss"]
                self.wait = state.get("wait", 0)

    class RunBackup(keras.callbacks.Callback):
        """After every epoch, save the whole model (weights + optimizer) and the epoch reached,
        so an interrupted run continues exactly where it stopped."""

        def __init__(self, stopper):
            super().__init__()
            self.stopper = stopper

        def on_epoch_end(self, epoch, logs=None):
            backup = run_dir / runs.BACKUP
            backup.mkdir(exist_ok=True)
            tmp = backup / "last.tmp.keras"
            self.model.save(tmp)
            os.replace(tmp, backup / "last.keras")
            best = self.stopper.best if self.stopper is not None else state.get("best_val_loss")
            val = (logs or {}).get("val_loss")
            if self.stopper is None and val is not None:
                best = min(val, best) if best is not None else val
            state.update(epoch=epoch + 1, best_val_loss=None if best is None or not np.isfinite(best) else float(best),
                         wait=int(self.stopper.wait) if self.stopper is not None else 0,
                         training_seconds=round(clock(), 1))  # so a crashed run's time is not lost on resume
            runs.write_json(backup / "state.json", state)

    stopper = ResumableEarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=False) if patience else None
    checkpoint = keras.callbacks.ModelCheckpoint(
        str(model_path), monitor="val_loss", save_best_only=True,
        initial_value_threshold=state.get("best_val_loss"),
    )
    callbacks = [
        keras.callbacks.TerminateOnNaN(),
        checkpoint,
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=max(2, (patience or 10) // 2), min_lr=1e-6),
        keras.callbacks.CSVLogger(str(run_dir / runs.HISTORY), append=True),
    ]
    if stopper is not None:
        callbacks.append(stopper)
    callbacks.append(RunBackup(stopper))
    return callbacks


def _compile(model, setup):
    import keras

    import custom_loss_functions as clf

    model.compile(optimizer=keras.optimizers.Adam(learning_rate=setup["lr"]), loss=clf.get_loss(setup["loss"], setup["size"]))


def prepare(args):
    """Check everything a new run needs, before any folder is created.

    Returns ``(setup, train_images, val_images, model)``; raises :class:`UserError`.
    """
    import custom_loss_functions as clf
    import models

    if args.batch < 1:
        raise UserError(f"--batch must be >= 1, got {args.batch}")
    if args.lr <= 0:
        raise UserError(f"--lr must be > 0, got {args.lr}")
    if args.instances < 1:
        raise UserError(f"--instances must be >= 1, got {args.instances}")
    if args.epochs is not None and args.epochs < 1:
        raise UserError(f"--epochs must be >= 1, got {args.epochs}")
    if not 0 <= args.denoise <= 1:
        raise UserError(f"--denoise must be a share from 0 to 1, got {args.denoise}")
    if not 0 <= args.rotation <= 180:
        raise UserError(f"--rotation must be 0 to 180 degrees, got {args.rotation}")
    if args.patience is not None and args.patience < 0:
        raise UserError(f"--patience must be >= 0, got {args.patience}")
    if args.weights not in ("imagenet", "none") and args.architecture != "resnet":
        warn(f"--weights {args.weights} only applies to -a resnet; ignored for -a {args.architecture}")
    channels = data.channels_of(args.color)
    try:  # architecture and loss check their own arguments; show their message as the user's error
        models.build_model(args.architecture, args.size, channels, weights="none") if args.architecture != "resnet" else None
        loss = clf.get_loss(args.loss, args.size)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    class_dir, good = data.check_class_dir(args.directory)
    paths = data.list_images(good)
    if not paths:
        raise UserError(f"no images in {good} (supported: {', '.join(data.IMAGE_EXTENSIONS)})")
    set_seed(args.seed)
    images, kept = data.load_images(paths, args.color, args.size, progress="loading train/good")
    train_paths, val_paths = data.split_validation(kept, args.val_split, args.seed)
    index = {p: i for i, p in enumerate(kept)}
    train_images = images[[index[p] for p in train_paths]]
    val_images = images[[index[p] for p in val_paths]]
    try:
        model = models.build_model(args.architecture, args.size, channels, weights=args.weights)
    except (ValueError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from None
    epochs = args.epochs if args.epochs is not None else epochs_for(args.instances, len(train_paths))
    val_names = [data.relative_to(p, class_dir) for p in val_paths]
    setup = {
        "directory": str(class_dir.resolve()),
        "architecture": args.architecture,
        "batch": args.batch,
        "loss": args.loss,
        "color": args.color,
        "channels": channels,
        "size": args.size,
        "instances": args.instances,
        "epochs": epochs,
        "epochs_requested": args.epochs,
        "lr": args.lr,
        "seed": args.seed,
        "val_split": args.val_split,
        "patience": args.patience,
        "augment": not args.no_augment,
        "rotation": float(args.rotation),
        "denoise": float(args.denoise),
        "flip": args.flip,
        "weights": args.weights if args.architecture == "resnet" else None,
        "tag": args.tag,
        "msssim_scales": getattr(loss, "scales", None),
        "freeze_epochs": freeze_epochs(args.architecture, epochs),
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
        "model_file": runs.model_filename(args.architecture, args.batch),
    }
    return setup, (train_images, val_images), val_names, model


def _fit_phases(model, setup, run_dir, datasets, start_epoch, end_epoch, state, clock):
    """Fit from ``start_epoch`` to ``end_epoch``, unfreezing a resnet encoder at its epoch."""
    import keras

    train_ds, val_ds = datasets
    model_path = run_dir / setup["model_file"]
    verbose = 1 if sys.stdout.isatty() else 2
    boundary = setup.get("freeze_epochs", 0)
    phases = [(start_epoch, min(boundary, end_epoch), False), (max(start_epoch, boundary), end_epoch, True)]
    stopped = False
    for first, last, trainable in phases:
        if first >= last or stopped:
            continue
        if setup["architecture"] == "resnet":
            model.get_layer("encoder").trainable = trainable
            _compile(model, setup)  # changing trainability needs a recompile
            print(f"encoder {'trainable' if trainable else 'frozen'} for epochs {first + 1}-{last}", flush=True)
        callbacks = _callbacks(run_dir, model_path, setup.get("patience"), state, clock)
        model.fit(train_ds, validation_data=val_ds, epochs=last, initial_epoch=first,
                  callbacks=callbacks, verbose=verbose)
        stopped = bool(model.stop_training)
    return state


def train(setup, run_dir, images, model, start_epoch=0, state=None):
    """Train ``model`` in ``run_dir`` from ``start_epoch`` to ``setup['epochs']``; finish the run.

    Writes the best model, ``history.csv``, the loss curve and the final ``setup.json``;
    removes the backup on success. Returns the updated setup.
    """
    import pandas as pd

    import visualize

    state = dict(state or {})
    train_images, val_images = images
    seed = setup["seed"]
    train_ds = data.make_dataset(train_images, setup["batch"], training=True, augment=setup["augment"], flip=setup["flip"],
                                 seed=seed, denoise=setup.get("denoise", 0.0),
                                 rotation=setup.get("rotation", data.DEFAULT_ROTATION))
    val_ds = data.make_dataset(val_images, setup["batch"], training=False)
    if start_epoch == 0 or getattr(model, "optimizer", None) is None:
        _compile(model, setup)  # a resumed model keeps its compiled optimizer state
    # Seconds already spent: from the backup after a crash, else from the finished run being extended.
    spent = float(state.get("training_seconds", setup.get("training_seconds", 0.0)))
    started = time.time()
    clock = lambda: spent + time.time() - started  # noqa: E731
    _fit_phases(model, setup, run_dir, (train_ds, val_ds), start_epoch, setup["epochs"], state, clock)
    history = pd.read_csv(run_dir / runs.HISTORY)
    history = history.drop_duplicates("epoch", keep="last").reset_index(drop=True)
    history.to_csv(run_dir / runs.HISTORY, index=False)
    if history.empty or not (run_dir / setup["model_file"]).is_file():
        raise UserError("training produced no usable epoch (loss NaN from the start?); nothing saved")
    best_row = history.loc[history["val_loss"].idxmin()]
    setup.update(
        status="done",
        epochs_run=int(history["epoch"].max()) + 1,
        best_epoch=int(best_row["epoch"]) + 1,
        best_val_loss=float(best_row["val_loss"]),
        training_seconds=round(clock(), 1),
    )
    visualize.plot_loss_curve(history, run_dir / runs.LOSS_PLOT, title=f"{setup['architecture']} / {setup['loss']} loss")
    runs.write_json(run_dir / runs.SETUP, setup)
    runs.remove_tree(run_dir / runs.BACKUP)
    return setup


def new_run(args):
    """``train.py new``: check inputs, create the run folder, train. Returns the run folder."""
    setup, images, val_names, model = prepare(args)
    run_dir = runs.new_run_dir(args.out, setup["directory"], setup["architecture"], setup["loss"])
    try:
        (run_dir / runs.VALIDATION_FILES).write_text("\n".join(val_names) + "\n")
        runs.write_json(run_dir / runs.SETUP, setup)
        print(f"run folder: {run_dir}", flush=True)
        train(setup, run_dir, images, model)
    except BaseException:
        # Keep a run that finished at least one epoch (it can be resumed); drop an empty one.
        if not (run_dir / runs.BACKUP / "state.json").is_file():
            runs.remove_tree(run_dir)
        elif not isinstance(sys.exc_info()[1], UserError):
            print(f"training stopped; continue it with: python3 train.py resume -p {run_dir}", file=sys.stderr)
        raise
    return run_dir, setup


def resume_run(path, more_epochs=None):
    """``train.py resume``: continue an interrupted run, or extend a finished one by ``more_epochs``."""
    import keras

    import custom_loss_functions  # noqa: F401  (registers the losses for loading)

    path = Path(path)
    run_dir = path.parent if path.is_file() else path
    if not (run_dir / runs.SETUP).is_file():
        raise UserError(f"{run_dir} is not a run folder: no {runs.SETUP}")
    setup = runs.read_json(run_dir / runs.SETUP)
    backup = run_dir / runs.BACKUP
    if more_epochs is not None and more_epochs < 1:
        raise UserError(f"-e/--epochs must be >= 1, got {more_epochs}")
    if (backup / "state.json").is_file():
        state = runs.read_json(backup / "state.json")
        model_file = backup / "last.keras"
        start = int(state["epoch"])
        print(f"resuming interrupted run at epoch {start + 1} of {setup['epochs']}", flush=True)
    elif setup.get("status") == "done":
        if not more_epochs:
            raise UserError(f"run {run_dir} already finished {setup['epochs_run']} epochs; pass -e MORE_EPOCHS to train longer")
        state = {"best_val_loss": setup.get("best_val_loss"), "wait": 0}
        model_file = run_dir / setup["model_file"]
        start = int(setup["epochs_run"])
        print(f"extending finished run by {more_epochs} epochs from its best model", flush=True)
    else:
        raise UserError(f"run {run_dir} has no backup to resume from (it stopped before finishing an epoch); start a new run")
    if more_epochs:
        setup["epochs"] = max(int(setup["epochs"]), start) + more_epochs
    class_dir = Path(setup["directory"])
    val_names = [n for n in (run_dir / runs.VALIDATION_FILES).read_text().splitlines() if n.strip()]
    if data.files_hash(val_names) != setup["validation_files_sha256"]:
        raise UserError(f"{runs.VALIDATION_FILES} in {run_dir} does not match setup.json (edited?)")
    _, good = data.check_class_dir(class_dir)
    all_paths = data.list_images(good)
    val_set = {class_dir / n for n in val_names}
    set_seed(setup["seed"] + start)  # a fresh but reproducible shuffle order after resuming
    train_paths = [p for p in all_paths if p not in val_set]
    train_images, _ = data.load_images(train_paths, setup["color"], setup["size"], progress="loading train/good")
    val_images, _ = data.load_images(sorted(val_set), setup["color"], setup["size"], progress="loading validation")
    try:
        model = keras.models.load_model(model_file, compile=True)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"cannot load {model_file}: {exc.__class__.__name__}") from None
    setup["status"] = "training"
    runs.write_json(run_dir / runs.SETUP, setup)
    train(setup, run_dir, (train_images, val_images), model, start_epoch=start, state=state)
    return run_dir, setup
