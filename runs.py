"""The run folder: where it goes, what it holds, and how later steps find it.

``saved_models/<dataset>/<class>/<architecture>/<LOSS>/<YYYY-MM-DD_HH-MM-SS>/`` holds
the model ``CAE_<architecture>_b<batch>.keras``, ``setup.json``, ``history.csv``, the
loss curve, ``validation_files.txt``; ``validate.py``, ``test.py`` and ``finetune.py``
add their own sub-folders. A run can be moved as one folder.
"""

from __future__ import annotations

import argparse
import datetime as dt
import fcntl
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import settings
from utils import UserError, warn

SETUP = "setup.json"
VALIDATION_FILES = "validation_files.txt"
HISTORY = "history.csv"
LOSS_PLOT = "loss_curve.png"
BACKUP = "backup"
METHODS = (
    "ssim",
    "l2",
    "learned",
    "median",
    "lowfreq",
    "fused",
)  # learned: learned.py's head; median: no training; fused: a mix
FIXED_METHODS = (
    "ssim",
    "l2",
    "median",
    "lowfreq",
)  # maps computed from the model alone; every other method uses the head
HEAD_FILE = "head.keras"
MARKER = ".cae-result.json"  # marks a folder this tool wrote as one result (may be replaced by the same result)
LOCK = ".lock"  # per run: training holds it exclusively, validate/test/finetune shared
OTHER_WEIGHTS = "other_weights"  # results of earlier weights are moved here, never overwritten

PathLike = str | os.PathLike


def model_filename(architecture: str, batch: int) -> str:
    """File name of a run's model."""
    return f"CAE_{architecture}_b{batch}.keras"


def _safe_part(name):
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._")
    return name or "data"


def new_run_dir(
    out: PathLike, class_dir: PathLike, architecture: str, loss: str, now: dt.datetime | None = None
) -> Path:
    """Create and return a fresh run folder under ``out``.

    Only the class folder's last two names (dataset, class) are used, so an absolute
    ``-d`` never makes a run write outside ``out``; a suffix is added if two runs start
    in the same second.
    """
    class_dir = Path(class_dir).resolve()
    dataset, klass = _safe_part(class_dir.parent.name), _safe_part(class_dir.name)
    stamp = (now or dt.datetime.now()).strftime("%Y-%m-%d_%H-%M-%S")
    base = Path(out) / dataset / klass / architecture / loss.upper()
    for i in range(1000):
        run = base / (stamp if i == 0 else f"{stamp}_{i}")
        try:
            base.mkdir(parents=True, exist_ok=True)
            run.mkdir()
            return run
        except FileExistsError:
            if not base.is_dir():
                raise UserError(
                    f"cannot create a run folder under {out}: {base} or a folder above it is a file"
                ) from None
            continue
        except OSError as exc:
            raise UserError(f"cannot create a run folder under {out}: {exc.strerror or exc}") from None
    raise UserError(f"cannot create a run folder under {base}")


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """The one way this tool writes a file in place: yields a per-process temporary name
    beside ``path`` (hidden, same suffix, so Keras, NumPy and matplotlib pick the same
    format) to write to, renamed over ``path`` in one step when the block succeeds and
    removed when it fails, so a crash or kill never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    _remove_stale_temporaries(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:  # KeyboardInterrupt and SystemExit too
        tmp.unlink(missing_ok=True)
        raise


def _remove_stale_temporaries(path: Path) -> None:
    """Remove the temporaries of ``path`` that killed processes (``kill -9``, power loss) left
    behind, e.g. 0-byte ``.calibration_….<pid>.tmp.npz`` files; those of live processes stay."""
    prefix, suffix = f".{path.stem}.", f".tmp{path.suffix}"
    try:
        stale = [p for p in path.parent.iterdir() if p.name.startswith(prefix) and p.name.endswith(suffix)]
    except OSError:
        return
    for old in stale:
        pid = old.name[len(prefix) : len(old.name) - len(suffix)]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            try:
                old.unlink()
            except OSError:
                pass


def load_npz_or_none(path: PathLike, required_keys: Iterable[str] = ()) -> dict | None:
    """Every array of a derived ``.npz`` (a cache this tool wrote) as a dict, read in full now,
    or None with a one-line warning when it is damaged: truncated, not a zip, an array that
    does not decode, a missing ``required_keys`` entry. None without a word when the file
    does not exist. The caller then computes it again; checking that the arrays fit (shapes,
    settings) stays the caller's."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            missing = [key for key in required_keys if key not in stored.files]
            if missing:
                raise KeyError(missing[0])
            return {key: stored[key] for key in stored.files}
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError, zlib.error) as exc:
        reason = f"lacks {exc.args[0]!r}" if isinstance(exc, KeyError) else f"{exc.__class__.__name__}"
        warn(f"{path} is damaged ({reason}): ignored and computed again")
        return None


