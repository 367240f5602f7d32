"""Export a validated run as one self-contained detector: SavedModel, ONNX or TFLite.

The artefact takes raw uint8 images (N×H×W×C, any size, the run's colour mode) and
returns what ``test.py`` computes, with the whole map pipeline baked into one TensorFlow
graph: the resize to the model's size or a surface run's shape (Pillow's algorithm,
integer-exact), the map of the exported method as :func:`inference.run_maps` makes it
(:class:`_Maps`: every pass of :func:`inference.refined_maps` for ssim/l2, the run's own
head for ``learned``, the training-free ``median`` and ``lowfreq`` maps, and
:meth:`inference.Fusion.combine` of them for ``fused``), the smoothing, the anomaly map
brought back to the image's own size, and the pixels above the validated threshold. The
regions (connected components: the minimum-area filter and the image score, the highest
threshold that still leaves a region of the minimum area, over the threshold) are computed
outside, in ``predict_exported.py``, a NumPy/OpenCV script copied beside the artefact.

Adding a map method: its record in methods.py (``exportable``, ``tf_map``) and its map in :class:`_Maps`.
Adding a format: one entry in :data:`FORMATS`.
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

import inference
import methods
import resmaps
import runs
import ssim
import storage
from detector import DEFAULT_SMOOTH, Detector, check_smooth
from networks import OPSET
from settings import MapRequest
from utils import SettingError, UserError, package_versions

if TYPE_CHECKING:  # only for the hints: TensorFlow is imported when a graph is built
    import keras
    import tensorflow as tf

PREDICTOR = Path(__file__).resolve().parent / "predict_exported.py"
METADATA = "detector.json"
PILLOW_BITS = 22  # Pillow's fixed-point precision for 8-bit resampling (Resample.c, PRECISION_BITS)


def _tf():
    import tensorflow as tf

    return tf


# ---- the maps of the methods the graph can compute (methods.py: each method's tf_map) ----


def median_filter(pixels: tf.Tensor, size: int = resmaps.MEDIAN_SIZE) -> tf.Tensor:
    """``cv2.medianBlur`` of every channel of N×H×W×C integer pixel values (0-255, float32)
    as graph ops: the same values, borders replicated as OpenCV does.

    No sort (TFLite has none): the median of a window is the number of levels ``t`` in
    0..254 at which fewer than :func:`resmaps.median_rank` of its pixels are ``<= t``, each
    count a box sum (two 1-D convolutions of ones), exact in float32.
    """
    tf = _tf()
    r, rank = size // 2, resmaps.median_rank(size)
    height, width, channels = pixels.shape[1], pixels.shape[2], pixels.shape[3]
    t = tf.concat([tf.tile(pixels[:, :1], [1, r, 1, 1]), pixels, tf.tile(pixels[:, -1:], [1, r, 1, 1])], axis=1)
    t = tf.concat([tf.tile(t[:, :, :1], [1, 1, r, 1]), t, tf.tile(t[:, :, -1:], [1, 1, r, 1])], axis=2)
    median = tf.zeros_like(pixels)
    chunk = 51  # levels counted at once (255 = 5 x 51): bounded memory, few graph nodes
    for start in range(0, 255, chunk):
        levels = tf.constant(np.arange(start, start + chunk, dtype=np.float32))
        below = tf.cast(t[..., None] <= levels, tf.float32)  # N×H'×W'×C×L
        below = tf.reshape(below, [-1, height + 2 * r, width + 2 * r, channels * chunk])
        ones = np.ones((size, 1, channels * chunk, 1), np.float32)
        counts = tf.nn.depthwise_conv2d(below, tf.constant(ones), [1, 1, 1, 1], "VALID")
        counts = tf.nn.depthwise_conv2d(counts, tf.constant(ones.transpose(1, 0, 2, 3)), [1, 1, 1, 1], "VALID")
        counts = tf.reshape(counts, [-1, height, width, channels, chunk])
        median += tf.reduce_sum(tf.cast(counts < rank, tf.float32), axis=-1)
    return median


def median_residual(pixels: tf.Tensor) -> tf.Tensor:
    """:func:`resmaps.median_residual` as graph ops, from the pixel values (0-255)."""
    tf = _tf()
    return tf.reduce_max(tf.abs(pixels / 255.0 - median_filter(pixels) / 255.0), axis=-1)


def image_median(x: tf.Tensor) -> tf.Tensor:
    """``np.median(x, axis=(1, 2), keepdims=True)`` of N×H×W×C as graph ops (one top_k: the
    mean of the two middle values for an even pixel count, as NumPy)."""
    tf = _tf()
    n = x.shape[1] * x.shape[2]
    flat = tf.reshape(tf.transpose(x, [0, 3, 1, 2]), [-1, x.shape[3], n])
    top = tf.math.top_k(flat, n // 2 + 1, sorted=True).values  # descending: the last is the lower middle
    middle = top[..., -1] if n % 2 else (top[..., -1] + top[..., -2]) / 2.0
    return middle[:, None, None, :]


def lowfreq_residual(x: tf.Tensor) -> tf.Tensor:
    """:func:`resmaps.lowfreq_residual` as graph ops."""
    tf = _tf()
    sigma = resmaps.lowfreq_sigma((x.shape[1], x.shape[2]))
    blurred = tf.stack([gaussian_blur(x[..., c], sigma) for c in range(x.shape[3])], axis=-1)
    return tf.reduce_max(tf.abs(blurred - image_median(x)), axis=-1)


def log1p(z: tf.Tensor) -> tf.Tensor:
    """``log(1 + z)`` to a few ulps from ops every format has (neither tf2onnx nor TFLite's
    builtins have Log1p): ``log(u) · z / (u − 1)`` with ``u = 1 + z`` (Goldberg's rounding
    correction), ``z`` itself where ``u`` rounds to 1."""
    tf = _tf()
    u = 1.0 + z
    same = tf.equal(u, 1.0)
    return tf.where(same, z, tf.math.log(u) * (z / tf.where(same, tf.ones_like(u), u - 1.0)))


class _GraphOps:
    """What :meth:`inference.Fusion.combine` needs of an array module, as graph ops."""

    maximum = staticmethod(lambda a, b: _tf().maximum(a, b))
    log1p = staticmethod(log1p)


class _Maps:
    """One batch's maps inside the graph: model-size images ``x`` (and their pixel values),
    the networks, and what the spec bakes in; the first reconstruction is shared."""

    def __init__(self, spec, model, head, x, pixels):
        self.spec, self.model, self.head, self.x, self.pixels = spec, model, head, x, pixels
        self._recons = None

    def reconstruct(self):
        if self._recons is None:
            self._recons = self.model(self.x, training=False)
        return self._recons

    def __call__(self, method):
        spec = methods.get(method)
        if spec.composite:
            fusion = self.spec.options.fusion
            usual = None
            if fusion.usual:  # constants made inside the traced function, as the baselines
                tf = _tf()
                usual = [None if u is None else tf.constant(u, tf.float32) for u in self.spec.usual]
            return fusion.combine(
                [self(c) if w else None for c, w in zip(fusion.components, fusion.weights)], _GraphOps, usual
            )
        if spec.needs_head:
            return self.head_map()
        if spec.calibrated:
            return self.refined(method)
        if method == "median":  # the training-free maps, by name
            return median_residual(self.pixels)
        if method == "lowfreq":
            return lowfreq_residual(self.x)
        raise ValueError(f"the export graph has no map for method {method!r}")

    def head_map(self):
        """The learned head's map; its input order: image, then its reconstruction (learned.py)."""
        return self.head([self.x, self.reconstruct()], training=False)[..., 0]

    def refined(self, method):
        """:func:`inference.refined_maps` of ssim or l2 with the run's calibration."""
        tf = _tf()
        spec, x = self.spec, self.x
        opts = spec.options.component(method)

        def above_usual(raw, k):
            # A constant made inside the traced function (a captured eager tensor would become an extra ONNX input).
            return tf.maximum(raw - tf.constant(spec.baselines[k], tf.float32), 0.0)

        recons = self.reconstruct()
        maps = above_usual(residual(x, recons, method, opts.scales), 0)
        for k in range(1, opts.passes):
            smoothed = gaussian_blur(maps, inference.MASK_SIGMA)
            mask = gaussian_blur(tf.cast(smoothed > spec.mask_threshold, tf.float32), inference.MASK_FEATHER)[..., None]
            recons = self.model(x * (1 - mask) + recons * mask, training=False)
            maps = tf.minimum(maps, above_usual(residual(x, recons, method, opts.scales), k))
        return maps


