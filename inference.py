"""From a run and image files to residual maps, verdicts and result files.

The one place where the post-training steps (validation.py, finetuning.py,
evaluation.py, exporting.py) load images for a run, reconstruct them, compute residual
maps, and turn them into verdicts. Every step opens a run the same way:
:func:`open_maps` (the map method and options a :class:`settings.MapRequest` asks for) or
:func:`open_for_verdicts` (also the threshold and minimum area, from the command line or
the validation result), then maps images with :meth:`Mapper.inspect` or
:meth:`Mapper.stream`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import data
import methods
import resmaps
import runs
import storage
from settings import BATCH, DEFAULT_PASSES, DEFAULT_SCALES, MapRequest
from utils import SettingError, UserError


@dataclass
class Inspected:
    """Images of one set with their reconstructions and residual maps (model size)."""

    paths: list
    images: np.ndarray
    recons: np.ndarray
    maps: np.ndarray
    sizes: list  # original (width, height) per image


BASELINE_SIGMA = 1.0
BASELINE_QUANTILE = 0.75  # per pixel, over the training images; beat the mean on bottle (bench/README.md)
BASELINE_TOLERANCE = 1  # px: the baseline is the maximum over (2t+1)² neighbours, so a 1-px shift of a rim is usual
# The fused map's usual maps (usual_map) take their maximum over a wider square, 9×9: on the twelve
# trainings of bench/README.md "Round 3, session 24" it lifted cookie's AU-PRO 0.014 and tire's 0.008
# over 3×3; of 0–12 px, 4 was the pooled and left-out best and the painted copies' near-best.
USUAL_TOLERANCE = 4  # px
MASK_QUANTILE = 0.999  # later passes repaint where the map exceeds this quantile of the training images' maps
MASK_SIGMA = 4.0  # px (model size): the map is smoothed before that comparison, so the mask covers whole blobs
MASK_FEATHER = 1.5  # px: soft edge of the repainted area
# What a result records of the baseline it subtracted and of the later passes (see refined_maps).
_BASELINE_KIND = {"baseline_quantile": BASELINE_QUANTILE, "baseline_tolerance": BASELINE_TOLERANCE}
_USUAL_KIND = {"baseline_quantile": BASELINE_QUANTILE, "baseline_tolerance": USUAL_TOLERANCE}  # a cached usual map's
_PASS_KIND = {"mask_quantile": MASK_QUANTILE, "mask_sigma": MASK_SIGMA, "mask_feather": MASK_FEATHER}
_CALIBRATION_KIND = {**_BASELINE_KIND, **_PASS_KIND}  # the settings a cached calibration was learnt with


def _describe_baseline(baseline_quantile=None, baseline_tolerance=None):
    if baseline_quantile is None:
        return "the mean"
    return f"quantile {baseline_quantile}, {baseline_tolerance or 0}-px tolerance"


FUSION_STEP = 0.25  # weights of the fused map are chosen on this grid of the simplex (validation.py)


@dataclass(frozen=True)
class Fusion:
    """How the ``fused`` map combines its component maps (chosen by validate.py on the proxy).

    Each component map ``M_k`` is put on a common scale by what the held-back good images
    say is usual for it (``centres``: the median of their pixels, ``spreads``: their 99.9th
    percentile minus that median), then ``fused = Σ w_k log(1 + max(0, (M_k − centre_k) /
    spread_k))``. A pixel as unusual as the top 0.1 % of good pixels of one component scores
    log 2 on it; the logarithm keeps one map's far tail (a head's probability near 1 is a
    hundred spreads out) from deciding alone, a soft "or" of the maps.

    ``usual``: each component's usual map on the run's training images (:func:`usual_map`,
    per pixel) is subtracted from ``M_k`` first, so places every good image finds hard (a
    rim, a turning tread) score lower than the same residual elsewhere; the centres and
    spreads stay those of the raw maps. validate.py turns it on when the proxy says so. Its
    record keeps :data:`USUAL_TOLERANCE`: a fusion validated with other usual maps is refused.
    """

    components: tuple
    weights: tuple
    centres: tuple
    spreads: tuple
    usual: bool = False

    def __post_init__(self):
        n = len(self.components)
        if not n or any(len(v) != n for v in (self.weights, self.centres, self.spreads)):
            raise ValueError(f"a fusion needs one weight, centre and spread per component, got {self.record()}")
        fusable = methods.names(fusable=True)
        if any(c not in fusable for c in self.components):
            raise ValueError(f"fusion components must be among {', '.join(fusable)}, got {list(self.components)}")
        if not all(np.isfinite(v) and v >= 0 for v in self.weights) or not sum(self.weights) > 0:
            raise ValueError(f"fusion weights must be finite, >= 0 and not all 0, got {list(self.weights)}")
        if not all(np.isfinite(v) and v > 0 for v in self.spreads):
            raise ValueError(f"fusion spreads must be finite and > 0, got {list(self.spreads)}")

    def combine(self, maps: list, ops=np, usual: list | None = None):
        """The fused N×H×W map of the components' maps (in :attr:`components` order; a
        component of weight 0 is never read, so it may be None). ``ops``: what computes it,
        NumPy or anything with its ``maximum`` and ``log1p`` (the exported graph's ops,
        exporting.py), so the formula is written once for both. ``usual``: the components'
        H×W usual maps (:func:`usual_map`), required when :attr:`usual` is on."""
        if self.usual and usual is None:
            raise ValueError("this fusion subtracts each component's usual map: pass `usual`")
        total = None
        for k, (m, w, c, s) in enumerate(zip(maps, self.weights, self.centres, self.spreads)):
            if w:
                m = np.asarray(m, np.float32) if ops is np else m
                if self.usual:
                    m = m - usual[k]
                term = np.float32(w) * ops.log1p(ops.maximum((m - np.float32(c)) / np.float32(s), 0.0))
                total = term if total is None else total + term
        return total

    def record(self) -> dict:
        return {
            **{k: list(getattr(self, k)) for k in ("components", "weights", "centres", "spreads")},
            "usual": self.usual,
            "usual_tolerance": USUAL_TOLERANCE if self.usual else None,
        }

    @classmethod
    def from_record(cls, record: dict) -> Fusion:
        """A fusion stored by :meth:`record` (results older than ``usual`` subtracted none;
        older than ``usual_tolerance``, usual maps of :data:`BASELINE_TOLERANCE` px). One whose
        usual maps had another tolerance than today's is refused: its threshold fits other maps."""
        try:
            fields = [tuple(record[k]) for k in ("components", "weights", "centres", "spreads")]
            usual = record.get("usual", False)
            tolerance = record.get("usual_tolerance", BASELINE_TOLERANCE)
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"a fusion record needs components, weights, centres and spreads: {exc}") from None
        if not isinstance(usual, bool):
            raise ValueError(f"a fusion record's usual must be true or false, got {usual!r}")
        if usual and tolerance != USUAL_TOLERANCE:
            raise ValueError(
                f"its fused map subtracted usual maps of a {tolerance}-px tolerance, today's are {USUAL_TOLERANCE} px"
            )
        return cls(*fields, usual=usual)

    def describe(self) -> str:
        terms = " + ".join(f"{w:g}×{c}" for c, w in zip(self.components, self.weights) if w)
        return f"{terms}, each minus its usual map" if self.usual else terms


