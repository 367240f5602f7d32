"""Choosing the residual-map threshold for a minimum defect area, from held-back good images
and synthetic defects painted into them (never test images).

``validate.py`` is the command line over :func:`validate`. Every image has a *peak*: the
highest threshold at which it still holds a region of at least ``min_area`` pixels
(:func:`resmaps.area_peaks`); an image is defective at a threshold below its peak. Policies
(:func:`choose_threshold`):

* ``balanced`` (default): the threshold that finds the most painted copies of the validation
  images (the proxy) while passing the most validation images, at most
  :data:`MAX_FALSE_ALARMS` of them flagged; the middle of the best interval, for margin.
* a target false-alarm rate ``r``: the lowest threshold that flags at most ``r`` of the
  validation images (``r = 0``: zero false alarms, the threshold of earlier versions).

For the ``fused`` map, the weights of its component maps are chosen first, on the same
painted copies (:func:`choose_fusion`).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import numpy as np

import evaluation
import figures
import inference
import methods
import metrics
import resmaps
import runs
import storage
from detector import DEFAULT_SMOOTH, Detector
from settings import DEFAULT_FUSION_RULE, FUSION_RULES, MapRequest, default_min_area
from utils import UserError

CURVE_POINTS = 120  # thresholds drawn in threshold_search.png (the chosen one is added exactly)
PROXY_SEED = 0  # which defect each validation image's painted copy gets
MAPS_VERSION = 3  # part of the validation maps' cache key: raise it when the maps' computation changes
MAX_FALSE_ALARMS = 0.1  # the balanced policy flags at most this share of the validation images
FUSION_SAMPLE = 2  # the fusion search scores maps subsampled by this factor per side (4x faster)
FUSION_TIE = 0.002  # proxy objectives this close count as tied (see choose_fusion)


def choose_threshold(good_peaks, painted_peaks=None, false_alarms: float | None = None) -> tuple[float, dict]:
    """The threshold for images with these peaks (see the module docstring), and what it gives.

    ``false_alarms`` None: the balanced policy (needs ``painted_peaks``; without them, zero
    false alarms); else the lowest threshold flagging at most that share of the good images.
    Returns ``(threshold, record)``: the policy, the validation TNR and the proxy TPR there,
    each with its exact 95 % confidence interval (:func:`metrics.rate_interval`: a handful of
    held-back images pins the TNR only loosely, and the interval says how loosely).
    """
    good = np.sort(np.asarray(good_peaks, np.float64))
    painted = np.asarray([] if painted_peaks is None else painted_peaks, np.float64)
    if false_alarms is not None and not (0.0 <= false_alarms < 1.0):
        raise ValueError(f"the false-alarm rate must be in [0, 1), got {false_alarms!r}")
    if false_alarms is not None or not painted.size:
        rate = 0.0 if false_alarms is None else float(false_alarms)
        allowed = int(np.floor(rate * len(good) + 1e-9))
        threshold = float(good[len(good) - 1 - allowed])
        policy = f"at most {rate:g} of the validation images flagged"
    else:
        # J = TPR + TNR is constant between consecutive peaks: score each interval [v_k, v_k+1).
        values = np.unique(np.concatenate([good, painted]))
        tnr = np.searchsorted(good, values, side="right") / len(good)
        tpr = 1.0 - np.searchsorted(np.sort(painted), values, side="right") / len(painted)
        feasible = tnr >= 1.0 - MAX_FALSE_ALARMS - 1e-9
        feasible[-1] = False  # above every peak: nothing is ever found
        if not feasible.any():
            return choose_threshold(good, None, 0.0)
        j = np.where(feasible, tpr + tnr, -np.inf)
        k = int(np.flatnonzero(j == j.max())[-1])  # ties: the interval with the fewest false alarms
        threshold = float((values[k] + values[k + 1]) / 2)
        policy = (
            f"balanced: most painted copies found with at most {MAX_FALSE_ALARMS:g} of the validation images flagged"
        )
    passed, found = int(np.sum(good <= threshold)), int(np.sum(painted > threshold))
    return threshold, {
        "policy": policy,
        "validation_tnr": passed / len(good),
        "validation_tnr_interval": metrics.rate_interval(passed, len(good)),
        "proxy_tpr": found / painted.size if painted.size else None,
        "proxy_tpr_interval": metrics.rate_interval(found, painted.size),
        "zero_false_alarm_threshold": float(good[-1]),
    }


def _normaliser(good_maps: np.ndarray) -> tuple[float, float]:
    """``(centre, spread)`` of a component on good maps: median, 99.9th percentile − median."""
    sample = np.asarray(good_maps, np.float32)[:, ::FUSION_SAMPLE, ::FUSION_SAMPLE].ravel()
    centre, top = np.quantile(sample, [0.5, 0.999])
    spread = float(top - centre)
    if not spread > 0:
        spread = float(sample.max() - centre) or 1.0
    return float(centre), spread


def _simplex(k: int, step: float) -> list[tuple]:
    """Every weight vector of ``k`` components on a grid of ``step`` that sums to 1."""
    n = int(round(1 / step))
    grid = [w for w in itertools.product(range(n + 1), repeat=k) if sum(w) == n]
    return [tuple(v / n for v in w) for w in grid]


# The "equal" rule leaves out components whose skill on the painted copies is at most this: chosen
# leave-one-out over the four real categories among 0.5 (chance), 0.55 and 0.6 (each category's
# choice made on the other three picked 0.55; bench/README.md, "Round 3").
MIN_SKILL = 0.55


def _skill(good, painted, masks, families, area) -> float:
    """A component's image AUROC on the painted copies, averaged over the defect families (each
    family counts once, whatever its size), scored as test.py scores (region peaks)."""
    names = np.array(families)
    good_peaks = resmaps.area_peaks(good, area)
    peaks = resmaps.area_peaks(painted, area)
    labels = lambda n: np.r_[np.zeros(len(good_peaks), int), np.ones(n, int)]  # noqa: E731
    per = [
        metrics.image_auroc(labels(int((names == f).sum())), np.r_[good_peaks, peaks[names == f]])
        for f in sorted(set(families))
    ]
    return float(np.mean([v for v in per if v is not None])) if per else 0.5


def _proxy_objective(fusion: inference.Fusion, components: dict, min_area: int, usual: list | None = None) -> dict:
    """The fused map's proxy figures on the painted copies (maps subsampled by
    :data:`FUSION_SAMPLE`, threshold at the highest good image) and their mean, the
    ``objective``. ``components`` as :func:`choose_fusion` takes them; ``usual`` the
    components' usual maps when ``fusion.usual``."""
    step = FUSION_SAMPLE
    area = max(1, min_area // step**2)
    names = fusion.components
    masks = components[names[0]][1][1][:, ::step, ::step]
    small = None if usual is None else [None if u is None else u[::step, ::step] for u in usual]
    good = fusion.combine([components[c][0][:, ::step, ::step] for c in names], usual=small)
    painted = fusion.combine([components[c][1][0][:, ::step, ::step] for c in names], usual=small)
    threshold = max(float(resmaps.area_peaks(good, area).max()), 1e-12)
    figures_ = evaluation._proxy_figures(good, painted, masks, threshold, area, DEFAULT_SMOOTH / step)
    objective = float(np.mean([figures_[k] or 0.0 for k in ("image_auroc", "pixel_auroc", "au_pro")]))
    return {"objective": objective, **figures_}


def choose_usual(
    fusion: inference.Fusion, components: dict, usual: list, min_area: int
) -> tuple[inference.Fusion, dict]:
    """Whether the fused map subtracts each component's usual map on training images
    (:attr:`inference.Fusion.usual`), chosen on the painted copies: on when its proxy
    objective (:func:`_proxy_objective`) beats the raw fusion's by more than
    :data:`FUSION_TIE`. The weights stay those chosen on the raw maps (choosing them again on
    the subtracted maps let components the raw maps had judged weak back in, and cost cookie's
    AU-PRO 0.34 on a good head; bench/README.md "Round 3, session 21"). Returns the fusion and
    both objectives."""
    raw = _proxy_objective(fusion, components, min_area)
    subtracted = _proxy_objective(dataclasses.replace(fusion, usual=True), components, min_area, usual)
    chosen = subtracted["objective"] > raw["objective"] + FUSION_TIE
    return dataclasses.replace(fusion, usual=chosen), {"without": raw, "with": subtracted, "usual": chosen}


def choose_fusion(components: dict, min_area: int, rule: str = DEFAULT_FUSION_RULE) -> tuple[inference.Fusion, list]:
    """The fused map's weights: ``components`` maps each component method to its
    ``(good maps, (painted maps, masks, families))`` on the validation images.

    Each component is put on a common scale by its good maps (:func:`_normaliser`) and scored
    on the painted copies (:func:`_skill`, maps subsampled by :data:`FUSION_SAMPLE`).
    ``equal``: every component clearly better than chance on the copies (skill above
    :data:`MIN_SKILL`) weighs the same (the best one alone if none is): painted defects do not say how much each
    map should count on real ones (on commutator and tire the proxy ranked the head's map first
    where it was the worst on the real defects, bench/README.md "Round 3"). ``proxy``: every weight vector of the grid
    (:data:`inference.FUSION_STEP`) is scored on the copies (mean of image AUROC, pixel AUROC and
    AU-PRO) and the best kept; within :data:`FUSION_TIE` of it, the most even weights.
    Returns the fusion and what was measured (per component, or per candidate)."""
    if rule not in FUSION_RULES:
        raise ValueError(f"unknown fusion rule {rule!r}; choose one of {', '.join(FUSION_RULES)}")
    names = tuple(components)
    norms = [_normaliser(components[c][0]) for c in names]
    step = FUSION_SAMPLE
    area = max(1, min_area // step**2)
    masks = components[names[0]][1][1][:, ::step, ::step]
    families = components[names[0]][1][2]

    def fusion_of(weights):
        return inference.Fusion(names, tuple(weights), tuple(c for c, _ in norms), tuple(s for _, s in norms))

    if rule == "equal":
        skills = [
            _skill(components[c][0][:, ::step, ::step], components[c][1][0][:, ::step, ::step], masks, families, area)
            for c in names
        ]
        keep = [k > MIN_SKILL for k in skills]
        if not any(keep):
            keep = [k == max(skills) for k in skills]
        weights = [1.0 / sum(keep) if k else 0.0 for k in keep]
        measured = [{"component": c, "skill": k, "weight": w} for c, k, w in zip(names, skills, weights)]
        return fusion_of(weights), measured
    searched = [
        {"weights": list(weights), **_proxy_objective(fusion_of(weights), components, min_area)}
        for weights in _simplex(len(names), inference.FUSION_STEP)
    ]
    # Within FUSION_TIE of the best objective (the proxy's noise), the most even weights: no single
    # map's blind spot decides alone where the painted defects cannot tell them apart.
    top = max(s["objective"] for s in searched)
    best = max(
        (i for i, s in enumerate(searched) if s["objective"] >= top - FUSION_TIE),
        key=lambda i: -sum(w * w for w in searched[i]["weights"]),
    )
    return fusion_of(searched[best]["weights"]), searched


def fused_validation_maps(detector: Detector, min_area: int, rule: str = DEFAULT_FUSION_RULE) -> tuple:
    """:func:`validation_maps` of the fused map: each component's (cached), the weights chosen
    on the proxy (:func:`choose_fusion`), then whether to subtract the usual maps
    (:func:`choose_usual`), then combined. Returns ``(paths, maps, painted, the detector with
    the fusion, {"weights": the fusion search, "usual": the usual maps' choice})``."""
    run = detector.run
    parts = {}
    for c in inference.fusion_components(run):
        paths, good, painted = validation_maps(detector.component(c))
        if painted is None:
            raise UserError(f"no synthetic defect could be painted into the validation images of {run.dir}")
        parts[c] = (good, painted)
    fusion, searched = choose_fusion(parts, min_area, rule)
    usual = detector.usual_maps(fusion)
    fusion, usual_search = choose_usual(fusion, parts, usual, min_area)
    usual = usual if fusion.usual else None
    detector = detector.with_options(fusion=fusion)
    good = fusion.combine([parts[c][0] for c in fusion.components], usual=usual)
    first = parts[fusion.components[0]][1]
    painted = (fusion.combine([parts[c][1][0] for c in fusion.components], usual=usual), first[1], first[2])
    return paths, good, painted, detector, {"weights": searched, "usual": usual_search}


def validate(
    path,
    min_area: int | None = None,
    maps: MapRequest = MapRequest(),
    false_alarms: float | None = None,
    fusion_rule: str = DEFAULT_FUSION_RULE,
) -> tuple[dict, Path]:
    """Compute, save and return the validation result for ``min_area`` (default:
    :func:`settings.default_min_area`): ``(result, its folder)``.

    ``false_alarms``: None for the balanced policy, else the share of validation images the
    threshold may flag (see :func:`choose_threshold`). Writes
    ``RUN/validation/<method>/a<MIN_AREA>/validation_result.json`` and
    ``threshold_search.png``; the result also holds the proxy scores on painted copies of
    the validation images (:func:`evaluation.proxy_scores`), per defect family.
    """
    inference.check_area_threshold(min_area=min_area)
    detector = Detector.open_maps(path, maps)
    run, method = detector.run, detector.method
    if min_area is None:
        min_area = default_min_area(run.shape)
    searched = None
    if methods.get(method).composite:  # its weights first, on the painted copies
        paths, good_maps, painted, detector, searched = fused_validation_maps(detector, min_area, fusion_rule)
    else:
        paths, good_maps, painted = validation_maps(detector)
    options = detector.options
    if not np.isfinite(good_maps).all():
        raise UserError(
            f"the residual maps of {run.model_path} are not finite (a diverged model?): no threshold can be chosen"
        )
    good_peaks = resmaps.area_peaks(good_maps, min_area)
    painted_peaks = resmaps.area_peaks(painted[0], min_area) if painted is not None else None
    try:
        threshold, policy = choose_threshold(good_peaks, painted_peaks, false_alarms)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    largest, _ = resmaps.region_stats(good_maps, threshold)
    result = {
        "min_area": int(min_area),
        "threshold": threshold,
        **policy,
        "method": method,
        **options.record(),
        **(
            {"fusion_rule": fusion_rule, "fusion_search": searched["weights"], "usual_search": searched["usual"]}
            if searched
            else {}
        ),
        "n_images": len(paths),
        "largest_area_at_threshold": int(largest.max()),
        "validation_files": [str(p) for p in paths],
        "resmap_range": [float(good_maps.min()), float(good_maps.max())],
        "model": str(run.model_path),
        "shape": list(run.shape),  # test.py refuses this threshold for another image shape (setup.json edited)
        **run.model_record(),  # test.py refuses this threshold for other weights
    }
    result["proxy"] = evaluation.proxy_scores(good_maps, painted, threshold, min_area, method, seed=PROXY_SEED)
    grid = np.unique(np.concatenate([np.linspace(good_maps.min(), good_maps.max(), CURVE_POINTS), [threshold]]))
    curve = resmaps.threshold_curve(good_maps, grid)
    identity = {"kind": "validation", **run.identity(method)}
    folder = run.layout.validation(method, min_area)
    with storage.StagedOutput(folder, identity, archive=True) as out:
        storage.write_json(out / runs.VALIDATION_RESULT, result)
        figures.plot_threshold_search(grid, curve, threshold, min_area, out / "threshold_search.png", method=method)
    return result, folder


def _maps_key(detector: Detector) -> str:
    """What the validation maps depend on: the model file, every validation image file
    (modification time and size), the map method and options, the proxy's seed."""
    run = detector.run

    def stamp(p):
        return [str(p), *storage.file_stamp(p)]

    return json.dumps(
        {
            "version": MAPS_VERSION,
            **run.identity(detector.method),  # the weights' content: model, and the head where the method uses it
            "images": [stamp(p) for p in run.validation_paths()],
            "shape": list(run.shape),  # the size images are read at (a surface run's own shape)
            "method": detector.method,
            **detector.options.record(),
            "proxy_seed": PROXY_SEED,
        }
    )


def validation_maps(detector: Detector) -> tuple[list[Path], np.ndarray, tuple | None]:
    """``(validation image paths, their maps, evaluation.proxy_maps of them)`` for the run and
    map settings of ``detector`` (opened for maps).

    Cached in ``RUN/validation_maps_<method>_s<scales>_p<passes>[_raw].npz`` and used again
    while the model file, the validation images and the settings are the same (see
    :func:`_maps_key`): choosing the threshold for another ``min_area`` then needs no
    reconstruction at all. The maps do not depend on the area.
    """
    run, options = detector.run, detector.options
    cache = run.dir / options.cache_name("validation_maps", detector.method)
    key = _maps_key(detector)
    stored = storage.load_npz_or_none(cache, ("key", "paths", "maps", "painted_maps", "painted_masks", "defects"))
    if stored is not None and str(stored["key"]) == key:
        painted = (
            (stored["painted_maps"], stored["painted_masks"], [str(d) for d in stored["defects"]])
            if stored["defects"].size
            else None
        )
        return [Path(p) for p in stored["paths"]], stored["maps"], painted
    paths = run.validation_paths()
    detector.load(2 * len(paths))  # the images and their painted copies
    seen = detector.maps(paths, progress="validation images")
    painted = evaluation.proxy_maps(detector, seen.images, PROXY_SEED) if np.isfinite(seen.maps).all() else None
    empty = np.zeros((0, *seen.maps.shape[1:]), np.float32)
    try:
        with storage.atomic_path(cache) as tmp:
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
