"""Lose nothing, ever: bad input, damaged run files, concurrent writers, kills and stale results.

The bad-input table is bench/sweep_reliability.py's (the sweep runs the same cases as
separate processes); here every case runs in-process on its own copy of a small world (a
dataset, a validated run, the user's own files) and must end in exit code 2 with one
error line naming the problem, or work, and leave every file that existed before unchanged.
"""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, cli, load_script, train_args, with_twins
from PIL import Image

import data  # noqa: E402
import export  # noqa: E402
import finetune  # noqa: E402
import inference  # noqa: E402
import predict_exported  # noqa: E402
import runs  # noqa: E402
import storage  # noqa: E402
import train  # noqa: E402
import training  # noqa: E402
import validate  # noqa: E402
from utils import UserError  # noqa: E402

_spec = importlib.util.spec_from_file_location("sweep_reliability", ROOT / "bench" / "sweep_reliability.py")
sweep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sweep)
test_script = load_script("test")


def _predict_exported(argv):
    """predict_exported.py's main as run_cli sees a script: its exit code as SystemExit."""
    code = predict_exported.main(argv)
    if code:
        raise SystemExit(code)


MAINS = {
    "test": test_script.main,
    "validate": validate.main,
    "train": train.main,
    "finetune": finetune.main,
    "export": export.main,
    "predict_exported": _predict_exported,
}
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "MPLBACKEND": "Agg"}


def _uses(case, name):
    return any(f"{{{name}}}" in a for a in [*case.argv, *sweep.FIRST.get(case.id, ("", []))[1]]) or name in case.id


# In-process: every case of the first round, and of the second half of issue 25 those that
# found a bug (a traceback, a silent wrong result or data lost), kept as regressions.
REGRESSIONS = {
    "exported_color_rgb_on_gray",
    "exported_json_broken",
    "exported_json_null",
    "exported_artefact_of_other_export",
    "test_p_head_keras",
    "validate_p_head_keras",
    "surface_shape_edited_test",
    "surface_shape_not_multiple",
    "object_shape_edited",
    "resume_training_images_added",
    "resume_validation_image_removed",
    "resume_e_retrains_head",
    "rerun_without_save_keeps_masks",
    "rerun_same_result_in_place",
}
TABLE = sweep.CASES[: sweep.FIRST_ROUND] + [c for c in sweep.CASES[sweep.FIRST_ROUND :] if c.id in REGRESSIONS]


@pytest.fixture(scope="module")
def template(tiny_dataset, tiny_run, tmp_path_factory):
    """The sweep's world built from the session's tiny dataset and run, validated at area 10,
    with a head run (validated with the learned method) and a surface run where the table needs them."""
    from utils import run_cli

    head = surface = None
    if any(_uses(c, "hrun") for c in TABLE):
        hrun = train_args(
            tiny_dataset, tmp_path_factory.mktemp("hrun"), epochs=1, head_steps=int(sweep.HEAD_STEPS), no_augment=True
        )
        head, _ = with_twins(lambda: training.new_run(hrun))  # the sweep's runs have their twins, as users' do
    if any(_uses(c, "srun") for c in TABLE):
        srun = train_args(
            tiny_dataset, tmp_path_factory.mktemp("srun"), epochs=1, mode="surface", patch=32, no_augment=True
        )
        surface, _ = with_twins(lambda: training.new_run(srun))
    root = sweep.build_template(
        tmp_path_factory.mktemp("reliability") / "template", tiny_dataset, tiny_run, head, surface
    )
    fast = ["--passes", "1", "--scales", "1"]
    assert run_cli(validate.main, ["-p", str(root / "runs" / "run"), "-a", "10", *fast]) == 0
    if head is not None:
        assert run_cli(validate.main, ["-p", str(root / "runs" / "hrun"), "-a", "10", "--method", "learned"]) == 0
    if surface is not None:
        assert run_cli(validate.main, ["-p", str(root / "runs" / "srun"), "-a", "10", *fast]) == 0
    return root


def test_the_table_covers_at_least_forty_refusals():
    refusals = [c for c in sweep.CASES if c.expect is not None]
    assert len(refusals) >= 40 and len({c.id for c in sweep.CASES}) == len(sweep.CASES)
    assert REGRESSIONS <= {c.id for c in sweep.CASES}