def fusion_components(run: runs.Run) -> tuple:
    """The maps a run's ``fused`` map combines: the learned head's (when the run has one), the
    fixed residual of its loss (ssim or l2) and the training-free median and low-frequency
    residuals (small local defects; large faint ones)."""
    head = methods.names(needs_head=True, fusable=True) if run.head_path.is_file() else ()
    return (*head, methods.default_for_loss(run.setup.loss), *methods.names(training_free=True))


@dataclass(frozen=True)
class MapOptions:
    """How residual maps are made before thresholds and metrics; recorded with every result.

    ``baseline``: subtract the usual residual of the run's training images (see
    :func:`refined_maps`). ``scales``: the number of image scales
    :func:`resmaps.residual_maps` averages (1 = the plain full-size map). ``passes``: the
    number of reconstructions, each after repainting what the previous ones found
    (1 = one plain reconstruction; see :func:`refined_maps`).
    """

    baseline: bool = True
    scales: int = DEFAULT_SCALES
    passes: int = DEFAULT_PASSES
    fusion: Fusion | None = None  # the fused map's weights (method fused only)

    @classmethod
    def from_args(
        cls,
        baseline: bool | None = None,
        scales: int | None = None,
        passes: int | None = None,
        method: str | None = None,
        mode: str = "object",
    ) -> MapOptions:
        """Options from command-line values, where None means the default for ``method`` and the
        run's ``mode``. The learned map takes no options (the head saw one plain
        reconstruction); surface runs subtract no per-pixel baseline (nothing sits at the same
        place in every image there)."""
        if method is not None and not methods.get(method).multiscale:
            if baseline is False or scales not in (None, 1) or passes not in (None, 1):
                raise SettingError(
                    f"`baseline=False`, `scales` and `passes` apply to "
                    f"{methods.listing(methods.names(multiscale=True), 'and')} maps, not to `method={method}`",
                    "method",
                )
            return cls(False, 1, 1)
        return cls(
            baseline is not False and mode != "surface",
            DEFAULT_SCALES if scales is None else int(scales),
            DEFAULT_PASSES if passes is None else int(passes),
        )

    def record(self) -> dict:
        """The fields every result file stores, so later scripts can check and follow them.

        ``baseline_quantile`` and ``baseline_tolerance`` say which baseline was subtracted,
        ``mask_*`` how later passes chose what to repaint (see :func:`refined_maps`).
        """
        return {
            "baseline": self.baseline,
            **{k: v if self.baseline else None for k, v in _BASELINE_KIND.items()},
            "scales": self.scales,
            "passes": self.passes,
            **{k: v if self.passes > 1 else None for k, v in _PASS_KIND.items()},
            **({"fusion": self.fusion.record()} if self.fusion else {}),
        }

    def component(self, method: str) -> MapOptions:
        """The options one component of a fused map is made with: these (without the fusion)
        for ssim and l2, none for the learned and training-free maps."""
        if not methods.get(method).multiscale:
            return MapOptions(False, 1, 1)
        return MapOptions(self.baseline, self.scales, self.passes)

    def cache_name(self, kind: str, method: str) -> str:
        """File name of a run's cache of ``kind`` for ``method``'s maps under these options."""
        return f"{kind}_{method}_s{self.scales}_p{self.passes}{'' if self.baseline else '_raw'}.npz"

    @classmethod
    def from_record(cls, record: dict, what: str) -> MapOptions:
        """Options stored by :meth:`record` in a result file (``what`` names it in errors).

        Older files: no ``scales`` means 1 scale, no ``passes`` 1 pass. A result made with
        another baseline than today's (older versions subtracted the mean, then the
        quantile without tolerance) or other mask settings has a threshold that no longer
        fits the maps, so it is refused.
        """
        fusion = None
        if record.get("fusion") is not None:
            try:
                fusion = Fusion.from_record(record["fusion"])
            except ValueError as exc:
                raise UserError(f"{what}: {exc}; run validate.py again") from None
        options = cls(
            bool(record.get("baseline", False)), int(record.get("scales", 1)), int(record.get("passes", 1)), fusion
        )
        stored = {k: record.get(k) for k in _BASELINE_KIND}
        if options.baseline and stored != _BASELINE_KIND:
            raise SettingError(
                f"{what} was computed with an older residual baseline ({_describe_baseline(**stored)} instead of "
                f"{_describe_baseline(**_BASELINE_KIND)}); run validate.py again, or pass `threshold` and `min_area`"
            )
        stored = {k: record.get(k) for k in _PASS_KIND}
        if options.passes > 1 and stored != _PASS_KIND:
            raise SettingError(
                f"{what} was computed with other mask settings for later passes ({stored} instead of "
                f"{_PASS_KIND}); run validate.py again, or pass `threshold` and `min_area`"
            )
        return options

    def describe(self, method: str) -> str:
        """E.g. ``ssim at 2 scales, 4 passes, minus baseline``."""
        return (
            f"{method} at {self.scales} scale{'s' if self.scales > 1 else ''}"
            f"{f', {self.passes} passes' if self.passes > 1 else ''}{', minus baseline' if self.baseline else ''}"
        )


