"""Labelled testing and predictions on new images: verdicts, anomaly maps, metrics, files.

``test.py`` is only the command line over :func:`test_run` and :func:`predict_images`,
``visualize.py`` over :func:`stage_figures`. :func:`test_run` is made of pieces:
:func:`score_test_images`, :func:`classification_result`, :func:`threshold_free_metrics`,
:func:`write_anomaly_maps`, :func:`plot_test_curves`, all written into one result folder.
Verdicts use the raw residual map at the model's size (the same map ``validate.py``
calibrates the threshold on); anomaly maps and threshold-free metrics use the residual
map smoothed by ``smooth`` pixels and brought to the ground truth's resolution.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

import data
import figures
import inference
import metrics
import resmaps
import runs
import sharding
import storage
from detector import DEFAULT_SMOOTH, SCORE_RULE, Detector, NonFiniteMaps, Prediction, check_smooth, image_scores
from settings import MapRequest
from utils import SettingError, UserError, warn

if TYPE_CHECKING:  # pandas is imported where tables are made: validate.py makes none (0.2 s of its start)
    import pandas as pd


def detection_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per defect type: images and share classified defective (pandas), with a total row, and
    that share's exact 95 % confidence interval (``low``, ``high``: :func:`metrics.rate_interval`;
    3 of 10 found is anything from 0.07 to 0.65)."""
    flagged = frame.assign(defective=frame["verdict"] == "defective")
    table = flagged.groupby("defect_type").agg(images=("defective", "size"), predicted_defective=("defective", "sum"))
    table.loc["total"] = [table["images"].sum(), table["predicted_defective"].sum()]
    table = table.astype(int)
    table["rate"] = table["predicted_defective"] / table["images"]
    table[["low", "high"]] = [
        metrics.rate_interval(k, n) for k, n in zip(table["predicted_defective"], table["images"])
    ]
    return table


def _write_tiff(path, array):
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, array.astype(np.float32))


OVERLAYS = ("all", "defective", "none")  # which unlabelled images get an overlay figure (predict_images)


def _write_mask_and_overlay(
    p: Prediction, folder: Path, stem: str, title: str, method: str, threshold: float, gt_mask=None, overlay=True
):
    """One prediction's defect mask PNG (at the file's size) and, if ``overlay``, its overlay PNG
    (model size, the map on the run's one colour scale with ``threshold`` marked) in ``folder``;
    returns both paths (the overlay's None when not drawn)."""
    mask_file, overlay_file = folder / f"{stem}_mask.png", folder / f"{stem}_overlay.png"
    figures.save_mask_png(inference.resize_map(p.mask, p.size), mask_file)
    if not overlay:
        return mask_file, None
    figures.plot_overlay(
        p.image,
        p.reconstruction,
        p.raw_map,
        p.mask,
        overlay_file,
        gt_mask=gt_mask,
        title=title,
        method=method,
        verdict=p.defective,
        score=p.score,
        threshold=threshold,
    )
    return mask_file, overlay_file


@dataclass
class Scored:
    """Every readable test image scored: what classification.csv, the anomaly maps and the
    metrics are made of. Per image, in listing order: ``items`` ``(path, defect type, mask
    path or None)``, ``stems`` (its output files' name, see :func:`data.output_stems`),
    ``sizes`` (width, height), ``full_maps`` (smoothed anomaly map at the ground truth's
    resolution), ``gt_masks`` (bool, all False without a mask); ``frame`` is
    classification.csv; ``has_masks``: the test folder has ground truth at all."""

    items: list
    stems: list
    sizes: list
    full_maps: list
    gt_masks: list
    frame: pd.DataFrame
    has_masks: bool

    @property
    def truth(self) -> np.ndarray:
        return (self.frame["truth"] == "defective").to_numpy()