# Regimes this export understands; a result that records anything else is refused instead
# of being exported with a silently different map.
KNOWN_MODES = (None, "object", "surface")


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


def pillow_resize_uint8(images: tf.Tensor, size: int | tuple, dtype: tf.DType) -> tf.Tensor:
    """uint8 N×H×W×C → float32 N×height×width×C pixel values (0-255) exactly as ``data.load_image``
    (``size``: a square side or ``(height, width)``): Pillow's box filter when shrinking both
    sides, else bicubic, two separable passes."""
    tf = _tf()
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    pixels = tf.cast(images, tf.float32)
    h, w = tf.shape(images)[1], tf.shape(images)[2]
    shrink = (h >= height) & (w >= width)

    def kk(n, out):
        return _fixed_point(
            tf.where(shrink, _coefficients(n, out, "box", dtype), _coefficients(n, out, "bicubic", dtype))
        )

    kw, kh = kk(w, width), kk(h, height)
    across_first = _fixed_point_pass(_fixed_point_pass(pixels, kw, axis=2), kh, axis=1)
    down_first = _fixed_point_pass(_fixed_point_pass(pixels, kh, axis=1), kw, axis=2)
    # Pillow 13 runs the vertical pass first when the height shrinks much more than the
    # width; the intermediate image is rounded to uint8, so the order changes pixels. Rule
    # measured against Pillow on random sizes, square and not (tests/test_export.py keeps checking it).
    down = (h - height) > 2 * tf.maximum(w - width, 0)
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
    radius = resmaps.gaussian_radius(sigma)
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
    baselines: np.ndarray  # passes×H×W, of the ssim or l2 map (itself or a fused map's component)
    mask_threshold: float
    threshold: float
    smooth: float
    shape: tuple  # the model's (height, width)
    channels: int
    usual: tuple | None = None  # H×W per fused component (None at weight 0), when the fusion subtracts them


