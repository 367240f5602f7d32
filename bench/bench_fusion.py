"""The fused map's choices on trained runs: which components vote and the minimum area, each
variant scored on the proxy (held-back good images and their painted copies) and on the test set.

    .venv/bin/python bench/bench_fusion.py RUN [RUN ...] [--rules skill all skill+median] [--areas 0.5 1 2]

For each run, every fusable component's raw maps are computed once through the detector
(validation maps cached as validate.py caches them; test maps in ``--cache``). Rules:

- ``skill``: validate.py's default (``validation.choose_fusion``, rule ``equal``): equal weights
  over the components whose skill on the painted copies is above ``validation.MIN_SKILL``;
- ``all``: equal weights over every component;
- ``skill+median``: ``skill``, with the training-free median map always given a vote;
- ``baseline``: every component minus its usual map on training images (per pixel, as the SSIM
  map's baseline: ``inference._usual_residual`` of up to 80 training images not held back),
  then ``skill`` chosen again on those maps.
- ``usual``: ``skill``'s weights, each component minus its usual map as validate.py subtracts it
  (``inference.usual_map`` on every training image, cached in the run folder); the row says
  whether the proxy chose it (``validation.choose_usual``), which makes it validate.py's default.
- ``usual×0.5``, ``usual×0.75``: the same with only that share of each usual map subtracted
  (a trade between the raw map's pixels and the subtracted map's images; no option of validate.py).
- ``usual recentred``: ``usual``, with each component's centre and spread taken again from the
  subtracted good maps (validate.py keeps those of the raw maps).
- ``usual q50``: ``skill``'s weights minus a usual map that is the per-pixel median rather than
  the upper quartile (``inference._usual_residual``, ``inference.USUAL_TOLERANCE``), from the
  ``baseline`` rule's training images.
- ``usual subset``: ``usual``, but only the components whose subset of subtracted usual maps has
  the best proxy objective (``validation._proxy_objective``; every subset of the voting ones,
  within ``validation.FUSION_TIE`` the largest) subtract theirs.
- ``usual max``: ``usual``, but the fused map is the largest of the components' terms rather
  than their weighted sum (a hard "or").
- ``usual after fusing``: ``skill``'s raw fused map minus its own usual map
  (``inference._usual_residual`` of the fused maps of the ``baseline`` rule's training images,
  ``inference.USUAL_TOLERANCE``), negatives set to 0: the subtraction made on the common log scale
  instead of on each raw map.

``--tolerances T [T ...]``: one more row per tolerance, ``usual ±T px``: ``usual``, but each usual
map is ``inference._usual_residual`` of the ``baseline`` rule's training images with its
neighbourhood maximum over ``T`` px every way (how ``inference.USUAL_TOLERANCE`` was chosen).

``--areas``: factors of validate.py's default minimum area (``settings.default_min_area``).
Figures: image AUROC (region peaks, as test.py scores), pixel AUROC and AU-PRO (maps smoothed by
``detector.DEFAULT_SMOOTH``), at the model's resolution with masks resized to it. The question
asked is whether the proxy picks the variant the test set prefers; nothing is chosen here.
"""

import argparse
import dataclasses
import itertools
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import data  # noqa: E402
import inference  # noqa: E402
import metrics  # noqa: E402
import resmaps  # noqa: E402
import validation  # noqa: E402
from detector import DEFAULT_SMOOTH, Detector  # noqa: E402
from settings import MapRequest, default_min_area  # noqa: E402

PARTIAL = {"usual×0.5": 0.5, "usual×0.75": 0.75}  # rules subtracting only this share of the usual maps
USUAL_VARIANTS = ("usual recentred", "usual q50", "usual subset")  # other ways to subtract them
COMBINATIONS = ("usual max", "usual after fusing")  # other ways to combine the components
RULES = ("skill", "all", "skill+median", "baseline", "usual", *PARTIAL, *USUAL_VARIANTS, *COMBINATIONS)
BASELINE_IMAGES = 80  # training images (not held back) whose usual map the ``baseline`` rule subtracts


