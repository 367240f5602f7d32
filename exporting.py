"""Export a validated run as one self-contained detector: SavedModel, ONNX or TFLite.

The artefact takes raw uint8 images (N×H×W×C, any size, the run's colour mode) and
returns what ``test.py`` computes, with the whole map pipeline baked into one TensorFlow
graph: the resize to the model's size (Pillow's algorithm, integer-exact), every pass of
:func:`inference.refined_maps` (reconstruct, SSIM/L2 map at every scale, minus the
training baseline of that pass, repaint what the map so far finds), the smoothing, the
anomaly map brought back to the image's own size, and the pixels above the validated
threshold. The regions (connected components: the minimum-area filter and the image score,
the highest threshold that still leaves a region of the minimum area, over the threshold)
are computed outside, in ``predict_exported.py``, a NumPy/OpenCV script copied beside the
artefact.

Adding a map method: one entry in :data:`GRAPH_METHODS` (a TensorFlow function of an
image batch and its reconstruction). Adding a format: one entry in :data:`FORMATS`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

import inference
import runs
import ssim
import storage
from settings import MapRequest
from utils import UserError, package_versions

if TYPE_CHECKING:  # only for the hints: TensorFlow is imported when a graph is built
    import keras
    import tensorflow as tf

PREDICTOR = Path(__file__).resolve().parent / "predict_exported.py"
METADATA = "detector.json"
PILLOW_BITS = 22  # Pillow's fixed-point precision for 8-bit resampling (Resample.c, PRECISION_BITS)


def _tf():
    import tensorflow as tf

    return tf


# ---- map methods the graph can compute: one entry per method ----


def _ssim_or_l2(method):
    def single_scale(x, y):
        return ssim.scale_maps_tf(x, y, method)  # the very ops test.py runs, traced into the graph

    return single_scale


GRAPH_METHODS = {"ssim": _ssim_or_l2("ssim"), "l2": _ssim_or_l2("l2")}
# Map options this export understands; a result that records anything else (another mode,
# another regime) is refused instead of being exported with a silently different map.
KNOWN_MODES = (None, "object")


# ---- Pillow's resampling, as graph ops (so the artefact resizes exactly as data.load_image) ----


def _filter(t, name):
    """Pillow's resampling filters (Resample.c), same expression order, on float64 ``t``."""
    tf = _tf()
    a = -0.5
    x = tf.abs(t)
    if name == "box":
        return tf.cast((t > -0.5) & (t <= 0.5), t.dtype)
    if name == "bilinear":
        return tf.where(x < 1.0, 1.0 - x, tf.zeros_like(x))
    cubic_near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    cubic_far = (((x - 5) * x + 8) * x - 4) * a
    return tf.where(x < 1.0, cubic_near, tf.where(x < 2.0, cubic_far, tf.zeros_like(x)))


_SUPPORT = {"box": 0.5, "bilinear": 1.0, "bicubic": 2.0}


def _coefficients(in_size, out_size, name, dtype):
    """Pillow's ``precompute_coeffs``: out_size×in_size normalised weights (either size may
    be a tensor, so the graph takes images of any size)."""
    tf = _tf()
    insz, outsz = tf.cast(in_size, dtype), tf.cast(out_size, dtype)
    scale = insz / outsz
    filterscale = tf.maximum(scale, 1.0)
    support = _SUPPORT[name] * filterscale
    center = (tf.cast(tf.range(out_size), dtype) + 0.5) * scale
    # Pillow truncates with (int); floor gives the same once xmin is clamped at 0 (xmax is positive).
    xmin = tf.maximum(tf.floor(center - support + 0.5), 0.0)[:, None]
    xmax = tf.minimum(tf.floor(center + support + 0.5), insz)[:, None]
    j = tf.cast(tf.range(in_size), dtype)[None, :]
    inside = (j >= xmin) & (j < xmax)
    w = tf.where(inside, _filter((j - center[:, None] + 0.5) * (1.0 / filterscale), name), tf.zeros_like(j * xmin))
    total = tf.reduce_sum(w, axis=1, keepdims=True)
    return tf.where(total != 0.0, w / tf.where(total != 0.0, total, tf.ones_like(total)), w)