def write_json(path: PathLike, data: Any) -> None:
    """Write JSON atomically (see :func:`atomic_path`); non-finite numbers are refused
    (``NaN``/``Infinity`` are not JSON)."""
    path = Path(path)
    try:
        text = json.dumps(data, indent=2, default=str, allow_nan=False) + "\n"
    except ValueError:
        raise UserError(f"refusing to write a non-finite number (NaN or infinity) into {path}") from None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(text)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None


def read_json(path: PathLike, kind: type | None = dict) -> Any:
    """Read a JSON file, with a one-line error when it is missing, broken or not a ``kind``."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({str(exc).splitlines()[0]}): was it edited by hand?") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    if kind is not None and not isinstance(data, kind):
        raise UserError(
            f"{path} holds {type(data).__name__ if data is not None else 'null'} instead of a JSON object: "
            "was it edited by hand?"
        )
    return data


def is_number(value: Any) -> bool:
    """True for a real JSON number (not a bool, not a string)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def inside(folder: PathLike, name: str, what: str) -> Path:
    """``folder / name`` resolved, refused (one line) unless it lies inside ``folder``.

    Paths read from run files are never trusted to point elsewhere: a hand-edited
    ``../../x.keras`` must not make a step read or overwrite a file outside the run.
    """
    if not isinstance(name, str) or not name.strip():
        raise UserError(f"{what} must be a file name, got {name!r}")
    root = Path(folder).resolve()
    path = (root / name).resolve()
    if path == root or root not in path.parents:
        raise UserError(f"{what} {name!r} points outside {folder}: refused")
    return path


def _registry(module, name):
    """The names a module's registry offers (imported when a setup is checked, not with this module)."""
    import importlib

    return tuple(getattr(importlib.import_module(module), name))


_SETUP_TYPES = {  # key: (check, names it must be one of, or a description); what every later step relies on
    "architecture": (lambda v: v in settings.ARCHITECTURES, lambda: settings.ARCHITECTURES),
    "loss": (lambda v: v in settings.LOSSES, lambda: settings.LOSSES),
    "color": (lambda v: v in _registry("data", "COLOR_MODES"), lambda: _registry("data", "COLOR_MODES")),
    "size": (lambda v: is_number(v) and v == int(v) and 16 <= v <= 4096, "a whole number of pixels"),
    "batch": (lambda v: is_number(v) and v == int(v) and v >= 1, "a whole number >= 1"),
    "directory": (lambda v: isinstance(v, str) and v.strip() != "", "a folder path"),
}
_TRAINING_TYPES = {
    "epochs": (lambda v: is_number(v) and v == int(v) and v >= 1, "a whole number >= 1"),
    "seed": (lambda v: is_number(v) and v == int(v), "a whole number"),
    "lr": (lambda v: is_number(v) and math.isfinite(v) and v > 0, "a number > 0"),
    "validation_files_sha256": (lambda v: isinstance(v, str), "a hash"),
    "augment": (lambda v: isinstance(v, bool), "true or false"),
    "flip": (lambda v: isinstance(v, bool), "true or false"),
}


def check_setup(setup: dict, setup_path: PathLike, training: bool = False) -> dict:
    """Refuse (one line) a ``setup.json`` whose fields later steps rely on are missing or of the
    wrong type, e.g. after a hand edit; with ``training``, also the fields resuming needs."""
    fields = {**_SETUP_TYPES, **(_TRAINING_TYPES if training else {})}
    for key, (ok, expected) in fields.items():
        if key not in setup:
            raise UserError(f"{setup_path} lacks '{key}': not a setup written by train.py")
        if not ok(setup[key]):
            expected = f"one of {', '.join(expected())}" if callable(expected) else expected
            raise UserError(f"{setup_path}: '{key}' must be {expected}, got {setup[key]!r} (edited by hand?)")
    for key in ("epochs_run", "patience"):
        value = setup.get(key)
        if value is not None and not (is_number(value) and value == int(value) and value >= 0):
            raise UserError(f"{setup_path}: '{key}' must be a whole number >= 0, got {value!r} (edited by hand?)")
    best = setup.get("best_val_loss")
    if best is not None and not is_number(best):
        raise UserError(f"{setup_path}: 'best_val_loss' must be a number, got {best!r} (edited by hand?)")
    return setup


