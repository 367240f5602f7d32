"""Split a large folder of images over machines, and join their predictions again.

``test.py --images DIR --shard K/N`` scores the K-th of N parts of DIR: the sorted list of
its images (paths relative to DIR) cut into N contiguous parts of nearly equal size, so
every machine that lists the same folder gets the same, disjoint part and the parts
together are the whole folder. ``test.py --merge SHARD_DIR...`` checks that the parts
come from one listing, one model and one threshold, that none is missing or repeated,
and writes one ``predictions.csv`` in the order an unsharded run would have written.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

import data
import runs
import storage
from utils import SettingError, UserError

if TYPE_CHECKING:  # imported where parts are read: scripts that only import this module skip its 0.2 s
    import pandas as pd

SETUP = "prediction_setup.json"
PREDICTIONS = "predictions.csv"
# The only fields of prediction_setup.json in which parts of one result may differ: which part
# it is, and where and when the (same, by its SHA-256) model file was read. Every other field
# (threshold, map settings and fusion, head, images, listing, ...) must be equal, so a setting
# added to the record later is compared without being listed here.
MAY_DIFFER = ("shard", "shard_index", "model", "model_mtime_ns")


def parse(spec: str | None) -> tuple[int, int] | None:
    """``"K/N"`` → ``(K, N)`` with 1 ≤ K ≤ N; None stays None; anything else a one-line error."""
    if spec is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(spec))
    if not match or not 1 <= int(match.group(1)) <= int(match.group(2)):
        raise SettingError(
            f"`shard` must be K/N with whole numbers 1 <= K <= N (the K-th of N parts), e.g. 1/4; got {spec!r}"
        )
    return int(match.group(1)), int(match.group(2))


def listing_hash(paths: list[Path], root: Path) -> str:
    """SHA-256 of the sorted relative paths: parts of one folder listing share it."""
    return data.files_hash(sorted(data.relative_to(p, root) for p in paths))


def select(paths: list[Path], root: Path, shard: tuple[int, int]) -> list[Path]:
    """The K-th of N contiguous parts of the sorted image list; one-line error when N exceeds the images."""
    k, n = shard
    ordered = sorted(paths, key=lambda p: data.relative_to(p, root))
    if n > len(ordered):
        raise SettingError(f"`shard` {k}/{n}: {root} holds only {len(ordered)} image(s), fewer than {n} parts")
    return list(np.array_split(np.array(ordered, dtype=object), n)[k - 1])


def suffix(shard: tuple[int, int] | None) -> str:
    """Folder-name suffix of a part's default output (empty without a shard)."""
    return f"_shard{shard[0]}of{shard[1]}" if shard else ""


def record(shard: tuple[int, int] | None, paths: list[Path], root: Path) -> dict:
    """What a part's prediction_setup.json says about it (empty without a shard)."""
    if not shard:
        return {}
    return {
        "shard": f"{shard[0]}/{shard[1]}",
        "shard_index": shard[0],
        "shard_count": shard[1],
        "images_in_folder": len(paths),
        "listing_sha256": listing_hash(paths, root),
    }


def _read_part(folder: Path) -> tuple[dict, pd.DataFrame]:
    setup_file, csv_file = folder / SETUP, folder / PREDICTIONS
    if not setup_file.is_file() or not csv_file.is_file():
        raise SettingError(
            f"{folder} is not a prediction folder of test.py `images` (no {SETUP} or {PREDICTIONS})", "folders"
        )
    import pandas as pd

    setup = storage.read_json(setup_file)
    if "shard" not in setup:
        raise SettingError(f"{folder} holds predictions of a whole folder, not a `shard` part", "folders")
    try:
        frame = pd.read_csv(csv_file)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise UserError(f"{csv_file} is damaged: {str(exc).splitlines()[0]}") from None
    return setup, frame


def merge(folders: list, out: str | Path | None = None, run_path: str | Path | None = None) -> tuple:
    """Join the ``predictions.csv`` of all N parts into ``out`` (default: beside the first part,
    named as an unsharded run's folder). Returns ``(frame, output folder)``."""
    folders = [Path(f) for f in folders]
    if not folders:
        raise SettingError("merging needs the output folders of every `shard` part", "folders")
    parts = [(f, *_read_part(f)) for f in folders]
    first = parts[0][1]
    for folder, part, _ in parts[1:]:  # part: its prediction_setup.json
        differ = sorted(k for k in part.keys() | first.keys() if k not in MAY_DIFFER and part.get(k) != first.get(k))
        if differ:
            raise UserError(
                f"{folder} and {parts[0][0]} are not parts of one result: they differ in {', '.join(differ)}"
            )
    if run_path is not None:
        run = runs.find_run(run_path)
        current = run.model_record()  # the autoencoder's hash, and the head's when the run has one
        if any(first.get(k) != current.get(k) for k in ("model_sha256", "head_sha256")):
            files = f"{run.model_path}" + (f" and {run.head_path}" if "head_sha256" in current else "")
            raise UserError(f"the parts were scored with other weights than {files}")
    count = int(first["shard_count"])
    seen = sorted(int(s["shard_index"]) for _, s, _ in parts)
    missing = sorted(set(range(1, count + 1)) - set(seen))
    repeated = sorted({k for k in seen if seen.count(k) > 1})
    if missing or repeated:
        raise UserError(
            f"merging needs each of the {count} parts once: "
            + "; ".join(
                filter(
                    None,
                    [
                        f"missing {', '.join(f'{k}/{count}' for k in missing)}" if missing else "",
                        f"repeated {', '.join(f'{k}/{count}' for k in repeated)}" if repeated else "",
                    ],
                )
            )
        )
    import pandas as pd

    parts.sort(key=lambda part: int(part[1]["shard_index"]))
    frame = pd.concat([f for _, _, f in parts], ignore_index=True)
    if len(frame) != int(first["images_in_folder"]) or frame["path"].duplicated().any():
        raise UserError(
            f"the parts hold {len(frame)} rows ({frame['path'].duplicated().sum()} repeated) for a folder of "
            f"{first['images_in_folder']} images: a part is incomplete or edited"
        )
    out_dir = (
        Path(out)
        if out
        else parts[0][0].parent / parts[0][0].name.replace(suffix((parts[0][1]["shard_index"], count)), "")
    )
    if out_dir.resolve() in {f.resolve() for f in folders}:
        raise SettingError(f"`out` {out_dir} is one of the parts: choose another folder")
    setup = {k: v for k, v in first.items() if k not in ("shard", "shard_index")}
    setup["merged_from"] = [str(f.resolve()) for f, _, _ in parts]
    identity = {"kind": "predictions", "images": first.get("images"), "model_sha256": first.get("model_sha256")}
    with storage.StagedOutput(out_dir, identity, inputs=[Path(first["images"])], protect=folders) as staged:
        frame.to_csv(staged / PREDICTIONS, index=False)
        storage.write_json(staged / SETUP, setup)
    return frame, out_dir
