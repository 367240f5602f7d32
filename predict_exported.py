"""Run an exported CAE detector on image files, without the repository that trained it.

    python predict_exported.py DETECTOR_FOLDER IMAGE_OR_FOLDER... [--out OUT]

DETECTOR_FOLDER is what ``export.py`` wrote: ``detector.json`` plus ``saved_model/``,
``detector.onnx`` or ``detector.tflite``. Needs NumPy, OpenCV and the runtime of that
format only (tensorflow; onnxruntime; tensorflow or ai-edge-litert). Prints one CSV line
per image (path, verdict, score, largest region, regions) and with ``--out`` writes
``predictions.csv`` and a mask PNG per image there.

The artefact computes the anomaly map and the raw residual map; this file adds what the
artefact cannot express: the regions (8-connected) of at least the minimum area above the
threshold of ``detector.json``, the score (the highest threshold at which the image still has
such a region, divided by the threshold: above 1 means defective, test.py's score) and
bringing the mask back to the image's size.

In your own program::

    from predict_exported import Detector, read_image
    detector = Detector("export/onnx")
    result = detector.predict(read_image("part.png", detector.color))
    result["defective"], result["score"], result["mask"], result["anomaly_map"]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import secrets
import shutil
import signal
import sys
import time
from pathlib import Path

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as the repository's scripts
_SIGINT_SEEN = False  # set once Ctrl-C reached main


def _raise_interrupt(signum, frame) -> None:
    global _SIGINT_SEEN
    _SIGINT_SEEN = True
    raise KeyboardInterrupt


def _stop(signum=None, frame=None) -> None:
    """SIGINT outside :func:`main` (while NumPy and OpenCV load, or after main): one line and
    exit code 130 at once, no traceback; nothing has been written yet, or all is committed."""
    try:
        sys.stdout.flush()
    except Exception:  # noqa: BLE001 - interrupted inside a write, or closed
        pass
    try:
        os.write(2, b"predict_exported: interrupted\n")
    finally:
        os._exit(EXIT_INTERRUPTED)


if __name__ == "__main__" and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, _stop)  # not when ignored (started in the background)

import cv2  # noqa: E402
import numpy as np  # noqa: E402

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def to_uint8(array: np.ndarray, path="image") -> np.ndarray:
    """Pixel values of any depth as 8 bits: the rule of the training code's ``data.to_uint8``,
    copied so that this file needs no other (tests/test_predict_exported_inputs.py checks
    that both give the same arrays):

    - float (e.g. a float32 TIFF): values in [0, 1] are scaled by 255, in [0, 255] kept,
      larger ones scaled from 16 bits; rounded; NaN or infinity refused (ValueError);
    - one-channel 16/32-bit integers: scaled from 16 bits when any value exceeds 255, else
      kept (an 8-bit image stored in 16 bits); truncated;
    - several-channel 16-bit integers: the high byte (as Pillow reads 16-bit colour PNGs);
    - negative values become 0, values above the range 255.
    """
    array = np.asarray(array)
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if array.dtype.kind == "f":
        values = array.astype(np.float64)
        if not np.isfinite(values).all():
            raise ValueError(f"cannot read image {path}: it holds NaN or infinite pixel values")
        top = values.max(initial=0.0)
        scale = 255.0 if top <= 1.0 else 1.0 if top <= 255.0 else 255.0 / 65535.0
        return np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)
    if array.dtype.kind not in "ui":
        raise ValueError(f"cannot read image {path}: pixel type {array.dtype} is not supported")
    if array.ndim == 3 and array.shape[-1] > 1 and array.dtype == np.uint16:
        return (array >> 8).astype(np.uint8)
    values = array.astype(np.float64)
    top = 65535.0 if values.max(initial=0.0) > 255 else 255.0
    return np.clip(values / top * 255.0, 0, 255).astype(np.uint8)


def _decode(path: Path) -> np.ndarray:
    """The file's pixels as stored, H×W or H×W×C in RGB(A) order: OpenCV, and for TIFFs
    OpenCV cannot read tifffile when it is installed. ValueError with the reason otherwise."""
    if not path.exists():
        reason = "a broken symbolic link" if path.is_symlink() else "no such file"
        raise ValueError(f"cannot read image {path}: {reason}")
    if not os.access(path, os.R_OK):
        raise ValueError(f"cannot read image {path}: permission denied")
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is not None:
        if image.ndim == 3 and image.shape[2] >= 3:
            image = image[..., [2, 1, 0, *range(3, image.shape[2])]]  # BGR(A) -> RGB(A)
        return image
    if path.suffix.lower() in (".tif", ".tiff"):
        try:
            import tifffile

            image = tifffile.imread(path)
        except Exception:  # noqa: BLE001 - not installed, or it cannot read the file either
            image = None
        if image is not None:
            image = np.asarray(image)
            if image.ndim == 3 and image.shape[0] in (1, 3, 4) and image.shape[-1] not in (1, 2, 3, 4):
                image = np.moveaxis(image, 0, -1)  # planar TIFF
            return image
    raise ValueError(f"cannot read image {path}: not an image OpenCV can decode")


def read_image(path: str | Path, color: str) -> np.ndarray:
    """An image file as uint8 H×W×C in the detector's colour mode, read as the training code
    reads it (``data.load_image``): floats in [0, 1] (e.g. float32 TIFFs), 16- and 32-bit
    images by :func:`to_uint8`; palette images by their colours; alpha dropped (a
    second channel of two, a fourth of four); grayscale converted as Pillow does
    (L = (19595 R + 38470 G + 7471 B + 2^15) >> 16). ValueError, one line, when it cannot."""
    image = _decode(Path(path))
    if image.ndim == 3 and image.shape[2] in (1, 2):
        image = image[..., 0]
    elif image.ndim == 3 and image.shape[2] == 4:
        image = image[..., :3]
    if image.ndim != 2 and not (image.ndim == 3 and image.shape[2] == 3):
        raise ValueError(f"cannot read image {path}: pixel array of shape {image.shape} is not one image")
    image = to_uint8(image, path)
    if image.ndim == 2:
        image = image[..., None]
    if color == "rgb":
        return np.ascontiguousarray(np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image)
    if image.shape[2] == 1:
        return np.ascontiguousarray(image)
    rgb = image.astype(np.uint32)
    gray = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16
    return gray.astype(np.uint8)[..., None]


# ---- Pillow's resampling in NumPy (for formats that cannot resize inside, e.g. TFLite) ----


def _coefficients(in_size, out_size, name):
    """Pillow's precompute_coeffs (Resample.c) in float64: out_size×in_size weights."""
    support = {"box": 0.5, "bilinear": 1.0, "bicubic": 2.0}[name]
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    center = (np.arange(out_size) + 0.5) * scale
    xmin = np.maximum(np.floor(center - support * filterscale + 0.5), 0)[:, None]
    xmax = np.minimum(np.floor(center + support * filterscale + 0.5), in_size)[:, None]
    j = np.arange(in_size, dtype=np.float64)[None, :]
    t = (j - center[:, None] + 0.5) * (1.0 / filterscale)
    x = np.abs(t)
    if name == "box":
        w = ((t > -0.5) & (t <= 0.5)).astype(np.float64)
    elif name == "bilinear":
        w = np.where(x < 1.0, 1.0 - x, 0.0)
    else:
        a = -0.5
        w = np.where(
            x < 1.0, ((a + 2.0) * x - (a + 3.0)) * x * x + 1, np.where(x < 2.0, (((x - 5) * x + 8) * x - 4) * a, 0.0)
        )
    w = np.where((j >= xmin) & (j < xmax), w, 0.0)
    total = w.sum(axis=1, keepdims=True)
    return np.divide(w, total, out=w.copy(), where=total != 0)


