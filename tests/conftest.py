"""Shared fixtures: a tiny generated dataset and a tiny trained run (session-scoped, CPU-fast)."""

import contextlib
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("MPLBACKEND", "Agg")

# The ONNX twin's speed verdict (networks.py) depends on timing; tests take the twin
# whenever it converts, so which path a test exercises does not depend on the machine's load.
import networks  # noqa: E402

networks.SLOWER_LIMIT = float("inf")

# Figures at 40 dpi, not 150, in every test: what a figure draws does not depend on it (layout
# is in inches), and an overlay took 0.6 s at 150 dpi against 0.3 s.
import figures  # noqa: E402

figures.DPI = 40

# Most runs a test trains are never scored by a script: their ONNX twins (~1/3 of a tiny
# training) are made at first use instead. The shared runs below, and every run a script's own
# process trains, make them at once as users' runs do (see with_twins).
import training  # noqa: E402

training.TWINS_AFTER_TRAINING = False

# A tiny object run trains for 3-6 steps; tracing them into a graph took ~5 of its ~9 s. Tests
# run trainings (and learned heads) of fewer than 20 steps eagerly (the same arithmetic; a
# 3-step head took 21 s traced, 6 s eager; a surface run's 128 patch
# steps stay traced, eager they took 3x longer). The shared run below, the tests of options that
# live in the graph (strategies, precision, XLA, losses: mark graph_training) and every run a
# script's own process trains (demo, bench, kill -9, CLI subprocesses) trace as users' runs do.
training.EAGER_BELOW_STEPS = 20

# A surface epoch repeats a small class's images until it holds 256 patches (64 steps of a tiny
# run, traced); the tests' surface runs check wiring, not what 256 patches teach: 32 (8 steps).
import regime  # noqa: E402

PRODUCT_MIN_PATCHES = regime.MIN_PATCHES_PER_EPOCH
regime.MIN_PATCHES_PER_EPOCH = 32

# A tiny test head trains for 10-20 steps; settling its BatchNormalization statistics over 64
# batches took longer than training it. 8 batches still average its statistics (tests that
# judge a head's quality set the product's 64 back).
import learned  # noqa: E402

PRODUCT_SETTLE_BATCHES = learned.SETTLE_BATCHES
learned.SETTLE_BATCHES = 8


TEST_EAGER_BELOW_STEPS = training.EAGER_BELOW_STEPS


@contextlib.contextmanager
def graph_training():
    """Train as users' runs do inside: every step traced into a graph."""
    training.EAGER_BELOW_STEPS = 0
    try:
        yield
    finally:
        training.EAGER_BELOW_STEPS = TEST_EAGER_BELOW_STEPS


@pytest.fixture(autouse=True)
def _graph_training_mark(request):
    """Tests marked ``graph_training`` train with their steps traced, as users' runs do."""
    if request.node.get_closest_marker("graph_training") is None:
        yield
        return
    with graph_training():
        yield


def with_twins(train):
    """Call ``train()`` with the twins made right after training, as for a user's run."""
    training.TWINS_AFTER_TRAINING = True
    try:
        return train()
    finally:
        training.TWINS_AFTER_TRAINING = False


SIZE = 48
REAL_BOTTLE = ROOT.parent / "shared" / "data" / "mvtec_real" / "bottle"


def train_args(directory, out, **overrides):
    """The settings ``train.py new`` would build (a :class:`settings.TrainConfig`), with tiny-run defaults."""
    args = dict(
        directory=str(directory),
        architecture="mvtec2",
        batch=4,
        loss="ssim",
        color="grayscale",
        instances=10000,
        tag="test",
        size=SIZE,
        epochs=2,
        lr=2e-4,
        seed=0,
        val_split=0.2,
        patience=10,
        no_augment=False,
        rotation=10.0,
        flip=False,
        denoise=0.0,
        weights="none",
        out=str(out),
        mode="object",  # a plain object-mode autoencoder on one device, no learned head: fast
        head_steps=0,
        strategy="one",
    )
    args.update(overrides)
    from settings import TrainConfig

    return TrainConfig(**args)


def load_script(name):
    """A top-level script (``"test"`` for test.py) loaded by its file, under a private module
    name: ``import test`` could give the standard library's package."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"cae_script_{name}", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_quietly(main, argv):
    """``run_cli(main, argv)`` where there is no capsys (module-scoped fixtures): ``(exit code,
    stdout, stderr)``, argparse's own exits included."""
    import io

    from utils import run_cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = run_cli(main, [str(a) for a in argv])
        except SystemExit as exc:  # argparse's own errors
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def cli(main, argv, capsys):
    """Run a script's ``main`` through ``run_cli``; return ``(exit code, stdout, stderr)``."""
    from utils import run_cli

    try:
        code = run_cli(main, argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A grayscale MVTec-layout class (brick, 48 px): 14 train, 3 good test, 2 per defect type."""
    import make_dataset

    root = tmp_path_factory.mktemp("mvtec")
    (class_dir,) = make_dataset.generate(
        root, classes=("brick",), size=SIZE, n_train=14, n_test_good=3, n_test_defect=2, seed=0
    )
    return class_dir


@pytest.fixture(scope="session")
def tiny_run(tiny_dataset, tmp_path_factory):
    """A 2-epoch mvtec2/ssim run on the tiny dataset; returns the run folder."""
    import training

    out = tmp_path_factory.mktemp("runs")
    with graph_training():  # the run most tests read is trained as users' are
        run_dir, _ = with_twins(lambda: training.new_run(train_args(tiny_dataset, out)))
    return run_dir


# Seconds each long file took in the whole suite (two workers, one TensorFlow thread each,
# 2026-12-03, 22:05 run). `scripts/test.sh` gives each worker whole files (--dist loadfile) in
# collection order; xdist's own order (most tests first) left a long one-test file such as
# test_demo.py for the end, one worker idle meanwhile. Longest first, the rest after in
# pytest-randomly's order, keeps both busy to the end (that run: the workers ended 5 s apart).
FILE_SECONDS = {
    "test_export_methods.py": 170,  # 168 s alone, one thread, 2026-12-04 (a fused export with usual maps added)
    "test_reliability.py": 145,
    "test_train.py": 125,
    "test_scale.py": 65,
    "test_networks.py": 55,
    "test_quality.py": 50,
    "test_demo.py": 50,
    "test_bench_suite.py": 40,
    "test_postprocess_cli.py": 40,
    "test_models.py": 35,
    "test_export.py": 35,
    "test_interrupt.py": 25,
    "test_real_bottle.py": 15,
    "test_cli_help.py": 15,
}


@pytest.hookimpl(trylast=True)  # after pytest-randomly has shuffled files and tests
def pytest_collection_modifyitems(items):
    """Longest files first (:data:`FILE_SECONDS`); a stable sort keeps every file's own order."""
    items.sort(key=lambda item: -FILE_SECONDS.get(item.path.name, 0))
