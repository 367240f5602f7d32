"""A trained run opened for predictions: the one path every image takes, and the Python API.

    from detector import Detector
    detector = Detector.open("saved_models/.../2026-12-02_21-23-33")   # method, threshold, area: validated
    for result in detector.predict(["part_001.png", "part_002.png"]):  # paths, or an N×H×W×C array in [0, 1]
        print(result.path, result.verdict, result.score)

Opening loads the run, its map method and options, the threshold and the minimum area once
(from the newest validation result unless given); the networks and each calibration are loaded
once, at the first images. :meth:`Detector.stream` maps any number of images chunk by chunk and
gives one :class:`Prediction` each. Every script that maps images goes through it: ``test.py``
(labelled tests and ``--images``), ``visualize.py``, and, opened for maps only
(:meth:`Detector.open_maps`, no threshold yet), ``validate.py`` with its proxy,
``finetune.py`` and ``export.py``. So a notebook's result is test.py's (the same maps, score,
regions and verdict).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import inference
import resmaps
from settings import MapRequest

DEFAULT_SMOOTH = 4.0  # px at the model's size: anomaly maps and pixel metrics (never the verdict or score)
SCORE_RULE = (
    "the highest threshold at which the image still has a region of at least the minimum area (raw map, "
    "model resolution), divided by the threshold: above 1 means defective"
)


def image_scores(maps: np.ndarray, threshold: float, min_area: int) -> np.ndarray:
    """Each N×H×W raw map's score in the threshold's units (:func:`resmaps.area_peaks` divided
    by ``threshold``): an image is judged defective exactly when its score is above 1, and the
    same number is every output's score (CSV, JSON, overlay, report, the exported detector)."""
    return resmaps.area_peaks(maps, min_area) / max(float(threshold), 1e-12)


class NonFiniteMaps(ValueError):
    """The run's maps hold NaN or infinity (a diverged model): no verdict can be made."""


def check_smooth(smooth: float) -> float:
    """``smooth`` as a float; ValueError unless it is finite and >= 0."""
    if not (np.isfinite(smooth) and smooth >= 0):
        raise ValueError(f"smooth must be a finite number >= 0, got {smooth!r}")
    return float(smooth)


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
    defective: bool  # a region of at least the minimum area lies above the threshold (so score > 1)

    @property
    def verdict(self) -> str:
        return "defective" if self.defective else "good"