@dataclass(frozen=True)
class Calibration:
    """What a run's training images say is usual, for :func:`refined_maps`.

    ``baselines``: passes×H×W, the residual subtracted in each pass (zeros without the
    baseline). ``mask_threshold``: where later passes repaint (inf with one pass).
    """

    baselines: np.ndarray
    mask_threshold: float


def _usual_residual(maps, quantile: float = BASELINE_QUANTILE, tolerance: int = BASELINE_TOLERANCE):
    """Per-pixel ``quantile`` of 1-px-smoothed maps, then its maximum over each pixel's
    neighbours within ``tolerance`` px (:data:`BASELINE_TOLERANCE` for a method's baseline,
    :data:`USUAL_TOLERANCE` for the fused map's usual maps). (Only benchmarks pass another quantile.)"""
    from scipy.ndimage import maximum_filter

    usual = np.quantile(resmaps.smooth(maps, BASELINE_SIGMA), quantile, axis=0)
    return maximum_filter(usual, size=2 * tolerance + 1, mode="nearest").astype(np.float32)


def refined_maps(
    model,
    images: np.ndarray,
    method: str,
    options: MapOptions = MapOptions(),
    batch: int = BATCH,
    calibration: Calibration | None = None,
) -> tuple[np.ndarray, np.ndarray, Calibration]:
    """Reconstructions and residual maps of an N×H×W×C array under ``options``.

    Pass 1 reconstructs the images and takes their residual map. With
    ``options.baseline``, the usual residual of each place on good images is subtracted
    and negatives set to 0 (a place is never *less* anomalous than usual): the per-pixel
    upper quartile of the training images' maps (each smoothed by 1 px), then its
    maximum over each pixel's 3×3 neighbours. Some places (sharp rims, fine texture) are
    always hard to reconstruct; the quartile rather than the mean damps places whose
    residual varies a lot, and the neighbourhood maximum makes a rim one pixel off its
    usual place usual too.

    Each later pass repaints the images where the map so far, smoothed by
    :data:`MASK_SIGMA` px, exceeds the mask threshold (the :data:`MASK_QUANTILE` quantile
    of the training images' smoothed pass-1 maps), with the previous reconstruction
    (soft edge of :data:`MASK_FEATHER` px), reconstructs the repainted images, and maps
    the *original* images against those reconstructions, minus that pass's own baseline.
    The result is the pixel-wise minimum over passes. Why: a defect disturbs the
    reconstruction around it, so the map spills onto good pixels next to defects (most
    false positives on bottle); once the defect is painted over, its surroundings are
    reconstructed as usual while the defect itself still differs. Good images are barely
    repainted, so their maps hardly change.

    ``calibration`` None means ``images`` are the training images: the baselines (one
    per pass) and the mask threshold are learnt from them. Returns ``(reconstructions
    of the last pass, maps, Calibration)``.
    """
    learn = calibration is None
    baselines = []

    def above_usual(raw, k):
        if not options.baseline:
            usual = np.zeros(raw.shape[1:], np.float32)
        else:
            usual = _usual_residual(raw) if learn else calibration.baselines[k]
        baselines.append(usual)
        return np.maximum(raw - usual, 0.0).astype(np.float32)

    first_recons, first_raw = resmaps.compute_resmaps(model, images, method, batch, options.scales)
    recons, maps = first_recons, above_usual(first_raw, 0)
    threshold = None if learn else calibration.mask_threshold
    for k in range(1, options.passes):
        smoothed = resmaps.smooth(maps, MASK_SIGMA)
        if threshold is None:  # learnt from the training images' first-pass maps
            threshold = float(np.quantile(smoothed, MASK_QUANTILE))
        mask = resmaps.smooth((smoothed > threshold).astype(np.float32), MASK_FEATHER)[..., None]
        # An image with nothing to repaint is its own input again: its pass-1 reconstruction
        # and residual stand, so only the repainted images go through the model.
        repaint = np.flatnonzero(mask.reshape(len(mask), -1).max(axis=1) > 0)
        raw, next_recons = first_raw.copy(), first_recons.copy()
        if len(repaint):
            part = mask[repaint]
            next_recons[repaint] = resmaps.reconstruct(
                model, images[repaint] * (1 - part) + recons[repaint] * part, batch
            )
            raw[repaint] = resmaps.batched_residual_maps(
                images[repaint], next_recons[repaint], method, batch, options.scales
            )
        recons = next_recons
        maps = np.minimum(maps, above_usual(raw, k))
    return recons, maps, Calibration(np.stack(baselines), float("inf") if threshold is None else threshold)


