"""The run folder: where it goes, what it holds, and how later steps find it.

``saved_models/<dataset>/<class>/<architecture>/<LOSS>/<YYYY-MM-DD_HH-MM-SS>/`` holds
the model ``CAE_<architecture>_b<batch>.keras``, ``setup.json``, ``history.csv``, the
loss curve, ``validation_files.txt``; ``validate.py``, ``test.py`` and ``finetune.py``
add their own sub-folders. A run can be moved as one folder.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import re
import zipfile
from dataclasses import dataclass, field, fields
from pathlib import Path

import methods
import networks
import settings
import storage
from utils import SettingError, UserError

SETUP = "setup.json"
VALIDATION_FILES = "validation_files.txt"
HISTORY = "history.csv"
LOSS_PLOT = "loss_curve.png"
BACKUP = "backup"
HEAD_FILE = "head.keras"

STATE = "state.json"  # in the backup: the epoch a resume continues from
VALIDATION_RESULT = "validation_result.json"

SETUP_FORMAT = 2
"""The version of ``setup.json``'s layout this code writes and reads. 1: every setup written
before the ``format`` field existed, in any of the shapes :func:`upgrade_setup` converts;
2: ``format`` recorded and every field of :class:`RunSetup` present, each in one shape."""

_MODES = ("object", "surface")  # regime.py's regimes; here so that reading a setup imports no blocks


def _method_choice(**flags) -> str:
    """```method=a`, b or c``: the methods with ``flags`` (:func:`methods.names`) as a setting
    in a message, which the command line words as ``--method a, b or c``."""
    first, *rest = methods.names(**flags)
    return methods.listing([f"`method={first}`", *rest])


def model_filename(architecture: str, batch: int) -> str:
    """File name of a run's model."""
    return f"CAE_{architecture}_b{batch}.keras"


def _safe_part(name):
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._")
    return name or "data"


