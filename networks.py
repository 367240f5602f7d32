"""The networks a run scores images with: its Keras model, or that model's ONNX twin.

Scoring images needs only the forward pass, and TensorFlow is a heavy way to get it:
importing it costs about 3.5 s of every ``test.py`` / ``validate.py`` start, and Keras's
``predict`` builds a dataset per call (about 0.25 s per call, four calls per map pass).
ONNX Runtime imports in 0.3 s. So the first time a model is used for inference it is
converted (tf2onnx, opset 17), checked against Keras on a few inputs, and saved beside it
as ``<model>.onnx`` with the model file's stamp (modification time and size) in its
metadata; later runs of the scripts load that file and never import TensorFlow. A stale
(model retrained or resumed), damaged or unreadable twin is converted again; a model the
converter cannot handle, or one whose twin disagrees with it, is used through Keras.

``CAE_INFERENCE=keras`` in the environment keeps every script on Keras (to compare, or to
rule the twin out). The two agree to about 1e-6 on reconstructions (float32 rounding of
different kernels); ``tests/test_networks.py`` pins it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

ENV = "CAE_INFERENCE"  # "keras": never use the ONNX twin
SUFFIX = ".onnx"
OPSET = 17
TOLERANCE = 1e-4  # largest |ONNX - Keras| on the probe inputs for the twin to be used
_STAMP_KEY = "cae_source_stamp"


def twin_path(model_path) -> Path:
    """Where the ONNX twin of the model file ``model_path`` lives."""
    return Path(model_path).with_suffix(SUFFIX)


def source_stamp(model_path) -> str:
    """The model file's identity for its twin: modification time (ns) and size."""
    st = Path(model_path).stat()
    return f"{st.st_mtime_ns}:{st.st_size}"


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


def _probe_inputs(model) -> list[np.ndarray]:
    """Two deterministic inputs per network input, at its size (64 px where it has none)."""
    rng = np.random.default_rng(0)
    probes = []
    for tensor in model.inputs:
        dims = [d if d is not None else 64 for d in tuple(tensor.shape)[1:]]
        probes.append(rng.random((2, *dims), dtype=np.float32))
    return probes


def convert(model, stamp: str):
    """``model`` as ONNX bytes with ``stamp`` in its metadata, or None when tf2onnx is missing,
    fails, or its graph disagrees with Keras by more than :data:`TOLERANCE` on probe inputs."""
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
    onnx.helper.set_model_props(proto, {_STAMP_KEY: stamp})
    data = proto.SerializeToString()
    probes = _probe_inputs(model)
    expected = np.asarray(model.predict(probes if len(probes) > 1 else probes[0], verbose=0), np.float32)
    try:
        got = OnnxNetwork(_session(data), Path("<memory>")).predict(probes, batch_size=len(probes[0]))
    except Exception:  # noqa: BLE001
        return None
    if got.shape != expected.shape or not np.abs(got - expected).max() <= TOLERANCE:
        return None
    return data


def load(model_path, load_keras):
    """The network to score images with for the model file ``model_path``: its ONNX twin when
    one matches the file (converted and saved now when missing or stale), else the Keras
    model ``load_keras()`` returns. See the module's docstring."""
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
            if session.get_modelmeta().custom_metadata_map.get(_STAMP_KEY) == stamp:
                return OnnxNetwork(session, twin)
        except Exception:  # noqa: BLE001 - damaged: converted again below
            pass
    model = load_keras()
    data = convert(model, stamp)
    if data is None:
        return model
    try:
        with runs.atomic_path(twin) as tmp:
            tmp.write_bytes(data)
    except OSError:
        pass  # a read-only run folder: the twin lives in memory for this process only
    try:
        return OnnxNetwork(_session(data), twin)
    except Exception:  # noqa: BLE001
        return model