def residual(x: tf.Tensor, y: tf.Tensor, method: str, scales: int) -> tf.Tensor:
    """:func:`resmaps.residual_maps` as graph ops (the same formula, without leaving the graph)."""
    tf = _tf()
    size = (x.shape[1], x.shape[2])
    total = ssim.scale_maps_tf(x, y, method)  # the very ops test.py runs, traced into the graph
    for _ in range(scales - 1):
        x, y = tf.nn.avg_pool2d(x, 2, 2, "VALID"), tf.nn.avg_pool2d(y, 2, 2, "VALID")
        total += tf.image.resize(ssim.scale_maps_tf(x, y, method)[..., None], size, method="bilinear")[..., 0]
    return total / scales


def detector_function(
    model: keras.Model, spec: Spec, resize_inside: bool = True, head: keras.Model | None = None
) -> Callable[[tf.Tensor], dict[str, tf.Tensor]]:
    """The serving function: uint8 images → dict of anomaly map, residual map, defect pixels.

    Mirrors :func:`inference.run_maps` for ``spec.method`` (:class:`_Maps`: the refined
    ssim/l2 maps with the run's calibration, the ``head``'s learned map, the training-free
    maps and their fusion) and :func:`evaluation.predict_images`'s smoothing and resizing. With
    ``resize_inside`` False the function takes model-size images and returns the anomaly
    map at the model's size (for runtimes without float64, which Pillow's coefficients need).
    """
    tf = _tf()
    dtype = tf.float64

    def serve(images):
        pixels = pillow_resize_uint8(images, spec.shape, dtype) if resize_inside else tf.cast(images, tf.float32)
        maps = _Maps(spec, model, head, pixels / 255.0, pixels)(spec.method)
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
    height, width = (None, None) if resize_inside else spec.shape
    return [tf.TensorSpec([None, height, width, spec.channels], tf.uint8, name="images")]