def score_test_images(detector: Detector, listed: list, draw_into: Path | None = None) -> Scored:
    """Classify and score ``listed`` (:func:`data.list_test_images`) with ``detector``, chunk by
    chunk (:meth:`detector.Detector.stream`): only each image's smoothed anomaly map at the
    ground truth's resolution and its mask are kept. With ``draw_into``, each image's mask and
    overlay are written there, under its defect type's folder."""
    run = detector.run
    labels = {Path(p): (d, m) for p, d, m in listed}
    stem_of = dict(zip((Path(p) for p, _, _ in listed), data.output_stems([p for p, _, _ in listed])))
    has_masks = any(m is not None for _, _, m in listed)
    items, sizes, full_maps, gt_masks, rows = [], [], [], [], []
    try:
        for chunk in detector.stream([p for p, _, _ in listed], progress="test images"):
            for p in chunk:
                defect, mask_path = labels[p.path]
                items.append((p.path, defect, mask_path))
                sizes.append(p.size)
                # Anomaly maps and masks at the ground truth's (= the image file's) resolution.
                full_maps.append(inference.resize_map(p.anomaly_map, p.size))
                if mask_path is not None:
                    gt_masks.append(data.load_mask(mask_path, p.size))
                else:
                    if defect != data.GOOD and has_masks:
                        warn(f"no ground-truth mask for {p.path}: counted as all-defect-free pixels in pixel metrics")
                    gt_masks.append(np.zeros((p.size[1], p.size[0]), dtype=bool))
                rows.append((p.verdict, p.largest_area, p.n_regions, p.score))
                if draw_into:
                    _write_mask_and_overlay(
                        p,
                        draw_into / defect,
                        stem_of[p.path],
                        f"{defect}/{p.path.name}",
                        detector.method,
                        detector.threshold,
                        gt_mask=inference.resize_map(gt_masks[-1], run.shape[::-1]) if mask_path is not None else None,
                    )
    except NonFiniteMaps as exc:
        raise UserError(f"{exc}: nothing written") from None
    import pandas as pd

    truth = np.array([d != data.GOOD for _, d, _ in items])
    verdicts, largest, counts, scores = zip(*rows)
    frame = pd.DataFrame(
        {
            "path": [str(p) for p, _, _ in items],
            "defect_type": [d for _, d, _ in items],
            "truth": np.where(truth, "defective", "good"),
            "verdict": list(verdicts),
            "largest_area": np.array(largest, dtype=np.int64),
            "n_regions": np.array(counts, dtype=np.int64),
            "score": np.array(scores, dtype=np.float64),
        }
    )
    return Scored(items, [stem_of[p] for p, _, _ in items], sizes, full_maps, gt_masks, frame, has_masks)


def _labelled_notes(types: list[str]) -> list[str]:
    """What cannot be computed for a test folder with these defect types."""
    notes = []
    if data.GOOD not in types:
        notes.append("no test/good folder: TNR, balanced accuracy and AUROCs cannot be computed")
    if not [t for t in types if t != data.GOOD]:
        notes.append("no defect folder under test/: TPR, precision, balanced accuracy and AUROCs cannot be computed")
    return notes


def classification_result(
    detector: Detector, scored: Scored, types: list[str], notes: list[str]
) -> tuple[dict, pd.DataFrame]:
    """test_result.json (verdict rates at the threshold) and the per-defect-type table."""
    cls = metrics.classification_metrics(scored.truth, (scored.frame["verdict"] == "defective").to_numpy())
    table = detection_table(scored.frame)
    result = {
        "threshold": detector.threshold,
        "min_area": detector.min_area,
        "method": detector.method,
        **detector.options.record(),
        "threshold_source": detector.source,
        **{
            k: cls[k]
            for k in (
                "tpr",
                "tnr",
                "tpr_interval",
                "tnr_interval",
                "accuracy",
                "balanced_accuracy",
                "precision",
                "f1",
                "confusion_matrix",
            )
        },
        "confidence": metrics.CONFIDENCE,
        "n_images": cls["n_images"],
        "n_good": cls["n_good"],
        "n_defective": cls["n_defective"],
        "detection_rate_per_defect_type": {t: float(table.loc[t, "rate"]) for t in types},
        "images_per_defect_type": {t: int(table.loc[t, "images"]) for t in types},
        "detection_interval_per_defect_type": {
            t: [float(table.loc[t, "low"]), float(table.loc[t, "high"])] for t in types
        },
        "notes": notes + cls["undefined"],
    }
    return result, table


def threshold_free_metrics(
    detector: Detector, scored: Scored, smooth: float, fpr_limit: float, model_record: dict
) -> tuple[dict, dict]:
    """metrics.json (image AUROC, pixel AUROC, AU-PRO, overall and per defect type) and the
    pixel curves; one sort of all pixel scores serves every pixel figure and both curves."""
    run = detector.run
    evaluated, pixel_curves = metrics.evaluate(
        scored.full_maps if scored.has_masks else None,
        scored.gt_masks if scored.has_masks else None,
        scored.truth,
        scored.frame["score"].to_numpy(),
        [d for _, d, _ in scored.items],
        fpr_limit=fpr_limit,
        return_curves=True,
    )
    shown = sorted({f"{w}x{h}" for w, h in scored.sizes})
    evaluated.update(
        method=detector.method,
        **detector.options.record(),
        smooth_sigma=float(smooth),
        image_score=SCORE_RULE,
        pixel_resolution=f"ground-truth resolution ({', '.join(shown)}); model input {run.shape[1]}x{run.shape[0]}",
        model=str(run.model_path),
        **model_record,
    )
    return evaluated, pixel_curves