def get_parser():
    """Command-line options of the fusion benchmark."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="trained run folders with a learned head")
    p.add_argument("--rules", nargs="+", choices=RULES, default=list(RULES), help="which components vote")
    p.add_argument("--areas", nargs="+", type=float, default=[0.5, 1.0, 2.0], help="factors of the default area")
    p.add_argument(
        "--tolerances", nargs="*", type=int, default=[], help="usual maps' tolerances (px) to try, one row each"
    )
    p.add_argument("--cache", type=Path, default=ROOT / "bench" / "results" / "fusion_cache", help="test maps")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fusion.jsonl", help="rows appended")
    return p


def component_maps(run_dir: Path, method: str, cache: Path):
    """``(good, (painted, masks, families), test maps, listed test images)`` of one component."""
    opened = Detector.open_maps(run_dir, MapRequest(method=method))
    _, good, painted = validation.validation_maps(opened)
    listed = data.list_test_images(opened.run.class_dir)
    key = cache / f"{opened.run.class_dir.name}_{opened.run.dir.name}_{method}.npy"
    if key.is_file():
        test = np.load(key)
    else:
        opened.load(len(listed))
        test = np.concatenate([seen.maps for seen in opened.mapper.stream([p for p, _, _ in listed])])
        key.parent.mkdir(parents=True, exist_ok=True)
        np.save(key, test)
    return good, painted, test, listed


def _training_maps(run_dir: Path, method: str, cache: Path) -> np.ndarray:
    """The component's maps of up to :data:`BASELINE_IMAGES` training images not held back (cached)."""
    opened = Detector.open_maps(run_dir, MapRequest(method=method))
    run = opened.run
    key = cache / f"{run.class_dir.name}_{run.dir.name}_{method}_train.npy"
    if not key.is_file():
        held = {data.relative_to(p, run.class_dir) for p in run.validation_paths()}
        train = [
            p
            for p in data.list_images(run.class_dir / "train" / "good")
            if data.relative_to(p, run.class_dir) not in held
        ]
        train = train[:: max(1, len(train) // BASELINE_IMAGES)][:BASELINE_IMAGES]
        np.save(key, opened.maps(train).maps)
    return np.load(key)


def _minus_usual(run_dir: Path, method: str, part: tuple, cache: Path) -> tuple:
    """``part`` (:func:`component_maps`) with the component's usual map on training images
    subtracted from every map."""
    usual = inference._usual_residual(_training_maps(run_dir, method, cache))
    good, (painted, masks, families), test, listed = part
    return (good - usual, (painted - usual, masks, families), test - usual, listed), usual


def usual_variant(rule: str, fusion: inference.Fusion, parts: dict, usual: list, run_dir: Path, cache: Path, area: int):
    """``(fusion, maps subtracted, components subtracting)`` of a rule of the ``usual`` family:
    ``fusion`` is the raw one chosen by ``skill``, ``usual`` its components' usual maps."""
    on = dataclasses.replace(fusion, usual=True)
    names = fusion.components
    voting = [c for c, u in zip(names, usual) if u is not None]
    if rule in ("usual", "usual max"):
        return on, usual, voting
    if rule in PARTIAL:
        return on, [None if u is None else PARTIAL[rule] * u for u in usual], voting
    if rule == "usual recentred":
        norms = [validation._normaliser(parts[c][0] - u) if u is not None else None for c, u in zip(names, usual)]
        centres = tuple(c0 if n is None else n[0] for c0, n in zip(fusion.centres, norms))
        spreads = tuple(s0 if n is None else n[1] for s0, n in zip(fusion.spreads, norms))
        return dataclasses.replace(on, centres=centres, spreads=spreads), usual, voting
    if rule == "usual q50":
        return (
            on,
            [
                None
                if u is None
                else inference._usual_residual(_training_maps(run_dir, c, cache), 0.5, inference.USUAL_TOLERANCE)
                for c, u in zip(names, usual)
            ],
            voting,
        )
    if rule == "usual subset":
        components = {c: p[:2] for c, p in parts.items()}
        tried = []
        for k in range(len(voting) + 1):
            for subset in itertools.combinations(voting, k):
                minus = [u if c in subset else (None if u is None else np.zeros_like(u)) for c, u in zip(names, usual)]
                objective = validation._proxy_objective(on, components, area, minus)["objective"]
                tried.append((objective, len(subset), subset, minus))
        top = max(t[0] for t in tried)
        _, _, subset, minus = max((t for t in tried if t[0] >= top - validation.FUSION_TIE), key=lambda t: t[1])
        return on, minus, list(subset)
    raise ValueError(f"not a rule of the usual family: {rule!r}")


def combined(rule: str, fused: inference.Fusion, maps: list, minus: list | None, after: np.ndarray | None):
    """The fused N×H×W map of a rule: :meth:`inference.Fusion.combine` but for the
    :data:`COMBINATIONS` (``after``: the fused map's own usual map, for ``usual after fusing``)."""
    if rule == "usual max":
        one_hot = [
            dataclasses.replace(fused, weights=tuple(float(j == k) for j in range(len(maps))))
            for k, w in enumerate(fused.weights)
            if w
        ]
        return np.max([f.combine(maps, usual=minus) for f in one_hot], axis=0)
    if rule == "usual after fusing":
        return np.maximum(fused.combine(maps) - after, 0.0)
    return fused.combine(maps, usual=minus)


def top_fifth(usual: np.ndarray, masks: np.ndarray) -> float | None:
    """The share of the defect pixels in ``masks`` (N×H×W) that lie where ``usual`` is in its
    top fifth: where a per-pixel baseline subtracts most."""
    hot = usual >= np.quantile(usual, 0.8)
    pixels = masks.sum()
    return float((masks & hot).sum() / pixels) if pixels else None


def figures(maps: np.ndarray, labels: np.ndarray, masks: np.ndarray, area: int) -> dict:
    """Image AUROC by region peaks, pixel AUROC and AU-PRO of smoothed maps."""
    smoothed = list(resmaps.smooth(maps, DEFAULT_SMOOTH))
    return {
        "image_auroc": metrics.image_auroc(labels, resmaps.area_peaks(maps, area)),
        "pixel_auroc": metrics.pixel_auroc(smoothed, list(masks)),
        "au_pro": metrics.au_pro(smoothed, list(masks)),
    }


def variants(fusion: inference.Fusion, rules) -> dict:
    """Each rule's fusion, from the default (``skill``) one: only the weights differ."""
    keep = {
        "skill": [w > 0 for w in fusion.weights],
        "all": [True] * len(fusion.components),
        "skill+median": [w > 0 or c == "median" for c, w in zip(fusion.components, fusion.weights)],
    }
    return {r: dataclasses.replace(fusion, weights=tuple(k / sum(keep[r]) for k in keep[r])) for r in rules}


def measure(run_dir: Path, rules, areas, cache: Path, tolerances=()) -> list[dict]:
    """One row per rule (and tolerance) and area factor of the run at ``run_dir``."""
    run = Detector.open_maps(run_dir, MapRequest(method="fused")).run
    names = inference.fusion_components(run)
    parts = {c: component_maps(run_dir, c, cache) for c in names}
    base_area = default_min_area(tuple(run.shape))
    fusion, skills = validation.choose_fusion({c: (p[0], p[1]) for c, p in parts.items()}, base_area)
    fusions = variants(fusion, [r for r in rules if r in ("skill", "all", "skill+median")])
    chose_usual, minus_of, subtracting = None, {}, {}
    family = [r for r in rules if r in ("usual", "usual max") or r in PARTIAL or r in USUAL_VARIANTS]
    if family:
        usual = Detector.open_maps(run_dir, MapRequest(method="fused")).usual_maps(fusion)
        chosen, measured = validation.choose_usual(fusion, {c: p[:2] for c, p in parts.items()}, usual, base_area)
        chose_usual = measured["usual"]
        for rule in family:
            fusions[rule], minus_of[rule], subtracting[rule] = usual_variant(
                rule, fusion, parts, usual, run_dir, cache, base_area
            )
    for t in tolerances:
        rule = f"usual ±{t} px"
        fusions[rule] = dataclasses.replace(fusion, usual=True)
        minus_of[rule] = [
            inference._usual_residual(_training_maps(run_dir, c, cache), tolerance=t) if w else None
            for c, w in zip(names, fusion.weights)
        ]
    after = None
    if "usual after fusing" in rules:
        fusions["usual after fusing"] = fusion
        train = [_training_maps(run_dir, c, cache) if w else None for c, w in zip(names, fusion.weights)]
        after = inference._usual_residual(fusion.combine(train), tolerance=inference.USUAL_TOLERANCE)
    painted_masks = parts[names[0]][1][1]
    listed = parts[names[0]][3]
    shape = parts[names[0]][2].shape[1:]
    labels = np.array([d != data.GOOD for _, d, _ in listed], int)
    masks = np.stack([data.load_mask(m, shape[::-1]) if m else np.zeros(shape, bool) for _, _, m in listed])
    where = {}  # per component: real and painted defect pixels in the top fifth of its usual map
    if "baseline" in rules:
        for c in names:
            parts[f"{c} baseline"], usual = _minus_usual(run_dir, c, parts[c], cache)
            where[c] = {"real": top_fifth(usual, masks), "painted": top_fifth(usual, painted_masks)}
        chosen, _ = validation.choose_fusion({c: parts[f"{c} baseline"][:2] for c in names}, base_area)
        fusions["baseline"] = chosen
    rows = []
    for rule, fused in fusions.items():
        use = [f"{c} baseline" if rule == "baseline" else c for c in names]
        minus = minus_of.get(rule)
        good = combined(rule, fused, [parts[c][0] for c in use], minus, after)
        painted = combined(rule, fused, [parts[c][1][0] for c in use], minus, after)
        test = combined(rule, fused, [parts[c][2] for c in use], minus, after)
        proxy_labels = np.r_[np.zeros(len(good), int), np.ones(len(painted), int)]
        proxy_masks = np.concatenate([np.zeros(good.shape, bool), painted_masks])
        for factor in areas:
            area = max(1, int(base_area * factor))
            rows.append(
                {
                    "run": str(run.dir),
                    "class": run.class_dir.name,
                    "skills": {s["component"]: s["skill"] for s in skills},
                    "defects_in_top_fifth_of_usual_map": where,
                    "rule": rule,
                    "proxy_chose_usual": chose_usual,
                    "weights": dict(zip(names, fused.weights)),
                    "subtracting_usual": subtracting.get(rule, []),
                    "area": area,
                    "area_factor": factor,
                    "proxy": figures(np.concatenate([good, painted]), proxy_labels, proxy_masks, area),
                    "test": figures(test, labels, masks, area),
                }
            )
    return rows


def main(argv=None) -> int:
    """Measure every run, print one markdown row per variant, append the JSON rows."""
    args = get_parser().parse_args(argv)
    print("| class | rule | area | proxy image / pixel / AU-PRO | test image / pixel / AU-PRO |\n|---|---|---|---|---|")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for run_dir in args.runs:
        rows = measure(run_dir, args.rules, args.areas, args.cache, args.tolerances)
        with args.out.open("a") as out:
            out.writelines(json.dumps(r) + "\n" for r in rows)
        for c, share in rows[0]["defects_in_top_fifth_of_usual_map"].items():
            print(
                f"| {rows[0]['class']} | {c}: defect pixels in its usual map's top fifth | painted {share['painted']:.2f} | real {share['real']:.2f} |"
            )
        for r in rows:
            p, t = (
                " / ".join(f"{r[k][m]:.3f}" for m in ("image_auroc", "pixel_auroc", "au_pro"))
                for k in ("proxy", "test")
            )
            chose = (
                " (proxy's choice)"
                if r["proxy_chose_usual"] is (r["rule"] == "usual") and r["rule"] in ("skill", "usual")
                else ""
            )
            if r["rule"] == "usual subset":
                chose = f" ({' + '.join(r['subtracting_usual']) or 'none'})"
            print(
                f"| {r['class']} | {r['rule']}{chose} | ×{r['area_factor']:g} ({r['area']} px) | {p} | {t} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