def _archive(networks, fn, signature):
    """A Keras export archive of ``fn`` that tracks the ``networks`` it calls."""
    import keras

    archive = keras.export.ExportArchive()
    for network in networks:
        if network is not None:
            archive.track(network)
    archive.add_endpoint(name="serving_default", fn=fn, input_signature=signature)
    return archive


def _write_saved_model(networks, spec, folder):
    """A SavedModel with a ``serving_default`` signature (TF Serving, tf.saved_model.load)."""
    archive = _archive(networks, detector_function(*networks[:1], spec, head=networks[1]), _signature(spec))
    target = folder / "saved_model"
    archive.write_out(str(target), verbose=False)
    return target.name


def _write_onnx(networks, spec, folder):
    """ONNX through tf2onnx (opset :data:`networks.OPSET`), its outputs renamed to the signature's names."""
    try:
        import onnx
        import tf2onnx
    except ImportError as exc:
        raise UserError(f"ONNX export needs {exc.name} (pip install -r requirements.txt)") from None

    tf = _tf()
    function = tf.function(detector_function(networks[0], spec, head=networks[1]), input_signature=_signature(spec))
    concrete = function.get_concrete_function()
    names = sorted(concrete.structured_outputs)  # TensorFlow flattens a dict by sorted key
    try:
        proto, _ = tf2onnx.convert.from_function(function, input_signature=_signature(spec), opset=OPSET)
    except Exception as exc:  # noqa: BLE001 - a converter failure is reported, not a crash
        raise UserError(
            f"tf2onnx cannot convert this detector: {exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}"
        ) from None
    try:  # tf2onnx only logs an op it cannot convert and leaves it in: refuse such a graph here
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise UserError(f"tf2onnx cannot convert this detector: {str(exc).strip().splitlines()[0][:200]}") from None
    renamed = dict(zip([o.name for o in proto.graph.output], names))
    for node in proto.graph.node:
        node.output[:] = [renamed.get(o, o) for o in node.output]
    for out in proto.graph.output:
        out.name = renamed[out.name]
    target = folder / "detector.onnx"
    onnx.save(proto, str(target))
    return target.name


def _write_tflite(networks, spec, folder):
    """TFLite with builtin ops only: model-size input, since TFLite has no float64 for
    Pillow's resize coefficients (predict_exported.py resizes in and out, as Pillow)."""
    import tempfile

    tf = _tf()
    # Through a SavedModel: converting the function directly leaves Keras 3's weights as
    # uninitialised resource variables (NaN outputs); the SavedModel path freezes them.
    serve = detector_function(networks[0], spec, resize_inside=False, head=networks[1])
    archive = _archive(networks, serve, _signature(spec, False))
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


def _check_supported(run, method, found):
    """One-line refusal of map methods and modes the graph does not reproduce."""
    exportable = methods.names(exportable=True)
    if method not in exportable:
        raise UserError(f"export supports the map methods {', '.join(exportable)}, not {method!r}")
    modes = {"setup.json": run.mode, "validation result": found.get("mode")}
    for where, mode in modes.items():
        if mode not in KNOWN_MODES:
            raise UserError(
                f"export supports the {' and '.join(m for m in KNOWN_MODES if m)} modes; "
                f"this run's {where} says mode {mode!r}"
            )


