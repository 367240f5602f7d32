"""Scaling out: train.py --strategy (two logical CPU devices, two local workers) and
test.py --images --shard K/N with --merge.

Strategy runs happen in subprocesses: logical devices and the multi-worker strategy must
be configured before TensorFlow starts, which it already has in the pytest process.
"""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, cli, load_script, train_args

import distribution  # noqa: E402
import sharding  # noqa: E402
import train  # noqa: E402
from utils import UserError  # noqa: E402

TRAIN = dict(size=32, mode="object", head_steps=0, patch=None, no_augment=True, denoise=0.0, val_split=0.3)

# Runs training.new_run (or resume_run) with the CPU split into DEVICES logical devices.
RUNNER = """
import json, sys
sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
from utils import quiet_tensorflow; quiet_tensorflow()
import tensorflow as tf
tf.config.set_visible_devices([], "GPU")  # the CPU split into logical devices, on any machine
devices = {devices}
if devices > 1:
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * devices)
import pandas as pd, training, conftest
training.EAGER_BELOW_STEPS = 0  # strategies trace their steps, as users' runs do
run_dir = None
for args, more in {jobs!r}:
    if args is None:  # resume the previous job's run
        run_dir, setup = training.resume_run(run_dir, more)
    else:
        run_dir, setup = training.new_run(conftest.train_args(**args))
    history = pd.read_csv(run_dir / "history.csv")
    print("job:", json.dumps({{"run": str(run_dir), "loss": history["loss"].tolist(), "setup": setup}}))
"""


def run_training(devices, *jobs):
    """Each job, in turn, in one process whose CPU is split into ``devices`` logical devices:
    a :class:`settings.TrainConfig` trains a new run, an int resumes the previous job's run for
    that many more epochs. Returns each job's ``{"run", "loss", "setup"}``."""
    plain = [
        (None, job)
        if isinstance(job, int)
        else ({k: str(v) if hasattr(v, "parts") else v for k, v in vars(job).items()}, None)
        for job in jobs
    ]
    code = RUNNER.format(root=str(ROOT), tests=str(ROOT / "tests"), devices=devices, jobs=plain)
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line[len("job:") :]) for line in done.stdout.splitlines() if line.startswith("job:")]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """14 good 64-px images: 10 train, 4 validation (so 2 replicas share every batch)."""
    import make_dataset

    (class_dir,) = make_dataset.generate(
        tmp_path_factory.mktemp("scale"),
        classes=("brick",),
        size=64,
        n_train=14,
        n_test_good=3,
        n_test_defect=1,
        seed=2,
    )
    return class_dir


def test_two_logical_devices_same_loss_curve_and_resume(dataset, tmp_path):
    """Per-image losses: 2 replicas × batch 2 follow 1 device × batch 4 (global batch recorded).
    One process (TensorFlow started once): the one-device run uses the first logical device."""
    one, two, more = run_training(
        2,
        train_args(dataset, tmp_path / "one", batch=4, epochs=2, strategy="one", **TRAIN),
        train_args(dataset, tmp_path / "two", batch=2, epochs=2, strategy="mirrored", **TRAIN),
        1,  # resume (extend by one epoch) under the strategy setup.json records
    )
    assert one["setup"]["replicas"] == 1 and one["setup"]["global_batch"] == 4
    setup = json.loads((tmp_path / "two" / two["run"].split("/two/")[1] / "setup.json").read_text())
    assert (setup["strategy"], setup["replicas"], setup["per_replica_batch"], setup["global_batch"]) == (
        "mirrored",
        2,
        2,
        4,
    )
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=2e-3)
    assert more["run"] == two["run"]
    assert more["setup"]["strategy"] == "mirrored" and more["setup"]["replicas"] == 2
    assert len(more["loss"]) == 3 and more["setup"]["epochs_run"] == 3