def resize_uint8(image: np.ndarray, size) -> np.ndarray:
    """uint8 H×W×C → height×width×C (``size``: a square side or ``(height, width)``) exactly
    as Pillow (box filter when shrinking both sides, else bicubic; 22-bit fixed point; the
    intermediate image rounded to uint8)."""
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    name = "box" if h >= height and w >= width else "bicubic"

    def fixed(n, out):
        k = _coefficients(n, out, name) * (1 << 22)
        return np.where(k < 0, np.ceil(k - 0.5), np.floor(k + 0.5)).astype(np.int64)

    def across(p, kk):
        return np.clip((np.einsum("hwc,ow->hoc", p, kk) + (1 << 21)) >> 22, 0, 255)

    def down(p, kk):
        return np.clip((np.einsum("hwc,oh->owc", p, kk) + (1 << 21)) >> 22, 0, 255)

    p = image.astype(np.int64)
    kw, kh = fixed(w, width), fixed(h, height)
    # Pillow runs the vertical pass first when the height shrinks much more than the width.
    out = across(down(p, kh), kw) if (h - height) > 2 * max(w - width, 0) else down(across(p, kw), kh)
    return out.astype(np.uint8)


def resize_float(maps: np.ndarray, width: int, height: int) -> np.ndarray:
    """N×h×w float32 maps → N×height×width as Pillow's bilinear resize of 'F' images."""
    if maps.shape[1:] == (height, width):
        return maps
    kw = _coefficients(maps.shape[2], width, "bilinear")
    kh = _coefficients(maps.shape[1], height, "bilinear")
    across = np.einsum("nhw,ow->nho", maps.astype(np.float64), kw).astype(np.float32)
    return np.einsum("nhw,oh->now", across.astype(np.float64), kh).astype(np.float32)