@pytest.mark.parametrize("case", TABLE, ids=[c.id for c in TABLE])
def test_bad_input_table(case, template, tmp_path, capsys, monkeypatch):
    def first(script, argv):
        code, _, err = cli(MAINS[script], argv, capsys)
        assert code == 0, err

    world = sweep.prepare_case(case, template, tmp_path / "world", first)
    before = sweep.file_hashes(world.root)
    if case.cwd:
        monkeypatch.chdir(world.fill([case.cwd])[0])
    holder = sweep.hold_lock_process(world.run) if case.hold_lock else None
    try:
        code, _, err = cli(MAINS[case.script], world.fill(case.argv), capsys)
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
    outcome, reason = sweep.classify(case, code, err, before, sweep.file_hashes(world.root), world)
    assert outcome == ("works" if case.expect is None else "clean"), (outcome, reason, err[-800:])
    if case.expect is not None:
        assert code == 2
        new = set(sweep.file_hashes(world.root)) - set(before)
        assert {Path(n).name for n in new} <= {".lock"}, new  # a refusal writes nothing


# --------------------------------------------------------------------------- --out and result folders


def test_out_reused_for_the_same_images_is_replaced_for_other_images_refused(template, tmp_path, capsys):
    world = sweep.prepare_case(sweep.Case("x", "test", []), template, tmp_path / "world")
    out = world.root / "results"
    argv = ["-p", str(world.run), "--images", str(world.root / "imgs"), "-t", "0.5", "-a", "5", "--out", str(out)]
    assert cli(MAINS["test"], argv, capsys)[0] == 0
    assert (out / storage.MARKER).is_file() and len(pd.read_csv(out / "predictions.csv")) == 3
    (world.root / "imgs" / "0.png").unlink()
    code, _, err = cli(MAINS["test"], argv, capsys)  # the same result again: replaced
    assert code == 0, err
    assert len(pd.read_csv(out / "predictions.csv")) == 2
    before = sweep.file_hashes(out)
    argv[3] = str(world.root / "b" / "imgs")
    code, _, err = cli(MAINS["test"], argv, capsys)
    assert code == 2 and "holds results for other images" in err and len(err.strip().splitlines()) == 1
    assert sweep.file_hashes(out) == before
    assert not [p for p in world.root.iterdir() if ".partial" in p.name]


def test_stale_threshold_is_refused_and_old_results_are_kept(template, tmp_path, capsys):
    """validate; the weights change (as train.py resume does); test.py refuses the old
    threshold; validate again keeps the old result under other_weights/; test.py never
    overwrites a result of other weights."""
    world = sweep.prepare_case(sweep.Case("x", "test", []), template, tmp_path / "world")
    run = world.run
    fast = ["--passes", "1", "--scales", "1"]
    code, out, err = cli(MAINS["test"], ["-p", str(run), "-t", "0.5", "-a", "5", *fast], capsys)
    assert code == 0, err
    old_result = sweep.file_hashes(run / "test" / "ssim" / "a5_t0.500000")
    old_validation = sweep.file_hashes(run / "validation" / "ssim" / "a10")
    old_id = storage.model_id(world.model())
    sweep.retrained_model(world)
    code, _, err = cli(MAINS["test"], ["-p", str(run)], capsys)
    assert code == 2 and "computed on other weights" in err and f"validate.py -p {run} -a 10" in err
    code, _, err = cli(MAINS["validate"], ["-p", str(run), "-a", "10", *fast], capsys)
    assert code == 0, err
    kept = run / "validation" / "ssim" / storage.OTHER_WEIGHTS / old_id[:12] / "a10"
    assert sweep.file_hashes(kept) == old_validation
    assert json.loads((run / "validation/ssim/a10/validation_result.json").read_text())[
        "model_sha256"
    ] == storage.model_id(world.model())
    code, _, err = cli(MAINS["test"], ["-p", str(run)], capsys)
    assert code == 0, err
    code, _, err = cli(MAINS["test"], ["-p", str(run), "-t", "0.5", "-a", "5", *fast], capsys)
    assert code == 0, err
    moved = run / "test" / "ssim" / storage.OTHER_WEIGHTS / old_id[:12]
    assert sweep.file_hashes(moved / "a5_t0.500000") == old_result
    assert (moved / "a5_t0.500000" / "metrics.json").is_file() and (moved / "a5_t0.500000" / "anomaly_maps").is_dir()
    assert json.loads((run / "test/ssim/a5_t0.500000/test_result.json").read_text())["threshold"] == 0.5