def _free_ports(n, rng=np.random.default_rng()):
    """``n`` ports free now and outside the kernel's ephemeral range, so no outgoing connection
    can take them between this check and the workers binding them (a port from ``bind(0)`` can:
    that range is where the kernel picks every client's port)."""
    low, high = 32768, 60999
    if os.path.isfile("/proc/sys/net/ipv4/ip_local_port_range"):
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(v) for v in f.read().split())
    span = (1024, low) if low - 1024 >= 1000 else (high + 1, 65536)
    ports = []
    while len(ports) < n:
        port = int(rng.integers(*span))
        with socket.socket() as s:
            try:
                s.bind(("", port))  # TensorFlow's gRPC server binds every address
            except OSError:
                continue
        if port not in ports:
            ports.append(port)
    return ports


def _start_workers(argv, cwd, tries=3):
    """Both workers' ``(exit code, stdout, stderr)``; started again on other ports when a port
    was taken by another program after all (gRPC: "Could not start gRPC server"). A worker that
    fails stops the other, which would otherwise wait for its peer until the timeout."""
    for attempt in range(tries):
        cluster = {"worker": [f"localhost:{p}" for p in _free_ports(2)]}
        logs = [(cwd / f"worker{i}.out", cwd / f"worker{i}.err") for i in range(2)]
        workers = []
        for i, (out, err) in enumerate(logs):
            with open(out, "w") as stdout, open(err, "w") as stderr:
                env = {
                    **os.environ,
                    "TF_CPP_MIN_LOG_LEVEL": "3",
                    "CUDA_VISIBLE_DEVICES": "",  # CPU workers, one replica each, on any machine
                    "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}),
                }
                cmd = [sys.executable, str(ROOT / "train.py"), *argv]
                workers.append(subprocess.Popen(cmd, stdout=stdout, stderr=stderr, text=True, cwd=cwd, env=env))
        deadline = time.monotonic() + 600
        while any(w.poll() is None for w in workers) and time.monotonic() < deadline:
            if any(w.poll() not in (None, 0) for w in workers):
                break
            time.sleep(0.5)
        for w in workers:
            if w.poll() is None:
                w.kill()
            w.wait()
        results = [(w.returncode, out.read_text(), err.read_text()) for w, (out, err) in zip(workers, logs)]
        if attempt + 1 < tries and any("Could not start gRPC server" in err for _, _, err in results):
            continue
        return results


def test_two_workers_on_localhost(dataset, tmp_path):
    """A two-process MultiWorkerMirroredStrategy run, one epoch: the chief keeps the run, the other worker nothing."""
    argv = [
        "new",
        "-d",
        str(dataset),
        "--out",
        str(tmp_path / "runs"),
        "-b",
        "2",
        "--size",
        "32",
        "--epochs",
        "1",
        "--mode",
        "object",
        "--head-steps",
        "0",
        "--no-augment",
        "--denoise",
        "0",
        "--val-split",
        "0.3",
        "--strategy",
        "multiworker",
    ]
    started = _start_workers(argv, tmp_path)
    for code, _out, err in started:
        assert code == 0, err[-3000:]
    outputs = [(out, err) for _, out, err in started]
    chief_run = outputs[0][0].strip().splitlines()[-1]
    setup = json.loads((tmp_path / "runs" / chief_run.split("/runs/")[1] / "setup.json").read_text())
    assert (setup["strategy"], setup["replicas"], setup["workers"], setup["global_batch"]) == ("multiworker", 2, 2, 4)
    assert setup["status"] == "done" and setup["epochs_run"] == 1
    assert len(list((tmp_path / "runs").rglob("setup.json"))) == 1  # the other worker's scratch folder is gone
    assert not os.path.exists(outputs[1][0].strip().splitlines()[-1])
    # Both workers saw the same synchronised loss.
    losses = [float(o.split("loss: ")[1].split()[0]) for o, _ in outputs]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


@pytest.mark.parametrize(
    "config, message",
    [
        (None, "needs TF_CONFIG"),
        ("{not json", "TF_CONFIG is not valid JSON"),
        ('{"cluster": {"worker": ["localhost:1"]}}', "must be a JSON object with 'cluster'"),
        ('{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": 3}}', "does not name one of"),
    ],
)
def test_bad_tf_config_one_line(dataset, tmp_path, capsys, monkeypatch, config, message):
    if config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", config)
    code, _, err = cli(
        train.main, ["new", "-d", str(dataset), "--out", str(tmp_path / "runs"), "--strategy", "multiworker"], capsys
    )
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("setup.json"))


