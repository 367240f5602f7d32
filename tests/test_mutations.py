"""Fast tests that each kill one mutation no other fast test caught (issue 25, bench/README.md
"Mutation check"): the residual baseline's neighbourhood window (inference.py), the order of
the learned head's inputs (learned.py), and exclusive locks (runs.py / storage.py).

Each test compares against an independent computation or an independent process, so a wrong
line fails it in seconds rather than in an end-to-end run.
"""

import importlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import inference  # noqa: E402
from utils import UserError  # noqa: E402

# ---- (a) the baseline: per-pixel quantile of smoothed maps, then the max over (2t+1)² neighbours ----


def _reference_usual(maps, sigma, quantile, tolerance):
    """The baseline computed independently: scipy's Gaussian (mirrored borders, as cv2's
    BORDER_REFLECT), NumPy's quantile, then a brute-force maximum over every pixel's
    neighbours within ``tolerance`` px (borders clamped, as ``mode="nearest"``)."""
    from scipy.ndimage import gaussian_filter

    smoothed = np.stack([gaussian_filter(m.astype(np.float64), sigma, mode="reflect", truncate=4.0) for m in maps])
    usual = np.quantile(smoothed, quantile, axis=0)
    h, w = usual.shape
    out = np.empty_like(usual)
    for y in range(h):
        for x in range(w):
            window = usual[max(0, y - tolerance) : y + tolerance + 1, max(0, x - tolerance) : x + tolerance + 1]
            out[y, x] = window.max()
    return out


def test_baseline_equals_an_independent_computation_on_random_maps():
    rng = np.random.default_rng(3)
    maps = rng.random((7, 12, 11)).astype(np.float32)
    got = inference._usual_residual(maps)
    want = _reference_usual(maps, inference.BASELINE_SIGMA, inference.BASELINE_QUANTILE, inference.BASELINE_TOLERANCE)
    assert got.shape == (12, 11) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_baseline_spreads_a_usual_spot_exactly_t_pixels_every_way():
    """No smoothing and a constant quantile isolate the neighbourhood maximum: one bright
    pixel makes exactly its (2t+1)² square bright, symmetric about it."""
    t = inference.BASELINE_TOLERANCE
    maps = np.zeros((4, 9, 9), np.float32)
    maps[:, 4, 4] = 1.0
    saved = inference.BASELINE_SIGMA
    try:
        inference.BASELINE_SIGMA = 0  # resmaps.smooth returns the maps as they are
        got = inference._usual_residual(maps)
    finally:
        inference.BASELINE_SIGMA = saved
    want = np.zeros((9, 9), np.float32)
    want[4 - t : 4 + t + 1, 4 - t : 4 + t + 1] = 1.0
    np.testing.assert_array_equal(got, want)


# ---- (b) the learned head sees [image, reconstruction], in that order ----


class HalfModel:
    """A stand-in autoencoder whose reconstruction is half the image (Keras's call and
    ``predict``), so images and reconstructions differ everywhere they are not 0."""

    input_shape = (None, None, None, 1)  # fully convolutional: training_batch reconstructs the crops

    def __call__(self, x, training=False):
        return x * 0.5  # arrays and (traced) tensors alike

    def predict(self, x, batch_size=16, verbose=0):
        return self(np.asarray(x, np.float32))


def test_learned_maps_feed_the_head_image_then_reconstruction():
    """A tiny Keras head whose output is ``image − reconstruction`` (inputs named as
    models.segmentation_head's): the map is +0.5·image, never −0.5·image."""
    import keras

    import learned

    image = keras.Input((None, None, 1), name="image")
    recon = keras.Input((None, None, 1), name="reconstruction")
    head = keras.Model([image, recon], keras.layers.Subtract()([image, recon]))
    rng = np.random.default_rng(0)
    images = rng.uniform(0.2, 1.0, (3, 8, 8, 1)).astype(np.float32)
    recons, maps = learned.learned_maps(HalfModel(), head, images, batch=2)
    np.testing.assert_allclose(recons, images * 0.5, atol=1e-6)
    np.testing.assert_allclose(maps, images[..., 0] * 0.5, atol=1e-6)


def test_segmentation_head_takes_the_image_first():
    import models

    head = models.segmentation_head(channels=1, filters=(2, 2, 2, 2))
    assert [t.name.split(":")[0] for t in head.inputs] == ["image", "reconstruction"]