def cached_calibration(run: runs.Run, method: str, options: MapOptions) -> Calibration | None:
    """The run's :class:`Calibration` for ``options`` when nothing needs learning (no
    baseline, one pass) or its cache matches the model file and settings, else None."""
    if not options.baseline and options.passes == 1:
        return Calibration(np.zeros((1, *run.shape), np.float32), float("inf"))
    cache = run.dir / options.cache_name("calibration", method)
    stored = storage.load_npz_or_none(cache, ("baselines", "mask_threshold", "model_sha256", *_CALIBRATION_KIND))
    if (
        stored is not None
        and str(stored["model_sha256"]) == storage.model_id(run.model_path)  # the weights' content, not a time stamp
        and stored["baselines"].shape == (options.passes, *run.shape)
        and all(stored[k] == v for k, v in _CALIBRATION_KIND.items())
    ):
        return Calibration(stored["baselines"], float(stored["mask_threshold"]))
    return None


# What a cache learnt from the training images stands for, and what else a user can do without them.
_LEARNT = {
    "calibration": (
        "the residual baseline needs",
        "validate with these settings where it is, or use `baseline=False` `passes=1`",
        "baseline",
    ),
    "usual": ("the fused map's usual maps need", "or validate the run again where it is", "method"),
}


def _check_dataset(run: runs.Run, kind: str, method: str, options: MapOptions) -> None:
    """Refuse (one line) a ``kind`` cache (``calibration`` or ``usual``) still to learn from the
    run's training images when its dataset is gone (a run moved without it): only the cache in
    the run folder could stand in for them."""
    if not run.class_dir.is_dir():
        needs, remedy, flag = _LEARNT[kind]
        raise SettingError(
            f"{needs} the run's training images, but its dataset {run.class_dir} is not found and "
            f"{options.cache_name(kind, method)} is not in the run: give the dataset back (setup.json 'directory'), "
            f"{remedy}",
            flag,
        )


def calibrate(run: runs.Run, method: str, options: MapOptions, model=None, batch: int = BATCH) -> Calibration:
    """The run's :class:`Calibration` for ``options``, learnt from its *training* images.

    Training images are used so the held-back validation images stay independent for
    choosing the threshold; test images are never used. Without baseline and with one
    pass nothing is learnt (no images are read). Cached in the run folder and recomputed
    when the model file or the baseline and mask settings change.
    """
    cached = cached_calibration(run, method, options)
    if cached is not None:
        return cached
    _check_dataset(run, "calibration", method, options)
    train_paths = run.training_paths()
    if not train_paths:
        raise SettingError(
            f"no training images left in {run.class_dir / 'train' / data.GOOD} to learn the residual baseline "
            "(use `baseline=False` `passes=1`)",
            "baseline",
        )
    weights = storage.model_id(run.model_path)  # of the weights learnt from, taken first
    images, _ = data.load_images(train_paths, run.color, run.shape, progress="training images (residual baseline)")
    _, _, learnt = refined_maps(model or run.load_model(), images, method, options, batch)
    with storage.atomic_path(run.dir / options.cache_name("calibration", method)) as tmp:
        np.savez(
            tmp,
            baselines=learnt.baselines,
            mask_threshold=learnt.mask_threshold,
            model_sha256=np.array(weights),
            **_CALIBRATION_KIND,
        )
    return learnt