def open_validated(
    path: storage.PathLike, method: str | None = None, min_area: int | None = None
) -> tuple[Detector, Path]:
    """The run at ``path`` opened as every post-training step opens it (:meth:`Detector.open_maps`:
    the run, its method), with the threshold, minimum area and map options of its newest
    validation result for ``min_area`` (any area if None), which export requires; methods and
    modes the graph does not reproduce are refused first. Returns ``(Detector, result file)``."""
    opened = Detector.open_maps(path, MapRequest(method=method))
    run, method = opened.run, opened.method
    _check_supported(run, method, {})  # before looking for a validation result: say what is unsupported first
    found = inference.require_validation_result(run, method, min_area, "export bakes in its threshold")
    _check_supported(run, method, found)
    result_path = run.layout.validation_result(method, found["min_area"])
    options = inference.MapOptions.from_record(found, f"the validation result {result_path}")
    validated = replace(
        opened.mapper,
        options=options,
        threshold=float(found["threshold"]),
        min_area=int(found["min_area"]),
        source=str(result_path),
    )
    return Detector(validated), result_path


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
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    smooth = DEFAULT_SMOOTH if smooth is None else smooth
    try:  # the one smoothing rule (finite, >= 0), the detector's
        smooth = check_smooth(smooth)
    except ValueError:
        raise SettingError(f"`smooth` must be a finite number >= 0, got {smooth}") from None
    inference.check_area_threshold(min_area=min_area)
    validated, result_path = open_validated(path, method, min_area)
    run, method, options = validated.run, validated.method, validated.options
    out_dir = Path(out) if out else run.layout.export(fmt)
    staging = storage.StagedOutput(
        out_dir, export_identity(run, method), inputs=[run.class_dir], protect=[run.dir], archive=out is None
    )
    staging.check()  # before the graph is built
    shape, side = tuple(run.shape), min(run.shape)
    for sigma in (smooth, inference.MASK_SIGMA if options.passes > 1 else 0):
        if resmaps.gaussian_radius(sigma) > side:
            raise UserError(
                f"smoothing sigma {sigma} px is too wide to export for a {side}-px model (at most {side / 4:g})"
            )
    uses = [methods.get(c) for c in (options.fusion.components if methods.get(method).composite else (method,))]
    # The graph is built from the Keras layers: the autoencoder, and the head when a map uses it.
    model = run.load_model(keras=True) if any(m.needs_model for m in uses) else None
    head = run.load_head(keras=True) if any(m.needs_head for m in uses) else None
    fixed = next((m.name for m in uses if m.calibrated), None)  # the calibrated ssim or l2 map, if any
    calibration = (
        validated.calibration(fixed)
        if fixed
        else inference.Calibration(np.zeros((1, *shape), np.float32), float("inf"))
    )
    spec = Spec(
        method,
        options,
        np.asarray(calibration.baselines, np.float32),
        float(calibration.mask_threshold),
        validated.threshold,
        smooth,
        shape,
        3 if run.color == "rgb" else 1,
        tuple(validated.usual_maps()) if methods.get(method).composite and options.fusion.usual else None,
    )
    serve = detector_function(model, spec, head=head)  # the reference the written artefact is checked against
    metadata = {
        "format": fmt,
        "created": dt.datetime.now().isoformat(timespec="seconds"),
        "input": {
            "name": "images",
            "dtype": "uint8",
            "color": run.color,
            "shape": ["N", *shape, spec.channels] if fmt in RESIZE_OUTSIDE else ["N", "H", "W", spec.channels],
            "note": (
                "model-size images: predict_exported.py resizes as test.py does"
                if fmt in RESIZE_OUTSIDE
                else "any H, W (one size per batch); resized inside to the model's size as test.py does"
            ),
        },
        "outputs": {
            "anomaly_map": "N×H×W float32 at the input's size: residual map smoothed by smooth_sigma, as test.py's TIFFs",
            "residual_map": f"N×{shape[0]}×{shape[1]} float32: the raw map the threshold applies to",
            "defect_pixels": f"N×{shape[0]}×{shape[1]} uint8: residual_map > threshold, before the minimum area",
        },
        "threshold": spec.threshold,
        "min_area": validated.min_area,
        "method": method,
        **options.record(),
        "smooth_sigma": smooth,
        "size": run.size,
        "shape": list(shape),  # the model's (height, width): what predict_exported.py resizes to
        "channels": spec.channels,
        "mask_threshold": spec.mask_threshold if np.isfinite(spec.mask_threshold) else None,  # None: one pass
        "validation_result": {
            "path": str(result_path),
            "sha256": storage.model_id(result_path),
            "threshold": spec.threshold,
            "min_area": validated.min_area,
        },
        "run": str(run.dir),
        "model": str(run.model_path),
        "model_sha256": storage.model_id(run.model_path),
        **({"head": str(run.head_path), "head_sha256": storage.model_id(run.head_path)} if head is not None else {}),
        "resize_inside": fmt not in RESIZE_OUTSIDE,
        "outside_the_artefact": OUTSIDE[fmt],
        "versions": package_versions(),
    }
    with staging as staged:
        metadata["artefact"] = FORMATS[fmt]((model, head), spec, staged)
        if (staged / metadata["artefact"]).is_file():  # predict_exported.py refuses another export's artefact
            metadata["artefact_sha256"] = storage.model_id(staged / metadata["artefact"])
        shutil.copy2(PREDICTOR, staged / PREDICTOR.name)
        tolerance = map_tolerance(method, options)
        metadata["check"] = _check_artefact(staged, fmt, metadata, serve, run, check_images, tolerance)
        storage.write_json(staged / METADATA, metadata)
    return out_dir, metadata