def file_stamp(path: PathLike) -> tuple[int, int]:
    """``(modification time in ns, size)`` of a file: what the run's caches (calibration,
    ONNX twin, validation maps) compare to notice that a file they were made from changed."""
    stat = Path(path).stat()
    return stat.st_mtime_ns, stat.st_size


_MODEL_IDS = {}


def model_id(path: PathLike) -> str:
    """SHA-256 of a model file (or any file): which weights a result came from. Cached in this
    process per path, inode, size, modification and change time (a rewrite changes the change
    time even when the modification time is put back)."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    if key not in _MODEL_IDS:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _MODEL_IDS[key] = digest.hexdigest()
    return _MODEL_IDS[key]


def model_record(path: PathLike) -> dict:
    """What results store about the model they were computed on."""
    stat = Path(path).stat()
    return {"model_sha256": model_id(path), "model_size": stat.st_size, "model_mtime_ns": stat.st_mtime_ns}


def uses_head(method: str) -> bool:
    """Whether ``method``'s maps are computed by the learned head (``learned``, fusions with
    it; anything but the fixed formulas of :data:`FIXED_METHODS`)."""
    return method not in FIXED_METHODS


def run_head_path(run_dir: PathLike, setup: dict | None = None) -> Path:
    """Where the run's learned head lives (``setup.json``'s ``head.file``, else
    :data:`HEAD_FILE`), whether or not it exists; refused when it points outside the run."""
    if setup is None:
        setup_path = Path(run_dir) / SETUP
        setup = read_json(setup_path) if setup_path.is_file() else {}
    head = setup.get("head")
    name = head.get("file", HEAD_FILE) if isinstance(head, dict) else HEAD_FILE
    return inside(run_dir, name, "setup.json head file")


# ---- locks ----


def _open_lock(path, create=True):
    flags = os.O_RDONLY | (os.O_CREAT if create else 0)
    try:
        return os.open(path, flags, 0o644)
    except PermissionError:
        if create:
            return _open_lock(path, create=False)
        raise
    except FileNotFoundError:
        return None


class RunLock:
    """A lock on a run folder, released when this object is released or garbage collected.

    Training holds it exclusively; validate/test/finetune/visualize hold it shared while
    they use the run, so they refuse a run that is being trained (and training refuses a
    run in use) with one line instead of reading a model while it is rewritten.
    """

    def __init__(self, run_dir: PathLike, exclusive: bool):
        self.fd = None
        path = Path(run_dir) / LOCK
        try:
            self.fd = _open_lock(path)
        except OSError:
            self.fd = None  # a read-only run without a lock file: nothing can be training it
        if self.fd is None:
            return
        try:
            fcntl.flock(self.fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            self.release()
            if exclusive:
                raise UserError(
                    f"run {run_dir} is in use by another process (being trained, or read by validate/test); "
                    "try again when it has finished"
                ) from None
            raise UserError(
                f"run {run_dir} is being trained by another process right now; wait until it finishes"
            ) from None

    def release(self) -> None:
        """Release the lock (idempotent)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __del__(self):
        self.release()


_HELD = {}  # folder -> [fd, depth]: folders this process holds the writer lock of (re-entrant)