RESULT_FILES = ["classification.csv", "test_result.json", "metrics.json", "roc_curves.png", "pro_curve.png"]


def _checksums(folder):
    """{relative path: SHA-256} of every file under ``folder``, hidden ones included."""
    import hashlib

    folder = Path(folder)
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("late", ["plot_test_curves", "write_report"])
def test_interrupted_test_leaves_the_earlier_whole_result(late, template, tmp_path, capsys, monkeypatch):
    """Ctrl-C after every image is scored and most files are staged (while drawing the curves,
    or while writing the report, the last step before the commit): every file under
    RUN/test/ is byte-identical to the earlier complete result (another --smooth, with --save),
    no staging folder is visible, and nothing was written beside the result folder."""
    import evaluation
    import report

    world = sweep.prepare_case(sweep.Case("x", "test", []), template, tmp_path / "world")
    argv = ["-p", str(world.run), "-t", "0.5", "-a", "5", "--passes", "1", "--scales", "1", "--save"]
    code, out, err = cli(MAINS["test"], [*argv, "--smooth", "4"], capsys)
    assert code == 0, err
    folder = world.run / "test" / "ssim" / "a5_t0.500000"
    before = _checksums(world.run / "test")
    assert {f"ssim/a5_t0.500000/{name}" for name in [*RESULT_FILES, "report.html"]} <= set(before)
    assert any(k.startswith("ssim/a5_t0.500000/anomaly_maps/") for k in before)
    assert any(k.startswith("ssim/a5_t0.500000/") and k.endswith("_overlay.png") for k in before)
    reached = []

    def interrupted(*args, **kwargs):
        staged = Path(args[0])
        reached.append(sorted(p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file()))
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluation if late == "plot_test_curves" else report, late, interrupted)
    code, _, err = cli(MAINS["test"], [*argv, "--smooth", "1"], capsys)
    assert code == 130 and "interrupted" in err and "Traceback" not in err
    # The interruption came late: the verdicts, the maps (and the curves, before the report) were staged.
    assert reached and {"classification.csv", "test_result.json"} <= set(reached[0])
    assert any(name.startswith("anomaly_maps/") for name in reached[0])
    assert _checksums(world.run / "test") == before
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]
    assert json.loads((folder / "metrics.json").read_text())["smooth_sigma"] == 4


def test_a_rerun_with_other_settings_keeps_the_earlier_result_and_the_same_settings_replace_it(
    template, tmp_path, capsys
):
    """A plain rerun after `--save --smooth 4` would drop the masks and overlays: the earlier
    result moves, byte-identical, to RUN/test/<method>/earlier/<its time>/ with a warning. A
    rerun with the very same settings replaces the result (nothing of the user's is lost)."""
    world = sweep.prepare_case(sweep.Case("x", "test", []), template, tmp_path / "world")
    argv = ["-p", str(world.run), "-t", "0.5", "-a", "5", "--passes", "1", "--scales", "1"]
    code, _, err = cli(MAINS["test"], [*argv, "--save"], capsys)
    assert code == 0, err
    method_dir = world.run / "test" / "ssim"
    first = _checksums(method_dir / "a5_t0.500000")
    assert any(k.endswith("_mask.png") for k in first)
    code, _, err = cli(MAINS["test"], argv, capsys)
    assert code == 0, err
    (kept,) = (method_dir / storage.EARLIER).iterdir()
    assert _checksums(kept / "a5_t0.500000") == first
    assert f"moved to {kept}" in err and "other settings" in err
    assert not any(k.endswith("_mask.png") for k in _checksums(method_dir / "a5_t0.500000"))
    second = _checksums(method_dir / "a5_t0.500000")
    code, _, err = cli(MAINS["test"], argv, capsys)  # the same settings: replaced, nothing set aside
    assert code == 0, err
    assert "moved to" not in err and [p.name for p in (method_dir / storage.EARLIER).iterdir()] == [kept.name]
    assert set(_checksums(method_dir / "a5_t0.500000")) == set(second)