def new_run_dir(
    out: storage.PathLike, class_dir: storage.PathLike, architecture: str, loss: str, now: dt.datetime | None = None
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


def _registry(module, name):
    """The names a module's registry offers (imported when a setup is checked, not with this module)."""
    import importlib

    return tuple(getattr(importlib.import_module(module), name))


_SETUP_TYPES = {  # key: (check, names it must be one of, or a description); what every later step relies on
    "architecture": (lambda v: v in settings.ARCHITECTURES, lambda: settings.ARCHITECTURES),
    "loss": (lambda v: v in settings.LOSSES, lambda: settings.LOSSES),
    "color": (lambda v: v in _registry("data", "COLOR_MODES"), lambda: _registry("data", "COLOR_MODES")),
    "size": (lambda v: storage.is_number(v) and v == int(v) and 16 <= v <= 4096, "a whole number of pixels"),
    "batch": (lambda v: storage.is_number(v) and v == int(v) and v >= 1, "a whole number >= 1"),
    "directory": (lambda v: isinstance(v, str) and v.strip() != "", "a folder path"),
}
_TRAINING_TYPES = {
    "epochs": (lambda v: storage.is_number(v) and v == int(v) and v >= 1, "a whole number >= 1"),
    "seed": (lambda v: storage.is_number(v) and v == int(v), "a whole number"),
    "lr": (lambda v: storage.is_number(v) and math.isfinite(v) and v > 0, "a number > 0"),
    "validation_files_sha256": (lambda v: isinstance(v, str), "a hash"),
    "augment": (lambda v: isinstance(v, bool), "true or false"),
    "flip": (lambda v: isinstance(v, bool), "true or false"),
}


def check_setup(setup: dict, setup_path: storage.PathLike, training: bool = False) -> dict:
    """Refuse (one line) a ``setup.json`` record (current format, :func:`upgrade_setup`) whose
    fields later steps rely on are missing or of the wrong type, e.g. after a hand edit; with
    ``training``, also the fields resuming needs."""
    fields = {**_SETUP_TYPES, **(_TRAINING_TYPES if training else {})}
    for key, (ok, expected) in fields.items():
        if key not in setup:
            raise UserError(f"{setup_path} lacks '{key}': not a setup written by train.py")
        if not ok(setup[key]):
            expected = f"one of {', '.join(expected())}" if callable(expected) else expected
            raise UserError(f"{setup_path}: '{key}' must be {expected}, got {setup[key]!r} (edited by hand?)")
    if setup.get("mode") not in _MODES:
        raise UserError(
            f"{setup_path}: 'mode' must be one of {', '.join(_MODES)}, got {setup.get('mode')!r} (edited by hand?)"
        )
    for key in ("epochs_run", "patience"):
        value = setup.get(key)
        if value is not None and not (storage.is_number(value) and value == int(value) and value >= 0):
            raise UserError(f"{setup_path}: '{key}' must be a whole number >= 0, got {value!r} (edited by hand?)")
    for key in ("replicas", "per_replica_batch", "global_batch"):  # the converter fills them for older runs
        value = setup.get(key)
        if not (storage.is_number(value) and value == int(value) and value >= 1):
            raise UserError(f"{setup_path}: '{key}' must be a whole number >= 1, got {value!r} (edited by hand?)")
    name = setup.get("model_file")
    if not (isinstance(name, str) and name.strip()):
        raise UserError(f"{setup_path}: 'model_file' must be a file name, got {name!r} (edited by hand?)")
    shape = setup.get("shape")  # older runs: the square, filled in by upgrade_setup
    whole = isinstance(shape, list) and len(shape) == 2 and all(storage.is_number(v) and v == int(v) for v in shape)
    if setup.get("mode") == "surface":  # fully convolutional: any multiple of the total stride
        ok = whole and all(16 <= v <= 8192 and v % 16 == 0 for v in shape)
        expected = "[height, width], multiples of 16"
    else:  # object runs squeeze whole images to the model's square
        ok = whole and list(shape) == [setup["size"], setup["size"]]
        expected = f"[size, size] = [{setup['size']}, {setup['size']}] for an object run"
    if not ok:
        raise UserError(f"{setup_path}: 'shape' must be {expected}, got {shape!r} (edited by hand?)")
    best = setup.get("best_val_loss")
    if best is not None and not storage.is_number(best):
        raise UserError(f"{setup_path}: 'best_val_loss' must be a number, got {best!r} (edited by hand?)")
    return setup


@dataclass
class RunSetup:
    """A run's ``setup.json`` as typed fields (:data:`SETUP_FORMAT`); what later steps read.

    :func:`read_setup` builds it from the file (older formats converted by :func:`upgrade_setup`),
    :meth:`to_record` gives back the file's JSON object. Training fills in its progress (status,
    epochs run, best epoch, the learned head) on the same object and writes it after each step.
    Fields a setup may lack (hand-made or older runs) are None; keys this code does not know
    travel in ``extra`` unchanged. The field order is the file's key order.
    """

    format: int
    directory: str
    architecture: str
    batch: int  # per replica (-b)
    loss: str
    color: str
    color_requested: str | None
    channels: int
    size: int  # model input side (surface runs: the training patch)
    mode: str  # object or surface (regime.py)
    mode_requested: str | None
    alignment: float | None
    shape: tuple  # (height, width) of whole images the model sees
    patch: int | None
    patches_per_epoch: int | None
    head_steps: int
    head: dict | None  # the learned head's record (learned.train_head), "file" always named
    precision: str
    dtype_policy: str
    jit: bool
    instances: int | None
    instances_requested: int | None
    epochs: int | None
    epochs_requested: int | None
    lr: float | None
    seed: int | None
    val_split: float | None
    patience: int | None
    augment: bool | None
    rotation: float
    denoise: float  # share of inputs with a pasted patch
    flip: bool | None
    weights: str | None
    tag: str | None
    msssim_scales: int | None
    freeze_epochs: int
    n_images: int | None
    n_train: int | None
    n_validation: int | None
    validation_files_sha256: str | None
    versions: dict | None
    command: str | None
    status: str | None  # training or done
    epochs_run: int | None
    best_val_loss: float | None
    training_seconds: float
    model_file: str
    strategy: str  # distribution.py's name asked
    strategy_class: str | None
    replicas: int
    per_replica_batch: int
    global_batch: int
    workers: int | None = None  # written only for multi-worker runs
    best_epoch: int | None = None  # written once training finished
    stopped: str | None = None  # written only when training diverged
    extra: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_record(cls, record: dict) -> RunSetup:
        """The typed view of a current-format record (:func:`upgrade_setup`'s result)."""
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {k: v for k, v in record.items() if k in known}
        if values.get("shape") is not None:
            values["shape"] = tuple(int(v) for v in values["shape"])
        return cls(**values, extra={k: v for k, v in record.items() if k not in known})

    def to_record(self) -> dict:
        """The ``setup.json`` object: every field, in order, except the ones written only
        when they apply (:data:`_WHEN_SET`) while unset, then ``extra``."""
        record = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "extra" or (f.name in _WHEN_SET and value is None):
                continue
            record[f.name] = list(value) if f.name == "shape" else value
        return {**record, **self.extra}

    @property
    def head_file(self) -> str:
        """The learned head's file name inside the run (whether or not it exists)."""
        return (self.head or {}).get("file", HEAD_FILE)

    @property
    def head_model_sha256(self) -> str | None:
        """The autoencoder the learned head was trained on (None: not recorded)."""
        return (self.head or {}).get("model_sha256")


_WHEN_SET = ("workers", "best_epoch", "stopped")
_FIELDS = tuple(f.name for f in fields(RunSetup) if f.name not in (*_WHEN_SET, "extra"))


def _chosen_mode(mode):
    """``(mode, mode asked or None)`` of a format-1 ``mode``: a name; missing (runs from before
    the two regimes: objects, then the only regime); or a ``{"requested", "chosen"}`` record."""
    if mode is None:
        return "object", "object"
    if isinstance(mode, dict):
        chosen = next((mode[k] for k in ("chosen", "resolved", "mode", "value") if k in mode), None)
        return chosen, mode.get("requested", chosen)
    return mode, None


def _from_format_1(record: dict) -> dict:
    """A format-1 setup in format 2: fields added since filled with what their absence meant
    to the code that read them, fields once written in another shape in today's shape."""
    size, batch, color = record["size"], record["batch"], record["color"]
    mode, asked = _chosen_mode(record.get("mode"))
    head, denoise = record.get("head"), record.get("denoise")
    absent = {
        **{name: None for name in _FIELDS},  # hand-made setups lack even the oldest fields
        "color_requested": color,  # before --color auto, the colour asked was the colour used
        "channels": 3 if color == "rgb" else 1,
        "mode_requested": asked,
        "head_steps": 0,  # no learned head before it existed
        "precision": "float32",
        "dtype_policy": "float32",
        "jit": False,
        "instances_requested": record.get("instances"),  # --instances had a default and was recorded as given
        "rotation": settings.DEFAULT_ROTATION,  # the fixed angle before --rotation
        "freeze_epochs": 0,
        "training_seconds": 0.0,
        "strategy": "one",  # before --strategy: one device
    }
    upgraded = {**absent, **record}
    upgraded.update(
        format=SETUP_FORMAT,
        mode=mode,
        shape=record.get("shape") or [size, size],  # object runs: the square (check_setup checks the rest)
        # --denoise was a bare flag (true: the default share) before it took a share.
        denoise=settings.DEFAULT_DENOISE if denoise is True else float(denoise) if storage.is_number(denoise) else 0.0,
        head={"file": HEAD_FILE, **head} if isinstance(head, dict) else None,  # the file named, always
        model_file=record.get("model_file") or model_filename(record["architecture"], batch),
        replicas=record.get("replicas") or 1,
        per_replica_batch=record.get("per_replica_batch") or batch,
        global_batch=record.get("global_batch") or batch,  # before --strategy, -b was the whole batch
    )
    return upgraded


def upgrade_setup(raw, path: storage.PathLike = SETUP) -> dict:
    """The current format (:data:`SETUP_FORMAT`) of the ``setup.json`` object ``raw`` read from
    ``path``, whatever older shape it was written in: the one place that knows those shapes.
    Refused with one line naming ``path``: not a JSON object, a format newer than this code, or
    a field missing (their types are :func:`check_setup`'s)."""
    if not isinstance(raw, dict):
        kind = type(raw).__name__ if raw is not None else "null"
        raise UserError(f"{path} holds {kind} instead of a JSON object: was it edited by hand?")
    version = raw.get("format", 1)
    if not (storage.is_number(version) and version == int(version) and version >= 1):
        raise UserError(f"{path}: 'format' must be a whole number >= 1, got {version!r} (edited by hand?)")
    if version > SETUP_FORMAT:
        raise UserError(
            f"{path} has format {int(version)}, newer than this version of the tool reads ({SETUP_FORMAT}): "
            "use a newer version of the tool with this run"
        )
    required = list(_SETUP_TYPES) if version < SETUP_FORMAT else [*_SETUP_TYPES, *_FIELDS]
    missing = [k for k in required if k not in raw]
    if missing:
        raise UserError(f"{path} lacks '{missing[0]}': not a setup written by train.py")
    return _from_format_1(raw) if version < SETUP_FORMAT else dict(raw)


def read_setup(run_dir: storage.PathLike, training: bool = False) -> RunSetup:
    """A run folder's ``setup.json``, read once: converted to the current format, its fields
    checked (:func:`check_setup`, ``training``: also what resuming needs), typed."""
    path = Layout(run_dir).setup
    return RunSetup.from_record(check_setup(upgrade_setup(storage.read_json(path), path), path, training))


@dataclass(frozen=True)
class Layout:
    """Every path inside a run folder, named here only: what ``train.py`` writes at its top, and
    the folder each later step writes its results into (the README's table of a run's files)."""

    dir: Path

    def __post_init__(self):
        object.__setattr__(self, "dir", Path(self.dir))

    @property
    def setup(self) -> Path:
        return self.dir / SETUP

    @property
    def validation_files(self) -> Path:
        return self.dir / VALIDATION_FILES

    @property
    def history(self) -> Path:
        return self.dir / HISTORY

    @property
    def loss_plot(self) -> Path:
        return self.dir / LOSS_PLOT

    @property
    def head(self) -> Path:
        """Where train.py writes the learned head (a run reads the one its setup names: :func:`run_head_path`)."""
        return self.dir / HEAD_FILE

    @property
    def backup(self) -> Path:
        """The last finished epoch's model and state, while a run trains (resume starts there)."""
        return self.dir / BACKUP

    @property
    def state(self) -> Path:
        return self.backup / STATE

    def validation(self, method: str, min_area: int | None = None) -> Path:
        """``validation/<method>/``, or with ``min_area`` one result's ``validation/<method>/a<AREA>/``."""
        folder = self.dir / "validation" / str(method)
        return folder if min_area is None else folder / f"a{int(min_area)}"

    def validation_result(self, method: str, min_area: int) -> Path:
        return self.validation(method, min_area) / VALIDATION_RESULT

    def test(self, method: str, min_area: int | None = None, threshold: float | None = None) -> Path:
        """``test/<method>/`` (one writer at a time), or one labelled result's
        ``test/<method>/a<AREA>_t<THRESHOLD>/`` with ``min_area`` and ``threshold``."""
        folder = self.dir / "test" / str(method)
        if min_area is None:
            return folder
        return folder / f"a{int(min_area)}_t{format_threshold(threshold)}"

    def predictions(self, method: str, name: str | None = None) -> Path:
        """``predictions/<method>/`` or one folder of unlabelled images' ``predictions/<method>/<name>/``."""
        folder = self.dir / "predictions" / str(method)
        return folder if name is None else folder / name

    def finetune(self, method: str) -> Path:
        return self.dir / "finetune" / str(method)

    @property
    def visualize(self) -> Path:
        return self.dir / "visualize"

    def export(self, fmt: str) -> Path:
        return self.dir / "export" / fmt


def model_record(path: storage.PathLike) -> dict:
    """What results store about the model they were computed on."""
    stat = Path(path).stat()
    return {"model_sha256": storage.model_id(path), "model_size": stat.st_size, "model_mtime_ns": stat.st_mtime_ns}


def run_head_path(run_dir: storage.PathLike, setup: RunSetup | None = None) -> Path:
    """Where the run's learned head lives (``setup.json``'s ``head.file``, else
    :data:`HEAD_FILE`), whether or not it exists; refused when it points outside the run."""
    if setup is None and Layout(run_dir).setup.is_file():
        setup = read_setup(run_dir)
    name = setup.head_file if setup is not None else HEAD_FILE
    return storage.inside(run_dir, name, "setup.json head file")


@dataclass
class Run:
    """A trained run folder and what it says about itself."""

    dir: Path
    setup: RunSetup
    model_path: Path
    _model: object = field(default=None, repr=False)
    _lock: object = field(default=None, repr=False)
    _head: object = field(default=None, repr=False)
    _keras_model: object = field(default=None, repr=False)

    @property
    def layout(self) -> Layout:
        """Where this run's files and results go."""
        return Layout(self.dir)

    @property
    def size(self) -> int:
        return int(self.setup.size)

    @property
    def mode(self) -> str:
        """``object`` or ``surface`` (see regime.py)."""
        return self.setup.mode

    @property
    def shape(self) -> tuple[int, int]:
        """Model input ``(height, width)`` of whole images: the square side, or a surface run's own shape."""
        return self.setup.shape

    @property
    def head_path(self) -> Path:
        """The learned residual's head (learned.py); may be missing (older runs, ``head_steps=0``)."""
        return run_head_path(self.dir, self.setup)

    def load_head(self, keras: bool = False, images: int | None = None):
        """Load (once) the segmentation head of the ``learned`` map method: a
        :class:`networks.Network` for inference, the Keras model with ``keras`` (see :meth:`load_model`)."""
        if not self.head_path.is_file():
            raise SettingError(
                f"run {self.dir} has no learned residual head ({self.head_path.name}); train a new run "
                f"with one (train.py new trains it by default), or use {_method_choice(calibrated=True)}"
            )
        trained_on = self.setup.head_model_sha256
        if trained_on and trained_on != storage.model_id(self.model_path):
            raise SettingError(
                f"the learned head {self.head_path} was trained on another autoencoder than {self.model_path.name} "
                f"(a resume stopped before the head was trained again?): run train.py resume `path={self.dir}` "
                f"for 1 more epoch to train both again, or use {_method_choice(calibrated=True)}"
            )
        if keras:
            return load_keras(self.head_path, compile=False)  # fresh: callers may change its statistics
        if self._head is None:
            self._head = networks.load(
                self.head_path, lambda: load_keras(self.head_path, compile=False), self.shape, images
            )
        return self._head

    @property
    def color(self) -> str:
        return self.setup.color

    @property
    def class_dir(self) -> Path:
        return Path(self.setup.directory)

    def method(self, method: str | None = None) -> str:
        """The residual-map method to use: the one asked for, else ``fused`` for every run with a
        learned head (train.py's default: the head's map, the loss's fixed residual and the
        training-free maps, weighed by validate.py, whatever the regime), else the loss's family
        (a plain autoencoder trained with ``head_steps=0``)."""
        if method is None and self.head_path.is_file():
            method = "fused"
        method = method or methods.default_for_loss(self.setup.loss)
        try:
            return methods.get(method).name
        except ValueError as exc:
            raise UserError(str(exc)) from None

    def validation_list(self) -> list[Path]:
        """The held-back images ``validation_files.txt`` names, resolved inside the class folder
        (refused when they point outside it), whether or not they still exist."""
        listing = self.layout.validation_files
        if not listing.is_file():
            raise UserError(f"{listing} is missing: this run has no validation list (was it made by train.py?)")
        names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        return [storage.inside(self.class_dir, p, f"{listing}: image") for p in names]

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
        """The model, loaded once and its shape checked: for inference a :class:`networks.Network`
        (its OpenVINO twin where one can be made and pays for ``images`` images, no TensorFlow
        import; else Keras), the Keras model itself with ``keras`` (safe mode, not compiled),
        e.g. to build a graph from it."""
        slot = "_keras_model" if keras else "_model"
        if getattr(self, slot) is None:
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
            record["head_sha256"] = storage.model_id(self.head_path)
        return record

    def identity(self, method: str) -> dict:
        """The files a result of ``method`` is computed from, for a result folder's marker
        (:class:`StagedOutput`): the model's hash, and the head's when ``method`` uses it."""
        identity = {"model_sha256": storage.model_id(self.model_path)}
        if methods.uses_head(method) and self.head_path.is_file():
            identity["head_sha256"] = storage.model_id(self.head_path)
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
    """``model``, or when it was trained with ``precision="mixed"`` the same network computing
    in float32: residual maps compare reconstructions more finely than bfloat16's three
    significant digits."""
    import keras

    config = keras.saving.serialize_keras_object(model)
    if "mixed_" not in json.dumps(config, default=str):
        return model
    copy = keras.saving.deserialize_keras_object(_float32_policies(config), safe_mode=True)
    copy.load_weights(path)
    return copy


def load_keras(path: storage.PathLike, compile: bool = False):
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
            "train again, e.g. with a smaller learning rate"
        )
    return model