def test_uneven_replicas_refused_or_dropped():
    setup = {"batch": 4, "replicas": 2, "global_batch": 8}
    assert distribution.validation_batch(setup, 5) == 4 and distribution.validation_batch(setup, 20) == 8
    with pytest.raises(UserError, match="cannot be shared by 2 replicas"):
        distribution.validation_batch(setup, 1)
    with pytest.raises(UserError, match="do not fill one global batch of 8"):
        distribution.check_train_count(setup, 7)


# ---- shards ----


@pytest.mark.parametrize("spec", ["3/2", "a/b", "0/2", "1/0", "1", "-1/2", "1/2/3"])
def test_bad_shard_specs(spec):
    with pytest.raises(ValueError, match="`shard` must be K/N") as caught:
        sharding.parse(spec)
    assert isinstance(caught.value, UserError) and caught.value.setting == "shard"


def test_shards_are_disjoint_deterministic_and_complete(tmp_path):
    paths = [tmp_path / f"d{i % 3}" / f"{i:03d}.png" for i in range(23)]
    for n in (1, 2, 5, 23):
        parts = [sharding.select(list(reversed(paths)), tmp_path, (k, n)) for k in range(1, n + 1)]
        assert sorted(p for part in parts for p in part) == sorted(paths)  # complete and disjoint
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
        assert parts == [
            sharding.select(paths, tmp_path, (k, n)) for k in range(1, n + 1)
        ]  # order of listing irrelevant
    with pytest.raises(UserError, match="fewer than 24 parts"):
        sharding.select(paths, tmp_path, (1, 24))


@pytest.fixture(scope="module")
def validated(dataset, tmp_path_factory):
    import training
    import validation

    run_dir, _ = training.new_run(train_args(dataset, tmp_path_factory.mktemp("shardrun"), batch=4, epochs=1, **TRAIN))
    validation.validate(run_dir, 8)
    return run_dir


def test_shard_then_merge_equals_whole_folder(validated, dataset, tmp_path, capsys):
    test_script = load_script("test")
    images = dataset / "test"
    whole_code, whole_out, err = cli(
        test_script.main, ["-p", str(validated), "--images", str(images), "--out", str(tmp_path / "whole")], capsys
    )
    assert whole_code == 0, err
    parts = []
    for k in (1, 2, 3):
        code, out, err = cli(
            test_script.main, ["-p", str(validated), "--images", str(images), "--shard", f"{k}/3"], capsys
        )
        assert code == 0, err
        parts.append(out.strip().splitlines()[-1])
        assert parts[-1].endswith(f"_shard{k}of3")
    frames = [pd.read_csv(f"{p}/predictions.csv") for p in parts]
    whole = pd.read_csv(tmp_path / "whole" / "predictions.csv")
    assert [len(f) for f in frames] == [3, 3, 2] and len(whole) == 8
    assert not set(frames[0]["path"]) & set(frames[1]["path"]) and not set(frames[1]["path"]) & set(frames[2]["path"])
    # Missing and repeated parts are refused in one line, nothing written.
    code, _, err = cli(test_script.main, ["-p", str(validated), "--merge", parts[0], parts[0], parts[2]], capsys)
    assert code == 2 and "missing 2/3; repeated 1/3" in err and len(err.strip().splitlines()) == 1
    code, out, err = cli(
        test_script.main, ["-p", str(validated), "--merge", *reversed(parts), "--out", str(tmp_path / "merged")], capsys
    )
    assert code == 0, err
    merged = pd.read_csv(tmp_path / "merged" / "predictions.csv")
    assert merged["path"].tolist() == whole["path"].tolist()
    assert merged["verdict"].tolist() == whole["verdict"].tolist()
    np.testing.assert_allclose(merged["score"], whole["score"], atol=1e-4)
    setup = json.loads((tmp_path / "merged" / "prediction_setup.json").read_text())
    assert setup["shard_count"] == 3 and len(setup["merged_from"]) == 3 and "shard" not in setup