def write_anomaly_maps(folder: Path, scored: Scored) -> None:
    """Each image's anomaly map as float32 TIFF ``<folder>/<defect>/<stem>.tiff`` (MVTec's layout)."""
    for (_, defect, _), stem, m in zip(scored.items, scored.stems, scored.full_maps):
        _write_tiff(folder / defect / f"{stem}.tiff", m)


def plot_test_curves(
    folder: Path, scored: Scored, evaluated: dict, pixel_curves: dict, method: str, smooth: float, fpr_limit: float
) -> None:
    """roc_curves.png (image and pixel ROC) and pro_curve.png in ``folder``, where they are defined."""
    curves = {}
    if evaluated["image_auroc"] is not None:
        fpr, tpr = metrics.roc_curve(scored.truth, scored.frame["score"].to_numpy())
        curves["image"] = (fpr, tpr, evaluated["image_auroc"])
    if evaluated.get("pixel_auroc") is not None:
        fpr, tpr = pixel_curves["pixel_roc"]
        curves["pixel"] = (fpr, tpr, evaluated["pixel_auroc"])
    if curves:
        figures.plot_roc_curves(
            curves,
            folder / "roc_curves.png",
            title=f"ROC ({method}): images by score, pixels by the map smoothed σ {smooth:g} px",
        )
    if evaluated.get("au_pro") is not None:
        fprs, pros = pixel_curves["pro"]
        figures.plot_pro_curve(
            fprs,
            pros,
            evaluated["au_pro"],
            folder / "pro_curve.png",
            fpr_limit=fpr_limit,
            title=f"PRO curve ({method}, map smoothed σ {smooth:g} px)",
        )


MAPS_FOLDER = "anomaly_maps"  # inside the result folder: <defect>/<stem>.tiff


def test_run(
    path,
    maps: MapRequest = MapRequest(),
    threshold: float | None = None,
    min_area: int | None = None,
    smooth: float = DEFAULT_SMOOTH,
    save: bool = False,
    fpr_limit: float = metrics.DEFAULT_FPR_LIMIT,
    report_page: bool = False,
) -> tuple[dict, dict, pd.DataFrame, Path]:
    """Classify and score every image under ``<class>/test/*/`` for a run; write one result.

    Scores (:func:`score_test_images`, in chunks; with ``save`` it also draws each image's
    mask and overlay), then writes ``classification.csv`` and ``test_result.json``
    (:func:`classification_result`), ``metrics.json`` (:func:`threshold_free_metrics`), the
    anomaly maps (:func:`write_anomaly_maps`, into ``anomaly_maps/``), the curves
    (:func:`plot_test_curves`) and, with ``report_page``, ``report.html`` (report.py).

    Everything goes into one staging folder that becomes ``RUN/test/<method>/a<A>_t<T>/`` in
    one rename: the folder always holds the whole of one run (verdicts, maps, metrics and curves
    of the same ``smooth``), and an interrupted or failed run leaves the earlier result as it
    was. A result of other weights there is moved into ``other_weights/`` (see
    :class:`storage.StagedOutput`). Files that older versions wrote beside the result folders
    (``RUN/test/<method>/metrics.json``, ``anomaly_maps/``, the curves) are left as they are.

    Returns ``(result dict, metrics dict, per-defect-type table, output folder)``.
    """
    _check_smooth(smooth)
    detector = Detector.open(path, maps, threshold, min_area, smooth)
    run, method = detector.run, detector.method
    listed = data.list_test_images(run.class_dir)
    types = sorted({d for _, d, _ in listed})
    notes = _labelled_notes(types)
    for note in notes:
        warn(note)
    detector.load(len(listed))
    model_record = run.model_record()
    method_dir = run.layout.test(method)
    out_dir = run.layout.test(method, detector.min_area, detector.threshold)
    # The settings are part of the result's identity: a rerun with others (e.g. smooth, save)
    # moves the earlier result into RUN/test/<method>/earlier/ instead of replacing it.
    settings = {"smooth": float(smooth), "save": bool(save), "fpr_limit": float(fpr_limit), **detector.options.record()}
    identity = {"kind": "test", **run.identity(method), "settings": settings}
    # One writer at a time per method folder, from scoring to the commit: two runs never
    # interleave, and the one committed last is the result, whole.
    with storage.writing(method_dir), storage.StagedOutput(out_dir, identity, archive=True) as out:
        scored = score_test_images(detector, listed, draw_into=out if save else None)
        result, table = classification_result(detector, scored, types, notes)
        evaluated, pixel_curves = threshold_free_metrics(detector, scored, smooth, fpr_limit, model_record)
        scored.frame.to_csv(out / "classification.csv", index=False)
        storage.write_json(out / "test_result.json", result)
        write_anomaly_maps(out / MAPS_FOLDER, scored)
        plot_test_curves(out, scored, evaluated, pixel_curves, method, smooth, fpr_limit)
        storage.write_json(out / "metrics.json", evaluated)
        if report_page:
            import report

            report.write_report(out, run.dir, shown_as=out_dir)
    return result, evaluated, table, out_dir