def test_staged_output_failure_leaves_nothing_and_stale_partials_of_dead_processes_go(tmp_path):
    final = tmp_path / "res"
    with pytest.raises(RuntimeError):
        with storage.StagedOutput(final, {"kind": "t"}) as out:
            (out / "a.txt").write_text("x")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f".res.partial-{dead.pid}-abcd").mkdir()
    (tmp_path / f".res.partial-{os.getpid()}-live").mkdir()  # a live process's: kept
    with storage.StagedOutput(final, {"kind": "t"}) as out:
        (out / "a.txt").write_text("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".res.partial-{os.getpid()}-live", "res"]
    assert json.loads((final / storage.MARKER).read_text())["kind"] == "t"
    with pytest.raises(UserError, match="holds a t result"):
        with storage.StagedOutput(final, {"kind": "u"}):
            pass
    assert (final / "a.txt").read_text() == "x"


def test_write_json_refuses_non_finite_numbers(tmp_path):
    with pytest.raises(UserError, match="non-finite"):
        storage.write_json(tmp_path / "x.json", {"threshold": float("inf")})
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- images


def test_decompression_bomb_and_tiny_images_are_warned_about(tmp_path, capsys):
    sweep.write_bomb(tmp_path / "bomb.png")
    Image.fromarray(np.full((1, 1), 128, np.uint8)).save(tmp_path / "tiny.png")
    Image.fromarray(np.full((40, 40), 128, np.uint8)).save(tmp_path / "fine.png")
    images, kept = data.load_images(
        [tmp_path / "bomb.png", tmp_path / "tiny.png", tmp_path / "fine.png"], "grayscale", 32
    )
    err = capsys.readouterr().err
    assert [p.name for p in kept] == ["tiny.png", "fine.png"] and images.shape == (2, 32, 32, 1)
    assert "bomb.png" in err and "decompression bomb" in err
    assert "tiny.png (1x1)" in err and "far smaller than the model's 32 px" in err


# --------------------------------------------------------------------------- calibration cache


def test_calibration_cache_is_reused_and_recomputed_when_the_model_changes(template, tmp_path, monkeypatch):
    world = sweep.prepare_case(sweep.Case("x", "test", []), template, tmp_path / "world")
    run = runs.find_run(world.run)
    options = inference.MapOptions(True, 1, 2)
    calls, real = [], inference.refined_maps
    monkeypatch.setattr(inference, "refined_maps", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = inference.calibrate(run, "ssim", options)
    cache = world.run / "calibration_ssim_s1_p2.npz"
    assert cache.is_file() and len(calls) == 1
    again = inference.calibrate(run, "ssim", options)
    assert len(calls) == 1  # read from the cache, not recomputed
    np.testing.assert_array_equal(first.baselines, again.baselines)
    del run
    sweep.retrained_model(world)
    inference.calibrate(runs.find_run(world.run), "ssim", options)
    assert len(calls) == 2  # the model file changed: learnt again


# --------------------------------------------------------------------------- processes: concurrency and kill -9


def _tiny_run(tiny_dataset, out):
    run_dir, _ = training.new_run(train_args(tiny_dataset, out, epochs=1, architecture="mvtec", size=32))
    return run_dir


def _script(name, *argv, stop_at=None):
    """The script as a child process; with ``stop_at`` it stops itself at that point
    (utils.stop_point), where :func:`_kill_when_stopped` kills it: a barrier, not a race."""
    return subprocess.Popen(
        [sys.executable, str(ROOT / name), *map(str, argv)],
        cwd=ROOT,
        env={**ENV, "CAE_STOP_AT": stop_at} if stop_at else ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _kill_when_stopped(proc):
    """Wait until ``proc`` has stopped itself at its stop point, then kill -9 it."""
    import os

    _, status = os.waitpid(proc.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), f"the process ended before its stop point: {proc.stderr.read()[-800:]}"
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL


def test_two_concurrent_tests_of_one_run_write_one_consistent_result(template, tmp_path):
    import tifffile
    from sklearn.metrics import roc_auc_score

    world = sweep.prepare_case(sweep.Case("x", "test", []), template, tmp_path / "world")
    common = ["-p", world.run, "-t", "0.5", "-a", "5", "--passes", "1", "--scales", "1"]
    procs = [_script("test.py", *common, "--smooth", smooth) for smooth in (1, 6)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-600:] for o in outputs]
    method_dir = world.run / "test" / "ssim"
    folder = method_dir / "a5_t0.500000"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [storage.MARKER, *RESULT_FILES, "anomaly_maps", "report.html", "report_files"]
    )
    # No staging folder; the result committed first (the other --smooth) kept whole in earlier/.
    assert sorted(p.name for p in method_dir.iterdir()) == sorted([folder.name, storage.EARLIER])
    (kept,) = (method_dir / storage.EARLIER).glob("*/a5_t0.500000")
    frame = pd.read_csv(folder / "classification.csv")
    metrics = json.loads((folder / "metrics.json").read_text())
    assert len(frame) == 13 and metrics["smooth_sigma"] in (1, 6)
    assert json.loads((kept / "metrics.json").read_text())["smooth_sigma"] == 7 - metrics["smooth_sigma"]
    # Anomaly maps and metrics.json come from the same process (the same --smooth): the pixel AUROC
    # recomputed from the TIFFs and the ground truth (scikit-learn) is the one metrics.json holds.
    values, truth = [], []
    for _, row in frame.iterrows():
        path = Path(row["path"])
        values.append(tifffile.imread(folder / "anomaly_maps" / row["defect_type"] / f"{path.stem}.tiff").ravel())
        mask = data.ground_truth_path(Path(path).parents[2], row["defect_type"], path)
        truth.append(data.load_mask(mask, data.image_size(path)).ravel() if mask else np.zeros(values[-1].size, bool))
    assert metrics["pixel_auroc"] == pytest.approx(
        roc_auc_score(np.concatenate(truth), np.concatenate(values)), abs=1e-6
    )
    assert metrics["image_auroc"] == pytest.approx(
        roc_auc_score(frame["truth"] == "defective", frame["score"]), abs=1e-9
    )


def test_two_resumes_one_refuses_then_kill_9_mid_training_stays_resumable(tiny_dataset, tmp_path, capsys):
    run_dir = _tiny_run(tiny_dataset, tmp_path)
    first = _script("train.py", "resume", "-p", run_dir, "-e", "8", stop_at="epoch 3 saved")
    line = first.stdout.readline()
    assert "extending finished run by 8 epochs" in line, (
        first.stderr.read()[-800:] if first.poll() is not None else line
    )
    # The second resume in this process: the lock is the other process's either way.
    code, _, err = cli(train.main, ["resume", "-p", str(run_dir), "-e", "1"], capsys)
    assert code == 2
    (message,) = err.strip().splitlines()
    assert message.endswith(
        f": error: run {run_dir} is in use by another process "
        "(being trained, or read by validate/test); try again when it has finished"
    )
    _kill_when_stopped(first)  # mid-training: right after epoch 3's backup
    setup = json.loads((run_dir / "setup.json").read_text())
    assert setup["status"] == "training" and setup["epochs"] == 9
    state = json.loads((run_dir / "backup" / "state.json").read_text())
    assert (run_dir / "backup" / state["model"]).is_file() and state["epoch"] == 3
    # The killed run resumes (in this process: what is under test is the run the kill left).
    code, out, err = cli(train.main, ["resume", "-p", str(run_dir), "-e", "1"], capsys)
    assert code == 0, err[-800:]
    assert f"resuming interrupted run at epoch {state['epoch'] + 1} of 10" in out
    assert json.loads((run_dir / "setup.json").read_text())["epochs_run"] == 10


def test_kill_9_at_the_start_of_resume_leaves_the_run_resumable(tiny_dataset, tmp_path, capsys):
    """Killed as soon as the extension's backup exists (before the first new epoch): both
    ``resume`` and ``resume -e`` continue; test.py sees a usable model meanwhile."""
    run_dir = _tiny_run(tiny_dataset, tmp_path)
    history = pd.read_csv(run_dir / "history.csv")
    proc = _script("train.py", "resume", "-p", run_dir, "-e", "2", stop_at="extension backed up")
    _kill_when_stopped(proc)
    state = json.loads((run_dir / "backup" / "state.json").read_text())
    assert state["epoch"] == 1 and state["epochs"] == 3 and (run_dir / "backup" / state["model"]).is_file()
    pd.testing.assert_frame_equal(pd.read_csv(run_dir / "history.csv"), history)
    assert runs.find_run(run_dir).model_path.is_file()  # still offered for testing: its best model is intact
    code, _, err = cli(train.main, ["resume", "-p", str(run_dir)], capsys)  # in this process, as above
    assert code == 0, err[-800:]
    setup = json.loads((run_dir / "setup.json").read_text())
    assert setup["status"] == "done" and setup["epochs_run"] == 3 and not (run_dir / "backup").exists()
    assert list(pd.read_csv(run_dir / "history.csv")["epoch"]) == [0, 1, 2]


def test_new_run_killed_before_its_first_epoch_is_reported_as_empty_everywhere(tiny_dataset, tmp_path, capsys):
    run_dir = tmp_path / "w" / "runs" / "run"
    run_dir.parent.mkdir(parents=True)
    shutil.move(str(_tiny_run(tiny_dataset, tmp_path / "t")), str(run_dir))
    sweep.empty_run(sweep.World(tmp_path / "w"))  # the state a kill -9 before epoch 1 ends leaves
    for main, argv in (
        (MAINS["test"], ["-p", run_dir, "-t", "0.5", "-a", "5"]),
        (MAINS["train"], ["resume", "-p", run_dir]),
        (MAINS["train"], ["resume", "-p", run_dir, "-e", "2"]),
        (MAINS["validate"], ["-p", run_dir, "-a", "5"]),
    ):
        code, _, err = cli(main, [str(a) for a in argv], capsys)
        assert code == 2 and "stopped before finishing its first epoch" in err and "train.py new" in err, err


def test_file_system_refusals_are_one_line(tmp_path, capsys, monkeypatch):
    """Permission denied (e.g. writing a calibration cache into a read-only run) or a full
    disk end in one line; other OSErrors (bugs) keep their traceback."""
    import errno

    from utils import run_cli

    def denied(argv):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "run" / "calibration.npz"))

    assert run_cli(denied) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith(
        f"error: cannot write or read: {tmp_path / 'run' / 'calibration.npz'}: Permission denied"
    )

    def full(argv):
        raise OSError(errno.ENOSPC, "No space left on device")

    assert run_cli(full) == 2 and "No space left on device" in capsys.readouterr().err

    def bug(argv):
        raise FileNotFoundError(errno.ENOENT, "No such file", "x")

    with pytest.raises(FileNotFoundError):
        run_cli(bug)


