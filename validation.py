"""Choosing the residual-map threshold for a minimum defect area, on held-back good images only.

``validate.py`` is the command line over :func:`validate`. The threshold is the smallest one
at which no validation image (the run's own ``validation_files.txt``, never test images) has
a defect region of at least ``min_area`` pixels: zero false alarms on defect-free images.
"""

from __future__ import annotations

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
    seen = mapper.inspect(run.validation_paths(), progress="validation images")
    if not np.isfinite(seen.maps).all():
        raise UserError(
            f"the residual maps of {run.model_path} are not finite (a diverged model?): no threshold can be chosen"
        )
    threshold = resmaps.min_threshold_for_area(seen.maps, min_area)
    largest, _ = resmaps.region_stats(seen.maps, threshold)
    result = {
        "min_area": int(min_area),
        "threshold": threshold,
        "method": method,
        **options.record(),
        "n_images": len(seen.paths),
        "largest_area_at_threshold": int(largest.max()),
        "validation_files": [str(p) for p in seen.paths],
        "resmap_range": [float(seen.maps.min()), float(seen.maps.max())],
        "model": str(run.model_path),
        **run.model_record(),  # test.py refuses this threshold for other weights
    }
    result["proxy"] = evaluation.proxy_scores(mapper, seen.images, seen.maps, threshold, min_area)
    grid = np.unique(np.concatenate([np.linspace(seen.maps.min(), seen.maps.max(), CURVE_POINTS), [threshold]]))
    curve = resmaps.threshold_curve(seen.maps, grid)
    identity = {"kind": "validation", "model_sha256": result["model_sha256"]}
    folder = runs.validation_dir(run.dir, method, min_area)
    with runs.StagedOutput(folder, identity, archive=True) as out:
        runs.write_json(out / "validation_result.json", result)
        figures.plot_threshold_search(grid, curve, threshold, min_area, out / "threshold_search.png", method=method)
    return result, folder
