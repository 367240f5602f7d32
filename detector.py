"""A trained run opened for predictions: the Python API a notebook uses.

    from detector import Detector
    detector = Detector.open("saved_models/.../2026-12-02_21-23-33")   # method, threshold, area: validated
    for result in detector.predict(["part_001.png", "part_002.png"]):  # paths, or an N×H×W×C array in [0, 1]
        print(result.path, result.verdict, result.score)

Opening loads the run, its map method and options, the threshold and the minimum area once
(from the newest validation result unless given); :meth:`Detector.predict` maps any number of
images and returns one :class:`Prediction` each, computed exactly as ``test.py`` computes its
rows (the same maps, score, regions and verdict).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import evaluation
import inference
import resmaps
from settings import MapRequest


@dataclass(frozen=True)
class Prediction:
    """One image's result. Maps and masks are at the model's size (``raw_map``, ``anomaly_map``
    smoothed as test.py smooths, ``mask`` the regions of at least the minimum area above the
    threshold); ``size`` is the image's own (width, height), None for an array input."""

    path: Path | None
    image: np.ndarray
    reconstruction: np.ndarray
    raw_map: np.ndarray
    anomaly_map: np.ndarray
    mask: np.ndarray
    score: float
    largest_area: int
    n_regions: int
    size: tuple | None

    @property
    def defective(self) -> bool:
        """True when a region of at least the minimum area lies above the threshold (score > 1)."""
        return self.score > 1.0

    @property
    def verdict(self) -> str:
        return "defective" if self.defective else "good"


class Detector:
    """A run with its map method, options, threshold and minimum area (see :meth:`open`)."""

    def __init__(self, mapper: inference.Mapper, smooth: float = evaluation.DEFAULT_SMOOTH):
        if not (np.isfinite(smooth) and smooth >= 0):
            raise ValueError(f"smooth must be a finite number >= 0, got {smooth!r}")
        self.mapper = mapper
        self.smooth = float(smooth)

    @classmethod
    def open(
        cls,
        run_dir,
        maps: MapRequest = MapRequest(),
        threshold: float | None = None,
        min_area: int | None = None,
        smooth: float = evaluation.DEFAULT_SMOOTH,
    ) -> Detector:
        """The run at ``run_dir`` (its folder or model file) ready to predict: ``threshold`` and
        ``min_area`` as given, else from its newest validation result for the map method."""
        return cls(inference.open_for_verdicts(run_dir, maps, threshold, min_area), smooth)

    @property
    def method(self) -> str:
        return self.mapper.method

    @property
    def threshold(self) -> float:
        return self.mapper.threshold

    @property
    def min_area(self) -> int:
        return self.mapper.min_area

    def predict(self, images: Iterable | np.ndarray) -> list[Prediction]:
        """One :class:`Prediction` per image: ``images`` are file paths (read as the run reads its
        training images; unreadable ones are skipped with a warning) or an N×H×W×C float array in
        [0, 1] at the run's shape and colour."""
        if isinstance(images, np.ndarray):
            run = self.mapper.run
            expected = (*run.shape, 3 if run.color == "rgb" else 1)
            if images.ndim != 4 or images.shape[1:] != expected:
                raise ValueError(f"images must be N×{expected[0]}×{expected[1]}×{expected[2]}, got {images.shape}")
            recons, maps = inference.run_maps(run, images.astype(np.float32), self.method, self.mapper.options)
            seen = inference.Inspected([None] * len(images), images, recons, maps, [None] * len(images))
            return self._results(seen)
        results = []
        for seen in self.mapper.stream([Path(p) for p in images]):
            results += self._results(seen)
        return results

    def _results(self, seen: inference.Inspected) -> list[Prediction]:
        scores = evaluation.image_scores(seen.maps, self.threshold, self.min_area)
        _, largest, counts = inference.classify(seen.maps, self.threshold, self.min_area)
        smoothed = resmaps.smooth(seen.maps, self.smooth)
        return [
            Prediction(
                seen.paths[i],
                seen.images[i],
                seen.recons[i],
                seen.maps[i],
                smoothed[i],
                resmaps.defect_mask(seen.maps[i], self.threshold, self.min_area),
                float(scores[i]),
                int(largest[i]),
                int(counts[i]),
                seen.sizes[i],
            )
            for i in range(len(seen.maps))
        ]