def test_unwritable_output_is_refused_before_any_work(template, tmp_path, capsys, monkeypatch):
    world = sweep.prepare_case(sweep.Case("x", "test", []), template, tmp_path / "world")
    real = os.access
    locked = {str(world.root / "readonly")}
    (world.root / "readonly").mkdir()
    monkeypatch.setattr(os, "access", lambda p, mode, **k: False if str(p) in locked else real(p, mode, **k))
    before = sweep.file_hashes(world.root)
    code, _, err = cli(
        MAINS["test"],
        [
            "-p",
            str(world.run),
            "--images",
            str(world.root / "imgs"),
            "-t",
            "0.5",
            "-a",
            "5",
            "--out",
            str(world.root / "readonly" / "res"),
        ],
        capsys,
    )
    (line,) = err.strip().splitlines()
    assert code == 2 and line.endswith(
        f"error: cannot write {world.root / 'readonly' / 'res'}: no permission to write into {world.root / 'readonly'}"
    )
    code, _, err = cli(
        MAINS["train"],
        ["new", "-d", str(world.root / "data" / "brick"), "--out", str(world.root / "readonly"), "--epochs", "1"],
        capsys,
    )
    assert code == 2 and "no permission to write into" in err and len(err.strip().splitlines()) == 1
    assert sweep.file_hashes(world.root) == before


def test_tensorflow_start_up_lines_do_not_break_one_line_errors():
    """TensorFlow's C++ start-up lines (absl, oneDNN) would precede every error raised after
    the model is loaded; the scripts import TensorFlow with them silenced."""
    code = (
        "import sys; sys.path.insert(0, '.'); from utils import quiet_tensorflow; quiet_tensorflow(); "
        "import keras, tensorflow as tf; assert tf.constant([2.0]).numpy()[0] == 2.0"
    )
    env = {k: v for k, v in ENV.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-600:]