def _fixed_point_pass(pixels, kk, axis):
    """One 8-bit Pillow pass: ``clip8((Σ p·kk + 2^21) >> 22)``, exact in float32.

    ``kk`` (integers up to 2^22) is split into 2^11·hi + lo so every product and partial
    sum is an integer below 2^24, which float32 holds exactly (up to ~30 taps per output
    pixel: shrinking by up to ~30×).
    """
    tf = _tf()
    half = 2.0 ** (PILLOW_BITS // 2)
    hi = tf.floor(kk / half)
    lo = kk - hi * half
    eq = "nhwc,ow->nhoc" if axis == 2 else "nhwc,oh->nowc"
    a = tf.einsum(eq, pixels, tf.cast(hi, tf.float32))
    b = tf.einsum(eq, pixels, tf.cast(lo, tf.float32))
    c = tf.floor((b + 2.0 ** (PILLOW_BITS - 1)) / half)
    return tf.clip_by_value(tf.floor((a + c) / half), 0.0, 255.0)


def _fixed_point(k):
    """Pillow's ``normalize_coeffs_8bpc``: round half away from zero to 22-bit integers."""
    tf = _tf()
    scaled = k * float(1 << PILLOW_BITS)
    return tf.where(k < 0, tf.math.ceil(scaled - 0.5), tf.floor(scaled + 0.5))


def pillow_resize_uint8(images: tf.Tensor, size: int, dtype: tf.DType) -> tf.Tensor:
    """uint8 N×H×W×C → float32 N×size×size×C pixel values (0-255) exactly as ``data.load_image``:
    Pillow's box filter when shrinking both sides, else bicubic, two separable passes."""
    tf = _tf()
    pixels = tf.cast(images, tf.float32)
    h, w = tf.shape(images)[1], tf.shape(images)[2]
    shrink = (h >= size) & (w >= size)

    def kk(n):
        return _fixed_point(
            tf.where(shrink, _coefficients(n, size, "box", dtype), _coefficients(n, size, "bicubic", dtype))
        )

    kw, kh = kk(w), kk(h)
    across_first = _fixed_point_pass(_fixed_point_pass(pixels, kw, axis=2), kh, axis=1)
    down_first = _fixed_point_pass(_fixed_point_pass(pixels, kh, axis=1), kw, axis=2)
    # Pillow 13 runs the vertical pass first when the height shrinks much more than the
    # width; the intermediate image is rounded to uint8, so the order changes pixels. Rule
    # measured against Pillow on random sizes (tests/test_export.py keeps checking it).
    down = (h - size) > 2 * tf.maximum(w - size, 0)
    return tf.where(down, down_first, across_first)


def pillow_resize_float(maps: tf.Tensor, height: int | tf.Tensor, width: int | tf.Tensor, dtype: tf.DType) -> tf.Tensor:
    """N×S×S float maps → N×height×width as ``inference.resize_map`` (Pillow 'F' bilinear;
    the intermediate image is float32 as in Pillow)."""
    tf = _tf()
    kw = _coefficients(maps.shape[2], width, "bilinear", dtype)
    kh = _coefficients(maps.shape[1], height, "bilinear", dtype)
    horizontal = tf.cast(tf.einsum("nhw,ow->nho", tf.cast(maps, dtype), kw), tf.float32)
    return tf.cast(tf.einsum("nhw,oh->now", tf.cast(horizontal, dtype), kh), tf.float32)


# ---- the map pipeline as one graph ----


def gaussian_blur(maps: tf.Tensor, sigma: float) -> tf.Tensor:
    """``scipy.ndimage.gaussian_filter(maps, (0, σ, σ), mode='reflect')`` (truncate 4) as graph ops."""
    tf = _tf()
    if not sigma:
        return maps
    radius = int(4.0 * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-0.5 / float(sigma) ** 2 * x**2)
    g = (g / g.sum()).astype(np.float32)
    t = tf.pad(maps[..., None], [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="SYMMETRIC")
    t = tf.nn.conv2d(t, tf.constant(g[:, None, None, None]), 1, "VALID")
    t = tf.nn.conv2d(t, tf.constant(g[None, :, None, None]), 1, "VALID")
    return t[..., 0]


@dataclass(frozen=True)
class Spec:
    """Everything the graph bakes in: the run's map options, calibration and threshold."""

    method: str
    options: inference.MapOptions
    baselines: np.ndarray  # passes×S×S
    mask_threshold: float
    threshold: float
    smooth: float
    size: int
    channels: int


def residual(x: tf.Tensor, y: tf.Tensor, method: str, scales: int) -> tf.Tensor:
    """:func:`resmaps.residual_maps` as graph ops (the same formula, without leaving the graph)."""
    tf = _tf()
    single = GRAPH_METHODS[method]
    size = (x.shape[1], x.shape[2])
    total = single(x, y)
    for _ in range(scales - 1):
        x, y = tf.nn.avg_pool2d(x, 2, 2, "VALID"), tf.nn.avg_pool2d(y, 2, 2, "VALID")
        total += tf.image.resize(single(x, y)[..., None], size, method="bilinear")[..., 0]
    return total / scales


def detector_function(
    model: keras.Model, spec: Spec, resize_inside: bool = True
) -> Callable[[tf.Tensor], dict[str, tf.Tensor]]:
    """The serving function: uint8 images → dict of anomaly map, residual map, defect pixels.

    Mirrors :func:`inference.refined_maps` with the run's calibration and
    :func:`evaluation.predict_images`'s smoothing and resizing. With
    ``resize_inside`` False the function takes model-size images and returns the anomaly
    map at the model's size (for runtimes without float64, which Pillow's coefficients need).
    """
    tf = _tf()
    dtype = tf.float64
    opts = spec.options

    def above_usual(raw, k):
        # A constant made inside the traced function (a captured eager tensor would become an extra ONNX input).
        return tf.maximum(raw - tf.constant(spec.baselines[k], tf.float32), 0.0)

    def serve(images):
        x = (pillow_resize_uint8(images, spec.size, dtype) if resize_inside else tf.cast(images, tf.float32)) / 255.0
        recons = model(x, training=False)
        maps = above_usual(residual(x, recons, spec.method, opts.scales), 0)
        for k in range(1, opts.passes):
            smoothed = gaussian_blur(maps, inference.MASK_SIGMA)
            mask = gaussian_blur(tf.cast(smoothed > spec.mask_threshold, tf.float32), inference.MASK_FEATHER)[..., None]
            recons = model(x * (1 - mask) + recons * mask, training=False)
            maps = tf.minimum(maps, above_usual(residual(x, recons, spec.method, opts.scales), k))
        smoothed = gaussian_blur(maps, spec.smooth)
        height, width = tf.shape(images)[1], tf.shape(images)[2]
        return {
            "anomaly_map": pillow_resize_float(smoothed, height, width, dtype) if resize_inside else smoothed,
            "residual_map": maps,
            "defect_pixels": tf.cast(maps > spec.threshold, tf.uint8),
        }

    return serve


# ---- formats: one writer per format, each also returns the runtime that checks it ----


def _signature(spec, resize_inside=True):
    tf = _tf()
    side = None if resize_inside else spec.size
    return [tf.TensorSpec([None, side, side, spec.channels], tf.uint8, name="images")]


def _write_saved_model(model, spec, folder):
    """A SavedModel with a ``serving_default`` signature (TF Serving, tf.saved_model.load)."""
    import keras

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name="serving_default", fn=detector_function(model, spec), input_signature=_signature(spec))
    target = folder / "saved_model"
    archive.write_out(str(target), verbose=False)
    return target.name


def _write_onnx(model, spec, folder):
    """ONNX through tf2onnx (opset 17), its outputs renamed to the signature's names."""
    try:
        import onnx
        import tf2onnx
    except ImportError as exc:
        raise UserError(f"ONNX export needs {exc.name} (pip install -r requirements.txt)") from None

    tf = _tf()
    function = tf.function(detector_function(model, spec), input_signature=_signature(spec))
    concrete = function.get_concrete_function()
    names = sorted(concrete.structured_outputs)  # TensorFlow flattens a dict by sorted key
    try:
        proto, _ = tf2onnx.convert.from_function(function, input_signature=_signature(spec), opset=17)
    except Exception as exc:  # noqa: BLE001 - a converter failure is reported, not a crash
        raise UserError(
            f"tf2onnx cannot convert this detector: {exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}"
        ) from None
    renamed = dict(zip([o.name for o in proto.graph.output], names))
    for node in proto.graph.node:
        node.output[:] = [renamed.get(o, o) for o in node.output]
    for out in proto.graph.output:
        out.name = renamed[out.name]
    target = folder / "detector.onnx"
    onnx.save(proto, str(target))
    return target.name


def _write_tflite(model, spec, folder):
    """TFLite with builtin ops only: model-size input, since TFLite has no float64 for
    Pillow's resize coefficients (predict_exported.py resizes in and out, as Pillow)."""
    import tempfile

    import keras

    tf = _tf()
    # Through a SavedModel: converting the function directly leaves Keras 3's weights as
    # uninitialised resource variables (NaN outputs); the SavedModel path freezes them.
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name="serving_default",
        fn=detector_function(model, spec, resize_inside=False),
        input_signature=_signature(spec, False),
    )
    try:
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            archive.write_out(tmp, verbose=False)
            flat = tf.lite.TFLiteConverter.from_saved_model(tmp).convert()
    except Exception as exc:  # noqa: BLE001
        raise UserError(
            f"the TFLite converter cannot convert this detector: {exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0][:200]}"
        ) from None
    target = folder / "detector.tflite"
    target.write_bytes(flat)
    return target.name


