"""The bottom layer of file handling: how this tool writes, reads, hashes, locks and stages files.

Imports nothing of the suite but ``utils`` (its one-line :class:`~utils.UserError`):

* :func:`atomic_path`, :func:`write_json`, :func:`read_json`, :func:`load_npz_or_none` — a
  file is written whole or not at all; damaged files give one line, not a traceback;
* :func:`inside` — a name read from a file never points outside its folder;
* :func:`model_id`, :func:`file_stamp` — a file's content hash (SHA-256) and its stamp;
* :class:`RunLock`, :func:`writing`, :class:`Writing` — the run's lock and the writer lock;
* :class:`StagedFolder`, :class:`StagedOutput` — a result folder written completely or not at all.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import shutil
import time
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from utils import SettingError, UserError, warn

MARKER = ".cae-result.json"  # marks a folder this tool wrote as one result (may be replaced by the same result)
LOCK = ".lock"  # per run: training holds it exclusively, validate/test/finetune shared
OTHER_WEIGHTS = "other_weights"  # results of earlier weights are moved here, never overwritten
EARLIER = "earlier"  # results of the same weights made with other settings (e.g. smooth, save) go here

PathLike = str | os.PathLike


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """The one way this tool writes a file in place: yields a per-process temporary name
    beside ``path`` (hidden, same suffix, so Keras, NumPy and matplotlib pick the same
    format) to write to, renamed over ``path`` in one step when the block succeeds and
    removed when it fails, so a crash or kill never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    _remove_stale_temporaries(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:  # KeyboardInterrupt and SystemExit too
        tmp.unlink(missing_ok=True)
        raise


def _remove_stale_temporaries(path: Path) -> None:
    """Remove the temporaries of ``path`` that killed processes (``kill -9``, power loss) left
    behind, e.g. 0-byte ``.calibration_….<pid>.tmp.npz`` files; those of live processes stay."""
    prefix, suffix = f".{path.stem}.", f".tmp{path.suffix}"
    try:
        stale = [p for p in path.parent.iterdir() if p.name.startswith(prefix) and p.name.endswith(suffix)]
    except OSError:
        return
    for old in stale:
        pid = old.name[len(prefix) : len(old.name) - len(suffix)]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            try:
                old.unlink()
            except OSError:
                pass


def load_npz_or_none(path: PathLike, required_keys: Iterable[str] = ()) -> dict | None:
    """Every array of a derived ``.npz`` (a cache this tool wrote) as a dict, read in full now,
    or None with a one-line warning when it is damaged: truncated, not a zip, an array that
    does not decode, a missing ``required_keys`` entry. None without a word when the file
    does not exist. The caller then computes it again; checking that the arrays fit (shapes,
    settings) stays the caller's."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            missing = [key for key in required_keys if key not in stored.files]
            if missing:
                raise KeyError(missing[0])
            return {key: stored[key] for key in stored.files}
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError, zlib.error) as exc:
        reason = f"lacks {exc.args[0]!r}" if isinstance(exc, KeyError) else f"{exc.__class__.__name__}"
        warn(f"{path} is damaged ({reason}): ignored and computed again")
        return None


def write_json(path: PathLike, data: Any) -> None:
    """Write JSON atomically (see :func:`atomic_path`); non-finite numbers are refused
    (``NaN``/``Infinity`` are not JSON)."""
    path = Path(path)
    try:
        text = json.dumps(data, indent=2, default=str, allow_nan=False) + "\n"
    except ValueError:
        raise UserError(f"refusing to write a non-finite number (NaN or infinity) into {path}") from None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(text)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None


def read_json(path: PathLike, kind: type | None = dict) -> Any:
    """Read a JSON file, with a one-line error when it is missing, broken or not a ``kind``."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({str(exc).splitlines()[0]}): was it edited by hand?") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    if kind is not None and not isinstance(data, kind):
        raise UserError(
            f"{path} holds {type(data).__name__ if data is not None else 'null'} instead of a JSON object: "
            "was it edited by hand?"
        )
    return data


