"""Derived caches: a damaged .npz is ignored with one line (storage.load_npz_or_none), and no
temporary file outlives the process that wrote it (storage.atomic_path)."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import storage  # noqa: E402

KEYS = ("baselines", "mask_threshold", "model_stamp")


def _calibration(path):
    np.savez(
        path,
        baselines=np.arange(2 * 8 * 8, dtype=np.float32).reshape(2, 8, 8),
        mask_threshold=np.float32(0.25),
        model_stamp=np.array([1, 2]),
    )


def test_a_whole_cache_is_returned_in_full(tmp_path, capsys):
    _calibration(tmp_path / "c.npz")
    stored = storage.load_npz_or_none(tmp_path / "c.npz", KEYS)
    assert set(stored) == set(KEYS) and stored["baselines"].shape == (2, 8, 8)
    assert float(stored["mask_threshold"]) == 0.25 and capsys.readouterr().err == ""
    assert storage.load_npz_or_none(tmp_path / "missing.npz", KEYS) is None and capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), ""),  # truncated (disk full, kill)
        (lambda p: p.write_bytes(b""), ""),  # 0 bytes
        (lambda p: p.write_bytes(b"not a zip at all"), ""),
        (lambda p: np.savez(p, baselines=np.zeros(3)), "lacks 'mask_threshold'"),  # an older or other cache
        (lambda p: np.savez(p, **dict.fromkeys(KEYS, np.array([{"a": 1}], dtype=object))), "ValueError"),
    ],
    ids=["truncated", "empty", "garbage", "missing-key", "pickled"],
)
def test_a_damaged_cache_is_none_with_one_line(tmp_path, capsys, damage, reason):
    path = tmp_path / "c.npz"
    _calibration(path)
    damage(path)
    assert storage.load_npz_or_none(path, KEYS) is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and "damaged" in err and reason in err


def test_a_corrupted_array_inside_an_intact_zip_is_caught(tmp_path, capsys):
    path = tmp_path / "c.npz"
    _calibration(path)
    with zipfile.ZipFile(path) as z:
        members = {name: z.read(name) for name in z.namelist()}
    members["baselines.npy"] = members["baselines.npy"][:100]  # header intact, data cut short
    with zipfile.ZipFile(path, "w") as z:
        for name, raw in members.items():
            z.writestr(name, raw)
    assert storage.load_npz_or_none(path, KEYS) is None
    assert "damaged" in capsys.readouterr().err


def test_atomic_path_removes_its_temporary_on_ctrl_c(tmp_path):
    target = tmp_path / "calibration.npz"
    _calibration(target)
    before = target.read_bytes()
    with pytest.raises(KeyboardInterrupt):
        with storage.atomic_path(target) as tmp:
            tmp.write_bytes(b"")  # np.savez had only opened the file
            raise KeyboardInterrupt
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calibration.npz"]


def test_temporaries_of_killed_processes_are_removed_by_the_next_write(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # a process that has ended: its pid is (almost surely) free
    target = tmp_path / "calibration.npz"
    left = tmp_path / f".calibration.{dead_pid}.tmp.npz"
    left.write_bytes(b"")  # what kill -9 during np.savez leaves
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        writing = tmp_path / f".calibration.{live.pid}.tmp.npz"  # another process writing right now
        writing.write_bytes(b"x")
        other = tmp_path / f".history.{dead_pid}.tmp.csv"  # another file's temporary: not this write's
        other.write_bytes(b"")
        with storage.atomic_path(target) as tmp:
            _calibration(tmp)
        assert not left.exists() and writing.exists() and other.exists()
        assert storage.load_npz_or_none(target, KEYS) is not None
    finally:
        live.kill()
        live.wait()
    assert os.getpid() != dead_pid