FORMATS = {"saved_model": _write_saved_model, "onnx": _write_onnx, "tflite": _write_tflite}
RESIZE_OUTSIDE = {"tflite"}  # formats whose graph takes model-size images (see _write_tflite)
# Which steps run outside the artefact, in predict_exported.py, per format (the README repeats it).
_ALWAYS_OUTSIDE = [
    "reading image files into uint8 arrays in the run's colour mode (as Pillow converts)",
    "minimum-area filter (8-connected regions of defect_pixels, cv2.connectedComponentsWithStats)",
    "mask back to the image's size (nearest neighbour, as Pillow)",
]
OUTSIDE = {
    fmt: _ALWAYS_OUTSIDE
    + (
        ["resize to the model's size and the anomaly map back (NumPy port of Pillow's resampling)"]
        if fmt in RESIZE_OUTSIDE
        else []
    )
    for fmt in FORMATS
}


def _sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _check_supported(run, method, found):
    """One-line refusal of map methods and modes the graph does not reproduce."""
    if method not in GRAPH_METHODS:
        raise UserError(f"export supports the map methods {', '.join(GRAPH_METHODS)}, not {method!r}")
    modes = {"setup.json": getattr(run, "mode", run.setup.get("mode")), "validation result": found.get("mode")}
    for where, mode in modes.items():
        if mode not in KNOWN_MODES:
            raise UserError(f"export supports the object mode only; this run's {where} says mode {mode!r}")
    shape = tuple(getattr(run, "shape", (run.size, run.size)))
    if shape != (run.size, run.size):
        raise UserError(f"export supports square models only; this run's model takes {shape[0]}x{shape[1]} images")