def resize_nearest(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """Nearest-neighbour resize as Pillow does it (source = floor((x + 0.5) · scale), the
    positions accumulated in double precision as Pillow's ImagingScaleAffine)."""

    def positions(n_out, n_in):
        step = n_in / n_out
        steps = np.full(n_out, step)
        steps[0] = step * 0.5
        return np.minimum(np.cumsum(steps).astype(np.int64), n_in - 1)

    return mask[positions(height, mask.shape[0])][:, positions(width, mask.shape[1])]


def min_area_filter(defect_pixels: np.ndarray, min_area: int) -> tuple[np.ndarray, int, int]:
    """Keep the 8-connected regions of at least ``min_area`` pixels.

    Returns ``(mask, largest area, number of regions)``.
    """
    count, labels, stats, _ = cv2.connectedComponentsWithStats(defect_pixels.astype(np.uint8), connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = np.concatenate([[False], areas >= min_area])
    return keep[labels], int(areas.max()) if areas.size else 0, int(count - 1)


def area_peak(residual_map: np.ndarray, min_area: int) -> float:
    """The highest threshold at which ``residual_map`` still holds an 8-connected region of
    ``min_area`` pixels (as the suite's ``resmaps.area_peaks``): a binary search over the map's
    own values, the largest region shrinking as the threshold rises."""
    values = np.unique(residual_map)
    lo, hi = 0, len(values) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if min_area_filter(residual_map > values[mid], min_area)[1] < min_area:
            hi = mid
        else:
            lo = mid + 1
    return float(values[lo])


_REQUIRED = ("format", "artefact", "input", "threshold", "min_area")


def _read_metadata(path: Path) -> dict:
    """detector.json as a dict, with a one-line ValueError naming the file when it is not
    valid JSON, not an object, or lacks a key this script needs (edited by hand?)."""
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}): export the run again") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path} holds {type(meta).__name__} instead of a JSON object: export the run again")
    missing = [key for key in _REQUIRED if key not in meta]
    if missing:
        raise ValueError(f"{path} lacks {missing[0]!r}: not a detector.json written by export.py")
    return meta


def _checked_numbers(meta: dict, where: Path) -> tuple[float, int]:
    """detector.json's threshold (a finite number >= 0) and minimum area (a whole number >= 1),
    or a one-line ValueError (e.g. after a hand edit to null, text or NaN)."""
    threshold, area = meta.get("threshold"), meta.get("min_area")
    number = isinstance(threshold, (int, float)) and not isinstance(threshold, bool)
    if not (number and math.isfinite(threshold) and threshold >= 0):
        raise ValueError(f"{where}: threshold must be a finite number >= 0, got {threshold!r} (edited by hand?)")
    if isinstance(area, bool) or not isinstance(area, (int, float)) or area != int(area) or area < 1:
        raise ValueError(f"{where}: min_area must be a whole number >= 1, got {area!r} (edited by hand?)")
    return float(threshold), int(area)


