"""The networks a run scores images with: its Keras model, or that model's ONNX twin.

Scoring images needs only the forward pass, and TensorFlow is a heavy way to get it:
importing it costs about 3.5 s of every ``test.py`` / ``validate.py`` start. So a model
used for inference (training does it at its end) is converted to ONNX (tf2onnx, opset
17), checked against Keras on probe inputs, timed against Keras on images of the run's
size, and saved beside it as ``<model>.onnx`` with the model file's SHA-256, a hash of its
own weights and the timings in its metadata. Scripts compute the twin with OpenVINO
(float32; imports and compiles in about 0.4 s, and on this CPU computes 1.2-2x faster
than Keras and ONNX Runtime: bench/README.md, "Fourth round") and never import
TensorFlow. Where the twin is clearly slower than Keras (other machines; see
:func:`convert`), scripts use it only for jobs small enough that Keras's start would cost
more than the twin's extra time (:func:`use_twin`), else Keras. A twin is checked by
content, not by file stamps: one made from another model file (retrained, resumed,
replaced), with damaged weights (their hash differs from the one it records), unreadable
or timed by another runtime is made again, with a one-line note; a model the converter
cannot handle, or whose twin disagrees with it, stays on Keras.

``CAE_INFERENCE=keras`` in the environment keeps every script on Keras (to compare, or to
rule the twin out). The two agree to about 1e-6 on reconstructions (float32 rounding of
different kernels); ``tests/test_networks.py`` pins it.
"""

from __future__ import annotations

import functools
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

import storage
from settings import BATCH
from utils import warn

ENV = "CAE_INFERENCE"  # "keras": never use the ONNX twin
SUFFIX = ".onnx"
OPSET = 17
TOLERANCE = 1e-4  # largest |ONNX - Keras| on the probe inputs for the twin to be used
SLOWER_LIMIT = 1.1  # the twin is used unless it takes more than this times Keras's time per image
TIMED_IMAGES = BATCH  # images per timed call when the twin is made: one batch of inference's default batch
TIMED_BATCH = BATCH  # in batches of inference's default batch
# What starting Keras costs a script that otherwise never imports TensorFlow: importing it,
# loading the model and its first call, 3.7-3.9 s on this 2-core machine against 0.4 s for
# OpenVINO (bench/README.md, "Fourth round"); a little less, so ties go to Keras.
KERAS_START_S = 3.5
# OpenVINO's compute precision. "bf16" (its default on AMX CPUs) is about 3.5x faster at 256 px
# but moves the maps; bench/bench_precision.py measures what that costs in quality.
PRECISION = "f32"
_SOURCE_KEY = "cae_source_sha256"  # SHA-256 of the .keras file the twin was made from
_WEIGHTS_KEY = "cae_weights_sha256"  # hash of the twin's own graph and weights (see weights_hash)
_USE_KEY = "cae_use"  # "onnx" or "keras": which computes faster here (see convert)
_MS_KEY = "cae_ms_per_image"  # "onnx 7.80, keras 15.80": the timings behind the verdict
_RUNTIME_KEY = "cae_runtime"  # what computed the twin's timing; a twin timed by another runtime is made again
RUNTIME = "openvino"


def twin_path(model_path) -> Path:
    """Where the ONNX twin of the model file ``model_path`` lives."""
    return Path(model_path).with_suffix(SUFFIX)


def source_stamp(model_path) -> str:
    """The model file's identity for its twin: the SHA-256 of its content (storage.model_id)."""
    return storage.model_id(model_path)


def weights_hash(model) -> str:
    """SHA-256 of an OpenVINO model's graph as read: every operation's type and every
    constant's bytes (the weights), in graph order; the twin records it so damaged weights
    under intact metadata are noticed (about 4 ms for a 3-MB twin)."""
    import hashlib

    digest = hashlib.sha256()
    for op in model.get_ordered_ops():
        digest.update(op.get_type_name().encode())
        if op.get_type_name() == "Constant":
            digest.update(np.ascontiguousarray(op.get_data()).tobytes())
    return digest.hexdigest()