@contextmanager
def writing(folder: PathLike) -> Iterator[None]:
    """Exclusive lock on ``folder`` while this process writes into it; another writer waits.

    Used around replacing result folders, so two processes never interleave their files in
    one result. Re-entrant within a process. Locks the folder itself (no lock files left).
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {folder}: {exc.strerror or exc}") from None
    key = os.path.realpath(folder)
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    fd = os.open(key, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            warn(f"waiting for another process writing into {folder}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        _HELD[key] = [fd, 1]
        yield
    finally:
        _HELD.pop(key, None)
        os.close(fd)


class Writing:
    """:func:`writing` held until :meth:`release` (or until this object goes away), for code
    that cannot wrap its writing in one ``with`` block."""

    def __init__(self, folder: PathLike):
        self._context = writing(folder)
        self._context.__enter__()

    def release(self) -> None:
        """Release the lock (idempotent)."""
        if self._context is not None:
            context, self._context = self._context, None
            context.__exit__(None, None, None)

    def __del__(self):
        self.release()


def default_method(loss: str) -> str:
    """Residual-map family of a training loss: ssim/mssim → ssim, l2/mse → l2."""
    return "ssim" if loss in ("ssim", "mssim") else "l2"


@dataclass
class Run:
    """A trained run folder and what it says about itself."""

    dir: Path
    setup: dict
    model_path: Path
    _model: object = field(default=None, repr=False)
    _lock: object = field(default=None, repr=False)
    _head: object = field(default=None, repr=False)
    _keras_model: object = field(default=None, repr=False)

    @property
    def size(self) -> int:
        return int(self.setup["size"])

    @property
    def mode(self) -> str:
        """``object`` or ``surface`` (see regime.py); runs from before the choice existed are objects."""
        return self.setup.get("mode", "object")

    @property
    def shape(self) -> tuple[int, int]:
        """Model input ``(height, width)`` of whole images: the square side, or a surface run's own shape."""
        if self.setup.get("shape"):
            return tuple(int(v) for v in self.setup["shape"])
        return (self.size, self.size)

    @property
    def head_path(self) -> Path:
        """The learned residual's head (learned.py); may be missing (older runs, --head-steps 0)."""
        return run_head_path(self.dir, self.setup)

    def load_head(self, keras: bool = False, images: int | None = None):
        """Load (once) the segmentation head of the ``learned`` map method: its ONNX twin
        for inference, the Keras model with ``keras`` (see :meth:`load_model`)."""
        if not self.head_path.is_file():
            raise UserError(
                f"run {self.dir} has no learned residual head ({self.head_path.name}); train a new run "
                "with --head-steps > 0, or use --method ssim or l2"
            )
        if keras:
            return load_keras(self.head_path, compile=False)  # fresh: callers may change its statistics
        if self._head is None:
            import networks

            self._head = networks.load(
                self.head_path, lambda: load_keras(self.head_path, compile=False), self.shape, images
            )
        return self._head

    @property
    def color(self) -> str:
        return self.setup["color"]

    @property
    def class_dir(self) -> Path:
        return Path(self.setup["directory"])

    def method(self, method: str | None = None) -> str:
        """The residual-map method to use: the one asked for, else ``fused`` for every run with a
        learned head (train.py's default: the head's map, the loss's fixed residual and the
        training-free maps, weighed by validate.py, whatever the regime), else the loss's family
        (a plain autoencoder trained with --head-steps 0)."""
        if method is None and self.head_path.is_file():
            method = "fused"
        method = method or default_method(self.setup["loss"])
        if method not in METHODS:
            raise UserError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        return method

    def validation_list(self) -> list[Path]:
        """The held-back images ``validation_files.txt`` names, resolved inside the class folder
        (refused when they point outside it), whether or not they still exist."""
        listing = self.dir / VALIDATION_FILES
        if not listing.is_file():
            raise UserError(f"{listing} is missing: this run has no validation list (was it made by train.py?)")
        names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        return [inside(self.class_dir, p, f"{listing}: image") for p in names]

    def validation_paths(self) -> list[Path]:
        """The held-back validation images, as absolute paths; refused when one is missing."""
        paths = self.validation_list()
        missing = [str(p) for p in paths if not Path(p).is_file()]
        if missing:
            raise UserError(f"{len(missing)} validation image(s) not found, e.g. {missing[0]} (was the dataset moved?)")
        return [Path(p) for p in paths]

    def training_paths(self) -> list[Path]:
        """The images the model was trained on: the class's ``train/good`` without the held-back
        validation images (in listing order)."""
        import data

        held_back = set(self.validation_list())
        _, good = data.check_class_dir(self.class_dir)
        return [p for p in data.list_images(good) if p.resolve() not in held_back]

    def load_model(self, keras: bool = False, images: int | None = None):
        """The model, loaded once and its shape checked: for inference its ONNX twin where
        one can be made and pays for ``images`` images (networks.py: no TensorFlow import),
        the Keras model itself with ``keras`` (safe mode, not compiled), e.g. to build a
        graph from it."""
        slot = "_keras_model" if keras else "_model"
        if getattr(self, slot) is None:
            import networks

            load = lambda: load_keras(self.model_path, compile=False)  # noqa: E731
            model = load() if keras else networks.load(self.model_path, load, self.shape, images)
            side = None if self.mode == "surface" else self.size  # surface models are fully convolutional
            expected = (side, side, 3 if self.color == "rgb" else 1)
            if tuple(model.input_shape[1:]) != expected:
                raise UserError(
                    f"model {self.model_path} takes {model.input_shape[1:]} but setup.json says {expected} "
                    f"(size {self.size}, {self.color})"
                )
            setattr(self, slot, model)
        return getattr(self, slot)

    def model_record(self) -> dict:
        """What results store about this run's model (see :func:`model_record`), and the
        content hash of its learned head (``head_sha256``) when it has one."""
        record = model_record(self.model_path)
        if self.head_path.is_file():
            record["head_sha256"] = model_id(self.head_path)
        return record

    def identity(self, method: str) -> dict:
        """The files a result of ``method`` is computed from, for a result folder's marker
        (:class:`StagedOutput`): the model's hash, and the head's when ``method`` uses it."""
        identity = {"model_sha256": model_id(self.model_path)}
        if uses_head(method) and self.head_path.is_file():
            identity["head_sha256"] = model_id(self.head_path)
        return identity