def _check_smooth(smooth):
    try:  # the detector's rule, as a user error naming the setting
        check_smooth(smooth)
    except ValueError:
        raise SettingError(f"`smooth` must be a finite number >= 0, got {smooth}") from None


def predict_images(
    path,
    images_dir,
    maps: MapRequest = MapRequest(),
    threshold: float | None = None,
    min_area: int | None = None,
    smooth: float = DEFAULT_SMOOTH,
    out=None,
    shard: str | None = None,
    overlays: str = "all",
) -> tuple[pd.DataFrame, Path]:
    """Verdicts on a folder of unlabelled images (recursive); writes predictions, masks and overlays.

    ``shard`` ``"K/N"``: only the K-th of N parts of the folder (see sharding.py).
    ``overlays``: draw the overlay figure of ``all`` images, only of those found
    ``defective``, or of ``none`` (a figure costs far more than mapping the image).

    Masks and overlays mirror the input tree under the output folder (printed by test.py).
    Returns ``(frame, output folder)``.
    """
    _check_smooth(smooth)
    if overlays not in OVERLAYS:
        raise SettingError(f"`overlays` must be one of {', '.join(OVERLAYS)}, got {overlays!r}")
    shard = sharding.parse(shard)
    detector = Detector.open(path, maps, threshold, min_area, smooth)
    run, method = detector.run, detector.method
    threshold, min_area = detector.threshold, detector.min_area
    images_dir = Path(images_dir)
    paths = data.list_images(images_dir, recursive=True)
    if not paths:
        raise UserError(f"no images under {images_dir} (supported: {', '.join(data.IMAGE_EXTENSIONS)})")
    part = sharding.record(shard, paths, images_dir)
    if shard:
        paths = sharding.select(paths, images_dir, shard)
    # Default name: the folder's name plus a hash of its full path, so /a/imgs and /b/imgs never share a result.
    source = str(images_dir.resolve())
    name = (
        f"{images_dir.resolve().name}-{hashlib.sha256(source.encode()).hexdigest()[:6]}"
        f"_a{min_area}_t{runs.format_threshold(threshold)}{sharding.suffix(shard)}"
    )
    out_dir = Path(out) if out else run.layout.predictions(method, name)
    identity = {"kind": "predictions", "images": source, **run.identity(method), **part}
    staging = storage.StagedOutput(
        out_dir, identity, inputs=[images_dir, run.class_dir], protect=[run.dir], archive=not out
    )
    staging.check()  # before the long inference
    rows = []
    stem_of = dict(zip(paths, data.output_stems(paths)))
    with staging as staged:
        # Chunk by chunk, so memory stays flat however many images the folder holds.
        try:
            for chunk in detector.stream(paths, progress="images"):
                for p in chunk:
                    rel = p.path.relative_to(images_dir)
                    mask_file, overlay_file = _write_mask_and_overlay(
                        p,
                        staged / rel.parent,
                        stem_of[p.path],
                        str(rel),
                        method,
                        threshold,
                        overlay=overlays == "all" or (overlays == "defective" and p.defective),
                    )
                    rows.append(
                        {
                            "path": str(p.path),
                            "verdict": p.verdict,
                            "score": p.score,
                            "largest_area": p.largest_area,
                            "n_regions": p.n_regions,
                            "mask": str(out_dir / mask_file.relative_to(staged)),
                            "overlay": "" if overlay_file is None else str(out_dir / overlay_file.relative_to(staged)),
                        }
                    )
        except NonFiniteMaps as exc:
            raise UserError(f"{exc}: nothing written") from None
        import pandas as pd

        frame = pd.DataFrame(rows)
        frame.to_csv(staged / "predictions.csv", index=False)
        storage.write_json(
            staged / "prediction_setup.json",
            {
                "threshold": threshold,
                "min_area": min_area,
                "method": method,
                **detector.options.record(),
                "smooth_sigma": smooth,
                "image_score": SCORE_RULE,
                "images": str(images_dir.resolve()),
                "model": str(run.model_path),
                **run.model_record(),
                **part,
            },
        )
    return frame, out_dir