def open_validated(
    path: storage.PathLike, method: str | None = None, min_area: int | None = None
) -> tuple[inference.Mapper, Path]:
    """The run at ``path`` opened as every post-training step opens it (:func:`inference.open_maps`:
    the run, its method), with the threshold, minimum area and map options of its newest
    validation result for ``min_area`` (any area if None), which export requires; methods and
    modes the graph does not reproduce are refused first. Returns ``(Mapper, result file)``."""
    mapper = inference.open_maps(path, MapRequest(method=method))
    run, method = mapper.run, mapper.method
    _check_supported(run, method, {})  # before looking for a validation result: say what is unsupported first
    found = inference.require_validation_result(run, method, min_area, "export bakes in its threshold")
    _check_supported(run, method, found)
    result_path = runs.validation_dir(run.dir, method, found["min_area"]) / "validation_result.json"
    options = inference.MapOptions.from_record(found, f"the validation result {result_path}")
    validated = replace(
        mapper,
        options=options,
        threshold=float(found["threshold"]),
        min_area=int(found["min_area"]),
        source=str(result_path),
    )
    return validated, result_path


def export_identity(run: runs.Run, method: str) -> dict:
    """What an export folder's marker records: this run and the weights (and head) it was
    made from. An ``--out`` holding this run's own export is replaced; another run's, or a
    folder this tool did not write, is refused (moved aside in the run's default place)."""
    return {"kind": "export", "run": str(run.dir.resolve()), **run.identity(method)}