def test_shard_cli_errors(validated, dataset, capsys):
    test_script = load_script("test")
    for argv, message in (
        (["--images", str(dataset / "test"), "--shard", "3/2"], "--shard must be K/N"),
        (["--images", str(dataset / "test"), "--shard", "a/b"], "--shard must be K/N"),
        (["--shard", "1/2"], "--shard only applies with --images"),
        (["--merge", str(dataset)], "not a prediction folder"),
    ):
        code, _, err = cli(test_script.main, ["-p", str(validated), *argv], capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def _part(folder, index, images, **changes):
    """A finished part ``index``/2 of a two-image folder, as test.py --images --shard writes it."""
    folder.mkdir()
    setup = {
        "threshold": 0.5,
        "min_area": 4,
        "method": "fused",
        "fusion": {"components": ["learned", "median"], "weights": [0.5, 0.5], "centres": [0, 0], "spreads": [1, 1]},
        "images": str(images),
        "model": str(folder / "model.keras"),
        "model_sha256": "a" * 64,
        "model_mtime_ns": index,
        "head_sha256": "b" * 64,
        "shard": f"{index}/2",
        "shard_index": index,
        "shard_count": 2,
        "images_in_folder": 2,
        "listing_sha256": "c" * 64,
        **changes,
    }
    (folder / sharding.SETUP).write_text(json.dumps(setup))
    pd.DataFrame({"path": [str(images / f"{index}.png")], "verdict": ["good"], "score": [0.1]}).to_csv(
        folder / sharding.PREDICTIONS, index=False
    )
    return folder


@pytest.mark.parametrize(
    "changes, differ",
    [
        ({"head_sha256": "d" * 64}, "head_sha256"),  # scored with another learned head
        (
            {"fusion": {"components": ["learned", "median"], "weights": [1, 0], "centres": [0, 0], "spreads": [1, 1]}},
            "fusion",
        ),
        ({"scales": 1}, "scales"),  # a field only one part records
    ],
)
def test_parts_that_differ_in_any_recorded_setting_are_not_merged(tmp_path, changes, differ):
    images = tmp_path / "images"
    images.mkdir()
    first = _part(tmp_path / "p1", 1, images)
    with pytest.raises(UserError, match=f"not parts of one result: they differ in {differ}$"):
        sharding.merge([first, _part(tmp_path / "p2", 2, images, **changes)], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_parts_of_one_model_read_from_two_places_are_merged(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    parts = [_part(tmp_path / f"p{k}", k, images) for k in (1, 2)]  # their model path and time differ
    frame, out = sharding.merge(parts, tmp_path / "out")
    assert frame["path"].tolist() == [str(images / "1.png"), str(images / "2.png")]
    setup = json.loads((out / sharding.SETUP).read_text())
    assert setup["head_sha256"] == "b" * 64 and "shard_index" not in setup and len(setup["merged_from"]) == 2


def test_parts_scored_with_a_replaced_head_are_refused_for_that_run(tmp_path, monkeypatch):
    images = tmp_path / "images"
    images.mkdir()
    parts = [_part(tmp_path / f"p{k}", k, images) for k in (1, 2)]

    class Run:
        model_path, head_path = tmp_path / "model.keras", tmp_path / "head.keras"
        record = {"model_sha256": "a" * 64, "head_sha256": "e" * 64}  # the head was trained again since

        def model_record(self):
            return self.record

    monkeypatch.setattr(sharding.runs, "find_run", lambda path: Run())
    with pytest.raises(UserError, match="other weights than .*model.keras and .*head.keras$"):
        sharding.merge(parts, tmp_path / "out", run_path=tmp_path)
    Run.record = {"model_sha256": "a" * 64, "head_sha256": "b" * 64}
    assert len(sharding.merge(parts, tmp_path / "out", run_path=tmp_path)[0]) == 2