def _load_artefact(load, artefact: Path):
    """``load(path)`` of the artefact, with a one-line ValueError when its runtime cannot read it."""
    try:
        return load(str(artefact))
    except Exception as exc:  # noqa: BLE001 - each runtime raises its own types for a damaged file
        first = (str(exc).strip().splitlines() or [""])[-1][:160]
        raise ValueError(
            f"{artefact} is damaged or truncated ({exc.__class__.__name__}: {first}): export the run again"
        ) from None


class Detector:
    """An exported detector folder, loaded in the runtime its format needs."""

    def __init__(self, folder: str | Path, metadata: dict | None = None) -> None:
        self.folder = Path(folder)
        self.meta = metadata or _read_metadata(self.folder / "detector.json")
        self.color = self.meta["input"]["color"] if isinstance(self.meta.get("input"), dict) else None
        self.threshold, self.min_area = _checked_numbers(self.meta, self.folder / "detector.json")
        if self.color not in ("grayscale", "rgb"):
            raise ValueError(
                f"{self.folder / 'detector.json'}: input color must be grayscale or rgb, got {self.color!r}"
            )
        artefact = self.folder / self.meta["artefact"]
        fmt = self.meta["format"]
        if not artefact.exists():
            raise ValueError(f"{artefact} is missing: export the run again")
        recorded = self.meta.get("artefact_sha256")  # export.py records it; older exports do not
        if recorded and artefact.is_file() and hashlib.sha256(artefact.read_bytes()).hexdigest() != recorded:
            raise ValueError(
                f"{artefact} is not the artefact {self.folder / 'detector.json'} was exported with (its SHA-256 "
                "differs: another export's, or changed since): export the run again"
            )
        if fmt == "saved_model":
            import tensorflow as tf

            self._serve = _load_artefact(tf.saved_model.load, artefact).signatures["serving_default"]
            self._run = lambda batch: {k: v.numpy() for k, v in self._serve(images=tf.constant(batch)).items()}
            self.runtime = f"tensorflow {tf.__version__}"
        elif fmt == "onnx":
            import onnxruntime as ort

            session = _load_artefact(lambda p: ort.InferenceSession(p, providers=["CPUExecutionProvider"]), artefact)
            channels = session.get_inputs()[0].shape[-1]
            if isinstance(channels, int) and channels != (3 if self.color == "rgb" else 1):
                raise ValueError(
                    f"{self.folder / 'detector.json'} says input color {self.color!r}, but {artefact.name} takes "
                    f"{channels} channel(s): detector.json edited, or the artefact of another export"
                )
            names = [o.name for o in session.get_outputs()]
            self._run = lambda batch: dict(zip(names, session.run(names, {session.get_inputs()[0].name: batch})))
            self.runtime = f"onnxruntime {ort.__version__}"
        elif fmt == "tflite":
            try:
                from ai_edge_litert.interpreter import Interpreter

                self.runtime = "ai-edge-litert"
            except ImportError:
                import warnings

                import tensorflow as tf

                warnings.filterwarnings(
                    "ignore", message=".*tf.lite.Interpreter is deprecated"
                )  # still works in TF 2.21
                Interpreter = tf.lite.Interpreter
                self.runtime = f"tensorflow.lite {tf.__version__}"
            interpreter = _load_artefact(lambda p: Interpreter(model_path=p), artefact)
            runner = interpreter.get_signature_runner()
            self._run = lambda batch: runner(images=batch)
        else:
            raise ValueError(f"unknown format {fmt!r} in {self.folder / 'detector.json'}")

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """The artefact's raw outputs for a uint8 N×H×W×C batch (one image size per batch).

        An artefact that cannot resize (``resize_inside`` false in detector.json) gets the
        batch resized here, and its anomaly map brought back here, both as Pillow does.
        """
        batch = np.ascontiguousarray(batch, dtype=np.uint8)
        if self.meta.get("resize_inside", True):
            return {k: np.asarray(v) for k, v in self._run(batch).items()}
        size = self.meta.get("shape") or int(self.meta["size"])  # (height, width); older exports: square
        small = np.stack([resize_uint8(image, size) for image in batch])
        out = {k: np.asarray(v) for k, v in self._run(small).items()}
        out["anomaly_map"] = resize_float(out["anomaly_map"], batch.shape[2], batch.shape[1])
        return out

    def predict(self, image: np.ndarray) -> dict:
        """Verdict, score, anomaly map and defect mask (at the image's size) for one uint8 H×W×C image."""
        out = self.run(image[None])
        raw = out["residual_map"][0]
        mask, largest, regions = min_area_filter(raw > self.threshold, self.min_area)
        return {
            "defective": largest >= self.min_area,
            "score": area_peak(raw, self.min_area) / max(self.threshold, 1e-12),
            "largest_area": largest,
            "n_regions": regions,
            "anomaly_map": out["anomaly_map"][0],
            "mask": resize_nearest(mask, image.shape[1], image.shape[0]),
        }