def export_run(
    path: storage.PathLike,
    fmt: str = "saved_model",
    out: storage.PathLike | None = None,
    method: str | None = None,
    min_area: int | None = None,
    smooth: float | None = None,
    check_images: int = 2,
) -> tuple[Path, dict]:
    """Export run ``path`` with the newest validation result (for ``min_area`` if given).

    Writes ``out`` (default ``RUN/export/<fmt>``) holding the artefact, ``detector.json``
    (threshold, minimum area, map options, which validation result, what runs outside the
    graph) and ``predict_exported.py``; then loads the artefact in its own runtime and
    checks it against the graph on ``check_images`` of the run's validation images.
    Returns ``(output folder, metadata dict)``.
    """
    import evaluation

    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    smooth = evaluation.DEFAULT_SMOOTH if smooth is None else float(smooth)
    if not smooth >= 0:
        raise UserError(f"--smooth must be >= 0, got {smooth}")
    inference.check_area_threshold(min_area=min_area)
    mapper, result_path = open_validated(path, method, min_area)
    run, method, options = mapper.run, mapper.method, mapper.options
    out_dir = Path(out) if out else run.dir / "export" / fmt
    staging = storage.StagedOutput(
        out_dir, export_identity(run, method), inputs=[run.class_dir], protect=[run.dir], archive=out is None
    )
    staging.check()  # before the graph is built
    for sigma in (smooth, inference.MASK_SIGMA if options.passes > 1 else 0):
        if int(4 * sigma + 0.5) > run.size:
            raise UserError(
                f"smoothing sigma {sigma} px is too wide to export for a {run.size}-px model (at most {run.size / 4:g})"
            )
    model = run.load_model(keras=True)  # the graph is built from the Keras layers
    calibration = inference.calibrate(run, method, options, model)
    spec = Spec(
        method,
        options,
        np.asarray(calibration.baselines, np.float32),
        float(calibration.mask_threshold),
        mapper.threshold,
        smooth,
        run.size,
        3 if run.color == "rgb" else 1,
    )
    serve = detector_function(model, spec)  # the reference the written artefact is checked against
    metadata = {
        "format": fmt,
        "created": dt.datetime.now().isoformat(timespec="seconds"),
        "input": {
            "name": "images",
            "dtype": "uint8",
            "color": run.color,
            "shape": ["N", run.size, run.size, spec.channels]
            if fmt in RESIZE_OUTSIDE
            else ["N", "H", "W", spec.channels],
            "note": (
                "model-size images: predict_exported.py resizes as test.py does"
                if fmt in RESIZE_OUTSIDE
                else "any H, W (one size per batch); resized inside to the model's size as test.py does"
            ),
        },
        "outputs": {
            "anomaly_map": "N×H×W float32 at the input's size: residual map smoothed by smooth_sigma, as test.py's TIFFs",
            "residual_map": f"N×{run.size}×{run.size} float32: the raw map the threshold applies to",
            "defect_pixels": f"N×{run.size}×{run.size} uint8: residual_map > threshold, before the minimum area",
        },
        "threshold": spec.threshold,
        "min_area": mapper.min_area,
        "method": method,
        **options.record(),
        "smooth_sigma": smooth,
        "size": run.size,
        "channels": spec.channels,
        "mask_threshold": spec.mask_threshold if np.isfinite(spec.mask_threshold) else None,  # None: one pass
        "validation_result": {
            "path": str(result_path),
            "sha256": _sha256(result_path),
            "threshold": spec.threshold,
            "min_area": mapper.min_area,
        },
        "run": str(run.dir),
        "model": str(run.model_path),
        "model_sha256": _sha256(run.model_path),
        "resize_inside": fmt not in RESIZE_OUTSIDE,
        "outside_the_artefact": OUTSIDE[fmt],
        "versions": package_versions(),
    }
    with staging as staged:
        metadata["artefact"] = FORMATS[fmt](model, spec, staged)
        if (staged / metadata["artefact"]).is_file():  # predict_exported.py refuses another export's artefact
            metadata["artefact_sha256"] = _sha256(staged / metadata["artefact"])
        shutil.copy2(PREDICTOR, staged / PREDICTOR.name)
        metadata["check"] = _check_artefact(staged, fmt, metadata, serve, run, check_images)
        storage.write_json(staged / METADATA, metadata)
    return out_dir, metadata


def _check_artefact(folder, fmt, metadata, serve, run, n):
    """Run the written artefact in its own runtime on ``n`` validation images and compare
    with the graph in memory; a mismatch beyond 1e-4 aborts the export (nothing is kept)."""
    import importlib.util

    tf = _tf()
    spec_ = importlib.util.spec_from_file_location("predict_exported", folder / PREDICTOR.name)
    module = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(module)
    detector = module.Detector(folder, metadata=metadata)
    worst, which = 0.0, None
    paths = run.validation_paths()[:n]
    for p in paths:
        image = module.read_image(p, metadata["input"]["color"])
        expected = {k: v.numpy() for k, v in serve(tf.constant(image[None])).items()}
        got = detector.run(image[None])
        for key in ("anomaly_map", "residual_map"):
            diff = float(np.abs(np.asarray(got[key], np.float32) - expected[key]).max())
            worst, which = max((worst, which), (diff, key))
        # Pixels within the tolerance of the threshold may flip between runtimes; no other may.
        differ = got["defect_pixels"].astype(bool) != expected["defect_pixels"].astype(bool)
        if (differ & (np.abs(expected["residual_map"] - metadata["threshold"]) > 1e-4)).any():
            worst, which = 1.0, "defect_pixels"
    if worst > 1e-4:
        raise UserError(
            f"the {fmt} artefact's {which} disagrees with the TensorFlow graph by {worst:.2e} (max abs) on "
            "the run's validation images; nothing written"
        )
    return {"images": len(paths), "max_abs_difference_vs_graph": worst, "runtime": detector.runtime}