def _usual_identity(run: runs.Run, method: str) -> dict:
    """The files a component's usual map is computed from: the model's hash (its training
    images are the model's), and the head's for the head's map."""
    identity = {"model_sha256": storage.model_id(run.model_path)}
    if methods.get(method).needs_head:
        identity["head_sha256"] = storage.model_id(run.head_path)
    return identity


def cached_usual(run: runs.Run, method: str, options: MapOptions) -> np.ndarray | None:
    """The run's cached usual map of ``method`` under ``options`` (see :func:`usual_map`) when
    it matches the model and head files and today's quantile and tolerance, else None."""
    identity = _usual_identity(run, method)
    stored = storage.load_npz_or_none(run.dir / options.cache_name("usual", method), ("usual", *identity, *_USUAL_KIND))
    if (
        stored is not None
        and all(str(stored[k]) == v for k, v in identity.items())
        and stored["usual"].shape == tuple(run.shape)
        and all(stored[k] == v for k, v in _USUAL_KIND.items())
    ):
        return stored["usual"]
    return None


USUAL_IMAGES = 256  # training images a usual map is learnt from at most (evenly spread): bounds its time and memory


def usual_paths(run: runs.Run) -> list[Path]:
    """The training images a usual map is learnt from: every one, or :data:`USUAL_IMAGES`
    evenly spread over them (the listing order) when there are more."""
    paths = run.training_paths()
    if len(paths) <= USUAL_IMAGES:
        return paths
    return [paths[i] for i in np.linspace(0, len(paths) - 1, USUAL_IMAGES).round().astype(int)]


def usual_map(
    run: runs.Run, method: str, options: MapOptions, batch: int = BATCH, calibrations: dict | None = None
) -> np.ndarray:
    """What ``method``'s map (a fused map's component, made with ``options``) usually is at
    each pixel of the run's *training* images (:func:`usual_paths`): the H×W :func:`_usual_residual` (upper
    quartile of the 1-px-smoothed maps, as the ssim map's baseline, then its maximum within
    :data:`USUAL_TOLERANCE` px).
    The fused map subtracts it from the component when its fusion says ``usual``. Cached in
    the run folder; recomputed when the model or head file changes. Never test images."""
    cached = cached_usual(run, method, options)
    if cached is not None:
        return cached
    _check_dataset(run, "usual", method, options)
    paths = usual_paths(run)
    if not paths:
        raise SettingError(
            f"no training images left in {run.class_dir / 'train' / data.GOOD} to learn the fused map's usual maps",
            "method",
        )
    identity = _usual_identity(run, method)  # of the files learnt from, taken first
    chunks = inspect_stream(
        run, paths, method, batch, f"training images (usual {method} map)", options, calibrations=calibrations
    )
    usual = _usual_residual(np.concatenate([seen.maps for seen in chunks]), tolerance=USUAL_TOLERANCE)
    with storage.atomic_path(run.dir / options.cache_name("usual", method)) as tmp:
        np.savez(tmp, usual=usual, **{k: np.array(v) for k, v in identity.items()}, **_USUAL_KIND)
    return usual


def remembered_usual(
    run: runs.Run, method: str, options: MapOptions, calibrations: dict | None, batch: int = BATCH
) -> np.ndarray:
    """:func:`usual_map`, remembered in ``calibrations`` (a :class:`Mapper`'s) like a calibration."""
    return _remembered(
        calibrations, options.cache_name("usual", method), lambda: usual_map(run, method, options, batch, calibrations)
    )


def fusion_usual(run: runs.Run, fusion: Fusion, options: MapOptions, calibrations: dict | None, batch: int = BATCH):
    """The usual maps of ``fusion``'s components (:func:`usual_map`; None at weight 0), whether
    or not it subtracts them, in :attr:`Fusion.components` order."""
    return [
        remembered_usual(run, c, options.component(c), calibrations, batch) if w else None
        for c, w in zip(fusion.components, fusion.weights)
    ]


