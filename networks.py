"""The networks a run scores images with: its Keras model, or that model's ONNX twin.

Scoring images needs only the forward pass, and TensorFlow is a heavy way to get it:
importing it costs about 3.5 s of every ``test.py`` / ``validate.py`` start; ONNX Runtime
imports in 0.3 s. So a model used for inference (training does it at its end) is
converted (tf2onnx, opset 17), checked against Keras on probe inputs, timed against Keras
on images of the run's size, and saved beside it as ``<model>.onnx`` with the model file's
stamp (modification time and size) and the timings in its metadata. Where the twin
computes about as fast as Keras, scripts load it and never import TensorFlow; where it is
clearly slower (see :func:`convert`), they use it only for jobs small enough that Keras's
start would cost more than the twin's extra time (:func:`use_twin`), else Keras. A stale (model retrained or resumed), damaged or unreadable twin is made again; a
model the converter cannot handle, or whose twin disagrees with it, stays on Keras.

``CAE_INFERENCE=keras`` in the environment keeps every script on Keras (to compare, or to
rule the twin out). The two agree to about 1e-6 on reconstructions (float32 rounding of
different kernels); ``tests/test_networks.py`` pins it.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import numpy as np

ENV = "CAE_INFERENCE"  # "keras": never use the ONNX twin
SUFFIX = ".onnx"
OPSET = 17
TOLERANCE = 1e-4  # largest |ONNX - Keras| on the probe inputs for the twin to be used
SLOWER_LIMIT = 1.1  # the twin is used unless it takes more than this times Keras's time per image
TIMED_IMAGES = 32  # images per timed call when the twin is made: one chunk of inference.inspect_stream
TIMED_BATCH = 16  # in batches of inference's default --batch
# What starting Keras costs a script that otherwise never imports TensorFlow: importing it,
# loading the model and its first call, 3.7-3.9 s on this 2-core machine against 0.17 s for
# ONNX Runtime (bench/README.md, "Fourth round"); a little less, so ties go to Keras.
KERAS_START_S = 3.5
_STAMP_KEY = "cae_source_stamp"
_USE_KEY = "cae_use"  # "onnx" or "keras": which computes faster here (see convert)
_MS_KEY = "cae_ms_per_image"  # "onnx 7.80, keras 15.80": the timings behind the verdict


def twin_path(model_path) -> Path:
    """Where the ONNX twin of the model file ``model_path`` lives."""
    return Path(model_path).with_suffix(SUFFIX)


def source_stamp(model_path) -> str:
    """The model file's identity for its twin: modification time (ns) and size."""
    import runs

    return "{}:{}".format(*runs.file_stamp(model_path))


class OnnxNetwork:
    """An ONNX Runtime session behind the two calls inference makes of a Keras model:
    ``predict(x, batch_size=..., verbose=...)`` and ``input_shape`` (batch axis None).
    ``x`` is one array, or a list of arrays for a network with several inputs."""

    def __init__(self, session, source: Path):
        self.session = session
        self.source = source
        self._inputs = [i.name for i in session.get_inputs()]
        shape = session.get_inputs()[0].shape
        self.input_shape = tuple(d if isinstance(d, int) else None for d in shape)
        self.input_shape = (None, *self.input_shape[1:])

    def predict(self, x, batch_size: int = 16, verbose: int = 0) -> np.ndarray:
        """Outputs of ``x`` (N×… float32), ``batch_size`` images per session call."""
        arrays = [np.asarray(a, np.float32) for a in (x if isinstance(x, (list, tuple)) else [x])]
        n = len(arrays[0])
        out = [
            self.session.run(None, {k: a[i : i + batch_size] for k, a in zip(self._inputs, arrays)})[0]
            for i in range(0, n, max(int(batch_size), 1))
        ]
        return np.concatenate(out) if out else np.zeros((0,), np.float32)


def _session(source):
    """An ONNX Runtime session of ``source`` (a file path or the model's bytes)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: no start-up chatter on stderr
    return ort.InferenceSession(
        source if isinstance(source, bytes) else str(source), options, providers=["CPUExecutionProvider"]
    )


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
    """``model`` as ONNX bytes with ``stamp`` and a speed verdict in its metadata, or None when
    tf2onnx is missing, fails, or its graph disagrees with Keras by more than
    :data:`TOLERANCE` on probe inputs.

    The verdict: both compute :data:`TIMED_IMAGES` images of ``shape`` (the images the run
    maps; the model's own size where it has one) in batches of :data:`TIMED_BATCH`; the
    twin is used when it takes at most :data:`SLOWER_LIMIT` times Keras's time per image
    (:func:`use_twin` weighs Keras's start too). On this 2-core CPU it is faster at 128 px
    but about 1.5x slower at 256 px and on 256x640 strips (its transposed convolutions)
    (bench/README.md, "ONNX twin")."""
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
    probes = _probe_inputs(model)
    keras_predict = lambda x: np.asarray(model.predict(x if len(x) > 1 else x[0], verbose=0), np.float32)  # noqa: E731
    try:
        twin = OnnxNetwork(_session(proto.SerializeToString()), Path("<memory>"))
        got = twin.predict(probes, batch_size=len(probes[0]))
    except Exception:  # noqa: BLE001
        return None
    expected = keras_predict(probes)
    if got.shape != expected.shape or not np.abs(got - expected).max() <= TOLERANCE:
        return None
    timed = _probe_inputs(model, TIMED_IMAGES, shape)
    onnx_s, keras_s = _seconds_per_image(
        [
            lambda x: twin.predict(x, batch_size=TIMED_BATCH),
            lambda x: model.predict(x if len(x) > 1 else x[0], batch_size=TIMED_BATCH, verbose=0),
        ],
        timed,
    )
    verdict = "onnx" if onnx_s <= SLOWER_LIMIT * keras_s else "keras"
    onnx.helper.set_model_props(
        proto,
        {
            _STAMP_KEY: stamp,
            _USE_KEY: verdict,
            _MS_KEY: f"onnx {1e3 * onnx_s:.2f}, keras {1e3 * keras_s:.2f}",
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
    """The network to score images with for the model file ``model_path``: its ONNX twin when
    one matches the file (converted and saved now when missing or stale) and computes
    ``images`` images (None: an unknown number) faster than Keras would with its start
    (:func:`use_twin`), else the Keras model ``load_keras()`` returns. ``shape``: the
    images' height and width, for a network that takes any size. See the module's docstring."""
    import runs

    model_path = Path(model_path)
    if os.environ.get(ENV, "").lower() == "keras":
        return load_keras()
    if not model_path.is_file():
        return load_keras()  # its one-line error
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return load_keras()
    stamp = source_stamp(model_path)
    twin = twin_path(model_path)
    if twin.is_file():
        try:
            session = _session(twin)
            meta = session.get_modelmeta().custom_metadata_map
            if meta.get(_STAMP_KEY) == stamp:
                return OnnxNetwork(session, twin) if use_twin(meta, images) else load_keras()
        except Exception:  # noqa: BLE001 - damaged: converted again below
            pass
    model = load_keras()
    data = convert(model, stamp, shape)
    if data is None:
        return model
    try:
        with runs.atomic_path(twin) as tmp:
            tmp.write_bytes(data)
    except OSError:
        pass  # a read-only run folder: the twin lives in memory for this process only
    session = _session(data)
    if not use_twin(session.get_modelmeta().custom_metadata_map, images):
        return model
    return OnnxNetwork(session, twin)