class Detector:
    """A run with its map method, options, threshold and minimum area (see :meth:`open`), or
    with its method and options only (:meth:`open_maps`: maps, no verdicts)."""

    def __init__(self, mapper: inference.Mapper, smooth: float = DEFAULT_SMOOTH):
        self.smooth = check_smooth(smooth)
        self.mapper = mapper

    @classmethod
    def open_maps(cls, run_dir, maps: MapRequest = MapRequest(), smooth: float = DEFAULT_SMOOTH) -> Detector:
        """The run at ``run_dir`` with the map method and options ``maps`` asks for (defaults:
        the run's method, :meth:`inference.MapOptions.from_args`), before any threshold exists:
        :meth:`maps` works, :meth:`predict` refuses. What validation, finetuning and export open."""
        check_smooth(smooth)
        return cls(inference.open_maps(run_dir, maps), smooth)

    @classmethod
    def open(
        cls,
        run_dir,
        maps: MapRequest = MapRequest(),
        threshold: float | None = None,
        min_area: int | None = None,
        smooth: float = DEFAULT_SMOOTH,
    ) -> Detector:
        """The run at ``run_dir`` (its folder or model file) ready to predict: ``threshold`` and
        ``min_area`` as given, else from its newest validation result for the map method."""
        check_smooth(smooth)
        return cls(inference.open_for_verdicts(run_dir, maps, threshold, min_area), smooth)

    @property
    def run(self):
        return self.mapper.run

    @property
    def method(self) -> str:
        return self.mapper.method

    @property
    def threshold(self) -> float:
        return self.mapper.threshold

    @property
    def min_area(self) -> int:
        return self.mapper.min_area

    @property
    def options(self) -> inference.MapOptions:
        return self.mapper.options

    def load(self, images: int | None = None) -> None:
        """Load the networks (once) for about ``images`` images (which decides between the
        OpenVINO twin and Keras; None: unknown), so a missing model or head is reported first."""
        self.mapper.load(images)

    @property
    def source(self) -> str | None:
        """Where the threshold and minimum area came from (a validation result, the command line)."""
        return self.mapper.source

    def calibration(self, method: str | None = None) -> inference.Calibration:
        """What the run's training images say is usual for ``method`` (default: this detector's;
        or a calibrated component of its fused map): baselines and repaint threshold, read or
        learnt once."""
        return self.mapper.calibration(method or self.method)

    def usual(self, method: str) -> np.ndarray:
        """What a component ``method`` of this detector's fused map usually is at each pixel of
        the run's training images (:func:`inference.usual_map`), read or learnt once."""
        return self.mapper.usual(method)

    def usual_maps(self, fusion: inference.Fusion | None = None) -> list:
        """The usual maps of every component of ``fusion`` (default: this detector's), None at
        weight 0: what :attr:`inference.Fusion.usual` subtracts."""
        return self.mapper.usual_maps(fusion)

    def component(self, method: str) -> Detector:
        """This run mapped with one component ``method`` of its fused map (its own options),
        sharing this detector's loaded networks and calibrations; maps only."""
        mapper = dataclasses.replace(
            self.mapper, method=method, options=self.options.component(method), threshold=None, min_area=None
        )
        return Detector(mapper, self.smooth)

    def with_options(self, **changes) -> Detector:
        """This detector with map options changed (e.g. ``fusion=`` the weights validation chose)."""
        return Detector(
            dataclasses.replace(self.mapper, options=dataclasses.replace(self.options, **changes)), self.smooth
        )

    def maps(self, images: Iterable | np.ndarray, progress: str | None = None) -> inference.Inspected:
        """The images, reconstructions and raw maps of ``images`` (paths, or an N×H×W×C float
        array in [0, 1] at the run's shape and colour) in one piece, with no verdict: what a
        threshold is chosen from. ``progress``: a progress bar's title (paths only)."""
        if isinstance(images, np.ndarray):
            images = self._checked(images)
            recons, maps = self.mapper.map_array(images)
            return inference.Inspected([None] * len(images), images, recons, maps, [None] * len(images))
        return self.mapper.inspect([Path(p) for p in images], progress=progress)

    def _checked(self, images: np.ndarray) -> np.ndarray:
        run = self.run
        expected = (*run.shape, 3 if run.color == "rgb" else 1)
        if images.ndim != 4 or images.shape[1:] != expected:
            raise ValueError(f"images must be N×{expected[0]}×{expected[1]}×{expected[2]}, got {images.shape}")
        return images.astype(np.float32)

    def _verdicts(self) -> None:
        if self.threshold is None or self.min_area is None:
            raise ValueError(
                f"this detector of {self.run.dir} was opened for maps only: open it with a threshold and a minimum "
                "area, or validate the run first"
            )

    def predict(self, images: Iterable | np.ndarray) -> list[Prediction]:
        """One :class:`Prediction` per image: ``images`` are file paths (read as the run reads its
        training images; unreadable ones are skipped with a warning) or an N×H×W×C float array in
        [0, 1] at the run's shape and colour."""
        self._verdicts()
        if isinstance(images, np.ndarray):
            return self._results(self.maps(images))
        return [p for chunk in self.stream(images) for p in chunk]

    def stream(self, paths: Iterable, progress: str | None = None) -> Iterator[list[Prediction]]:
        """:meth:`predict` of image files chunk by chunk (constant memory however many there
        are): one list of :class:`Prediction` per chunk; ``progress``: a progress bar's title."""
        self._verdicts()
        for seen in self.mapper.stream([Path(p) for p in paths], progress=progress):
            if not np.isfinite(seen.maps).all():
                raise NonFiniteMaps(f"the residual maps of {self.run.model_path} are not finite (a diverged model?)")
            yield self._results(seen)

    def _results(self, seen: inference.Inspected) -> list[Prediction]:
        scores = image_scores(seen.maps, self.threshold, self.min_area)
        smoothed = resmaps.smooth(seen.maps, self.smooth)
        results = []
        for i, raw in enumerate(seen.maps):
            mask, largest, count = resmaps.regions(raw, self.threshold, self.min_area)  # one labelling each
            results.append(
                Prediction(
                    seen.paths[i],
                    seen.images[i],
                    seen.recons[i],
                    raw,
                    smoothed[i],
                    mask,
                    float(scores[i]),
                    largest,
                    count,
                    seen.sizes[i],
                    bool(mask.any()),  # a region of at least the minimum area
                )
            )
        return results
