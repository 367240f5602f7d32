"""Plots that help choose the minimum defect area, from a run's validation images only.

``finetune.py`` is the command line over :func:`finetune`. The test image is only shown,
never used to choose anything.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import data
import figures
import inference
import methods
import resmaps
import storage
from detector import Detector
from settings import MapRequest, default_min_area
from utils import SettingError

N_THRESHOLDS = 60
N_DISTRIBUTIONS = 8


def finetune(
    path,
    val_image: str | None = None,
    test_image: str | None = None,
    max_area: int = 50,
    maps: MapRequest = MapRequest(),
) -> Path:
    """Compute region statistics over thresholds on validation images and write the plots
    into ``RUN/finetune/<method>/``; returns that folder.

    ``val_image`` (relative to ``<class>/train/``, one of the run's validation images;
    default the first of them) and ``test_image`` (relative to ``<class>/test/``; default the
    first defective one, none without a test folder) are drawn beside their reconstruction
    and residual map; ``max_area`` is the largest region area the distributions show.
    """
    if max_area < 1:
        raise SettingError(f"`max_area` must be a positive number of pixels, got {max_area}")
    detector = Detector.open_maps(path, maps)
    run, method = detector.run, detector.method
    if methods.get(method).composite:  # its weights: chosen on the painted copies as validate.py does (default area)
        import validation

        detector = validation.fused_validation_maps(detector, default_min_area(run.shape))[3]
    val_paths = run.validation_paths()
    train_dir, test_dir = run.class_dir / "train", run.class_dir / "test"
    val_sample = (
        inference.resolve_sample(run, val_image, train_dir, allowed=val_paths, what="validation image")
        if val_image
        else val_paths[0]
    )
    if test_image:
        test_sample = inference.resolve_sample(run, test_image, test_dir, what="test image")
    else:
        # The test sample is only shown: without a test folder there is simply none.
        items = data.list_test_images(run.class_dir) if test_dir.is_dir() else []
        defective = [p for p, d, _ in items if d != data.GOOD]
        test_sample = defective[0] if defective else None
    seen = detector.maps(val_paths, progress="validation images")
    thresholds = np.linspace(0.0, float(seen.maps.max()), N_THRESHOLDS)
    n_regions, mean_area, std_area, areas_at = [], [], [], {}
    for t in thresholds:
        areas = np.concatenate([resmaps.label_regions(m, t)[1] for m in seen.maps])
        n_regions.append(areas.size)
        mean_area.append(areas.mean() if areas.size else np.nan)
        std_area.append(areas.std() if areas.size else np.nan)
        areas_at[float(t)] = areas
    shown = {float(t): areas_at[float(t)] for t in thresholds[:: max(1, N_THRESHOLDS // N_DISTRIBUTIONS)]}
    out_dir = run.layout.finetune(method)
    with storage.StagedOutput(out_dir, {"kind": "finetune", **run.identity(method)}, archive=True) as out:
        figures.plot_regions_vs_threshold(
            thresholds, np.array(n_regions), out / "regions_vs_threshold.png", method=method
        )
        figures.plot_area_stats_vs_threshold(
            thresholds, np.array(mean_area), np.array(std_area), out / "area_mean_std_vs_threshold.png", method=method
        )
        figures.plot_area_distribution(
            areas_at[float(thresholds[0])],
            max_area,
            out / "area_distribution_t0.png",
            threshold=float(thresholds[0]),
            method=method,
        )
        figures.plot_area_distributions(shown, max_area, out / "area_distributions.png", method=method)
        i = [p.resolve() for p in seen.paths].index(val_sample.resolve())
        figures.plot_sample(
            seen.images[i],
            seen.recons[i],
            seen.maps[i],
            out / "sample_validation.png",
            title=f"validation image {data.relative_to(val_sample, train_dir)}",
            method=method,
        )
        if test_sample is not None:
            sample = detector.maps([test_sample])
            figures.plot_sample(
                sample.images[0],
                sample.recons[0],
                sample.maps[0],
                out / "sample_test.png",
                title=f"test image {data.relative_to(test_sample, test_dir)} (shown only)",
                method=method,
            )
    return out_dir