class Network:
    """The one interface scoring asks of a network, whichever backend computes it:
    ``predict(x, batch_size)`` gives float32 outputs of ``x`` (one N×… array, or a list of
    arrays for a network with several inputs), ``input_shape`` its input shape with the batch
    axis None (a list of them for several inputs). :class:`KerasNetwork` and
    :class:`OpenVinoNetwork` are the backends; :func:`load` picks one for a model file."""

    input_shape: tuple

    def predict(self, x, batch_size: int = BATCH) -> np.ndarray:
        raise NotImplementedError


def _arrays(x) -> list[np.ndarray]:
    return [np.asarray(a, np.float32) for a in (x if isinstance(x, (list, tuple)) else [x])]


class KerasNetwork(Network):
    """A Keras model (or anything with Keras's ``predict(x, batch_size=, verbose=)``) as a
    :class:`Network`; ``model`` is the wrapped object."""

    def __init__(self, model):
        self.model = model
        self.input_shape = getattr(model, "input_shape", None)

    def predict(self, x, batch_size: int = BATCH) -> np.ndarray:
        """Outputs of ``x`` in batches of ``batch_size``. A short last batch is padded to a
        whole one: every new input shape makes TensorFlow trace its predict function again
        (slow, and a warning on every script run)."""
        arrays = _arrays(x)
        n = len(arrays[0])
        if n == 0:
            return np.zeros((0,), np.float32)
        short = -n % batch_size
        if short:
            arrays = [np.concatenate([a, np.repeat(a[-1:], short, axis=0)]) for a in arrays]
        out = self.model.predict(arrays if len(arrays) > 1 else arrays[0], batch_size=batch_size, verbose=0)
        return np.asarray(out[:n], np.float32)


class OpenVinoNetwork(Network):
    """The ONNX twin compiled by OpenVINO as a :class:`Network`."""

    def __init__(self, compiled, source: Path, input_shape: tuple):
        self.compiled = compiled
        self.source = source
        self.input_shape = input_shape  # the network's own (None where it takes any size)
        self._request = compiled.create_infer_request()

    def predict(self, x, batch_size: int = BATCH) -> np.ndarray:
        """Outputs of ``x``, computed one image at a time (``batch_size`` is not needed).

        One image per call: OpenVINO's kernels round differently for each batch size (1e-6), so
        batches would make an image's map depend on how a folder is chunked; one at a time
        costs 0-14% per image here (bench/README.md, "Fourth round") and needs no padding."""
        arrays = _arrays(x)
        # share_outputs=False: each result is a copy, not the request's buffer the next call overwrites.
        out = [
            self._request.infer([a[i : i + 1] for a in arrays], share_outputs=False)[0] for i in range(len(arrays[0]))
        ]
        return np.concatenate(out) if out else np.zeros((0,), np.float32)


def network(model) -> Network:
    """``model`` as a :class:`Network`: itself when it is one, else wrapped as a Keras model."""
    return model if isinstance(model, Network) else KerasNetwork(model)


@functools.cache
def _core():
    """The process's one OpenVINO runtime core (reading and compiling share it)."""
    import openvino as ov

    return ov.Core()


def _read(source):
    """``(OpenVINO model, its metadata)`` of an ONNX twin: a file path or the model's bytes."""
    model = _core().read_model(source if isinstance(source, bytes) else str(source))
    keys = (_SOURCE_KEY, _WEIGHTS_KEY, _USE_KEY, _MS_KEY, _RUNTIME_KEY)
    meta = {k: model.get_rt_info(["framework", k]).astype(str) for k in keys if model.has_rt_info(["framework", k])}
    return model, meta