def run_maps(
    run: runs.Run,
    images: np.ndarray,
    method: str,
    options: MapOptions = MapOptions(),
    batch: int = BATCH,
    calibrations: dict | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(reconstructions, maps)`` of an N×H×W×C array at the run's shape with ``method``
    (methods.py): a training-free map, the fusion of its components' maps, the learned
    head's defect probability (learned.py), or ssim/l2 maps as ``options`` say (see
    :func:`refined_maps`, calibrated on the run's training images). ``calibrations``: a
    :class:`Mapper`'s own, so each calibration is read (or learnt) once per opened run."""
    if batch < 1:
        raise SettingError(f"`batch` must be >= 1, got {batch}")
    spec = methods.get(method)
    # The training-free maps, by name: what each compares the image with stands for the reconstruction.
    if method == "median":
        medians = resmaps.median_images(images)
        return medians, resmaps.median_residual(images, medians)
    if method == "lowfreq":
        return resmaps.lowfreq_images(images), resmaps.lowfreq_residual(images)
    if spec.composite:
        if options.fusion is None:
            raise SettingError(
                f"the fused map needs the weights validate.py chooses: run validate.py `path={run.dir}` first", "method"
            )
        parts = [run_maps(run, images, c, options.component(c), batch, calibrations) for c in options.fusion.components]
        # Shown as the reconstruction: the network's (the first component that has one).
        recons = next(
            (r for (r, _), c in zip(parts, options.fusion.components) if methods.get(c).needs_model), parts[0][0]
        )
        usual = fusion_usual(run, options.fusion, options, calibrations, batch) if options.fusion.usual else None
        return recons, options.fusion.combine([m for _, m in parts], usual=usual)
    model = run.load_model()
    if spec.needs_head:
        import learned

        return learned.learned_maps(model, run.load_head(), images, batch)
    most = resmaps.max_scales(min(run.shape), method)
    if not 1 <= options.scales <= most:
        raise SettingError(
            f"`scales` must be 1 to {most} for {method} maps of this {min(run.shape)}-px model, got {options.scales}"
        )
    if options.passes < 1:
        raise SettingError(f"`passes` must be >= 1, got {options.passes}")
    calibration = remembered_calibration(run, method, options, calibrations, model, batch)
    recons, maps, _ = refined_maps(model, images, method, options, batch, calibration)
    return recons, maps


def _calibration_key(method: str, options: MapOptions) -> str:
    """A calibration's name in a :class:`Mapper`'s ``calibrations``: its cache file's."""
    return options.cache_name("calibration", method)


def _remembered(calibrations: dict | None, key: str, learn):
    """``calibrations[key]`` (a :class:`Mapper`'s), else ``learn()``, kept there for next time."""
    found = None if calibrations is None else calibrations.get(key)
    if found is None:
        found = learn()
        if calibrations is not None:
            calibrations[key] = found
    return found


def remembered_calibration(
    run: runs.Run, method: str, options: MapOptions, calibrations: dict | None, model=None, batch: int = BATCH
) -> Calibration:
    """:func:`calibrate`, remembered in ``calibrations`` (a :class:`Mapper`'s): read or learnt
    once however many chunks, components or exports ask for it."""
    return _remembered(
        calibrations, _calibration_key(method, options), lambda: calibrate(run, method, options, model, batch)
    )


def expected_reconstructions(
    run: runs.Run, method: str, options: MapOptions, images: int, calibrations: dict | None = None
) -> int:
    """How many images the network computes, at most, to map ``images`` images: one per
    pass (later passes take only images with something to repaint), plus the training
    images when the calibration is still to be learnt; the ``learned`` head maps in one.
    A cached calibration found here goes into ``calibrations`` (see :func:`run_maps`)."""
    spec = methods.get(method)
    if spec.training_free:
        return 0
    if spec.composite and options.fusion is not None:
        fusion = options.fusion
        # Plus the training images of each usual map still to be learnt (its component's maps on them).
        learn = [
            c
            for c, w in zip(fusion.components, fusion.weights)
            if fusion.usual
            and w
            and options.component(c).cache_name("usual", c) not in (calibrations or {})
            and cached_usual(run, c, options.component(c)) is None
        ]
        for c in learn:
            _check_dataset(run, "usual", c, options.component(c))
        return sum(
            expected_reconstructions(
                run, c, options.component(c), images + (len(usual_paths(run)) if c in learn else 0), calibrations
            )
            for c in fusion.components
        )
    if not spec.calibrated:  # the head (or a fusion not chosen yet): one reconstruction each
        return images
    key = _calibration_key(method, options)
    found = (calibrations or {}).get(key) or cached_calibration(run, method, options)
    if found is not None and calibrations is not None:
        calibrations[key] = found
    if found is None:
        _check_dataset(run, "calibration", method, options)
        images += len(run.training_paths())
    return images * options.passes


def load_networks(
    run: runs.Run,
    method: str,
    images: int | None = None,
    options: MapOptions = MapOptions(),
    calibrations: dict | None = None,
) -> None:
    """Load (once) what ``method``'s maps need, so a missing or mismatched model or head is
    reported before any image is read or any output folder is made. ``images``: how many
    images this process will map with ``options`` (None: unknown), which decides between
    the ONNX twin and Keras (:func:`networks.use_twin`)."""
    spec = methods.get(method)
    if spec.training_free:
        return
    count = None if images is None else expected_reconstructions(run, method, options, images, calibrations)
    run.load_model(images=count)
    uses = options.fusion.components if spec.composite and options.fusion else (method,)
    if any(methods.get(c).needs_head for c in uses) or (spec.uses_head and run.head_path.is_file()):
        run.load_head(images=count)


STREAM_CHUNK = 32  # images held at once by inspect_stream (with their reconstructions and maps)


def inspect_stream(
    run: runs.Run,
    paths: list,
    method: str,
    batch: int = BATCH,
    progress: str | None = None,
    options: MapOptions = MapOptions(),
    chunk: int | None = None,
    calibrations: dict | None = None,
) -> Iterator[Inspected]:
    """Load ``paths`` at the run's shape and colour, reconstruct them and compute their maps
    (see :func:`run_maps`), ``chunk`` images at a time: yields one :class:`Inspected` per
    chunk (default :data:`STREAM_CHUNK`), so a folder larger than memory is mapped in
    constant memory.

    One progress bar (``progress``: its description) counts every file. Unreadable files
    are skipped with a warning; :class:`UserError` when none at all can be read.
    """
    from tqdm import tqdm

    chunk = STREAM_CHUNK if chunk is None else chunk
    if chunk < 1:
        raise UserError(f"chunk must be >= 1 image, got {chunk}")
    load_networks(run, method, len(paths), options, calibrations)
    readable = 0
    with tqdm(total=len(paths), desc=progress, unit="img", leave=False, disable=None if progress else True) as bar:
        for start in range(0, len(paths), chunk):
            images, kept, sizes = data.load_images(
                paths[start : start + chunk], run.color, run.shape, bar, allow_none=True, with_sizes=True
            )
            if kept:
                readable += len(kept)
                recons, maps = run_maps(run, images, method, options, batch, calibrations)
                yield Inspected(kept, images, recons, maps, sizes)
    if not readable:
        raise UserError(f"no readable images among {len(paths)} file(s)")


def inspect(
    run: runs.Run,
    paths: list,
    method: str,
    batch: int = BATCH,
    progress: str | None = None,
    options: MapOptions = MapOptions(),
    calibrations: dict | None = None,
) -> Inspected:
    """:func:`inspect_stream` in one piece: all of ``paths`` at once."""
    return next(inspect_stream(run, paths, method, batch, progress, options, max(1, len(paths)), calibrations))


def check_area_threshold(min_area: int | None = None, threshold: float | None = None) -> None:
    """Reject negative or zero areas and negative thresholds with a one-line error."""
    if min_area is not None and min_area < 1:
        raise UserError(f"minimum area must be a positive number of pixels, got {min_area}")
    if threshold is not None and not (threshold >= 0 and np.isfinite(threshold)):  # "not >=" also rejects NaN
        raise UserError(f"threshold must be a finite number >= 0, got {threshold}")


def require_validation_result(run: runs.Run, method: str, min_area: int | None, otherwise: str) -> dict:
    """The newest validation result of ``run``'s own weights for ``method`` (and ``min_area``),
    or a one-line error asking for validate.py, followed by ``otherwise`` (the caller's way out)."""
    found = runs.find_validation_result(run.dir, method, min_area, model=run.model_path)  # refuses other weights
    if found is None:
        which = f"method {method}" + (f", area {min_area}" if min_area is not None else "")
        raise SettingError(
            f"no validation result for {which} in {run.dir}: run validate.py `path={run.dir}` `min_area=MIN_AREA`"
            f" `method={method}` first, {otherwise}",
            "method",
        )
    return found


def resolve_threshold(
    run: runs.Run,
    method: str,
    threshold: float | None = None,
    min_area: int | None = None,
    baseline: bool | None = None,
    scales: int | None = None,
    passes: int | None = None,
) -> tuple[float, int, MapOptions, str]:
    """Threshold, minimum area and map options to classify with: as given, else from the
    newest validation result (whose map options must then match those given, if any).

    Returns ``(threshold, min_area, MapOptions, source)``.
    """
    check_area_threshold(min_area, threshold)
    if threshold is not None and min_area is not None:
        options = MapOptions.from_args(baseline, scales, passes, method, run.mode)
        if methods.get(method).composite:  # the weights come from validate.py whatever the threshold
            found = require_validation_result(run, method, None, "which chooses the fused map's weights")
            options = dataclasses.replace(options, fusion=MapOptions.from_record(found, "its result").fusion)
        return float(threshold), int(min_area), options, "command line"
    found = require_validation_result(
        run, method, min_area, "or pass both `threshold=THRESHOLD` and `min_area=MIN_AREA`"
    )
    what = f"the validation result for {method} (area {found['min_area']})"
    options = MapOptions.from_record(found, what)
    if baseline is not None and baseline != options.baseline:
        raise SettingError(
            f"{what} was computed {'with' if options.baseline else 'without'} the residual baseline; run validate.py again "
            f"with `baseline={baseline}`, or pass `threshold` and `min_area`"
        )
    for name, given, used in (("scales", scales, options.scales), ("passes", passes, options.passes)):
        if given is not None and given != used:
            raise SettingError(
                f"{what} was computed with `{name}={used}`; run validate.py again with `{name}={given}`, "
                "or pass `threshold` and `min_area`"
            )
    if threshold is not None:
        return float(threshold), int(found["min_area"]), options, "area from validation, threshold from command line"
    return float(found["threshold"]), int(found["min_area"]), options, "validation"


def resize_map(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bring a model-size H×W map (float or bool) to an image's (width, height)."""
    from PIL import Image

    width, height = size
    if array.shape == (height, width):
        return array
    if array.dtype == bool:
        img = Image.fromarray(array.astype(np.uint8) * 255)
        return np.asarray(img.resize((width, height), Image.Resampling.NEAREST)) > 127
    img = Image.fromarray(array.astype(np.float32), mode="F")
    return np.asarray(img.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)


def resolve_sample(run: runs.Run, name: str, base, allowed: list | None = None, what: str = "image") -> Path:
    """Path of a sample image given relative to ``base`` (or absolute); a one-line error
    listing a few that exist when it does not (or is not among ``allowed``)."""
    path = Path(name)
    candidates = [path] if path.is_absolute() else [Path(base) / path, Path(name)]
    found = next((p for p in candidates if p.is_file()), None)
    options = allowed if allowed is not None else data.list_images(base, recursive=True)
    examples = ", ".join(data.relative_to(p, base) for p in list(options)[:5])
    if found is None:
        raise UserError(f"{what} not found: {name} (relative to {base}); some that exist: {examples}")
    if allowed is not None and found.resolve() not in {Path(p).resolve() for p in allowed}:
        raise UserError(f"{name} is not one of this run's validation images; some that are: {examples}")
    return found


def ground_truth_for(run: runs.Run, image_path) -> Path | None:
    """The ground-truth mask of a test image of the run's dataset (see
    :func:`data.ground_truth_path`), or None for any other image."""
    image_path = Path(image_path).resolve()
    if (run.class_dir / "test").resolve() not in image_path.parents:
        return None
    return data.ground_truth_path(run.class_dir, image_path.parent.name, image_path)


@dataclass(frozen=True)
class Mapper:
    """A run opened for residual maps: the method and options to map its images with and,
    from :func:`open_for_verdicts`, the threshold and minimum area that make verdicts
    (``source``: where they came from)."""

    run: runs.Run
    method: str
    options: MapOptions
    batch: int = BATCH
    threshold: float | None = None
    min_area: int | None = None
    source: str | None = None
    # Each calibration read (or learnt) once, however many chunks and components map with it.
    calibrations: dict = field(default_factory=dict, compare=False, repr=False)

    def load(self, images: int | None = None) -> None:
        """:func:`load_networks` for ``images`` images with this method and these options."""
        load_networks(self.run, self.method, images, self.options, self.calibrations)

    def stream(self, paths, progress: str | None = None, chunk: int | None = None) -> Iterator[Inspected]:
        """:func:`inspect_stream` of ``paths`` with this method and these options."""
        return inspect_stream(
            self.run, paths, self.method, self.batch, progress, self.options, chunk, self.calibrations
        )

    def inspect(self, paths, progress: str | None = None) -> Inspected:
        """:func:`inspect` of ``paths`` with this method and these options."""
        return inspect(self.run, paths, self.method, self.batch, progress, self.options, self.calibrations)

    def calibration(self, method: str) -> Calibration:
        """The calibration of ``method`` (this mapper's method, or a calibrated component of its
        fusion) under its options: see :func:`remembered_calibration`."""
        options = self.options.component(method) if method != self.method else self.options
        return remembered_calibration(self.run, method, options, self.calibrations, batch=self.batch)

    def usual(self, method: str) -> np.ndarray:
        """The usual map of ``method``, a component of this mapper's fused map, under its options:
        see :func:`remembered_usual`."""
        return remembered_usual(self.run, method, self.options.component(method), self.calibrations, self.batch)

    def usual_maps(self, fusion: Fusion | None = None) -> list:
        """:func:`fusion_usual` of ``fusion`` (default: this mapper's own) under these options."""
        return fusion_usual(self.run, fusion or self.options.fusion, self.options, self.calibrations, self.batch)

    def map_array(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:func:`run_maps` of an N×H×W×C array with this method and these options."""
        return run_maps(self.run, images, self.method, self.options, self.batch, self.calibrations)


def open_maps(path, request: MapRequest = MapRequest()) -> Mapper:
    """The run at ``path`` with the map method and options ``request`` asks for (defaults:
    :meth:`runs.Run.method`, :meth:`MapOptions.from_args`)."""
    run = runs.find_run(path)
    method = run.method(request.method)
    options = MapOptions.from_args(request.baseline, request.scales, request.passes, method, run.mode)
    return Mapper(run, method, options, request.batch)


def open_for_verdicts(
    path, request: MapRequest = MapRequest(), threshold: float | None = None, min_area: int | None = None
) -> Mapper:
    """The run at ``path`` with its method, threshold, minimum area and map options: as given,
    else from the newest validation result (see :func:`resolve_threshold`)."""
    run = runs.find_run(path)
    method = run.method(request.method)
    threshold, min_area, options, source = resolve_threshold(
        run, method, threshold, min_area, request.baseline, request.scales, request.passes
    )
    return Mapper(run, method, options, request.batch, threshold, min_area, source)
