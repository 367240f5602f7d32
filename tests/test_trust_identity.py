"""A run's identity covers its learned head: results computed with another head.keras are
refused (validation thresholds) or kept apart (result folders), by content, not by stamp."""

import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import inference  # noqa: E402
import runs  # noqa: E402
import storage  # noqa: E402
from utils import UserError  # noqa: E402

SETUP = {"architecture": "mvtec2", "loss": "ssim", "color": "grayscale", "size": 32, "batch": 4}


def make_run(root, head=b"head of run A"):
    """A run folder with stand-in model and head files (hashed here, never loaded)."""
    run = root / "run"
    run.mkdir()
    (run / runs.SETUP).write_text(json.dumps({**SETUP, "directory": str(root / "klass"), "mode": "surface"}))
    (run / runs.model_filename("mvtec2", 4)).write_bytes(b"model weights")
    if head is not None:
        (run / runs.HEAD_FILE).write_bytes(head)
    return run


def save_validation(run, method, area=4):
    """A validation result of ``method`` as validate.py records it (the run's model record)."""
    record = runs.find_run(run).model_record()
    folder = runs.Layout(run).validation(method, area)
    storage.write_json(folder / "validation_result.json", {"threshold": 0.5, "min_area": area, **record})
    return folder / "validation_result.json"


def test_model_record_holds_the_heads_content_hash_when_there_is_one(tmp_path):
    run = runs.find_run(make_run(tmp_path))
    record = run.model_record()
    assert record["head_sha256"] == storage.model_id(run.head_path) != record["model_sha256"]
    run.head_path.unlink()
    assert "head_sha256" not in runs.find_run(run.dir).model_record()


def test_identity_names_the_head_only_for_methods_that_use_it(tmp_path):
    run = runs.find_run(make_run(tmp_path))
    head = storage.model_id(run.head_path)
    assert run.identity("learned") == {"model_sha256": storage.model_id(run.model_path), "head_sha256": head}
    assert run.identity("fused_ssim_learned")["head_sha256"] == head  # a fusion with the head
    for method in ("ssim", "l2", "median"):
        assert "head_sha256" not in run.identity(method)


def test_validation_result_of_another_head_is_refused(tmp_path):
    run_dir = make_run(tmp_path)
    save_validation(run_dir, "learned")
    save_validation(run_dir, "ssim")
    run = runs.find_run(run_dir)
    assert inference.require_validation_result(run, "learned", 4, "")["threshold"] == 0.5
    other = tmp_path / "other_run_head.keras"
    other.write_bytes(b"head of run B")
    os.replace(other, run_dir / runs.HEAD_FILE)  # another run's head copied in
    with pytest.raises(UserError, match="computed with another learned head") as caught:
        inference.require_validation_result(run, "learned", 4, "")
    assert "\n" not in str(caught.value) and f"validate.py `path={run_dir}` `min_area=4` `method=learned`" in str(
        caught.value
    )
    # ssim maps never use the head: its threshold still fits.
    assert runs.find_validation_result(run_dir, "ssim", 4, model=run.model_path)["threshold"] == 0.5
    # Run A's head back (new file, new time stamps): the same content, the result fits again.
    (run_dir / runs.HEAD_FILE).write_bytes(b"head of run A")
    assert runs.find_validation_result(run_dir, "learned", 4, model=run.model_path)["threshold"] == 0.5


def test_a_fused_methods_result_is_tied_to_the_head_too(tmp_path):
    run_dir = make_run(tmp_path)
    save_validation(run_dir, "fused")
    model = runs.find_run(run_dir).model_path
    assert runs.find_validation_result(run_dir, "fused", 4, model=model) is not None
    (run_dir / runs.HEAD_FILE).write_bytes(b"a retrained head")
    with pytest.raises(UserError, match="another learned head"):
        runs.find_validation_result(run_dir, "fused", 4, model=model)


def test_result_without_a_head_hash_counts_only_when_newer_than_the_head(tmp_path):
    run_dir = make_run(tmp_path)
    path = save_validation(run_dir, "learned")
    old = json.loads(path.read_text())
    del old["head_sha256"]  # written before results recorded the head
    path.write_text(json.dumps(old))
    model = runs.find_run(run_dir).model_path
    head = run_dir / runs.HEAD_FILE
    stamp = path.stat().st_mtime_ns
    os.utime(head, ns=(stamp - 10**9, stamp - 10**9))
    assert runs.find_validation_result(run_dir, "learned", 4, model=model) is not None
    os.utime(head, ns=(stamp + 10**9, stamp + 10**9))  # the head changed after the result
    with pytest.raises(UserError, match="another learned head"):
        runs.find_validation_result(run_dir, "learned", 4, model=model)


def test_result_folder_of_another_head_is_not_replaced_but_kept_aside(tmp_path):
    run = runs.find_run(make_run(tmp_path))
    folder = tmp_path / "out"
    with storage.StagedOutput(folder, {"kind": "test", **run.identity("learned")}) as out:
        (out / "classification.csv").write_text("head A\n")
    run.head_path.write_bytes(b"head of run B")
    identity = {"kind": "test", **runs.find_run(run.dir).identity("learned")}
    with pytest.raises(UserError, match="another learned head"):
        storage.StagedOutput(folder, identity).check()
    assert (folder / "classification.csv").read_text() == "head A\n"
    with storage.StagedOutput(folder, identity, archive=True) as out:  # a default location inside a run
        (out / "classification.csv").write_text("head B\n")
    assert (folder / "classification.csv").read_text() == "head B\n"
    (kept,) = (tmp_path / storage.OTHER_WEIGHTS).glob("*/out/classification.csv")
    assert kept.read_text() == "head A\n"