def run_is_empty_message(run_dir: storage.PathLike) -> str:
    """Why a run without model and backup cannot be used or resumed."""
    return (
        f"run {run_dir} stopped before finishing its first epoch: it holds no model and nothing to resume; "
        f"start a new run with train.py new (this folder can be deleted)"
    )


def find_run(path: storage.PathLike) -> Run:
    """Open a run from its folder or from the model file inside it.

    Checks ``setup.json`` (one-line errors for hand-edited fields), that the model named
    in it lies inside the run, that training did not diverge, and takes the run's shared
    lock (refused while it is being trained) for as long as the returned :class:`Run` lives.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"run not found: {path}")
    run_dir = path.parent if path.is_file() else path
    setup_path = Layout(run_dir).setup
    if not setup_path.is_file():
        raise UserError(
            f"{run_dir} is not a run folder: no {SETUP} (give the folder train.py printed, or the .keras file in it)"
        )
    held = storage.RunLock(run_dir, exclusive=False)
    setup = read_setup(run_dir)
    expected = storage.inside(run_dir, setup.model_file, f"{setup_path}: model_file")
    if path.is_file() and path.suffix != ".keras":
        raise UserError(f"{path} is not a model file ({expected.name}): give the run folder or the .keras file in it")
    if path.is_file() and path.resolve() == run_head_path(run_dir, setup).resolve():
        raise SettingError(
            f"{path} is the run's learned head, not its model ({expected.name}): give the run folder or the "
            f".keras model in it (the head is used with {_method_choice(uses_head=True)})"
        )
    model_path = path if path.is_file() else expected
    best = setup.best_val_loss
    if storage.is_number(best) and not math.isfinite(best):
        raise UserError(
            f"run {run_dir} diverged (best validation loss {best}): it is never validated or tested; "
            "train again, e.g. with a smaller learning rate"
        )
    if not model_path.is_file():
        if setup.status == "training" and not Layout(run_dir).state.is_file():
            raise UserError(run_is_empty_message(run_dir))
        raise SettingError(
            f"no model in {run_dir}: {model_path.name} is missing (training unfinished? try train.py resume "
            f"`path={run_dir}`)"
        )
    return Run(dir=run_dir, setup=setup, model_path=model_path, _lock=held)


def format_threshold(value: float) -> str:
    """Threshold as it appears in folder names: fixed 6 decimals, no exponent."""
    return f"{float(value):.6f}"


def check_validation_result(result: dict, path: storage.PathLike) -> dict:
    """Refuse (one line) a hand-edited or damaged validation result."""
    problem = None
    threshold, area = result.get("threshold"), result.get("min_area")
    if not storage.is_number(threshold) or not math.isfinite(threshold) or threshold < 0:
        problem = f"threshold {threshold!r} is not a finite number >= 0"
    elif not storage.is_number(area) or area != int(area) or area < 1:
        problem = f"min_area {area!r} is not a whole number >= 1"
    else:
        for key in ("scales", "passes"):
            value = result.get(key, 1)
            if not storage.is_number(value) or value != int(value) or value < 1:
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
        return stored == storage.model_id(path)
    return record_path.stat().st_mtime_ns >= path.stat().st_mtime_ns


def find_validation_result(
    run_dir: storage.PathLike,
    method: str,
    min_area: int | None = None,
    model: storage.PathLike | None = None,
    head: storage.PathLike | None = None,
) -> dict | None:
    """The newest ``validation_result.json`` for ``method`` (and ``min_area`` if given), or None.

    With ``model`` (the run's model file), a result computed on other weights is refused
    with a request to validate again: its threshold does not fit the current model. So is,
    for a method that uses the learned head (:func:`methods.uses_head`), a result computed with
    another head than the run's ``head`` (default: the one ``setup.json`` names), e.g. after
    ``head.keras`` was replaced.
    """
    layout = Layout(run_dir)
    pattern = f"a{int(min_area)}/{VALIDATION_RESULT}" if min_area is not None else f"a*/{VALIDATION_RESULT}"
    found = sorted(layout.validation(method).glob(pattern), key=lambda p: p.stat().st_mtime)
    if not found:
        return None
    path = found[-1]
    result = check_validation_result(storage.read_json(path), path)
    if model is not None:
        again = f"run validate.py `path={run_dir}` `min_area={int(result['min_area'])}` `method={method}` again"
        if not _made_from(result, "model_sha256", Path(model), path):
            raise SettingError(
                f"{path} was computed on other weights (the model changed since, e.g. by train.py resume): {again}"
            )
        setup = read_setup(run_dir) if layout.setup.is_file() else None
        head = Path(head) if head is not None else run_head_path(run_dir, setup)
        if methods.uses_head(method) and head.is_file() and not _made_from(result, "head_sha256", head, path):
            raise SettingError(
                f"{path} was computed with another learned head ({head.name} changed since): its threshold "
                f"does not fit the current head; {again}"
            )
        shape = setup.shape if setup is not None else None
        if result.get("shape") and shape and list(result["shape"]) != list(shape):
            raise SettingError(
                f"{path} was computed at image shape {result['shape']}, but setup.json now says {shape} "
                f"(edited?): its threshold does not fit; {again}"
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
        choices=tuple(methods.METHODS),
        default=None,
        help=f"residual map: {methods.listing([f'{m.name} ({m.help})' for m in methods.METHODS.values()])}; "
        "default: fused for runs with a learned head (train.py's default), else the training loss's family",
    )
    parser.add_argument("--batch", type=int, default=settings.BATCH, help="images per inference batch")
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
        f"2 = also at half size (default for validate.py: {settings.DEFAULT_SCALES}; test.py follows the "
        "validation result)",
    )
    parser.add_argument(
        "--passes",
        type=int,
        default=None,
        help="reconstructions per image: each later pass repaints what the map so far finds with the previous "
        "reconstruction, reconstructs again, and keeps the pixel-wise minimum of the maps, which cuts the "
        "false alarms around defects; 1 = one plain reconstruction (default for validate.py: "
        f"{settings.DEFAULT_PASSES}; test.py follows the validation result)",
    )
    return parser
