"""Run an exported CAE detector on image files, without the repository that trained it.

    python predict_exported.py DETECTOR_FOLDER IMAGE_OR_FOLDER... [--out OUT]

DETECTOR_FOLDER is what ``export.py`` wrote: ``detector.json`` plus ``saved_model/``,
``detector.onnx`` or ``detector.tflite``. Needs NumPy, OpenCV and the runtime of that
format only (tensorflow; onnxruntime; tensorflow or ai-edge-litert). Prints one CSV line
per image (path, verdict, score, largest region, regions) and with ``--out`` writes
``predictions.csv`` and a mask PNG per image there.

The artefact computes the anomaly map, the score and the pixels above the validated
threshold; this file adds what the artefact cannot express: the minimum-area filter
(8-connected regions) and bringing the mask back to the image's size.

In your own program::

    from predict_exported import Detector, read_image
    detector = Detector("export/onnx")
    result = detector.predict(read_image("part.png", detector.color))
    result["defective"], result["score"], result["mask"], result["anomaly_map"]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def read_image(path: str | Path, color: str) -> np.ndarray:
    """An image file as uint8 H×W×C in the detector's colour mode, converted as Pillow does
    (grayscale: L = (19595 R + 38470 G + 7471 B + 2^15) >> 16; alpha dropped)."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f"cannot read image {path}")
    if image.dtype == np.uint16:
        if image.ndim == 2:  # 16-bit grayscale: scaled to 8 bits as the training code does
            top = 65535.0 if image.max() > 255 else 255.0
            image = np.clip(image.astype(np.float64) / top * 255.0, 0, 255).astype(np.uint8)
        else:
            image = (image >> 8).astype(np.uint8)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[2] >= 3:
        image = image[..., 2::-1]  # BGR(A) -> RGB, alpha dropped
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


def resize_uint8(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 H×W×C → size×size×C exactly as Pillow (box filter when shrinking both sides,
    else bicubic; 22-bit fixed point; the intermediate image rounded to uint8)."""
    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return image
    name = "box" if h >= size and w >= size else "bicubic"

    def fixed(n):
        k = _coefficients(n, size, name) * (1 << 22)
        return np.where(k < 0, np.ceil(k - 0.5), np.floor(k + 0.5)).astype(np.int64)

    def across(p, kk):
        return np.clip((np.einsum("hwc,ow->hoc", p, kk) + (1 << 21)) >> 22, 0, 255)

    def down(p, kk):
        return np.clip((np.einsum("hwc,oh->owc", p, kk) + (1 << 21)) >> 22, 0, 255)

    p = image.astype(np.int64)
    kw, kh = fixed(w), fixed(h)
    # Pillow runs the vertical pass first when the height shrinks much more than the width.
    out = across(down(p, kh), kw) if (h - size) > 2 * max(w - size, 0) else down(across(p, kw), kh)
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


class Detector:
    """An exported detector folder, loaded in the runtime its format needs."""

    def __init__(self, folder: str | Path, metadata: dict | None = None) -> None:
        self.folder = Path(folder)
        self.meta = metadata or json.loads((self.folder / "detector.json").read_text())
        self.color = self.meta["input"]["color"]
        self.threshold, self.min_area = float(self.meta["threshold"]), int(self.meta["min_area"])
        artefact = self.folder / self.meta["artefact"]
        fmt = self.meta["format"]
        if fmt == "saved_model":
            import tensorflow as tf

            self._serve = tf.saved_model.load(str(artefact)).signatures["serving_default"]
            self._run = lambda batch: {k: v.numpy() for k, v in self._serve(images=tf.constant(batch)).items()}
            self.runtime = f"tensorflow {tf.__version__}"
        elif fmt == "onnx":
            import onnxruntime as ort

            session = ort.InferenceSession(str(artefact), providers=["CPUExecutionProvider"])
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
            interpreter = Interpreter(model_path=str(artefact))
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
        size = int(self.meta["size"])
        small = np.stack([resize_uint8(image, size) for image in batch])
        out = {k: np.asarray(v) for k, v in self._run(small).items()}
        out["anomaly_map"] = resize_float(out["anomaly_map"], batch.shape[2], batch.shape[1])
        return out

    def predict(self, image: np.ndarray) -> dict:
        """Verdict, score, anomaly map and defect mask (at the image's size) for one uint8 H×W×C image."""
        out = self.run(image[None])
        mask, largest, regions = min_area_filter(out["defect_pixels"][0], self.min_area)
        return {
            "defective": largest >= self.min_area,
            "score": float(out["score"][0]),
            "largest_area": largest,
            "n_regions": regions,
            "anomaly_map": out["anomaly_map"][0],
            "mask": resize_nearest(mask, image.shape[1], image.shape[0]),
        }


def _image_files(items):
    for item in map(Path, items):
        if item.is_dir():
            yield from sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        else:
            yield item


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
        print(f"predict_exported: error: cannot load detector {args.detector}: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    rows, used = [], set()
    for path in _image_files(args.images):
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
        if out:
            name = (
                path.stem if path.stem not in used else "_".join(path.with_suffix("").parts[-3:])
            )  # same stems elsewhere
            used.add(name)
            row["mask"] = str(out / f"{name}_mask.png")
            cv2.imwrite(row["mask"], result["mask"].astype(np.uint8) * 255)
        rows.append(row)
        print(",".join(str(v) for v in row.values()), flush=True)
    if out and rows:
        with open(out / "predictions.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    if not rows:
        return 2
    print(f"done in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