def is_number(value: Any) -> bool:
    """True for a real JSON number (not a bool, not a string)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def inside(folder: PathLike, name: str, what: str) -> Path:
    """``folder / name`` resolved, refused (one line) unless it lies inside ``folder``.

    Paths read from run files are never trusted to point elsewhere: a hand-edited
    ``../../x.keras`` must not make a step read or overwrite a file outside the run.
    """
    if not isinstance(name, str) or not name.strip():
        raise UserError(f"{what} must be a file name, got {name!r}")
    root = Path(folder).resolve()
    path = (root / name).resolve()
    if path == root or root not in path.parents:
        raise UserError(f"{what} {name!r} points outside {folder}: refused")
    return path


def file_stamp(path: PathLike) -> tuple[int, int]:
    """``(modification time in ns, size)`` of a file: what the run's caches (calibration,
    ONNX twin, validation maps) compare to notice that a file they were made from changed."""
    stat = Path(path).stat()
    return stat.st_mtime_ns, stat.st_size


_MODEL_IDS = {}


def model_id(path: PathLike) -> str:
    """SHA-256 of a model file (or any file): which weights a result came from. Cached in this
    process per path, inode, size, modification and change time (a rewrite changes the change
    time even when the modification time is put back)."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    if key not in _MODEL_IDS:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _MODEL_IDS[key] = digest.hexdigest()
    return _MODEL_IDS[key]


# ---- locks ----


def _open_lock(path, create=True):
    flags = os.O_RDONLY | (os.O_CREAT if create else 0)
    try:
        return os.open(path, flags, 0o644)
    except PermissionError:
        if create:
            return _open_lock(path, create=False)
        raise
    except FileNotFoundError:
        return None