def _compile(model, source: Path, shape: tuple[int, int] | None = None) -> OpenVinoNetwork:
    """``model`` (from :func:`_read`) compiled for this CPU in :data:`PRECISION` (float32):
    OpenVINO would otherwise compute in bfloat16 where the CPU has it (AMX), which moves the maps.

    ``shape``: the height and width of every image it will see, fixed in the compiled
    network where the model takes any size (surface runs, the learned head): OpenVINO then
    plans its buffers once (commutator strips: about 400 MiB less per network)."""
    import openvino as ov

    dims = [list(i.get_partial_shape())[1:] for i in model.inputs]
    input_shape = (None, *(d.get_length() if d.is_static else None for d in dims[0]))
    if shape is not None and all(len(d) == 3 and not (d[0].is_static and d[1].is_static) for d in dims):
        model.reshape(
            {
                i.get_any_name(): ov.PartialShape([-1, *(int(v) for v in shape), d[2]])
                for i, d in zip(model.inputs, dims)
            }
        )
    config = {"INFERENCE_PRECISION_HINT": PRECISION, "PERFORMANCE_HINT": "LATENCY"}
    return OpenVinoNetwork(_core().compile_model(model, "CPU", config), source, input_shape)


def twin_metadata(source) -> dict:
    """What a twin (path or bytes) records: model hash, weights hash, verdict, timings, runtime."""
    return _read(source)[1]


def _probe_inputs(model, n: int = 2, shape: tuple[int, int] | None = None) -> list[np.ndarray]:
    """``n`` deterministic inputs per network input, at its size (``shape``, else 64 px, where
    it has none)."""
    rng = np.random.default_rng(0)
    probes = []
    for tensor in model.inputs:
        dims = list(tuple(tensor.shape)[1:])
        fill = list(shape or (64, 64)) + [None] * len(dims)
        dims = [d if d is not None else fill[i] for i, d in enumerate(dims)]
        probes.append(rng.random((n, *dims), dtype=np.float32))
    return probes


def _seconds_per_image(predicts, inputs, rounds: int = 3) -> list[float]:
    """Seconds per image of each ``predict(inputs)`` in ``predicts``: the best of ``rounds``
    timed calls after a warm-up, the calls taking turns so a busy moment of the machine
    does not fall on one of them only."""
    import time

    for predict in predicts:
        predict(inputs)
    best = [float("inf")] * len(predicts)
    for _ in range(rounds):
        for k, predict in enumerate(predicts):
            started = time.perf_counter()
            predict(inputs)
            best[k] = min(best[k], time.perf_counter() - started)
    return [b / len(inputs[0]) for b in best]


def convert(model, stamp: str, shape: tuple[int, int] | None = None):
    """``model`` as ONNX bytes with ``stamp`` (the model file's SHA-256), the hash of its own
    weights (:func:`weights_hash`) and a speed verdict in its metadata, or None when
    tf2onnx is missing, fails, or its graph disagrees with Keras by more than
    :data:`TOLERANCE` on probe inputs.

    The verdict: both compute :data:`TIMED_IMAGES` images of ``shape`` (the images the run
    maps; the model's own size where it has one), Keras in batches of :data:`TIMED_BATCH`; the
    twin is used when it takes at most :data:`SLOWER_LIMIT` times Keras's time per image
    (:func:`use_twin` weighs Keras's start too). On this 2-core CPU OpenVINO is faster
    at every size measured (bench/README.md, "Fourth round"); ONNX Runtime, used before,
    was 1.5x slower than Keras at 256 px and on 256x640 strips."""
    try:
        import onnx
        import tensorflow as tf
        import tf2onnx
    except ImportError:
        return None
    specs = [
        tf.TensorSpec((None, *tuple(t.shape)[1:]), tf.float32, name=f"input_{i}") for i, t in enumerate(model.inputs)
    ]
    try:
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=specs, opset=OPSET)
    except Exception:  # noqa: BLE001 - an unsupported layer: Keras does the work instead
        return None
    probes = _probe_inputs(model, 2, shape)

    def keras_predict(x):
        return np.asarray(model.predict(x if len(x) > 1 else x[0], batch_size=TIMED_BATCH, verbose=0), np.float32)

    try:
        read = _read(proto.SerializeToString())[0]
        weights = weights_hash(read)
        twin = _compile(read, Path("<memory>"), shape)
        got = twin.predict(probes)
    except Exception:  # noqa: BLE001
        return None
    expected = keras_predict(probes)
    if got.shape != expected.shape or not np.abs(got - expected).max() <= TOLERANCE:
        return None
    timed = _probe_inputs(model, TIMED_IMAGES, shape)
    onnx_s, keras_s = _seconds_per_image([twin.predict, keras_predict], timed)
    verdict = "onnx" if onnx_s <= SLOWER_LIMIT * keras_s else "keras"
    onnx.helper.set_model_props(
        proto,
        {
            _SOURCE_KEY: stamp,
            _WEIGHTS_KEY: weights,
            _USE_KEY: verdict,
            _MS_KEY: f"onnx {1e3 * onnx_s:.2f}, keras {1e3 * keras_s:.2f}",
            _RUNTIME_KEY: RUNTIME,
        },
    )
    return proto.SerializeToString()


