"""networks.py: the ONNX twin of a run's model (made once, checked, reused without TensorFlow,
computed by OpenVINO)."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

import networks
import runs
import storage


@pytest.fixture
def tiny_model(tmp_path):
    """An untrained 32-px mvtec2 CAE saved as .keras; returns its path."""
    import models

    path = tmp_path / "model.keras"
    models.mvtec2_cae(size=32, channels=3).save(path)
    return path


def _keras(path):
    return lambda: runs.load_keras(path, compile=False)


def test_twin_is_made_once_matches_keras_and_is_reused_without_keras(tiny_model, monkeypatch):
    net = networks.load(tiny_model, _keras(tiny_model))
    twin = networks.twin_path(tiny_model)
    assert isinstance(net, networks.OpenVinoNetwork) and twin.is_file()
    assert net.input_shape == (None, 32, 32, 3)
    x = np.random.default_rng(1).random((5, 32, 32, 3), dtype=np.float32)
    expected = runs.load_keras(tiny_model).predict(x, verbose=0)
    got = net.predict(x, batch_size=2)
    assert got.shape == (5, 32, 32, 3)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # One image at a time: an image's output does not depend on the others it comes with.
    np.testing.assert_array_equal(np.concatenate([net.predict(x[:2]), net.predict(x[2:])]), got)
    # Second use: the twin on disk, the Keras model never loaded.
    monkeypatch.setattr(networks, "convert", lambda *a: pytest.fail("converted again"))
    again = networks.load(tiny_model, lambda: pytest.fail("Keras model loaded"))
    np.testing.assert_allclose(again.predict(x), got, atol=1e-6)


def test_twin_is_checked_by_content_not_by_stamp(tiny_model, monkeypatch, capsys):
    networks.load(tiny_model, _keras(tiny_model))
    made = capsys.readouterr().err.splitlines()  # making a twin says so, and when it is ready
    assert made[0].startswith("making the OpenVINO twin of") and made[-1].startswith("twin of")
    twin = networks.twin_path(tiny_model)
    meta = networks.twin_metadata(twin)
    assert meta["cae_source_sha256"] == storage.model_id(tiny_model)
    first = twin.read_bytes()
    # Touched (copied, moved, restored from a backup) but the same weights: the twin is kept.
    st = tiny_model.stat()
    os.utime(tiny_model, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with monkeypatch.context() as m:
        m.setattr(networks, "convert", lambda *a: pytest.fail("converted again"))
        assert isinstance(networks.load(tiny_model, _keras(tiny_model)), networks.OpenVinoNetwork)
    assert twin.read_bytes() == first and capsys.readouterr().err == ""
    # Unreadable: made again, with one line.
    twin.write_bytes(b"not an onnx file")
    net = networks.load(tiny_model, _keras(tiny_model))
    assert isinstance(net, networks.OpenVinoNetwork) and twin.stat().st_size > 1000
    err = capsys.readouterr().err
    warned = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1 and "is unreadable" in warned[0] and "made again" in warned[0]


def test_twin_of_other_weights_is_made_again(tiny_model, capsys):
    import models

    networks.load(tiny_model, _keras(tiny_model))
    twin = networks.twin_path(tiny_model)
    old = networks.twin_metadata(twin)["cae_source_sha256"]
    stat = tiny_model.stat()
    models.mvtec2_cae(size=32, channels=3).save(tiny_model)  # other weights (e.g. retrained) ...
    os.utime(tiny_model, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # ... even under the old time stamp
    net = networks.load(tiny_model, _keras(tiny_model))
    assert networks.twin_metadata(twin)["cae_source_sha256"] == storage.model_id(tiny_model) != old
    x = np.random.default_rng(3).random((2, 32, 32, 3), dtype=np.float32)
    np.testing.assert_allclose(net.predict(x), runs.load_keras(tiny_model).predict(x, verbose=0), atol=1e-5)
    assert "was made from another model.keras" in capsys.readouterr().err


def test_twin_with_damaged_weights_under_intact_metadata_is_made_again(tiny_model, capsys):
    import onnx
    from onnx import numpy_helper

    networks.load(tiny_model, _keras(tiny_model))
    twin = networks.twin_path(tiny_model)
    meta = networks.twin_metadata(twin)
    proto = onnx.load(str(twin))
    big = max(proto.graph.initializer, key=lambda t: numpy_helper.to_array(t).size)
    damaged = numpy_helper.to_array(big).copy()
    damaged.flat[: damaged.size // 2] = 0  # half a kernel zeroed, the metadata untouched
    big.CopyFrom(numpy_helper.from_array(damaged, big.name))
    onnx.save(proto, str(twin))
    assert networks.twin_metadata(twin) == meta  # the model's hash and the verdict still match
    capsys.readouterr()
    net = networks.load(tiny_model, _keras(tiny_model))
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(err) == 1 and "damaged weights" in err[0] and "made again" in err[0]
    x = np.random.default_rng(4).random((2, 32, 32, 3), dtype=np.float32)
    np.testing.assert_allclose(net.predict(x), runs.load_keras(tiny_model).predict(x, verbose=0), atol=1e-5)
    assert capsys.readouterr().err == ""  # made again once, then trusted


def test_twin_timed_by_another_runtime_is_made_again(tiny_model, monkeypatch):
    monkeypatch.setattr(networks, "RUNTIME", "onnxruntime")  # e.g. a twin from before OpenVINO
    networks.load(tiny_model, _keras(tiny_model))
    twin = networks.twin_path(tiny_model)
    assert networks.twin_metadata(twin)["cae_runtime"] == "onnxruntime"
    monkeypatch.undo()
    assert isinstance(networks.load(tiny_model, _keras(tiny_model)), networks.OpenVinoNetwork)
    assert networks.twin_metadata(twin)["cae_runtime"] == "openvino"


def test_keras_when_asked_when_conversion_fails_or_disagrees(tiny_model, monkeypatch):
    import tf2onnx

    monkeypatch.setenv(networks.ENV, "keras")
    assert isinstance(networks.load(tiny_model, _keras(tiny_model)), networks.KerasNetwork)
    assert not networks.twin_path(tiny_model).exists()
    monkeypatch.delenv(networks.ENV)

    def broken(*args, **kwargs):
        raise RuntimeError("unsupported op")

    monkeypatch.setattr(tf2onnx.convert, "from_keras", broken)
    assert isinstance(networks.load(tiny_model, _keras(tiny_model)), networks.KerasNetwork)
    assert not networks.twin_path(tiny_model).exists()
    monkeypatch.undo()
    monkeypatch.setattr(networks, "TOLERANCE", -1.0)  # no twin can agree: Keras is used
    assert isinstance(networks.load(tiny_model, _keras(tiny_model)), networks.KerasNetwork)
    assert not networks.twin_path(tiny_model).exists()


def test_a_slower_twin_is_remembered_and_keras_used(tiny_model, monkeypatch):
    monkeypatch.setattr(networks, "SLOWER_LIMIT", 0.0)  # any twin is "slower"
    assert isinstance(networks.load(tiny_model, _keras(tiny_model)), networks.KerasNetwork)
    twin = networks.twin_path(tiny_model)
    meta = networks.twin_metadata(twin)
    assert meta["cae_use"] == "keras" and meta["cae_ms_per_image"].startswith("onnx ")
    assert meta["cae_runtime"] == networks.RUNTIME
    # The verdict stands for this model file: no second conversion, no second timing.
    monkeypatch.setattr(networks, "SLOWER_LIMIT", float("inf"))
    monkeypatch.setattr(networks, "convert", lambda *a: pytest.fail("converted again"))
    assert isinstance(networks.load(tiny_model, _keras(tiny_model)), networks.KerasNetwork)


def test_use_twin_weighs_the_start_keras_would_add(monkeypatch):
    meta = {"cae_use": "keras", "cae_ms_per_image": "onnx 33.00, keras 20.00"}
    monkeypatch.delitem(sys.modules, "keras", raising=False)  # a script that has not paid Keras's start
    monkeypatch.setattr(networks, "KERAS_START_S", 3.5)
    monkeypatch.setattr(networks, "SLOWER_LIMIT", 1.1)
    # The twin's extra time is 33 - 1.1 * 20 = 11 ms an image: it wins up to 3500 / 11 = 318.2 images.
    assert networks.use_twin(meta, 318) and not networks.use_twin(meta, 319)
    assert not networks.use_twin(meta, None)  # unknown count: the verdict
    assert not networks.use_twin({"cae_use": "keras"}, 10)  # a twin from before its timings: the verdict
    faster = {"cae_use": "onnx", "cae_ms_per_image": "onnx 8.00, keras 16.00"}
    assert networks.use_twin(faster, None) and networks.use_twin(faster, 10**6)
    monkeypatch.setitem(sys.modules, "keras", object())  # Keras already started: per image only
    assert not networks.use_twin(meta, 10) and networks.use_twin(faster, 10)


def test_a_slower_twin_serves_a_small_job_and_keras_a_large_one(tiny_model, monkeypatch):
    monkeypatch.setattr(networks, "SLOWER_LIMIT", 0.0)  # any twin is "slower"
    assert isinstance(networks.load(tiny_model, _keras(tiny_model)), networks.KerasNetwork)  # converted: verdict keras
    monkeypatch.delitem(sys.modules, "keras")
    monkeypatch.setattr(networks, "convert", lambda *a: pytest.fail("converted again"))
    small = networks.load(tiny_model, lambda: pytest.fail("Keras loaded for 2 images"), images=2)
    assert isinstance(small, networks.OpenVinoNetwork)
    assert networks.load(tiny_model, lambda: "keras model", images=10**9).model == "keras model"


def test_timing_inputs_take_the_runs_shape_where_the_network_has_none(tiny_model):
    import models

    head = models.segmentation_head(channels=1)
    (x, y) = networks._probe_inputs(head, 3, (40, 56))
    assert x.shape == y.shape == (3, 40, 56, 1)
    (z,) = networks._probe_inputs(runs.load_keras(tiny_model), 2, (40, 56))
    assert z.shape == (2, 32, 32, 3)  # a fixed-size model keeps its own


def test_unwritable_folder_keeps_the_twin_in_memory(tiny_model, monkeypatch):
    def refuse(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(storage, "atomic_path", refuse)
    net = networks.load(tiny_model, _keras(tiny_model))
    assert isinstance(net, networks.OpenVinoNetwork)
    assert not networks.twin_path(tiny_model).exists()


def test_two_input_head_and_any_size(tmp_path):
    """The learned residual's head: two inputs, fully convolutional (any multiple of 8)."""
    import models

    path = tmp_path / "head.keras"
    head = models.segmentation_head(channels=1)
    head.save(path)
    net = networks.load(path, _keras(path))
    assert isinstance(net, networks.OpenVinoNetwork) and net.input_shape == (None, None, None, 1)
    rng = np.random.default_rng(2)
    x, y = rng.random((3, 40, 56, 1), dtype=np.float32), rng.random((3, 40, 56, 1), dtype=np.float32)
    expected = runs.load_keras(path).predict([x, y], verbose=0)
    np.testing.assert_allclose(net.predict([x, y], batch_size=2), expected, atol=1e-5)
    # Given the run's shape, the twin is compiled for it (fixed buffers) and still reports any size.
    fixed = networks.load(path, lambda: pytest.fail("Keras loaded"), shape=(40, 56))
    assert fixed.input_shape == (None, None, None, 1)
    assert [d.get_length() for d in list(fixed.compiled.inputs[0].get_partial_shape())[1:]] == [40, 56, 1]
    np.testing.assert_allclose(fixed.predict([x, y], batch_size=2), expected, atol=1e-5)


