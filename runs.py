"""The run folder: where it goes, what it holds, and how later steps find it.

``saved_models/<dataset>/<class>/<architecture>/<LOSS>/<YYYY-MM-DD_HH-MM-SS>/`` holds
the model ``CAE_<architecture>_b<batch>.keras``, ``setup.json``, ``history.csv``, the
loss curve, ``validation_files.txt``; ``validate.py``, ``test.py`` and ``finetune.py``
add their own sub-folders. A run can be moved as one folder.
"""
import datetime as dt
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from utils import UserError

SETUP = "setup.json"
VALIDATION_FILES = "validation_files.txt"
HISTORY = "history.csv"
LOSS_PLOT = "loss_curve.png"
BACKUP = "backup"
METHODS = ("ssim", "l2")


def model_filename(architecture, batch):
    """File name of a run's model."""
    return f"CAE_{architecture}_b{batch}.keras"


def _safe_part(name):
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._")
    return name or "data"


def new_run_dir(out, class_dir, architecture, loss, now=None):
    """Create and return a fresh run folder under ``out``.

    Only the class folder's last two names (dataset, class) are used, so an absolute
    ``-d`` never makes a run write outside ``out``; a suffix is added if two runs start
    in the same second.
    """
    class_dir = Path(class_dir).resolve()
    dataset, klass = _safe_part(class_dir.parent.name), _safe_part(class_dir.name)
    stamp = (now or dt.datetime.now()).strftime("%Y-%m-%d_%H-%M-%S")
    base = Path(out) / dataset / klass / architecture / loss.upper()
    base.mkdir(parents=True, exist_ok=True)
    for i in range(1000):
        run = base / (stamp if i == 0 else f"{stamp}_{i}")
        try:
            run.mkdir()
            return run
        except FileExistsError:
            continue
    raise UserError(f"cannot create a run folder under {base}")


def write_json(path, data):
    """Write JSON atomically (temp file + rename), so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def read_json(path):
    """Read a JSON file, with a one-line error when it is missing or broken."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"file not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON: {exc}") from None


def default_method(loss):
    """Residual-map family of a training loss: ssim/mssim → ssim, l2/mse → l2."""
    return "ssim" if loss in ("ssim", "mssim") else "l2"


@dataclass
class Run:
    """A trained run folder and what it says about itself."""

    dir: Path
    setup: dict
    model_path: Path
    _model: object = field(default=None, repr=False)

    @property
    def size(self):
        return int(self.setup["size"])

    @property
    def color(self):
        return self.setup["color"]

    @property
    def class_dir(self):
        return Path(self.setup["directory"])

    def method(self, method=None):
        """The residual-map method to use: the one asked for, else the loss's family."""
        method = method or default_method(self.setup["loss"])
        if method not in METHODS:
            raise UserError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        return method

    def validation_paths(self):
        """The held-back validation images, as absolute paths."""
        listing = self.dir / VALIDATION_FILES
        if not listing.is_file():
            raise UserError(f"{listing} is missing: this run has no validation list (was it made by train.py?)")
        names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        paths = [p if Path(p).is_absolute() else self.class_dir / p for p in names]
        missing = [str(p) for p in paths if not Path(p).is_file()]
        if missing:
            raise UserError(f"{len(missing)} validation image(s) not found, e.g. {missing[0]} (was the dataset moved?)")
        return [Path(p) for p in paths]

    def load_model(self):
        """Load the model once (safe mode, no compile needed for inference) and check its shape."""
        if self._model is None:
            import keras

            import custom_loss_functions  # noqa: F401  (registers the losses)

            try:
                model = keras.models.load_model(self.model_path, compile=False)
            except Exception as exc:  # noqa: BLE001 - any loading failure is the user's file
                raise UserError(f"cannot load model {self.model_path}: {exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}") from None
            expected = (self.size, self.size, 3 if self.color == "rgb" else 1)
            if tuple(model.input_shape[1:]) != expected:
                raise UserError(
                    f"model {self.model_path} takes {model.input_shape[1:]} but setup.json says {expected} "
                    f"(size {self.size}, {self.color})"
                )
            self._model = model
        return self._model

    def subdir(self, *parts):
        """A folder inside the run (not created)."""
        return self.dir.joinpath(*parts)