class RecordingHead:
    """Stands in for models.segmentation_head in train_head: records what every training
    step and every BatchNorm-settling call passes in."""

    def __init__(self):
        self.inputs = []
        self.layers = []

    def compile(self, **kwargs):
        pass

    def train_on_batch(self, inputs, y):
        self.inputs.append([np.asarray(a) for a in inputs])
        return 0.1

    def __call__(self, inputs, training=False):
        import tensorflow as tf

        def record(*arrays):  # also from inside a traced function (settle_batch_norm traces its calls)
            self.inputs.append([np.asarray(a) for a in arrays])
            return np.float32(0)

        return tf.numpy_function(record, list(inputs), tf.float32)

    def save(self, path):
        Path(path).write_bytes(b"head")


def test_head_training_feeds_image_then_reconstruction(tmp_path, monkeypatch):
    import learned
    import models

    head = RecordingHead()
    monkeypatch.setattr(models, "segmentation_head", lambda channels=1, **kw: head)
    rng = np.random.default_rng(1)
    images = rng.uniform(0.2, 1.0, (4, 16, 16, 1)).astype(np.float32)
    learned.train_head(HalfModel(), images, tmp_path / "head.keras", steps=3, patch=8, batch=2, progress=False)
    assert len(head.inputs) == 3 + learned.SETTLE_BATCHES  # every training step and settling batch
    for first, second in head.inputs:
        assert first.shape == second.shape == (2, 8, 8, 1)
        np.testing.assert_allclose(second, first * 0.5, atol=1e-6)  # [image, its reconstruction]
        assert first.max() > 0.2  # the images themselves (a reconstruction is at most 0.5)


# ---- (c) exclusive locks exclude every other taker, shared ones only writers ----


def _lock_module():
    """Where RunLock lives now (runs.py; storage.py once the file helpers move there)."""
    runs = importlib.import_module("runs")
    if hasattr(runs, "RunLock") and hasattr(runs, "writing"):
        return runs
    return importlib.import_module("storage")


_PROBE = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
for name in ("LOCK_SH", "LOCK_EX"):
    try:
        fcntl.flock(fd, getattr(fcntl, name) | fcntl.LOCK_NB)
    except BlockingIOError:
        print(name, "blocked")
    else:
        print(name, "taken")
        fcntl.flock(fd, fcntl.LOCK_UN)
"""


def _probe(path):
    """What another process gets for a non-blocking shared and exclusive flock on ``path``.
    The lock under test is held before the probe starts and released after it ends: no race."""
    done = subprocess.run([sys.executable, "-c", _PROBE, str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return dict(line.split() for line in done.stdout.splitlines())


def test_exclusive_run_lock_excludes_every_other_taker(tmp_path):
    locks = _lock_module()
    run = tmp_path / "run"
    run.mkdir()
    held = locks.RunLock(run, exclusive=True)
    try:
        assert _probe(run / locks.LOCK) == {"LOCK_SH": "blocked", "LOCK_EX": "blocked"}
        for exclusive in (False, True):  # this process too, through a second open file
            with pytest.raises(UserError, match="by another process"):
                locks.RunLock(run, exclusive=exclusive)
    finally:
        held.release()
    assert _probe(run / locks.LOCK) == {"LOCK_SH": "taken", "LOCK_EX": "taken"}


def test_shared_run_lock_admits_readers_and_excludes_a_trainer(tmp_path):
    locks = _lock_module()
    run = tmp_path / "run"
    run.mkdir()
    held = locks.RunLock(run, exclusive=False)
    try:
        assert _probe(run / locks.LOCK) == {"LOCK_SH": "taken", "LOCK_EX": "blocked"}
        locks.RunLock(run, exclusive=False).release()
        with pytest.raises(UserError, match="in use by another process"):
            locks.RunLock(run, exclusive=True)
    finally:
        held.release()


def test_writing_lock_excludes_another_process(tmp_path):
    locks = _lock_module()
    folder = tmp_path / "result"
    with locks.writing(folder):
        assert _probe(folder) == {"LOCK_SH": "blocked", "LOCK_EX": "blocked"}
        with locks.writing(folder):  # re-entrant within this process
            pass
    assert _probe(folder) == {"LOCK_SH": "taken", "LOCK_EX": "taken"}