def _float32_policies(config):
    """A model config with every layer's dtype policy set to float32."""
    if isinstance(config, list):
        return [_float32_policies(v) for v in config]
    if not isinstance(config, dict):
        return config
    if config.get("class_name") in ("DTypePolicy", "FloatDTypePolicy") and isinstance(config.get("config"), dict):
        config = {**config, "config": {**config["config"], "name": "float32"}}
    return {k: _float32_policies(v) for k, v in config.items()}


def _float32_copy(model, path):
    """``model``, or when it was trained with ``--precision mixed`` the same network computing
    in float32: residual maps compare reconstructions more finely than bfloat16's three
    significant digits."""
    import keras

    config = keras.saving.serialize_keras_object(model)
    if "mixed_" not in json.dumps(config, default=str):
        return model
    copy = keras.saving.deserialize_keras_object(_float32_policies(config), safe_mode=True)
    copy.load_weights(path)
    return copy


def load_keras(path: PathLike, compile: bool = False):
    """Load a ``.keras`` model with one-line errors for a damaged file or non-finite weights."""
    import keras
    import numpy as np

    import custom_loss_functions  # noqa: F401  (registers the losses)

    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file not found: {path}")
    if not zipfile.is_zipfile(path):
        raise UserError(f"model file {path} is damaged: not a Keras .keras archive (truncated or overwritten?)")
    try:
        model = keras.models.load_model(path, compile=compile)
        if not compile:
            model = _float32_copy(model, path)
    except Exception as exc:  # noqa: BLE001 - any loading failure is the user's file
        first = (str(exc).splitlines() or [""])[0][:200]
        raise UserError(
            f"model file {path} is damaged or not a model of this tool: {exc.__class__.__name__}: {first}"
        ) from None
    if not all(np.isfinite(np.asarray(w)).all() for w in model.weights):
        raise UserError(
            f"model {path} has non-finite weights (training diverged): it cannot be used; "
            "train again, e.g. with a smaller --lr"
        )
    return model


def run_is_empty_message(run_dir: PathLike) -> str:
    """Why a run without model and backup cannot be used or resumed."""
    return (
        f"run {run_dir} stopped before finishing its first epoch: it holds no model and nothing to resume; "
        f"start a new run with train.py new (this folder can be deleted)"
    )