def find_run(path, need_model=True):
    """Open a run from its folder or from the model file inside it."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"run not found: {path}")
    run_dir = path.parent if path.is_file() else path
    setup_path = run_dir / SETUP
    if not setup_path.is_file():
        raise UserError(f"{run_dir} is not a run folder: no {SETUP} (give the folder train.py printed, or the .keras file in it)")
    setup = read_json(setup_path)
    for key in ("architecture", "batch", "size", "color", "loss", "directory"):
        if key not in setup:
            raise UserError(f"{setup_path} lacks '{key}': not a setup written by train.py")
    model_path = path if path.is_file() else run_dir / model_filename(setup["architecture"], setup["batch"])
    if need_model and not model_path.is_file():
        raise UserError(f"no model in {run_dir}: {model_path.name} is missing (training unfinished? try train.py resume -p {run_dir})")
    return Run(dir=run_dir, setup=setup, model_path=model_path)


def remove_tree(path):
    """Remove a folder this program created (used to undo a half-written output)."""
    shutil.rmtree(path, ignore_errors=True)


def format_threshold(value):
    """Threshold as it appears in folder names: fixed 6 decimals, no exponent."""
    return f"{float(value):.6f}"


class StagedOutput:
    """Write an output folder completely or not at all.

    Files go into a hidden sibling ``.<name>.partial``; on success it replaces ``final``
    (an older result of the same name is swapped out only then), on any error it is
    deleted, so a failed step never leaves half a folder nor destroys a previous result.
    """

    def __init__(self, final):
        self.final = Path(final)
        self.partial = self.final.parent / f".{self.final.name}.partial"

    def __enter__(self):
        remove_tree(self.partial)
        self.partial.mkdir(parents=True)
        return self.partial

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            remove_tree(self.partial)
            return False
        old = self.final.parent / f".{self.final.name}.old"
        remove_tree(old)
        if self.final.exists():
            os.replace(self.final, old)
        os.replace(self.partial, self.final)
        remove_tree(old)
        return False


def validation_dir(run_dir, method, min_area):
    """Folder of a validation result: ``RUN/validation/<method>/a<MIN_AREA>/``."""
    return Path(run_dir) / "validation" / method / f"a{int(min_area)}"


def find_validation_result(run_dir, method, min_area=None):
    """The newest ``validation_result.json`` for ``method`` (and ``min_area`` if given), or None."""
    root = Path(run_dir) / "validation" / method
    pattern = f"a{int(min_area)}/validation_result.json" if min_area is not None else "a*/validation_result.json"
    found = sorted(root.glob(pattern), key=lambda p: p.stat().st_mtime)
    return read_json(found[-1]) if found else None


def add_run_arguments(parser, method_help="residual map: ssim (1 - SSIM map) or l2 (squared difference); default: the training loss's family"):
    """The options every post-training script shares: ``-p``, ``--method``, ``--batch``,
    ``--no-baseline``, ``--scales``, ``--passes``."""
    parser.add_argument("-p", "--path", required=True, help="run folder written by train.py (or the .keras model inside it)")
    parser.add_argument("--method", choices=METHODS, default=None, help=method_help)
    parser.add_argument("--batch", type=int, default=16, help="images per inference batch")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false", default=None,
                        help="use the raw residual map; by default the usual residual of the training images (per-pixel upper quartile) "
                             "(places that are always hard to reconstruct) is subtracted first")
    parser.add_argument("--scales", type=int, default=None,
                        help="average the residual map over this many image scales: 1 = full size only, "
                             "2 = also at half size (the default for validate.py; test.py follows the validation result)")
    parser.add_argument("--passes", type=int, default=None,
                        help="reconstructions per image: each later pass repaints what the map so far finds with the previous "
                             "reconstruction, reconstructs again, and keeps the pixel-wise minimum of the maps, which cuts the "
                             "false alarms around defects; 1 = one plain reconstruction (default for validate.py: "
                             "4; test.py follows the validation result)")
    return parser