MARKER = ".predict_exported.json"  # marks an --out folder this script wrote (and may write again)


class OutputError(ValueError):
    """An --out folder that must not be written (one line, nothing written)."""


def _overlaps(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def _check_out(out: Path, items, detector_folder: Path) -> dict:
    """Refuse an --out that is, holds or lies in an input folder (a rerun would score its own
    masks), that is the folder of an input file, that overlaps the detector, or that exists
    and is not this script's output for the same detector and inputs (a user's folder, or
    another prediction: never overwritten). Returns the marker the output gets."""
    real = Path(os.path.realpath(out))
    inputs = sorted(os.path.realpath(i) for i in items)
    for item in map(Path, inputs):
        if item.is_dir() and _overlaps(real, item):
            raise OutputError(f"--out {out} overlaps the input folder {item}: choose a folder outside it")
        if not item.is_dir() and real == item.parent:
            raise OutputError(f"--out {out} is the folder of the input {item}: choose another folder")
    if _overlaps(real, Path(os.path.realpath(detector_folder))):
        raise OutputError(f"--out {out} overlaps the detector folder {detector_folder}: choose another folder")
    marker = {"tool": "predict_exported", "detector": os.path.realpath(detector_folder), "inputs": inputs}
    if out.exists() or out.is_symlink():
        try:
            existing = json.loads((out / MARKER).read_text()) if out.is_dir() else None
        except (OSError, ValueError):
            existing = None
        if existing is None:
            raise OutputError(
                f"--out {out} exists and is not an output of predict_exported.py: choose a new folder "
                "(nothing was written or deleted)"
            )
        if existing != marker:
            raise OutputError(
                f"--out {out} holds predictions of another detector or other images: choose a new folder "
                "(nothing was written or deleted)"
            )
    return marker


def predict_files(detector: Detector, items, out: str | Path | None = None) -> list[dict]:
    """Predict every image of ``items`` (files, folders searched recursively); print a CSV line
    each; with ``out`` write ``predictions.csv`` and a mask PNG per image there, all or nothing:
    into a hidden folder beside ``out``, renamed into place at the end (see :func:`_check_out`
    for the folders refused before any work). Returns the rows."""
    final = Path(out) if out else None
    staged = None
    if final is not None:
        marker = _check_out(final, items, detector.folder)
        staged = final.parent / f".{final.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            staged.mkdir(parents=True)
        except OSError as exc:
            raise OutputError(f"cannot write --out {final}: {exc.strerror or exc}") from None
    rows, used = [], set()
    try:
        for path in _image_files(items):
            try:
                result = detector.predict(read_image(path, detector.color))
            except ValueError as exc:
                print(f"predict_exported: warning: {exc}", file=sys.stderr)
                continue
            row = {
                "path": str(path),
                "verdict": "defective" if result["defective"] else "good",
                "score": result["score"],
                "largest_area": result["largest_area"],
                "n_regions": result["n_regions"],
            }
            if final is not None:
                name = (
                    path.stem if path.stem not in used else "_".join(path.with_suffix("").parts[-3:])
                )  # same stems elsewhere
                used.add(name)
                row["mask"] = str(final / f"{name}_mask.png")
                cv2.imwrite(str(staged / f"{name}_mask.png"), result["mask"].astype(np.uint8) * 255)
            rows.append(row)
            print(",".join(str(v) for v in row.values()), flush=True)
        if final is not None and rows:
            with open(staged / "predictions.csv", "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
            (staged / MARKER).write_text(json.dumps(marker) + "\n")
            old = final.parent / f".{final.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
            if final.exists():
                os.replace(final, old)  # this script's own earlier output for the same inputs
            os.replace(staged, final)
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if staged is not None and staged.exists():
            shutil.rmtree(staged, ignore_errors=True)
    return rows


def _warn(message: str) -> None:
    print(f"predict_exported: warning: {message}", file=sys.stderr, flush=True)


def _image_files(items):
    """The files given, and the image files in the folders given (recursively, sorted), as
    the training code lists a folder (``data.list_images``): nothing skipped without a note,
    broken symbolic links and other files one each, hidden files (a name, or a folder below
    the one given, starting with a dot) one for all."""
    for item in map(Path, items):
        if not item.is_dir():
            yield item  # a file named on the command line is read, or refused with its reason
            continue
        hidden = []
        for path in sorted(item.rglob("*")):
            if any(part.startswith(".") for part in path.relative_to(item).parts):
                if not path.is_dir():
                    hidden.append(path)
                continue
            if path.is_symlink() and not path.exists():
                _warn(f"skipping {path}: a broken symbolic link (its target {os.readlink(path)} does not exist)")
                continue
            if not path.is_file():
                continue
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                yield path
            else:
                _warn(f"skipping {path}: not an image file (supported: {', '.join(IMAGE_EXTENSIONS)})")
        if hidden:
            _warn(
                f"skipping {len(hidden)} hidden file(s) under {item} (names or folders starting with '.'), "
                f"e.g. {hidden[0].relative_to(item)}"
            )


def get_parser() -> argparse.ArgumentParser:
    """Command-line options of ``predict_exported.py``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("detector", help="folder written by export.py")
    parser.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    parser.add_argument(
        "--out", default=None, help="folder for predictions.csv and <name>_mask.png files (default: print only)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Predict every image given; print CSV lines; with --out write predictions.csv and masks."""
    args = get_parser().parse_args(argv)  # before any runtime is imported: --help and typos answer at once
    started = time.perf_counter()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up lines, for SavedModel/TFLite
    try:
        detector = Detector(args.detector)
    except (OSError, KeyError, ValueError) as exc:
        if _SIGINT_SEEN:  # a runtime turned the KeyboardInterrupt into its own error
            raise KeyboardInterrupt from None
        print(f"predict_exported: error: cannot load detector {args.detector}: {exc}", file=sys.stderr)
        return 2
    try:
        rows = predict_files(detector, args.images, args.out)
    except OutputError as exc:
        print(f"predict_exported: error: {exc}", file=sys.stderr)
        return 2
    if not rows:
        print(
            "predict_exported: error: no image could be read (see the warnings above); nothing written", file=sys.stderr
        )
        return 2
    print(f"done in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    return 0


def _run_as_script() -> int:
    """:func:`main` with Ctrl-C as one line and exit code 130: a KeyboardInterrupt inside main
    (staged output removed on the way out), :func:`_stop` before and after it."""
    ours = signal.getsignal(signal.SIGINT) is _stop
    try:
        try:
            if ours:
                signal.signal(signal.SIGINT, _raise_interrupt)
            try:
                return main()
            finally:
                if ours:
                    signal.signal(signal.SIGINT, _stop)
        except Exception:
            if _SIGINT_SEEN:  # e.g. onnxruntime's import: "ImportError: initialization failed"
                raise KeyboardInterrupt from None
            raise
    except KeyboardInterrupt:
        if ours:  # main has cleaned up; Python's shutdown beside an import cut short can abort
            _stop()
        print("predict_exported: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(_run_as_script())