PROBE = """
import runpy, sys
run = sys.argv.pop()
sys.argv = ["test.py", "-p", run, "-t", "0.5", "-a", "10"]
try:
    runpy.run_path("test.py", run_name="__main__")
except SystemExit as exc:
    assert not exc.code, exc.code
print("imported", "tensorflow" in sys.modules, "keras" in sys.modules)
"""


def test_trained_run_has_twins_and_test_py_starts_without_tensorflow(tiny_run, tmp_path):
    """Training writes the twin; test.py on the run then never imports TensorFlow, and scores
    the images as the Keras model does."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("test", "validation"))
    model_path = runs.find_run(run).model_path
    assert networks.twin_path(model_path).is_file()
    networks.twin_path(model_path).unlink()  # made again here, with the verdict "onnx" (fixture)
    assert isinstance(networks.load(model_path, _keras(model_path)), networks.OpenVinoNetwork)

    def test_py(**env):
        done = subprocess.run(
            [sys.executable, "-c", PROBE, str(run)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env={**os.environ, "MPLBACKEND": "Agg", **env},
        )
        assert done.returncode == 0, done.stderr
        (metrics_file,) = run.glob("test/*/a*_t*/metrics.json")
        scores = storage.read_json(metrics_file)
        shutil.rmtree(run / "test")
        return done.stdout, scores

    out, onnx_scores = test_py()
    assert "imported False False" in out
    out, keras_scores = test_py(**{networks.ENV: "keras"})
    assert "imported True True" in out
    for key in ("image_auroc", "pixel_auroc", "au_pro"):
        assert onnx_scores[key] == pytest.approx(keras_scores[key], abs=1e-4)


class _Recording:
    """A Keras-like model: doubles its input and records the batch shapes it was given."""

    input_shape = (None, 4, 4, 1)

    def __init__(self):
        self.seen = []

    def predict(self, x, batch_size=32, verbose=1):
        arrays = x if isinstance(x, list) else [x]
        self.seen.append(([a.shape for a in arrays], batch_size, verbose))
        return 2 * sum(arrays)


def test_both_backends_are_one_interface_and_keras_pads_a_short_batch(tiny_model):
    """Scoring asks every backend the same ``predict(x, batch_size)``: the Keras backend pads a
    short last batch to a whole one (no TensorFlow retracing) and returns exactly the images
    given; the twin computes one image at a time, so it agrees whatever the chunking."""
    model = _Recording()
    net = networks.network(model)
    assert isinstance(net, networks.KerasNetwork) and net.model is model and net.input_shape == (None, 4, 4, 1)
    assert networks.network(net) is net
    x = np.arange(5 * 16, dtype=np.float32).reshape(5, 4, 4, 1)
    got = net.predict(x, 4)
    np.testing.assert_array_equal(got, 2 * x)  # the padding is cut off again
    assert model.seen == [([(8, 4, 4, 1)], 4, 0)]  # 5 images padded to two whole batches, quietly
    got = net.predict([x, x], 5)  # several inputs: each padded alike (none needed here)
    np.testing.assert_array_equal(got, 4 * x)
    assert model.seen[-1] == ([(5, 4, 4, 1), (5, 4, 4, 1)], 5, 0)
    assert net.predict(x[:0]).shape == (0,)
    twin = networks.load(tiny_model, _keras(tiny_model))
    keras_net = networks.KerasNetwork(_keras(tiny_model)())
    assert isinstance(twin, networks.OpenVinoNetwork) and isinstance(twin, networks.Network)
    assert twin.input_shape == keras_net.input_shape == (None, 32, 32, 3)
    images = np.random.default_rng(1).random((3, 32, 32, 3), dtype=np.float32)
    np.testing.assert_allclose(twin.predict(images, 2), keras_net.predict(images, 2), atol=1e-5)