def use_twin(meta: dict, images: int | None = None) -> bool:
    """Whether a twin with metadata ``meta`` should compute ``images`` images in this process.

    Without a count (or when Keras is already imported, its start paid), the twin's own
    verdict: at most :data:`SLOWER_LIMIT` times Keras's time per image. With one, what the
    whole job costs: a slower twin still wins while its extra time on ``images`` images
    stays below :data:`KERAS_START_S`, the start Keras would add (e.g. 83 test images at
    256 px; a few thousand go to Keras)."""
    verdict = meta.get(_USE_KEY) == "onnx"
    match = re.fullmatch(r"onnx ([0-9.]+), keras ([0-9.]+)", meta.get(_MS_KEY, ""))
    if images is None or match is None or "keras" in sys.modules:
        return verdict
    onnx_ms, keras_ms = (float(v) for v in match.groups())
    return images * onnx_ms <= images * keras_ms * SLOWER_LIMIT + 1e3 * KERAS_START_S


def load(model_path, load_keras, shape: tuple[int, int] | None = None, images: int | None = None):
    """The :class:`Network` to score images with for the model file ``model_path``: its ONNX
    twin (:class:`OpenVinoNetwork`) when one matches the file (converted and saved now when
    missing or stale) and computes ``images`` images (None: an unknown number) faster than
    Keras would with its start (:func:`use_twin`), else the Keras model ``load_keras()``
    returns (:class:`KerasNetwork`). ``shape``: the
    images' height and width, for a network that takes any size. See the module's docstring."""
    model_path = Path(model_path)
    if os.environ.get(ENV, "").lower() == "keras":
        return KerasNetwork(load_keras())
    if not model_path.is_file():
        return KerasNetwork(load_keras())  # its one-line error
    try:
        import openvino  # noqa: F401
    except ImportError:
        return KerasNetwork(load_keras())
    stamp = source_stamp(model_path)
    twin = twin_path(model_path)
    if twin.is_file():
        problem = None
        try:
            read, meta = _read(twin)
            if meta.get(_SOURCE_KEY) != stamp:
                problem = f"was made from another {model_path.name} (retrained or replaced since)"
            elif meta.get(_RUNTIME_KEY) != RUNTIME:
                problem = f"was timed by {meta.get(_RUNTIME_KEY) or 'another runtime'}"
            elif meta.get(_WEIGHTS_KEY) != weights_hash(read):
                problem = "has damaged weights (they differ from the hash it records)"
            else:
                return _compile(read, twin, shape) if use_twin(meta, images) else KerasNetwork(load_keras())
        except Exception as exc:  # noqa: BLE001 - damaged: converted again below
            problem = f"is unreadable ({exc.__class__.__name__})"
        warn(f"the ONNX twin {twin} {problem}: made again from {model_path.name}")
    model = load_keras()
    started = time.time()
    print(
        f"making the OpenVINO twin of {model_path.name} (ONNX conversion, checked and timed against Keras)...",
        file=sys.stderr,
        flush=True,
    )
    data = convert(model, stamp, shape)
    if data is None:
        print(f"no twin for {model_path.name}: scoring with Keras", file=sys.stderr, flush=True)
        return KerasNetwork(model)
    print(f"twin of {model_path.name} ready in {time.time() - started:.0f} s", file=sys.stderr, flush=True)
    try:
        with storage.atomic_path(twin) as tmp:
            tmp.write_bytes(data)
    except OSError:
        pass  # a read-only run folder: the twin lives in memory for this process only
    read, meta = _read(data)
    return _compile(read, twin, shape) if use_twin(meta, images) else KerasNetwork(model)