def proxy_maps(detector: Detector, good_images: np.ndarray, seed: int = 0) -> tuple | None:
    """Painted copies of the good validation images, mapped like test images:
    ``(maps, masks, family names)``, or None when nothing could be painted.

    The copies hold one defect each of every synthetic family in turn
    (:func:`synthetic.proxy_copies`: large faint shading, low-opacity texture, missing and
    frayed edges, dark areas, long thin cracks, contamination), mapped by ``detector``
    (its method and options).
    """
    import synthetic

    painted, masks, families = synthetic.proxy_copies(good_images, seed)
    if not len(painted):
        return None
    maps = detector.maps(painted).maps
    return maps, masks, list(families)


def _proxy_figures(good_maps, maps, masks, threshold, min_area, smooth) -> dict:
    """Image AUROC (painted copies against the good originals, by :func:`image_scores`), pixel
    AUROC and AU-PRO (smoothed maps, every image) and the share of copies found."""
    all_maps = np.concatenate([good_maps, maps])
    smoothed = resmaps.smooth(all_maps, smooth)
    gt = np.concatenate([np.zeros(good_maps.shape, bool), masks])
    labels = np.r_[np.zeros(len(good_maps), int), np.ones(len(maps), int)]
    scores = image_scores(all_maps, threshold, min_area)
    return {
        "image_auroc": metrics.image_auroc(labels, scores),
        "pixel_auroc": metrics.pixel_auroc(list(smoothed), list(gt)),
        "au_pro": metrics.au_pro(list(smoothed), list(gt)),
        "detected": float(np.mean(scores[len(good_maps) :] > 1.0)),
    }


def proxy_scores(
    good_maps: np.ndarray,
    painted: tuple | None,
    threshold: float,
    min_area: int,
    method: str = "",
    smooth: float = DEFAULT_SMOOTH,
    seed: int = 0,
) -> dict | None:
    """Quality on held-back good images with synthetic defects painted in (no test image used).

    ``painted``: :func:`proxy_maps` of those images (made with ``seed``). Returns image AUROC
    (copies against the good originals), pixel AUROC and AU-PRO (all images, smoothed as
    test.py smooths), the share of copies found at ``threshold``/``min_area``, and the same
    figures per defect family (``families``): a proxy for how a map method or setting will
    do on real defects, to compare settings without looking at any test set.
    """
    if painted is None:
        return None
    maps, masks, families = painted
    names = np.array(families)
    per_family = {
        f: _proxy_figures(good_maps, maps[names == f], masks[names == f], threshold, min_area, smooth)
        for f in sorted(set(families))
    }
    return {
        "n_good": int(len(good_maps)),
        "n_painted": int(len(maps)),
        "defects": sorted(set(families)),
        "seed": seed,
        "smooth_sigma": float(smooth),
        "image_score": SCORE_RULE,
        **_proxy_figures(good_maps, maps, masks, threshold, min_area, smooth),
        "families": per_family,
    }


def stage_figures(
    path,
    images: list[str],
    maps: MapRequest = MapRequest(),
    threshold: float | None = None,
    min_area: int | None = None,
) -> Path:
    """One figure per image (input → reconstruction → residual map → thresholded mask → ground
    truth, where there is one) in ``RUN/visualize/``, which is returned. ``images`` are paths,
    absolute or relative to the current folder or to the class folder."""
    detector = Detector.open(path, maps, threshold, min_area)
    run = detector.run
    paths = [inference.resolve_sample(run, name, run.class_dir, what="image") for name in images]
    out_dir = run.layout.visualize
    for p in detector.predict(paths):
        gt_path = inference.ground_truth_for(run, p.path)
        gt = inference.resize_map(data.load_mask(gt_path, p.size), run.shape[::-1]) if gt_path else None
        name = data.relative_to(p.path, run.class_dir).replace("/", "_").replace("..", "up")
        figures.plot_stages(
            p.image,
            p.reconstruction,
            p.raw_map,
            p.mask,
            out_dir / f"{Path(name).stem}_{detector.method}.png",
            gt_mask=gt,
            threshold=detector.threshold,
            min_area=detector.min_area,
            title=str(p.path),
            method=detector.method,
        )
    return out_dir
