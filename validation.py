"""Choosing the residual-map threshold for a minimum defect area, on held-back good images only.

``validate.py`` is the command line over :func:`validate`. The threshold is the smallest one
at which no validation image (the run's own ``validation_files.txt``, never test images) has
a defect region of at least ``min_area`` pixels: zero false alarms on defect-free images.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import evaluation
import figures
import inference
import resmaps
import runs
from settings import MapRequest
from utils import UserError

CURVE_POINTS = 120  # thresholds drawn in threshold_search.png (the chosen one is added exactly)
PROXY_SEED = 0  # which defect each validation image's painted copy gets
MAPS_VERSION = 1  # part of the validation maps' cache key: raise it when the maps' computation changes


def validate(path, min_area: int | None = None, maps: MapRequest = MapRequest()) -> tuple[dict, Path]:
    """Compute, save and return the validation result for ``min_area`` (default:
    :func:`inference.default_min_area`): ``(result, its folder)``.

    Writes ``RUN/validation/<method>/a<MIN_AREA>/validation_result.json`` and
    ``threshold_search.png``; the result also holds the proxy scores on painted copies of
    the validation images (:func:`evaluation.proxy_scores`).
    """
    inference.check_area_threshold(min_area=min_area)
    mapper = inference.open_maps(path, maps)
    run, method, options = mapper.run, mapper.method, mapper.options
    if min_area is None:
        min_area = inference.default_min_area(run.shape)
    paths, good_maps, painted = validation_maps(mapper)
    if not np.isfinite(good_maps).all():
        raise UserError(
            f"the residual maps of {run.model_path} are not finite (a diverged model?): no threshold can be chosen"
        )
    threshold = resmaps.min_threshold_for_area(good_maps, min_area)
    largest, _ = resmaps.region_stats(good_maps, threshold)
    result = {
        "min_area": int(min_area),
        "threshold": threshold,
        "method": method,
        **options.record(),
        "n_images": len(paths),
        "largest_area_at_threshold": int(largest.max()),
        "validation_files": [str(p) for p in paths],
        "resmap_range": [float(good_maps.min()), float(good_maps.max())],
        "model": str(run.model_path),
        **run.model_record(),  # test.py refuses this threshold for other weights
    }
    result["proxy"] = evaluation.proxy_scores(good_maps, painted, threshold, min_area, method, seed=PROXY_SEED)
    grid = np.unique(np.concatenate([np.linspace(good_maps.min(), good_maps.max(), CURVE_POINTS), [threshold]]))
    curve = resmaps.threshold_curve(good_maps, grid)
    identity = {"kind": "validation", "model_sha256": result["model_sha256"]}
    folder = runs.validation_dir(run.dir, method, min_area)
    with runs.StagedOutput(folder, identity, archive=True) as out:
        runs.write_json(out / "validation_result.json", result)
        figures.plot_threshold_search(grid, curve, threshold, min_area, out / "threshold_search.png", method=method)
    return result, folder


def _maps_key(mapper: inference.Mapper) -> str:
    """What the validation maps depend on: the model file, every validation image file
    (modification time and size), the map method and options, the proxy's seed."""
    run = mapper.run

    def stamp(p):
        return [str(p), *runs.file_stamp(p)]

    return json.dumps(
        {
            "version": MAPS_VERSION,
            "model": stamp(run.model_path),
            "images": [stamp(p) for p in run.validation_paths()],
            "method": mapper.method,
            **mapper.options.record(),
            "proxy_seed": PROXY_SEED,
        }
    )


def validation_maps(mapper: inference.Mapper) -> tuple[list[Path], np.ndarray, tuple | None]:
    """``(validation image paths, their maps, evaluation.proxy_maps of them)`` for the run and
    map settings of ``mapper``.

    Cached in ``RUN/validation_maps_<method>_s<scales>_p<passes>[_raw].npz`` and used again
    while the model file, the validation images and the settings are the same (see
    :func:`_maps_key`): choosing the threshold for another ``--area`` then needs no
    reconstruction at all. The maps do not depend on the area.
    """
    run, options = mapper.run, mapper.options
    cache = run.dir / options.cache_name("validation_maps", mapper.method)
    key = _maps_key(mapper)
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as stored:
                if str(stored["key"]) == key:
                    painted = (
                        (stored["painted_maps"], stored["painted_masks"], [str(d) for d in stored["defects"]])
                        if stored["defects"].size
                        else None
                    )
                    return [Path(p) for p in stored["paths"]], stored["maps"], painted
        except (OSError, ValueError, KeyError, EOFError):
            pass  # damaged: computed again below
    paths = run.validation_paths()
    inference.load_networks(run, mapper.method, 2 * len(paths), options)  # the images and their painted copies
    seen = mapper.inspect(paths, progress="validation images")
    painted = evaluation.proxy_maps(mapper, seen.images, PROXY_SEED) if np.isfinite(seen.maps).all() else None
    empty = np.zeros((0, *seen.maps.shape[1:]), np.float32)
    try:
        with runs.atomic_path(cache) as tmp:
            np.savez(
                tmp,
                key=np.array(key),
                paths=np.array([str(p) for p in seen.paths]),
                maps=seen.maps,
                painted_maps=painted[0] if painted else empty,
                painted_masks=painted[1] if painted else empty.astype(bool),
                defects=np.array(painted[2] if painted else [], dtype=str),
            )
    except OSError:
        pass  # a read-only run folder: nothing cached
    return list(seen.paths), seen.maps, painted