class RunLock:
    """A lock on a run folder, released when this object is released or garbage collected.

    Training holds it exclusively; validate/test/finetune/visualize hold it shared while
    they use the run, so they refuse a run that is being trained (and training refuses a
    run in use) with one line instead of reading a model while it is rewritten.
    """

    def __init__(self, run_dir: PathLike, exclusive: bool):
        self.fd = None
        path = Path(run_dir) / LOCK
        try:
            self.fd = _open_lock(path)
        except OSError:
            self.fd = None  # a read-only run without a lock file: nothing can be training it
        if self.fd is None:
            return
        try:
            fcntl.flock(self.fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            self.release()
            if exclusive:
                raise UserError(
                    f"run {run_dir} is in use by another process (being trained, or read by validate/test); "
                    "try again when it has finished"
                ) from None
            raise UserError(
                f"run {run_dir} is being trained by another process right now; wait until it finishes"
            ) from None

    def release(self) -> None:
        """Release the lock (idempotent)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __del__(self):
        self.release()


_HELD = {}  # folder -> [fd, depth]: folders this process holds the writer lock of (re-entrant)


@contextmanager
def writing(folder: PathLike) -> Iterator[None]:
    """Exclusive lock on ``folder`` while this process writes into it; another writer waits.

    Used around replacing result folders, so two processes never interleave their files in
    one result. Re-entrant within a process. Locks the folder itself (no lock files left).
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {folder}: {exc.strerror or exc}") from None
    key = os.path.realpath(folder)
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    fd = os.open(key, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            warn(f"waiting for another process writing into {folder}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        _HELD[key] = [fd, 1]
        yield
    finally:
        _HELD.pop(key, None)
        os.close(fd)


def remove_tree(path: PathLike) -> None:
    """Remove a folder this program created (used to undo a half-written output)."""
    shutil.rmtree(path, ignore_errors=True)


def read_marker(folder: PathLike) -> dict | None:
    """The identity a result folder of this tool records (its marker file), or None."""
    marker = Path(folder) / MARKER
    if not marker.is_file():
        return None
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def check_writable(folder: PathLike, what: Any = None) -> None:
    """Refuse (one line) a folder that cannot be created or written: its nearest existing
    ancestor is a file or not writable. ``what`` names the output in the message."""
    folder = Path(folder)
    ancestor = folder
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"cannot write {what or folder}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK):
        raise UserError(f"cannot write {what or folder}: no permission to write into {ancestor}")


def _related(a, b):
    return a == b or a in b.parents or b in a.parents


def check_output(final: PathLike, inputs: Iterable = (), protect: Iterable = (), archive: bool = False) -> None:
    """Refuse (one line) an output folder that is, holds or lies inside an input folder, or
    that is (or holds) one of ``protect`` (the run folder), or (unless ``archive``: a default
    location inside a run, where it is moved aside instead) that exists and is not a result
    folder of this tool."""
    final = Path(final)
    real = Path(os.path.realpath(final))
    for folder in inputs:
        if _related(real, Path(os.path.realpath(folder))):
            raise SettingError(f"output {final} overlaps the input folder {folder}: choose an `out` outside it")
    for folder in protect:
        other = Path(os.path.realpath(folder))
        if real == other or real in other.parents:
            raise SettingError(f"output {final} would replace {folder} (or a folder holding it): choose another `out`")
    check_writable(final.parent, final)
    if (final.exists() or final.is_symlink()) and not archive:
        if not final.is_dir():
            raise SettingError(f"output {final} exists and is not a folder: choose another `out` (nothing was written)")
        if read_marker(final) is None:
            raise SettingError(
                f"output {final} exists and is not a result folder of this tool: "
                "choose a new folder for `out` (nothing was written or deleted)"
            )


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def set_aside(
    parent: PathLike, names: Iterable[str], old_model: str | None, reason: str, into: str = OTHER_WEIGHTS
) -> Path | None:
    """Move ``parent/<name>`` for each of ``names`` that exists into
    ``parent/<into>/<model id or label>/`` (a fresh folder), with a warning; never deletes."""
    parent = Path(parent)
    present = [n for n in names if (parent / n).exists()]
    if not present:
        return None
    base = parent / into / (str(old_model or "unknown")[:12] if into == OTHER_WEIGHTS else str(old_model))
    dest, i = base, 1
    while dest.exists() and any((dest / n).exists() for n in present):
        dest, i = Path(f"{base}_{i}"), i + 1
    dest.mkdir(parents=True, exist_ok=True)
    for name in present:
        os.replace(parent / name, dest / name)
    warn(f"{', '.join(present)} in {parent} came from {reason}: moved to {dest}")
    return dest


class StagedFolder:
    """Write a folder completely or not at all.

    Files go into a per-process hidden sibling ``.<name>.partial-<pid>-<token>`` (those left
    by killed processes are removed first); on success it is renamed to ``final`` in one
    step, replacing what is there (kept until the rename succeeded, put back if it fails).
    On any error the staging folder is deleted and ``final`` is untouched. Whether ``final``
    may be replaced at all is the caller's decision (see :class:`StagedOutput`).
    """

    def __init__(self, final: PathLike):
        self.final = Path(final)
        self.partial = None

    def __enter__(self) -> Path:
        parent, name = self.final.parent, self.final.name
        try:
            parent.mkdir(parents=True, exist_ok=True)
            for stale in parent.glob(f".{name}.partial-*"):  # left by a killed process
                pid = stale.name.rsplit(".partial-", 1)[1].split("-")[0]
                if pid.isdigit() and not _pid_alive(int(pid)):
                    remove_tree(stale)
            self.partial = parent / f".{name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
            self.partial.mkdir()
        except OSError as exc:
            raise UserError(f"cannot write into {parent}: {exc.strerror or exc}") from None
        return self.partial

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            remove_tree(self.partial)
            if issubclass(exc_type, OSError) and not isinstance(exc, (BlockingIOError,)):
                raise UserError(f"cannot write {self.final}: {exc.strerror or exc}") from None
            return False
        try:
            self._commit()
        except BaseException:
            remove_tree(self.partial)
            raise
        return False

    def _commit(self):
        self._install()

    def _install(self):
        """Rename the staging folder to ``final``, replacing whatever is there."""
        final = self.final
        old = None
        if final.exists() or final.is_symlink():
            old = final.parent / f".{final.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
            os.replace(final, old)
        try:
            os.replace(self.partial, final)
        except OSError as exc:
            if old is not None:
                os.replace(old, final)
            raise UserError(f"cannot write {final}: {exc.strerror or exc}") from None
        if old is not None:
            remove_tree(old)


class StagedOutput(StagedFolder):
    """A result folder of this tool, written as a :class:`StagedFolder`, that never loses anything.

    The folder gets a marker file (``identity``: kind, model, input) and is renamed into
    place under a writer lock on the parent folder. An existing ``final`` is replaced only
    when it is a result folder of this tool (marker file) holding the *same* result; one
    from other weights is moved into ``other_weights/`` when ``archive`` (default locations
    inside a run), any other existing path is refused with one line. ``final`` must not
    overlap ``inputs`` nor be (or hold) any of ``protect``.
    """

    def __init__(
        self,
        final: PathLike,
        identity: dict | None = None,
        inputs: Iterable = (),
        protect: Iterable = (),
        archive: bool = False,
    ):
        super().__init__(final)
        self.identity = dict(identity or {})
        self.inputs, self.protect, self.archive = tuple(inputs), tuple(protect), archive

    def _conflict(self, existing):
        """None when ``existing`` (a marker) may be replaced, else ``(what differs, the old model)``."""
        if existing.get("kind") != self.identity.get("kind"):
            return f"a {existing.get('kind') or 'different'} result", existing.get("model_sha256") or "unknown"
        for key in ("images",):
            if existing.get(key) != self.identity.get(key):
                return f"results for other images ({existing.get(key)})", None
        if existing.get("run") != self.identity.get("run"):
            return f"another run's result ({existing.get('run')})", existing.get("model_sha256") or "unknown"
        if existing.get("model_sha256") != self.identity.get("model_sha256"):
            return "results of other weights", existing.get("model_sha256") or "unknown"
        if ("head_sha256" in existing or "head_sha256" in self.identity) and existing.get(
            "head_sha256"
        ) != self.identity.get("head_sha256"):
            return "results of another learned head", existing.get("model_sha256") or "unknown"
        return None

    def check(self) -> None:
        """Refuse (one line) before any work what :meth:`__enter__`/commit would refuse."""
        check_output(self.final, self.inputs, self.protect, self.archive)
        if not self.archive and self.final.is_dir():
            conflict = self._conflict(read_marker(self.final) or {})
            if conflict is not None:
                raise SettingError(
                    f"output {self.final} holds {conflict[0]}: choose another `out` (nothing was written or deleted)"
                )

    def __enter__(self):
        self.check()
        return super().__enter__()

    def _commit(self):
        (self.partial / MARKER).write_text(json.dumps({"tool": "cae", **self.identity}, default=str) + "\n")
        with writing(self.final.parent):
            final = self.final
            if final.exists() or final.is_symlink():
                existing = read_marker(final) if final.is_dir() and not final.is_symlink() else None
                if existing is None:  # not marked: never ours to replace
                    if not self.archive:
                        raise UserError(
                            f"output {final} exists and is not a result folder of this tool: nothing was written"
                        )
                    existing = {"kind": "unmarked"}  # an older version's result, or put there by hand: kept aside
                conflict = self._conflict(existing)
                if conflict is not None:
                    what, old_model = conflict
                    if not self.archive:
                        raise SettingError(
                            f"output {final} holds {what}: choose another `out` (nothing was written or deleted)"
                        )
                    set_aside(final.parent, [final.name], old_model, what)
                elif self.archive and final.is_dir() and not final.is_symlink():
                    # The same weights: an earlier result made with other settings (e.g. smooth,
                    # save), or holding files this one does not write (masks and overlays of ``save``),
                    # is the user's: kept beside, in earlier/<its time>/, never replaced without a word.
                    lacking = _relative_files(final) - _relative_files(self.partial)
                    other = existing.get("settings") != self.identity.get("settings")
                    if other or lacking:
                        made = time.strftime("%Y-%m-%d_%H-%M-%S", time.localtime(final.stat().st_mtime))
                        reason = (
                            "a run with other settings"
                            if other
                            else f"an earlier run holding {len(lacking)} file(s) this one does not write "
                            f"(e.g. {sorted(lacking)[0]})"
                        )
                        set_aside(final.parent, [final.name], made, reason, into=EARLIER)
            self._install()


# Written into a result folder after it is committed (report.py: test.py adds the page next).
_ADDED_AFTER = ("report.html", "report_files/")


def _relative_files(folder: Path) -> set[str]:
    names = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    return {n for n in names if not n.startswith(_ADDED_AFTER)}