def find_run(path: PathLike) -> Run:
    """Open a run from its folder or from the model file inside it.

    Checks ``setup.json`` (one-line errors for hand-edited fields), that the model named
    in it lies inside the run, that training did not diverge, and takes the run's shared
    lock (refused while it is being trained) for as long as the returned :class:`Run` lives.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"run not found: {path}")
    run_dir = path.parent if path.is_file() else path
    setup_path = run_dir / SETUP
    if not setup_path.is_file():
        raise UserError(
            f"{run_dir} is not a run folder: no {SETUP} (give the folder train.py printed, or the .keras file in it)"
        )
    held = RunLock(run_dir, exclusive=False)
    setup = check_setup(read_json(setup_path), setup_path)
    expected = inside(
        run_dir,
        setup.get("model_file") or model_filename(setup["architecture"], setup["batch"]),
        f"{setup_path}: model_file",
    )
    if path.is_file() and path.suffix != ".keras":
        raise UserError(f"{path} is not a model file ({expected.name}): give the run folder or the .keras file in it")
    model_path = path if path.is_file() else expected
    best = setup.get("best_val_loss")
    if is_number(best) and not math.isfinite(best):
        raise UserError(
            f"run {run_dir} diverged (best validation loss {best}): it is never validated or tested; "
            "train again, e.g. with a smaller --lr"
        )
    if not model_path.is_file():
        if setup.get("status") == "training" and not (run_dir / BACKUP / "state.json").is_file():
            raise UserError(run_is_empty_message(run_dir))
        raise UserError(
            f"no model in {run_dir}: {model_path.name} is missing (training unfinished? try train.py resume -p {run_dir})"
        )
    return Run(dir=run_dir, setup=setup, model_path=model_path, _lock=held)


def remove_tree(path: PathLike) -> None:
    """Remove a folder this program created (used to undo a half-written output)."""
    shutil.rmtree(path, ignore_errors=True)


def format_threshold(value: float) -> str:
    """Threshold as it appears in folder names: fixed 6 decimals, no exponent."""
    return f"{float(value):.6f}"


def read_marker(folder: PathLike) -> dict | None:
    """The identity a result folder of this tool records (its marker file), or None."""
    marker = Path(folder) / MARKER
    if not marker.is_file():
        return None
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def check_writable(folder: PathLike, what: Any = None) -> None:
    """Refuse (one line) a folder that cannot be created or written: its nearest existing
    ancestor is a file or not writable. ``what`` names the output in the message."""
    folder = Path(folder)
    ancestor = folder
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"cannot write {what or folder}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK):
        raise UserError(f"cannot write {what or folder}: no permission to write into {ancestor}")


def _related(a, b):
    return a == b or a in b.parents or b in a.parents


def check_output(final: PathLike, inputs: Iterable = (), protect: Iterable = (), archive: bool = False) -> None:
    """Refuse (one line) an output folder that is, holds or lies inside an input folder, or
    that is (or holds) one of ``protect`` (the run folder), or (unless ``archive``: a default
    location inside a run, where it is moved aside instead) that exists and is not a result
    folder of this tool."""
    final = Path(final)
    real = Path(os.path.realpath(final))
    for folder in inputs:
        if _related(real, Path(os.path.realpath(folder))):
            raise UserError(f"output {final} overlaps the input folder {folder}: choose an --out outside it")
    for folder in protect:
        other = Path(os.path.realpath(folder))
        if real == other or real in other.parents:
            raise UserError(f"output {final} would replace {folder} (or a folder holding it): choose another --out")
    check_writable(final.parent, final)
    if (final.exists() or final.is_symlink()) and not archive:
        if not final.is_dir():
            raise UserError(f"output {final} exists and is not a folder: choose another --out (nothing was written)")
        if read_marker(final) is None:
            raise UserError(
                f"output {final} exists and is not a result folder of this tool: "
                "choose a new folder for --out (nothing was written or deleted)"
            )


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def set_aside(parent: PathLike, names: Iterable[str], old_model: str | None, reason: str) -> Path | None:
    """Move ``parent/<name>`` for each of ``names`` that exists into
    ``parent/other_weights/<model id>/`` (a fresh folder), with a warning; never deletes."""
    parent = Path(parent)
    present = [n for n in names if (parent / n).exists()]
    if not present:
        return None
    base = parent / OTHER_WEIGHTS / (str(old_model or "unknown")[:12])
    dest, i = base, 1
    while dest.exists() and any((dest / n).exists() for n in present):
        dest, i = Path(f"{base}_{i}"), i + 1
    dest.mkdir(parents=True, exist_ok=True)
    for name in present:
        os.replace(parent / name, dest / name)
    warn(f"{', '.join(present)} in {parent} came from {reason}: moved to {dest}")
    return dest


class StagedFolder:
    """Write a folder completely or not at all.

    Files go into a per-process hidden sibling ``.<name>.partial-<pid>-<token>`` (those left
    by killed processes are removed first); on success it is renamed to ``final`` in one
    step, replacing what is there (kept until the rename succeeded, put back if it fails).
    On any error the staging folder is deleted and ``final`` is untouched. Whether ``final``
    may be replaced at all is the caller's decision (see :class:`StagedOutput`).
    """

    def __init__(self, final: PathLike):
        self.final = Path(final)
        self.partial = None

    def __enter__(self) -> Path:
        parent, name = self.final.parent, self.final.name
        try:
            parent.mkdir(parents=True, exist_ok=True)
            for stale in parent.glob(f".{name}.partial-*"):  # left by a killed process
                pid = stale.name.rsplit(".partial-", 1)[1].split("-")[0]
                if pid.isdigit() and not _pid_alive(int(pid)):
                    remove_tree(stale)
            self.partial = parent / f".{name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
            self.partial.mkdir()
        except OSError as exc:
            raise UserError(f"cannot write into {parent}: {exc.strerror or exc}") from None
        return self.partial

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            remove_tree(self.partial)
            if issubclass(exc_type, OSError) and not isinstance(exc, (BlockingIOError,)):
                raise UserError(f"cannot write {self.final}: {exc.strerror or exc}") from None
            return False
        try:
            self._commit()
        except BaseException:
            remove_tree(self.partial)
            raise
        return False

    def _commit(self):
        self._install()

    def _install(self):
        """Rename the staging folder to ``final``, replacing whatever is there."""
        final = self.final
        old = None
        if final.exists() or final.is_symlink():
            old = final.parent / f".{final.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
            os.replace(final, old)
        try:
            os.replace(self.partial, final)
        except OSError as exc:
            if old is not None:
                os.replace(old, final)
            raise UserError(f"cannot write {final}: {exc.strerror or exc}") from None
        if old is not None:
            remove_tree(old)


class StagedOutput(StagedFolder):
    """A result folder of this tool, written as a :class:`StagedFolder`, that never loses anything.

    The folder gets a marker file (``identity``: kind, model, input) and is renamed into
    place under a writer lock on the parent folder. An existing ``final`` is replaced only
    when it is a result folder of this tool (marker file) holding the *same* result; one
    from other weights is moved into ``other_weights/`` when ``archive`` (default locations
    inside a run), any other existing path is refused with one line. ``final`` must not
    overlap ``inputs`` nor be (or hold) any of ``protect``.
    """

    def __init__(
        self,
        final: PathLike,
        identity: dict | None = None,
        inputs: Iterable = (),
        protect: Iterable = (),
        archive: bool = False,
    ):
        super().__init__(final)
        self.identity = dict(identity or {})
        self.inputs, self.protect, self.archive = tuple(inputs), tuple(protect), archive

    def _conflict(self, existing):
        """None when ``existing`` (a marker) may be replaced, else ``(what differs, the old model)``."""
        if existing.get("kind") != self.identity.get("kind"):
            return f"a {existing.get('kind') or 'different'} result", existing.get("model_sha256") or "unknown"
        for key in ("images",):
            if existing.get(key) != self.identity.get(key):
                return f"results for other images ({existing.get(key)})", None
        if existing.get("run") != self.identity.get("run"):
            return f"another run's result ({existing.get('run')})", existing.get("model_sha256") or "unknown"
        if existing.get("model_sha256") != self.identity.get("model_sha256"):
            return "results of other weights", existing.get("model_sha256") or "unknown"
        if ("head_sha256" in existing or "head_sha256" in self.identity) and existing.get(
            "head_sha256"
        ) != self.identity.get("head_sha256"):
            return "results of another learned head", existing.get("model_sha256") or "unknown"
        return None

    def check(self) -> None:
        """Refuse (one line) before any work what :meth:`__enter__`/commit would refuse."""
        check_output(self.final, self.inputs, self.protect, self.archive)
        if not self.archive and self.final.is_dir():
            conflict = self._conflict(read_marker(self.final) or {})
            if conflict is not None:
                raise UserError(
                    f"output {self.final} holds {conflict[0]}: choose another --out (nothing was written or deleted)"
                )

    def __enter__(self):
        self.check()
        return super().__enter__()

    def _commit(self):
        (self.partial / MARKER).write_text(json.dumps({"tool": "cae", **self.identity}, default=str) + "\n")
        with writing(self.final.parent):
            final = self.final
            if final.exists() or final.is_symlink():
                existing = read_marker(final) if final.is_dir() and not final.is_symlink() else None
                if existing is None:  # not marked: never ours to replace
                    if not self.archive:
                        raise UserError(
                            f"output {final} exists and is not a result folder of this tool: nothing was written"
                        )
                    existing = {"kind": "unmarked"}  # an older version's result, or put there by hand: kept aside
                conflict = self._conflict(existing)
                if conflict is not None:
                    what, old_model = conflict
                    if not self.archive:
                        raise UserError(
                            f"output {final} holds {what}: choose another --out (nothing was written or deleted)"
                        )
                    set_aside(final.parent, [final.name], old_model, what)
            self._install()


def validation_dir(run_dir: PathLike, method: str, min_area: int) -> Path:
    """Folder of a validation result: ``RUN/validation/<method>/a<MIN_AREA>/``."""
    return Path(run_dir) / "validation" / method / f"a{int(min_area)}"


def check_validation_result(result: dict, path: PathLike) -> dict:
    """Refuse (one line) a hand-edited or damaged validation result."""
    problem = None
    threshold, area = result.get("threshold"), result.get("min_area")
    if not is_number(threshold) or not math.isfinite(threshold) or threshold < 0:
        problem = f"threshold {threshold!r} is not a finite number >= 0"
    elif not is_number(area) or area != int(area) or area < 1:
        problem = f"min_area {area!r} is not a whole number >= 1"
    else:
        for key in ("scales", "passes"):
            value = result.get(key, 1)
            if not is_number(value) or value != int(value) or value < 1:
                problem = f"{key} {value!r} is not a whole number >= 1"
        if not isinstance(result.get("baseline", False), bool):
            problem = f"baseline {result.get('baseline')!r} is not true or false"
    if problem:
        raise UserError(f"{path} is damaged ({problem}; edited by hand?): run validate.py again")
    return result


def _made_from(record: dict, key: str, path: Path, record_path: Path) -> bool:
    """Whether the result ``record`` (read from ``record_path``) was computed from the file
    ``path``: its content hash under ``key``; a result from before the hash was recorded
    counts when it is newer than the file."""
    stored = record.get(key)
    if stored:
        return stored == model_id(path)
    return record_path.stat().st_mtime_ns >= path.stat().st_mtime_ns


def find_validation_result(
    run_dir: PathLike,
    method: str,
    min_area: int | None = None,
    model: PathLike | None = None,
    head: PathLike | None = None,
) -> dict | None:
    """The newest ``validation_result.json`` for ``method`` (and ``min_area`` if given), or None.

    With ``model`` (the run's model file), a result computed on other weights is refused
    with a request to validate again: its threshold does not fit the current model. So is,
    for a method that uses the learned head (:func:`uses_head`), a result computed with
    another head than the run's ``head`` (default: the one ``setup.json`` names), e.g. after
    ``head.keras`` was replaced.
    """
    root = Path(run_dir) / "validation" / method
    pattern = f"a{int(min_area)}/validation_result.json" if min_area is not None else "a*/validation_result.json"
    found = sorted(root.glob(pattern), key=lambda p: p.stat().st_mtime)
    if not found:
        return None
    path = found[-1]
    result = check_validation_result(read_json(path), path)
    if model is not None:
        again = f"run validate.py -p {run_dir} -a {int(result['min_area'])} --method {method} again"
        if not _made_from(result, "model_sha256", Path(model), path):
            raise UserError(
                f"{path} was computed on other weights (the model changed since, e.g. by train.py resume): {again}"
            )
        head = Path(head) if head is not None else run_head_path(run_dir)
        if uses_head(method) and head.is_file() and not _made_from(result, "head_sha256", head, path):
            raise UserError(
                f"{path} was computed with another learned head ({head.name} changed since): its threshold "
                f"does not fit the current head; {again}"
            )
    return result


def add_run_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options every post-training script shares: ``-p``, ``--method``, ``--batch``,
    ``--no-baseline``, ``--scales``, ``--passes``."""
    parser.add_argument(
        "-p", "--path", required=True, help="run folder written by train.py (or the .keras model inside it)"
    )
    parser.add_argument(
        "--method",
        choices=METHODS,
        default=None,
        help="residual map: ssim (1 - SSIM map), l2 (squared difference), learned (the segmentation head's "
        "defect probability), median (|image - its 21-px median|, no training), lowfreq (blurred image against its "
        "median brightness, no training) or fused (those maps combined with weights validate.py chooses); "
        "default: fused for runs with a learned head (train.py's default), else the training loss's family",
    )
    parser.add_argument("--batch", type=int, default=16, help="images per inference batch")
    parser.add_argument(
        "--no-baseline",
        dest="baseline",
        action="store_false",
        default=None,
        help="use the raw residual map; by default the usual residual of the training images (per-pixel upper quartile) "
        "(places that are always hard to reconstruct) is subtracted first",
    )
    parser.add_argument(
        "--scales",
        type=int,
        default=None,
        help="average the residual map over this many image scales: 1 = full size only, "
        "2 = also at half size (the default for validate.py; test.py follows the validation result)",
    )
    parser.add_argument(
        "--passes",
        type=int,
        default=None,
        help="reconstructions per image: each later pass repaints what the map so far finds with the previous "
        "reconstruction, reconstructs again, and keeps the pixel-wise minimum of the maps, which cuts the "
        "false alarms around defects; 1 = one plain reconstruction (default for validate.py: "
        "4; test.py follows the validation result)",
    )
    return parser