MAP_TOLERANCE = 1e-4  # how far two runtimes' residual maps may differ, in a map's own units


def map_tolerance(method: str, options: inference.MapOptions) -> float:
    """How far two runtimes' ``method`` maps may differ: :data:`MAP_TOLERANCE`, except for a
    fused map, which moves by up to ``Σ w_k / spread_k`` times its components' differences
    (each term ``w·log1p(max(0, (M − c) / s))`` is ``w/s``-Lipschitz). Float32 SSIM differs
    between runtimes by ~1e-5 where an image is flat (its variances cancel), so a fused map
    whose SSIM spread is small cannot meet 1e-4 in its own units; its components do."""
    fusion = options.fusion
    if not methods.get(method).composite or fusion is None:
        return MAP_TOLERANCE
    gain = sum(w / s for w, s in zip(fusion.weights, fusion.spreads) if w)
    return MAP_TOLERANCE * max(1.0, gain)


def _check_artefact(folder, fmt, metadata, serve, run, n, tolerance=MAP_TOLERANCE):
    """Run the written artefact in its own runtime on ``n`` validation images and compare
    with the graph in memory; a mismatch beyond ``tolerance`` (:func:`map_tolerance`) aborts
    the export (nothing is kept)."""
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
        if (differ & (np.abs(expected["residual_map"] - metadata["threshold"]) > tolerance)).any():
            worst, which = float("inf"), "defect_pixels"
    if worst > tolerance:
        raise UserError(
            f"the {fmt} artefact's {which} disagrees with the TensorFlow graph by {worst:.2e} (max abs) on "
            "the run's validation images; nothing written"
        )
    return {
        "images": len(paths),
        "max_abs_difference_vs_graph": worst,
        "tolerance": tolerance,
        "runtime": detector.runtime,
    }
