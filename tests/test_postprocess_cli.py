"""End-to-end checks of the post-training command lines: validate.py, test.py, finetune.py, visualize.py.

Every script is called in-process through ``cli(module.main, argv, capsys)`` on a copy of
the session's tiny run (the shared ``tiny_run`` is never written to). Tests that corrupt a
run or its dataset make their own copies; a copied run's setup.json is re-pointed at the
copied dataset when the dataset is changed.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, SIZE, cli, load_script, run_quietly
from PIL import Image
from scipy.stats import beta

import data  # noqa: E402
import figures  # noqa: E402
import finetune  # noqa: E402
import inference  # noqa: E402
import resmaps  # noqa: E402
import runs  # noqa: E402
import storage  # noqa: E402
import validate  # noqa: E402
import visualize  # noqa: E402
from utils import UserError  # noqa: E402


def classify(maps, threshold, min_area):
    """Per map (verdict, largest area, region count) from :func:`resmaps.regions`, as arrays."""
    found = [resmaps.regions(m, threshold, min_area) for m in maps]
    return tuple(np.array(v) for v in zip(*((mask.any(), largest, count) for mask, largest, count in found)))


test_script = load_script("test")

AREA = 10
DEFECTS = ("contamination", "crack", "hole", "scratch", "stain")
OUTPUT_DIRS = ("validation", "test", "predictions", "finetune", "visualize")
CSV_COLUMNS = ["path", "defect_type", "truth", "verdict", "largest_area", "n_regions", "score"]


# --------------------------------------------------------------------------- helpers


def copy_run(tiny_run, dest, dataset=None):
    """A pristine copy of the run (no outputs of earlier steps), optionally pointed at ``dataset``."""
    dest = Path(dest)
    shutil.copytree(
        tiny_run, dest, ignore=lambda d, names: [n for n in names if Path(d) == Path(tiny_run) and n in OUTPUT_DIRS]
    )
    if dataset is not None:
        setup = json.loads((dest / runs.SETUP).read_text())
        setup["directory"] = str(dataset)
        (dest / runs.SETUP).write_text(json.dumps(setup, indent=2))
    return dest


def copy_dataset(tiny_dataset, dest):
    dest = Path(dest) / "brick"
    shutil.copytree(tiny_dataset, dest)
    return dest


def model_file(run_dir):
    setup = json.loads((Path(run_dir) / runs.SETUP).read_text())
    return Path(run_dir) / runs.model_filename(setup["architecture"], setup["batch"])


def error_lines(err):
    """Lines of stderr as a terminal would show them (tqdm's \\r-rewritten lines collapsed), non-empty."""
    lines = [line.split("\r")[-1].rstrip() for line in err.split("\n")]
    return [line for line in lines if line.strip()]


def assert_user_error(code, err, *fragments):
    """Exit code 2, exactly one visible stderr line of the form '<prog>: error: ...', no traceback."""
    assert code == 2, err
    assert "Traceback" not in err
    lines = error_lines(err)
    assert len(lines) == 1, lines
    assert ": error: " in lines[0], lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def tree_snapshot(folder):
    """{relative path: bytes} of every file under ``folder``."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def listed_test_files(class_dir):
    """(defect type, path) of every file under test/*/."""
    return sorted((p.parent.name, p) for p in Path(class_dir, "test").glob("*/*") if p.is_file())


def recomputed_validation_maps(
    run_dir, method="ssim", baseline=True, scales=inference.DEFAULT_SCALES, passes=inference.DEFAULT_PASSES
):
    """Residual maps of the run's validation images, computed without inference/validate.

    The multi-scale map itself is checked against an independent version in
    test_resmaps.py; here it is reused so thresholds can be compared exactly. With
    ``baseline``, the per-pixel upper quartile of the training images' residual maps (each
    smoothed by a 1-px Gaussian, scipy), then its maximum over each 3×3 neighbourhood
    (numpy windows), is subtracted and negatives set to 0, as the scripts do by default.
    Each later pass repaints where the σ-4 smoothed map so far exceeds the 0.999 quantile
    of the training images' smoothed first-pass maps with the previous reconstruction
    (mask feathered by σ 1.5), reconstructs again, subtracts that pass's own baseline
    (learnt the same way on the training images) and keeps the pixel-wise minimum.
    """
    import keras
    from scipy.ndimage import gaussian_filter

    import custom_loss_functions  # noqa: F401

    setup = json.loads((run_dir / runs.SETUP).read_text())
    names = [n.strip() for n in (run_dir / runs.VALIDATION_FILES).read_text().splitlines() if n.strip()]
    paths = [Path(setup["directory"]) / n for n in names]
    model = keras.models.load_model(model_file(run_dir), compile=False)

    def load(image_paths):
        images, kept = data.load_images(image_paths, setup["color"], setup["size"])
        assert len(kept) == len(image_paths)
        return images

    def usual(maps):
        if not baseline:
            return np.zeros(maps.shape[1:], np.float32)
        quartile = np.percentile([gaussian_filter(m, 1.0, mode="reflect") for m in maps], 75, axis=0)
        t = inference.BASELINE_TOLERANCE
        windows = np.lib.stride_tricks.sliding_window_view(np.pad(quartile, t, mode="edge"), (2 * t + 1, 2 * t + 1))
        return windows.max(axis=(2, 3)).astype(np.float32)

    def all_passes(images, learnt=None):
        """The maps after every pass; learns (baselines, mask threshold) when ``learnt`` is None."""
        bases, threshold = ([], None) if learnt is None else learnt
        out, recons, shown = None, None, images
        for k in range(passes):
            if k:
                smoothed = gaussian_filter(out, (0, 4, 4))
                threshold = np.quantile(smoothed, 0.999) if threshold is None else threshold
                mask = gaussian_filter((smoothed > threshold).astype(np.float32), (0, 1.5, 1.5))[..., None]
                shown = images * (1 - mask) + recons * mask
            recons = np.asarray(model.predict(shown, batch_size=16, verbose=0), dtype=np.float32)
            raw = resmaps.residual_maps(images, recons, method, scales)
            if learnt is None:
                bases.append(usual(raw))
            now = np.maximum(raw - bases[k], 0.0).astype(np.float32)
            out = now if out is None else np.minimum(out, now)
        return out, (bases, threshold)

    train = sorted(
        p
        for p in (Path(setup["directory"]) / "train" / "good").iterdir()
        if p.resolve() not in {q.resolve() for q in paths}
    )
    assert len(train) == setup["n_train"]
    _, learnt = all_passes(load(train))
    return all_passes(load(paths), learnt)[0]


THRESHOLD_TOLERANCE = 1e-5  # TensorFlow on a multi-threaded CPU is not bit-reproducible (maps differ by ~1e-7)


REPAINT_TOLERANCE = 0.02  # relative; see assert_threshold_matches


def assert_threshold_matches(threshold, maps, area, repainted=True):
    """The written threshold is the smallest one for ``area`` on independently recomputed maps,
    up to how much recomputed maps may differ (a shift of every value by at most e moves the
    smallest threshold by at most e). With ``repainted`` (more than one pass, the default 4),
    later passes repaint where the smoothed map exceeds a quantile of itself: a ~1e-7 difference
    between the run's backend and this Keras recomputation can flip one pixel of that mask and
    move the map near it, so there the threshold may differ by up to 2 % (0.8 % seen in CI)."""
    expected = resmaps.min_threshold_for_area(maps, area)
    tolerance = max(THRESHOLD_TOLERANCE, REPAINT_TOLERANCE * abs(expected)) if repainted else THRESHOLD_TOLERANCE
    assert threshold == pytest.approx(expected, abs=tolerance)


# --------------------------------------------------------------------------- shared state


@pytest.fixture(scope="module")
def run_dir(tiny_run, tmp_path_factory):
    """A copy of the tiny run, validated at AREA (ssim) and tested with --save (no -t/-a)."""
    run = copy_run(tiny_run, tmp_path_factory.mktemp("post") / "run")
    # --false-alarms 0: the zero-false-alarm policy, whose threshold these tests recompute exactly.
    code, out, err = run_quietly(validate.main, ["-p", str(run), "-a", str(AREA), "--false-alarms", "0"])
    assert code == 0, err
    return run


@pytest.fixture(scope="module")
def labelled(run_dir, tmp_path_factory):
    """The labelled test on run_dir with the validation result: (stdout, stderr, output folder,
    a private copy of test/ssim as this test wrote it). Later tests may write test/ssim again
    (other thresholds, or this result again without --save), so tests read every file of the
    result from the copy (:func:`written`): they do not depend on which test ran last."""
    code, out, err = run_quietly(test_script.main, ["-p", str(run_dir), "--save"])
    assert code == 0, err
    copy = tmp_path_factory.mktemp("labelled") / "ssim"
    shutil.copytree(run_dir / "test" / "ssim", copy)
    return out, err, Path(out.strip().splitlines()[-1]), copy


def written(labelled):
    """The private copy of the labelled fixture's output folder, as test.py wrote it."""
    return labelled[3] / labelled[2].name


# --------------------------------------------------------------------------- 1. validate.py


def test_validate_result_file(run_dir, tiny_dataset):
    folder = run_dir / "validation" / "ssim" / f"a{AREA}"
    result = json.loads((folder / "validation_result.json").read_text())
    n_listed = len([n for n in (run_dir / runs.VALIDATION_FILES).read_text().splitlines() if n.strip()])
    assert result["min_area"] == AREA
    assert result["method"] == "ssim"
    assert result["n_images"] == n_listed == 3
    assert result["largest_area_at_threshold"] < AREA
    assert isinstance(result["threshold"], float)
    assert sorted(Path(p).resolve() for p in result["validation_files"]) == sorted(
        (tiny_dataset / n.strip()).resolve() for n in (run_dir / runs.VALIDATION_FILES).read_text().splitlines()
    )
    with Image.open(folder / "threshold_search.png") as im:
        assert im.format == "PNG"
    assert not list((run_dir / "validation" / "ssim").glob(".*")), "a staging folder was left behind"


def test_validate_threshold_is_the_smallest(run_dir):
    result = json.loads((run_dir / "validation" / "ssim" / f"a{AREA}" / "validation_result.json").read_text())
    maps = recomputed_validation_maps(run_dir)
    assert maps.shape == (3, SIZE, SIZE)
    assert_threshold_matches(result["threshold"], maps, AREA)
    assert result["largest_area_at_threshold"] < AREA
    # rel 1e-4: validate.py reconstructs with the model's ONNX twin (networks.py), this test with Keras.
    assert result["resmap_range"] == pytest.approx([float(maps.min()), float(maps.max())], rel=1e-4, abs=1e-6)
    # On the recomputed maps: no validation image has a region of AREA px above their threshold ...
    threshold = resmaps.min_threshold_for_area(maps, AREA)
    assert max(resmaps.largest_area(m, threshold) for m in maps) < AREA
    # ... but at the next lower residual value one has: nothing smaller would do.
    values = np.unique(maps)
    below = values[values < threshold]
    assert below.size, "the threshold is the smallest residual value: nothing below to check"
    assert max(resmaps.largest_area(m, below[-1]) for m in maps) >= AREA


def test_validate_l2_has_its_own_folder(run_dir, capsys):
    code, out, err = cli(
        validate.main, ["-p", str(run_dir), "-a", str(AREA), "--method", "l2", "--false-alarms", "0"], capsys
    )
    assert code == 0, err
    folder = run_dir / "validation" / "l2" / f"a{AREA}"
    assert out.strip().splitlines()[-1] == str(folder)
    result = json.loads((folder / "validation_result.json").read_text())
    ssim = json.loads((run_dir / "validation" / "ssim" / f"a{AREA}" / "validation_result.json").read_text())
    assert result["method"] == "l2" and result["min_area"] == AREA
    assert result["threshold"] != ssim["threshold"]
    maps = recomputed_validation_maps(run_dir, "l2")
    assert_threshold_matches(result["threshold"], maps, AREA)
    assert (folder / "threshold_search.png").is_file()


def test_validate_accepts_model_file(tiny_run, tmp_path, capsys):
    run = copy_run(tiny_run, tmp_path / "run")
    code, out, err = cli(validate.main, ["-p", str(model_file(run)), "-a", "20", "--false-alarms", "0"], capsys)
    assert code == 0, err
    folder = run / "validation" / "ssim" / "a20"
    assert out.strip().splitlines()[-1] == str(folder)
    result = json.loads((folder / "validation_result.json").read_text())
    assert result["min_area"] == 20 and result["largest_area_at_threshold"] < 20
    assert_threshold_matches(result["threshold"], recomputed_validation_maps(run), 20)
    assert "threshold for minimum area 20 px" in out


def test_validate_reuses_its_maps_for_another_area(run_dir, tmp_path, capsys, monkeypatch):
    """A second validate.py (another --area) takes the validation and proxy maps from
    RUN/validation_maps_*.npz: no image read, no reconstruction, the same numbers as a run
    that computes them afresh."""
    run = copy_run(run_dir, tmp_path / "run")
    code, _, err = cli(
        validate.main, ["-p", str(run), "-a", "12", "--false-alarms", "0"], capsys
    )  # computes and caches the maps
    assert code == 0, err
    (cache,) = run.glob("validation_maps_ssim_s*_p*.npz")
    fresh = copy_run(run_dir, tmp_path / "fresh")  # no cache: everything computed again
    code, _, err = cli(validate.main, ["-p", str(fresh), "-a", "30", "--false-alarms", "0"], capsys)
    assert code == 0, err
    monkeypatch.setattr(inference, "inspect_stream", lambda *a, **k: pytest.fail("images mapped again"))
    code, _, err = cli(validate.main, ["-p", str(run), "-a", "30", "--false-alarms", "0"], capsys)
    assert code == 0, err
    cached = json.loads((run / "validation" / "ssim" / "a30" / "validation_result.json").read_text())
    again = json.loads((fresh / "validation" / "ssim" / "a30" / "validation_result.json").read_text())
    assert cached["threshold"] == pytest.approx(again["threshold"], rel=1e-6)
    assert cached["proxy"]["au_pro"] == pytest.approx(again["proxy"]["au_pro"], abs=1e-6)
    assert cached["n_images"] == again["n_images"] == 3
    assert_threshold_matches(cached["threshold"], recomputed_validation_maps(run), 30)
    # A changed validation image or a damaged cache: the maps are computed again.
    monkeypatch.undo()
    calls = []
    real = inference.inspect_stream
    monkeypatch.setattr(inference, "inspect_stream", lambda *a, **k: calls.append(1) or real(*a, **k))
    setup = json.loads((run / runs.SETUP).read_text())
    first = Path(setup["directory"]) / (run / runs.VALIDATION_FILES).read_text().split()[0]
    st = first.stat()
    os.utime(first, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    try:
        assert cli(validate.main, ["-p", str(run), "-a", "30", "--false-alarms", "0"], capsys)[0] == 0
    finally:
        os.utime(first, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert len(calls) == 1
    cache.write_bytes(b"damaged")
    assert cli(validate.main, ["-p", str(run), "-a", "30", "--false-alarms", "0"], capsys)[0] == 0
    assert len(calls) == 2 and cache.stat().st_size > 1000


# --------------------------------------------------------------------------- 2. test.py, labelled


def test_labelled_uses_validation_result(run_dir, labelled):
    out, _, out_dir, _ = labelled
    val = json.loads((run_dir / "validation" / "ssim" / f"a{AREA}" / "validation_result.json").read_text())
    assert out_dir == run_dir / "test" / "ssim" / f"a{AREA}_t{val['threshold']:.6f}"
    result = json.loads((written(labelled) / "test_result.json").read_text())
    assert result["threshold"] == val["threshold"]
    assert result["min_area"] == AREA
    assert result["method"] == "ssim"
    assert result["threshold_source"] == "validation"
    assert "(validation)" in out


def test_labelled_classification_csv(run_dir, labelled, tiny_dataset):
    out_dir = written(labelled)
    frame = pd.read_csv(out_dir / "classification.csv")
    files = listed_test_files(tiny_dataset)
    assert len(files) == 13
    assert list(frame.columns) == CSV_COLUMNS
    assert len(frame) == len(files)
    assert sorted(zip(frame["defect_type"], frame["path"].map(Path))) == files
    assert (frame["truth"] == np.where(frame["defect_type"] == "good", "good", "defective")).all()
    assert set(frame["verdict"]) <= {"good", "defective"}
    assert ((frame["verdict"] == "defective") == (frame["largest_area"] >= AREA)).all()
    assert (frame["n_regions"] >= (frame["largest_area"] > 0)).all()
    assert (frame["largest_area"] <= SIZE * SIZE).all() and (frame["largest_area"] >= 0).all()
    assert np.isfinite(frame["score"]).all() and (frame["score"] >= 0).all()


def test_labelled_result_consistent_with_csv(labelled):
    out_dir = written(labelled)
    frame = pd.read_csv(out_dir / "classification.csv")
    result = json.loads((out_dir / "test_result.json").read_text())
    truth = frame["truth"] == "defective"
    pred = frame["verdict"] == "defective"
    tp, fp = int((truth & pred).sum()), int((~truth & pred).sum())
    tn, fn = int((~truth & ~pred).sum()), int((truth & ~pred).sum())
    assert result["confusion_matrix"] == {
        "truth_good": {"pred_good": tn, "pred_defective": fp},
        "truth_defective": {"pred_good": fn, "pred_defective": tp},
    }
    assert result["tpr"] == pytest.approx(tp / (tp + fn))
    assert result["tnr"] == pytest.approx(tn / (tn + fp))
    assert result["accuracy"] == pytest.approx((tp + tn) / len(frame))
    assert result["balanced_accuracy"] == pytest.approx((tp / (tp + fn) + tn / (tn + fp)) / 2)
    if tp + fp:
        assert result["precision"] == pytest.approx(tp / (tp + fp))
    else:
        assert result["precision"] is None
    assert result["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert (result["n_images"], result["n_good"], result["n_defective"]) == (13, 3, 10)
    rates = (frame["verdict"] == "defective").groupby(frame["defect_type"]).mean()
    assert set(result["detection_rate_per_defect_type"]) == {"good", *DEFECTS}
    for defect, rate in result["detection_rate_per_defect_type"].items():
        assert rate == pytest.approx(rates[defect])
    assert result["images_per_defect_type"] == {"good": 3, **{d: 2 for d in DEFECTS}}


def test_labelled_save_masks_and_overlays(labelled, tiny_dataset):
    out_dir = written(labelled)
    frame = pd.read_csv(out_dir / "classification.csv")
    pngs = sorted(p.relative_to(out_dir).as_posix() for p in out_dir.glob("*/*.png"))
    expected = sorted(
        f"{d}/{p.stem}_{kind}.png" for d, p in listed_test_files(tiny_dataset) for kind in ("mask", "overlay")
    )
    assert pngs == expected
    for _, row in frame.iterrows():
        image_path = Path(row["path"])
        stem, defect = image_path.stem, row["defect_type"]
        with Image.open(out_dir / defect / f"{stem}_mask.png") as im, Image.open(image_path) as src:
            assert im.format == "PNG" and im.size == src.size and im.mode == "L"
            mask = np.asarray(im)
        assert set(np.unique(mask)) <= {0, 255}
        # The mask holds exactly the regions of at least min_area pixels (image = model size here).
        assert ((mask > 0).sum() >= AREA) == (row["verdict"] == "defective")
        if row["verdict"] == "good":
            assert not mask.any()
        with Image.open(out_dir / defect / f"{stem}_overlay.png") as im:
            assert im.format == "PNG"


def test_labelled_anomaly_maps(run_dir, labelled, tiny_dataset):
    import tifffile

    maps_dir = written(labelled) / "anomaly_maps"
    files = listed_test_files(tiny_dataset)
    assert sorted(p.relative_to(maps_dir).as_posix() for p in maps_dir.rglob("*.tiff")) == sorted(
        f"{d}/{p.stem}.tiff" for d, p in files
    )
    frame = pd.read_csv(written(labelled) / "classification.csv").set_index("path")
    for defect, path in files:
        array = tifffile.imread(maps_dir / defect / f"{path.stem}.tiff")
        assert array.dtype == np.float32
        assert array.shape == (SIZE, SIZE) == data.image_size(path)[::-1]
        assert np.isfinite(array).all()
        # The score is in the threshold's units: above 1 exactly where the verdict is defective.
        assert (frame.loc[str(path), "score"] > 1) == (frame.loc[str(path), "verdict"] == "defective")


def test_labelled_metrics_json_and_plots(run_dir, labelled):
    metrics = json.loads((written(labelled) / "metrics.json").read_text())
    for key in ("image_auroc", "pixel_auroc", "au_pro"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert set(metrics["per_defect_type"]) == set(DEFECTS)
    for entry in metrics["per_defect_type"].values():
        assert entry["n_images"] == 3 + 2 and entry["n_defective"] == 2
        for key in ("image_auroc", "pixel_auroc", "au_pro"):
            assert entry[key] is None or 0.0 <= entry[key] <= 1.0
    assert metrics["method"] == "ssim" and metrics["n_images"] == 13
    for name in ("roc_curves.png", "pro_curve.png"):
        with Image.open(written(labelled) / name) as im:
            assert im.format == "PNG"


def _independent_au_pro(maps, masks, fpr_limit=0.3, steps=4000):
    """AU-PRO by its definition (Bergmann et al.), with scipy's labelling and numpy only: for
    thresholds sweeping the maps' range, FPR = share of defect-free pixels above it and PRO =
    mean over ground-truth regions of the share of the region above it; the area under PRO
    over FPR up to ``fpr_limit``, divided by ``fpr_limit``."""
    from scipy.ndimage import label

    values = np.concatenate([m.ravel() for m in maps])
    good = np.concatenate([~g.ravel() for g in masks])
    regions = []
    for m, g in zip(maps, masks):
        labels, n = label(g, structure=np.ones((3, 3)))
        regions += [m[labels == k] for k in range(1, n + 1)]
    thresholds = np.quantile(values, np.linspace(0, 1, steps))[::-1]
    fpr = np.array([(values[good] > t).mean() for t in thresholds])
    pro = np.array([np.mean([(r > t).mean() for r in regions]) for t in thresholds])
    fpr, pro = np.concatenate([[0.0], fpr]), np.concatenate([[0.0], pro])
    keep = fpr <= fpr_limit
    x, y = np.append(fpr[keep], fpr_limit), np.append(pro[keep], np.interp(fpr_limit, fpr, pro))
    return float(np.trapezoid(y, x) / fpr_limit) if hasattr(np, "trapezoid") else float(np.trapz(y, x) / fpr_limit)


def assert_metrics_match_the_folder(folder, dataset, au_pro=True):
    """metrics.json of a labelled result folder recomputed from that folder's own files without
    metrics.py: image AUROC from its classification.csv, pixel AUROC and (``au_pro``) AU-PRO
    from its anomaly_maps/ TIFFs and the dataset's masks. Every image of the CSV has its map
    and no map is left over: verdicts, maps and metrics come from one run. The independent
    AU-PRO samples 4000 thresholds, too coarse for unsmoothed maps (many tied zeros): pixel
    AUROC is exact. Returns ``(metrics, frame)``."""
    import tifffile
    from sklearn.metrics import roc_auc_score

    folder = Path(folder)
    metrics = json.loads((folder / "metrics.json").read_text())
    frame = pd.read_csv(folder / "classification.csv")
    truth = (frame["truth"] == "defective").to_numpy()
    assert metrics["n_images"] == len(frame)
    assert metrics["image_auroc"] == pytest.approx(roc_auc_score(truth, frame["score"]), abs=1e-9)
    names = [f"{row['defect_type']}/{Path(row['path']).stem}.tiff" for _, row in frame.iterrows()]
    assert sorted(p.relative_to(folder / "anomaly_maps").as_posix() for p in folder.rglob("*.tiff")) == sorted(names)
    maps, masks = [], []
    for name, (_, row) in zip(names, frame.iterrows()):
        maps.append(tifffile.imread(folder / "anomaly_maps" / name))
        mask = dataset / "ground_truth" / row["defect_type"] / f"{Path(row['path']).stem}_mask.png"
        masks.append(
            np.asarray(Image.open(mask).convert("L")) > 127 if mask.is_file() else np.zeros(maps[-1].shape, bool)
        )
    pixels = np.concatenate([m.ravel() for m in maps])
    assert metrics["pixel_auroc"] == pytest.approx(
        roc_auc_score(np.concatenate([g.ravel() for g in masks]), pixels), abs=1e-6
    )
    if au_pro:
        assert metrics["au_pro"] == pytest.approx(_independent_au_pro(maps, masks), abs=0.01)
    return metrics, frame


def test_labelled_metrics_match_values_recomputed_from_the_written_files(labelled, tiny_dataset):
    """image AUROC from classification.csv, pixel AUROC and AU-PRO from the written TIFFs and
    the dataset's masks, all recomputed without metrics.py; per defect type too."""
    from sklearn.metrics import roc_auc_score

    metrics, frame = assert_metrics_match_the_folder(written(labelled), tiny_dataset)
    truth = (frame["truth"] == "defective").to_numpy()
    for defect in DEFECTS:
        sub = frame["defect_type"].isin(["good", defect]).to_numpy()
        expected = roc_auc_score(truth[sub], frame["score"][sub])
        assert metrics["per_defect_type"][defect]["image_auroc"] == pytest.approx(expected, abs=1e-9), defect


def test_labelled_result_is_one_folder_and_nothing_is_written_beside_it(labelled):
    """Everything one test.py writes is inside its a<A>_t<T> folder (the fixture ran with
    --save): verdicts, metrics, curves, anomaly maps, masks, overlays and the report; the
    method folder holds that folder only. The page names the folder it was renamed to, not
    the staging folder it was written in."""
    _, _, out_dir, copy = labelled
    assert [p.name for p in copy.iterdir()] == [out_dir.name]
    folder = written(labelled)
    assert {p.name for p in folder.iterdir()} == {
        storage.MARKER,
        "classification.csv",
        "test_result.json",
        "metrics.json",
        "roc_curves.png",
        "pro_curve.png",
        "anomaly_maps",
        "report.html",
        "report_files",
        "good",
        *DEFECTS,
    }
    page = (folder / "report.html").read_text()
    assert f"Result folder {out_dir}," in page and ".partial" not in page
    assert "ROC curves (image and pixel)" in page and "PRO curve" in page  # the curves in the folder were found


def test_smooth_sets_the_sigma_of_anomaly_maps_not_the_verdicts_or_scores(run_dir, labelled, tiny_dataset, capsys):
    """--smooth 0 writes the raw maps; --smooth 2 writes those maps smoothed by a Gaussian of
    sigma 2 (scipy, recomputed here); verdicts and scores are the same; a score is the highest
    threshold that still leaves a 3-px region of the raw map (scikit-image, recomputed here),
    over the threshold 0.5."""
    import tifffile
    from scipy.ndimage import gaussian_filter
    from skimage.measure import label

    tiffs, frames = {}, {}
    folder = run_dir / "test" / "ssim" / "a3_t0.500000"
    for sigma in (0, 2):
        code, out, err = cli(
            test_script.main, ["-p", str(run_dir), "-t", "0.5", "-a", "3", "--smooth", str(sigma)], capsys
        )
        assert code == 0, err
        metrics, frames[sigma] = assert_metrics_match_the_folder(folder, tiny_dataset, au_pro=sigma > 0)
        assert metrics["smooth_sigma"] == sigma
        tiffs[sigma] = {
            p.relative_to(folder / "anomaly_maps").as_posix(): tifffile.imread(p)
            for p in sorted((folder / "anomaly_maps").rglob("*.tiff"))
        }
    assert (frames[0]["verdict"] == frames[2]["verdict"]).all()
    assert (frames[0]["largest_area"] == frames[2]["largest_area"]).all()
    assert set(tiffs[0]) == set(tiffs[2]) and len(tiffs[0]) == 13
    for name, raw in tiffs[0].items():
        np.testing.assert_allclose(tiffs[2][name], gaussian_filter(raw, 2, mode="reflect"), atol=1e-5)
    np.testing.assert_allclose(frames[0]["score"], frames[2]["score"], rtol=1e-5)

    def peak(raw, area):  # independent: the lowest map value above which no region of `area` px is left
        for v in np.unique(raw):
            labels = label(raw > v, connectivity=2)
            if not labels.max() or np.bincount(labels.ravel())[1:].max() < area:
                return float(v)

    by_name = {f"{r['defect_type']}/{Path(r['path']).stem}.tiff": r["score"] for _, r in frames[0].iterrows()}
    for name, raw in tiffs[0].items():
        assert by_name[name] == pytest.approx(peak(raw, 3) / 0.5, rel=1e-5)


def test_labelled_stdout_table(run_dir, labelled):
    out, _, out_dir, _ = labelled
    metrics = json.loads((written(labelled) / "metrics.json").read_text())
    frame = pd.read_csv(written(labelled) / "classification.csv")
    lines = out.splitlines()
    for defect in ("good", *DEFECTS):
        row = next(line for line in lines if line.split() and line.split()[0] == defect)
        sub = frame[frame["defect_type"] == defect]
        flagged = int((sub["verdict"] == "defective").sum())
        assert row.split()[1:3] == [str(len(sub)), str(flagged)]
        # The rate's exact 95 % interval from the same counts (scipy's Beta quantiles, independently).
        low = beta.ppf(0.025, flagged, len(sub) - flagged + 1) if flagged else 0.0
        high = beta.ppf(0.975, flagged + 1, len(sub) - flagged) if flagged < len(sub) else 1.0
        assert row.split()[4:6] == [f"{low:.2f}", f"{high:.2f}"]
    total = next(line for line in lines if line.split() and line.split()[0] == "total")
    assert total.split()[1:3] == ["13", str(int((frame["verdict"] == "defective").sum()))]
    low, high = metrics["image_auroc_interval"]
    assert low <= metrics["image_auroc"] <= high
    assert f"image AUROC {metrics['image_auroc']:.3f} (95% CI {low:.2f}–{high:.2f})" in out
    result = json.loads((written(labelled) / "test_result.json").read_text())
    for rate in ("tpr", "tnr"):
        low, high = result[f"{rate}_interval"]
        assert low <= result[rate] <= high
        assert f"{rate.upper()} {result[rate]:.3f} (95% CI {low:.2f}–{high:.2f})" in out
    assert lines[-1] == str(out_dir)


# --------------------------------------------------------------------------- 3. explicit threshold / no validation


def test_explicit_threshold_and_area(run_dir, labelled, capsys):
    code, out, err = cli(test_script.main, ["-p", str(run_dir), "-t", "0.5", "-a", "3"], capsys)
    assert code == 0, err
    folder = run_dir / "test" / "ssim" / "a3_t0.500000"
    assert out.strip().splitlines()[-1] == str(folder)
    result = json.loads((folder / "test_result.json").read_text())
    assert (result["threshold"], result["min_area"], result["threshold_source"]) == (0.5, 3, "command line")
    frame = pd.read_csv(folder / "classification.csv")
    assert ((frame["verdict"] == "defective") == (frame["largest_area"] >= 3)).all()
    assert not list(folder.glob("*/*_mask.png")), "masks written without --save"
    assert (labelled[2] / "test_result.json").is_file(), "the validation-based result was removed"


def test_without_validation_result_asks_for_validate(tiny_run, tmp_path, capsys):
    run = copy_run(tiny_run, tmp_path / "run")
    assert not (run / "validation").exists()
    code, out, err = cli(test_script.main, ["-p", str(run)], capsys)
    assert_user_error(code, err, "validate.py", "-t THRESHOLD")
    assert not (run / "test").exists()
    # Only one of the two is not enough either.
    code, _, err = cli(test_script.main, ["-p", str(run), "-a", "3"], capsys)
    assert_user_error(code, err, "validate.py", "area 3")
    assert not (run / "test").exists()


# --------------------------------------------------------------------------- 4. hand-built verdicts


def synthetic_maps():
    maps = np.zeros((3, 20, 20), np.float32)
    maps[0, 2:7, 3:8] = 1.0  # 5x5 blob: 25 px
    maps[0, 15, 15] = maps[0, 15, 16] = maps[0, 16, 15] = 1.0  # 3-px speck, apart from the blob
    for i in range(6):  # a diagonal line: 8-connected, one region of 6
        maps[1, 10 + i, 2 + i] = 0.9
    maps[2, 5, 5] = 0.2  # one faint pixel
    return maps


def test_classify_known_blob():
    maps = synthetic_maps()
    defective, largest, counts = classify(maps, 0.5, 25)
    assert defective.tolist() == [True, False, False]
    assert largest.tolist() == [25, 6, 0]
    assert counts.tolist() == [2, 1, 0]
    defective, _, _ = classify(maps, 0.5, 26)
    assert defective.tolist() == [False, False, False]
    # Diagonal neighbours join: the line is one region of 6 px, not six of 1.
    assert classify(maps, 0.5, 6)[0].tolist() == [True, True, False]
    assert classify(maps, 0.5, 7)[0].tolist() == [True, False, False]
    # Strictly above the threshold: pixels equal to it do not count.
    _, largest, counts = classify(maps, 1.0, 1)
    assert largest.tolist() == [0, 0, 0] and counts.tolist() == [0, 0, 0]
    assert classify(maps, 0.1, 1)[0].tolist() == [True, True, True]


def test_defect_mask_keeps_only_large_regions():
    maps = synthetic_maps()
    blob = np.zeros((20, 20), bool)
    blob[2:7, 3:8] = True
    np.testing.assert_array_equal(resmaps.defect_mask(maps[0], 0.5, 25), blob)
    np.testing.assert_array_equal(resmaps.defect_mask(maps[0], 0.5, 3), maps[0] > 0.5)
    assert not resmaps.defect_mask(maps[0], 0.5, 26).any()
    masks = [resmaps.regions(m, 0.5, 6)[0] for m in maps]
    assert [int(m.sum()) for m in masks] == [25, 6, 0]


# --------------------------------------------------------------------------- 5. predictions on new images


def test_predict_images_mixed_formats(run_dir, tiny_dataset, tmp_path, capsys):
    src = tiny_dataset / "test"
    images = tmp_path / "new_images"
    (images / "sub" / "deeper").mkdir(parents=True)
    gray = Image.open(src / "hole" / "000.png").convert("L")
    gray.save(images / "a.png")
    gray.convert("RGB").resize((64, 64)).save(images / "sub" / "b.JPG", quality=95)
    Image.open(src / "good" / "000.png").convert("RGB").save(images / "sub" / "deeper" / "c.bmp")
    Image.open(src / "crack" / "001.png").convert("L").resize((64, 64)).save(images / "sub" / "d.tif")
    (images / "sub" / "notes.txt").write_text("not an image")
    sizes = {"a.png": (48, 48), "sub/b.JPG": (64, 64), "sub/deeper/c.bmp": (48, 48), "sub/d.tif": (64, 64)}

    val = json.loads((run_dir / "validation" / "ssim" / f"a{AREA}" / "validation_result.json").read_text())
    code, out, err = cli(test_script.main, ["-p", str(run_dir), "--images", str(images)], capsys)
    assert code == 0, err
    assert "notes.txt" in err and "warning" in err and "not an image" in err
    (out_dir,) = (run_dir / "predictions" / "ssim").glob(f"new_images-*_a{AREA}_t{val['threshold']:.6f}")
    assert out.strip().splitlines()[-1] == str(out_dir)
    frame = pd.read_csv(out_dir / "predictions.csv")
    assert len(frame) == 4
    assert sorted(Path(p).relative_to(images).as_posix() for p in frame["path"]) == sorted(sizes)
    assert {"verdict", "score", "largest_area", "n_regions"} <= set(frame.columns)
    assert set(frame["verdict"]) <= {"good", "defective"}
    assert ((frame["verdict"] == "defective") == (frame["largest_area"] >= AREA)).all()
    assert (frame["n_regions"] >= (frame["largest_area"] > 0)).all()
    assert np.isfinite(frame["score"]).all()
    n_def = int((frame["verdict"] == "defective").sum())
    assert f"4 images: {n_def} defective, {4 - n_def} good" in out
    for _, row in frame.iterrows():
        rel = Path(row["path"]).relative_to(images)
        mask_path = out_dir / rel.parent / f"{rel.stem}_mask.png"
        overlay_path = out_dir / rel.parent / f"{rel.stem}_overlay.png"
        assert Path(row["mask"]) == mask_path and Path(row["overlay"]) == overlay_path
        with Image.open(mask_path) as im:
            assert im.size == sizes[rel.as_posix()]
            mask = np.asarray(im)
        assert set(np.unique(mask)) <= {0, 255}
        assert mask.any() == (row["verdict"] == "defective")
        with Image.open(overlay_path) as im:
            assert im.format == "PNG"
    pngs = sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*.png"))
    assert len(pngs) == 8
    setup = json.loads((out_dir / "prediction_setup.json").read_text())
    assert (setup["threshold"], setup["min_area"], setup["method"]) == (val["threshold"], AREA, "ssim")


def test_predict_images_empty_folder(run_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    code, _, err = cli(
        test_script.main, ["-p", str(run_dir), "--images", str(tmp_path / "empty"), "-t", "0.5", "-a", "3"], capsys
    )
    assert code == 2 and "Traceback" not in err
    assert "no images under" in error_lines(err)[-1]
    assert not list((run_dir / "predictions" / "ssim").glob("empty*"))


def test_labelled_test_in_small_chunks_gives_the_same_results(run_dir, labelled, tmp_path, monkeypatch, capsys):
    """Streaming (issue 13): with 4 images per chunk the labelled test writes the same
    verdicts, scores and metrics as in one piece (the fixture's run, default chunk).

    On a copy of the run (time stamps kept, so its calibration cache still fits): writing
    the same result again into the shared run would replace the fixture's --save masks,
    which other tests read."""
    _, _, out_dir, _ = labelled
    before = pd.read_csv(written(labelled) / "classification.csv")
    assert len(before) > 4 * 3  # several chunks
    run = tmp_path / "run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns(*OUTPUT_DIRS[1:]))
    monkeypatch.setattr(inference, "STREAM_CHUNK", 4)
    code, out, err = cli(test_script.main, ["-p", str(run)], capsys)
    assert code == 0, err
    assert Path(out.strip().splitlines()[-1]) == run / out_dir.relative_to(run_dir)
    after = pd.read_csv(Path(out.strip().splitlines()[-1]) / "classification.csv")
    assert list(after["path"]) == list(before["path"])
    assert (after["verdict"] == before["verdict"]).all()
    np.testing.assert_allclose(after["score"], before["score"], rtol=1e-5, atol=1e-6)
    old = json.loads((written(labelled) / "metrics.json").read_text())
    new = json.loads((Path(out.strip().splitlines()[-1]) / "metrics.json").read_text())
    for key in ("image_auroc", "pixel_auroc", "au_pro"):
        assert new[key] == pytest.approx(old[key], abs=1e-6), key


def test_predict_images_streams_in_chunks_and_skips_unreadable_ones(run_dir, tiny_dataset, tmp_path, monkeypatch):
    """--images in chunks of 3: a chunk holding only unreadable files is skipped with a
    warning, the others give the verdicts and scores of one-piece inference."""
    images = tmp_path / "stream"
    images.mkdir()
    sources = sorted((tiny_dataset / "test").rglob("*.png"))[::2][:6]
    assert len(sources) == 6
    for i in range(3):  # a: a readable chunk; b: an unreadable chunk; c: a readable chunk
        shutil.copy(sources[i], images / f"a{i}.png")
        (images / f"b{i}.png").write_bytes(b"not a png")
        shutil.copy(sources[3 + i], images / f"c{i}.png")
    run = runs.find_run(run_dir)
    paths = data.list_images(images)
    options = inference.MapOptions.from_args(method="ssim", mode=run.mode)
    chunks = list(inference.inspect_stream(run, paths, "ssim", options=options, chunk=3))
    assert [[p.name for p in c.paths] for c in chunks] == [
        ["a0.png", "a1.png", "a2.png"],
        ["c0.png", "c1.png", "c2.png"],
    ]
    whole = inference.inspect(run, paths, "ssim", options=options)
    np.testing.assert_allclose(np.concatenate([c.maps for c in chunks]), whole.maps, rtol=1e-5, atol=1e-6)
    with pytest.raises(UserError, match="no readable images among 3"):
        list(inference.inspect_stream(run, paths[3:6], "ssim", options=options, chunk=2))

    monkeypatch.setattr(inference, "STREAM_CHUNK", 3)
    out_small, err = run_quietly(
        test_script.main, ["-p", str(run_dir), "--images", str(images), "--out", str(tmp_path / "s")]
    )[1:]
    monkeypatch.setattr(inference, "STREAM_CHUNK", 100)
    run_quietly(test_script.main, ["-p", str(run_dir), "--images", str(images), "--out", str(tmp_path / "w")])
    assert err.count("skipping") == 3 and "b1.png" in err
    small = pd.read_csv(tmp_path / "s" / "predictions.csv")
    one = pd.read_csv(tmp_path / "w" / "predictions.csv")
    assert [Path(p).name for p in small["path"]] == [f"{x}{i}.png" for x in "ac" for i in range(3)]
    assert list(small["verdict"]) == list(one["verdict"])
    np.testing.assert_allclose(small["score"], one["score"], rtol=1e-5, atol=1e-6)
    assert len(list((tmp_path / "s").glob("*_overlay.png"))) == 6


def test_predict_images_overlays_option(run_dir, tiny_dataset, tmp_path, capsys):
    """--overlays defective draws figures only for images found defective, none for none; every
    image keeps its mask and its row; outside --images the option is refused."""
    images = tmp_path / "line"
    shutil.copytree(tiny_dataset / "test", images)

    def predict(choice, area, out):
        argv = ["-p", str(run_dir), "--images", str(images), "-t", "0.05", "-a", str(area), "--overlays", choice]
        code, _, err = cli(test_script.main, argv + ["--out", str(out)], capsys)
        assert code == 0, err
        return pd.read_csv(out / "predictions.csv", keep_default_na=False)

    # An area that splits these images into defective and good ones.
    sizes = sorted(set(predict("none", 1, tmp_path / "probe")["largest_area"]))
    assert len(sizes) >= 2
    area = max(1, sizes[len(sizes) // 2])
    frames = {}
    for choice in ("all", "defective", "none"):
        out = tmp_path / choice
        frames[choice] = frame = predict(choice, area, out)
        drawn = {p.relative_to(out).as_posix() for p in out.rglob("*_overlay.png")}
        assert len(list(out.rglob("*_mask.png"))) == len(frame)
        chosen = {"all": frame, "defective": frame[frame["verdict"] == "defective"], "none": frame.iloc[:0]}[choice]
        expected = set()
        for path in chosen["path"]:
            rel = Path(path).relative_to(images)
            expected.add((rel.parent / f"{rel.stem}_overlay.png").as_posix())
        assert drawn == expected
        assert (frame["overlay"] != "").sum() == len(chosen)
    assert 0 < (frames["all"]["verdict"] == "defective").sum() < len(frames["all"])  # both kinds present
    assert list(frames["none"]["verdict"]) == list(frames["all"]["verdict"])
    code, _, err = cli(test_script.main, ["-p", str(run_dir), "--overlays", "none"], capsys)
    assert_user_error(code, err, "--overlays only applies with --images")


# --------------------------------------------------------------------------- 6-8. unusual datasets


def test_dataset_without_ground_truth(tiny_run, tiny_dataset, tmp_path, capsys):
    dataset = copy_dataset(tiny_dataset, tmp_path / "data")
    shutil.rmtree(dataset / "ground_truth")
    run = copy_run(tiny_run, tmp_path / "run", dataset)
    code, out, err = cli(test_script.main, ["-p", str(run), "-t", "0.5", "-a", "3"], capsys)
    assert code == 0, err
    folder = run / "test" / "ssim" / "a3_t0.500000"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert 0.0 <= metrics["image_auroc"] <= 1.0
    assert metrics["pixel_auroc"] is None and metrics["au_pro"] is None
    assert any("mask" in note for note in metrics["notes"])
    assert all(entry["pixel_auroc"] is None for entry in metrics["per_defect_type"].values())
    assert (folder / "roc_curves.png").is_file() and not (folder / "pro_curve.png").exists()
    assert "pixel AUROC n/a" in out
    assert len(pd.read_csv(folder / "classification.csv")) == 13


def test_mask_size_differs_from_image(tiny_run, tiny_dataset, run_dir, labelled, tmp_path, capsys):
    dataset = copy_dataset(tiny_dataset, tmp_path / "data")
    mask_path = dataset / "ground_truth" / "hole" / "000_mask.png"
    with Image.open(mask_path) as im:
        assert im.size == (SIZE, SIZE)
        im.resize((2 * SIZE, 2 * SIZE), Image.Resampling.NEAREST).save(mask_path)
    run = copy_run(tiny_run, tmp_path / "run", dataset)
    # The labelled fixture's area: image scores (region peaks) depend on it, not on the threshold.
    code, out, err = cli(test_script.main, ["-p", str(run), "-t", "0.5", "-a", str(AREA)], capsys)
    assert code == 0, err
    warning = [line for line in error_lines(err) if line.startswith("warning:")]
    assert len(warning) == 1 and "000_mask.png" in warning[0] and "96x96" in warning[0], warning
    before = json.loads((written(labelled) / "metrics.json").read_text())
    after = json.loads((run / "test" / "ssim" / f"a{AREA}_t0.500000" / "metrics.json").read_text())
    # Two separate runs of TensorFlow: maps differ by ~1e-7, which may swap a few near-tied pixels.
    for key in ("image_auroc", "pixel_auroc", "au_pro"):
        assert after[key] == pytest.approx(before[key], abs=2e-3), key
    for defect in DEFECTS:
        for key in ("image_auroc", "pixel_auroc", "au_pro"):
            assert after["per_defect_type"][defect][key] == pytest.approx(
                before["per_defect_type"][defect][key], abs=2e-3
            )


def test_test_folder_without_good(tiny_run, tiny_dataset, tmp_path, capsys):
    dataset = copy_dataset(tiny_dataset, tmp_path / "data")
    shutil.rmtree(dataset / "test" / "good")
    run = copy_run(tiny_run, tmp_path / "run", dataset)
    code, out, err = cli(test_script.main, ["-p", str(run), "-t", "0.5", "-a", "3"], capsys)
    assert code == 0, err
    assert "TNR" in err and "no test/good folder" in err
    assert "TNR n/a" in out
    assert "note: TNR cannot be computed: no good images" in out
    folder = run / "test" / "ssim" / "a3_t0.500000"
    result = json.loads((folder / "test_result.json").read_text())
    assert result["tnr"] is None and result["balanced_accuracy"] is None
    assert result["tpr"] is not None and result["n_good"] == 0 and result["n_defective"] == 10
    assert any("TNR" in note for note in result["notes"])
    assert len(pd.read_csv(folder / "classification.csv")) == 10
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["image_auroc"] is None


# --------------------------------------------------------------------------- 9. finetune.py


def test_finetune_plots(run_dir, capsys):
    code, out, err = cli(
        finetune.main,
        [
            "-p",
            str(run_dir),
            "-v",
            "good/" + Path((run_dir / runs.VALIDATION_FILES).read_text().split()[1]).name,
            "-t",
            "hole/001.png",
            "-r",
            "30",
        ],
        capsys,
    )
    assert code == 0, err
    folder = run_dir / "finetune" / "ssim"
    assert out.strip().splitlines()[-1] == str(folder)
    names = (
        "regions_vs_threshold.png",
        "area_mean_std_vs_threshold.png",
        "area_distribution_t0.png",
        "area_distributions.png",
        "sample_validation.png",
        "sample_test.png",
    )
    assert sorted(p.name for p in folder.iterdir()) == sorted([*names, storage.MARKER])
    for name in names:
        with Image.open(folder / name) as im:
            assert im.format == "PNG"


def test_finetune_bad_arguments(tiny_run, tiny_dataset, tmp_path, capsys):
    run = copy_run(tiny_run, tmp_path / "run")
    listed = [n.strip() for n in (run / runs.VALIDATION_FILES).read_text().splitlines() if n.strip()]
    code, _, err = cli(finetune.main, ["-p", str(run), "-v", "good/NOT_THERE.png"], capsys)
    line = assert_user_error(code, err, "NOT_THERE.png")
    assert any(name.replace("train/", "", 1) in line for name in listed), line

    train_only = sorted(
        {f"train/good/{p.name}" for p in (tiny_dataset / "train" / "good").glob("*.png")} - set(listed)
    )[0]
    code, _, err = cli(finetune.main, ["-p", str(run), "-v", train_only.replace("train/", "", 1)], capsys)
    assert_user_error(code, err, "not one of this run's validation images")

    code, _, err = cli(finetune.main, ["-p", str(run), "-t", "nonexist/000.png"], capsys)
    line = assert_user_error(code, err, "nonexist/000.png")
    assert any(f"{d}/000.png" in line for d in ("good", *DEFECTS)), line

    code, _, err = cli(finetune.main, ["-p", str(run), "-r", "0"], capsys)
    assert_user_error(code, err, "-r")
    assert not (run / "finetune").exists()


# --------------------------------------------------------------------------- 10. visualize.py


def test_visualize_cli(run_dir, capsys):
    code, out, err = cli(visualize.main, ["-p", str(run_dir), "-i", "test/hole/000.png"], capsys)
    assert code == 0, err
    folder = run_dir / "visualize"
    assert out.strip().splitlines()[-1] == str(folder)
    pngs = list(folder.glob("*.png"))
    assert [p.name for p in pngs] == ["test_hole_000_ssim.png"]
    with Image.open(pngs[0]) as im:
        assert im.format == "PNG"


# --------------------------------------------------------------------------- 11. bad inputs


def test_run_without_model(tiny_run, tmp_path, capsys):
    run = copy_run(tiny_run, tmp_path / "run")
    model_file(run).unlink()
    for main, extra in (
        (validate.main, ["-a", "5"]),
        (test_script.main, ["-t", "0.5", "-a", "5"]),
        (finetune.main, []),
        (visualize.main, ["-t", "0.5", "-a", "5", "-i", "test/hole/000.png"]),
    ):
        code, _, err = cli(main, ["-p", str(run), *extra], capsys)
        assert_user_error(code, err, "no model", runs.model_filename("mvtec2", 4))
    assert not any((run / name).exists() for name in OUTPUT_DIRS)


@pytest.mark.parametrize("script", [validate, test_script, finetune], ids=["validate", "test", "finetune"])
def test_not_a_run_folder_and_missing_path(script, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    extra = ["-a", "5"] if script is validate else []
    code, _, err = cli(script.main, ["-p", str(tmp_path / "empty"), *extra], capsys)
    assert_user_error(code, err, "setup.json", str(tmp_path / "empty"))
    assert list((tmp_path / "empty").iterdir()) == []
    code, _, err = cli(script.main, ["-p", str(tmp_path / "nowhere"), *extra], capsys)
    assert_user_error(code, err, "not found", "nowhere")
    assert not (tmp_path / "nowhere").exists()


def test_bad_numbers(run_dir, capsys):
    before = tree_snapshot(run_dir / "validation")
    code, _, err = cli(validate.main, ["-p", str(run_dir), "-a", "-5"], capsys)
    assert_user_error(code, err, "area", "-5")
    code, _, err = cli(validate.main, ["-p", str(run_dir), "-a", "0"], capsys)
    assert_user_error(code, err, "area")
    assert tree_snapshot(run_dir / "validation") == before
    assert not (run_dir / "validation" / "ssim" / "a-5").exists()

    test_before = sorted(p.name for p in (run_dir / "test" / "ssim").iterdir()) if (run_dir / "test").exists() else []
    code, _, err = cli(test_script.main, ["-p", str(run_dir), "-a", "-5", "-t", "0.5"], capsys)
    assert_user_error(code, err, "area", "-5")
    code, _, err = cli(test_script.main, ["-p", str(run_dir), "-a", "-5"], capsys)
    assert_user_error(code, err, "area", "-5")
    code, _, err = cli(test_script.main, ["-p", str(run_dir), "-t", "-0.1", "-a", "5"], capsys)
    assert_user_error(code, err, "threshold", "-0.1")
    code, _, err = cli(test_script.main, ["-p", str(run_dir), "-t", "nan", "-a", "5"], capsys)
    assert_user_error(code, err, "threshold", "nan")
    test_after = sorted(p.name for p in (run_dir / "test" / "ssim").iterdir()) if (run_dir / "test").exists() else []
    assert test_after == test_before


@pytest.mark.parametrize("script", [validate, test_script], ids=["validate", "test"])
def test_unknown_method_is_an_argparse_error(script, run_dir, capsys):
    code, out, err = cli(script.main, ["-p", str(run_dir), "-a", "5", "--method", "foo"], capsys)
    assert code == 2
    assert "Traceback" not in err
    assert "invalid choice: 'foo'" in err.strip().splitlines()[-1]
    assert not (run_dir / "validation" / "foo").exists() and not (run_dir / "test" / "foo").exists()


def test_model_size_does_not_match_setup(tiny_run, tmp_path, capsys):
    run = copy_run(tiny_run, tmp_path / "run")
    setup = json.loads((run / runs.SETUP).read_text())
    setup["size"] = 64
    (run / runs.SETUP).write_text(json.dumps(setup))
    code, _, err = cli(validate.main, ["-p", str(run), "-a", "5"], capsys)
    assert_user_error(code, err, "setup.json", "64")
    code, _, err = cli(test_script.main, ["-p", str(run), "-t", "0.5", "-a", "5"], capsys)
    assert_user_error(code, err, "setup.json", "64")
    assert not (run / "validation").exists() and not (run / "test").exists()


def test_missing_test_folder(tiny_run, tiny_dataset, tmp_path, capsys):
    dataset = copy_dataset(tiny_dataset, tmp_path / "data")
    shutil.rmtree(dataset / "test")
    run = copy_run(tiny_run, tmp_path / "run", dataset)
    code, _, err = cli(test_script.main, ["-p", str(run), "-t", "0.5", "-a", "5"], capsys)
    assert_user_error(code, err, "no test folder", str(dataset))
    assert not (run / "test").exists()


def test_failed_test_keeps_previous_result(tiny_run, tmp_path, capsys, monkeypatch):
    run = copy_run(tiny_run, tmp_path / "run")
    argv = ["-p", str(run), "-t", "0.5", "-a", "3", "--save"]
    code, out, err = cli(test_script.main, argv, capsys)
    assert code == 0, err
    folder = run / "test" / "ssim" / "a3_t0.500000"
    before = tree_snapshot(folder)
    assert {"classification.csv", "metrics.json", "anomaly_maps/hole/000.tiff", "hole/000_mask.png"} <= set(before)

    # A failure half-way through writing the same output folder ...
    calls, original = [], figures.plot_overlay

    def failing_overlay(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise UserError("disk full (simulated)")
        return original(*args, **kwargs)

    monkeypatch.setattr(figures, "plot_overlay", failing_overlay)
    code, _, err = cli(test_script.main, argv, capsys)
    assert_user_error(code, err, "disk full")
    assert len(calls) == 4
    # ... leaves the earlier result (its anomaly maps and metrics too) as it was, and no staging folder.
    assert tree_snapshot(folder) == before
    assert [p.name for p in (run / "test" / "ssim").iterdir()] == [folder.name]

    # A failure before any writing (the dataset's test folder went missing) does not touch it either.
    monkeypatch.undo()
    setup = json.loads((run / runs.SETUP).read_text())
    setup["directory"] = str(tmp_path / "gone")
    (run / runs.SETUP).write_text(json.dumps(setup))
    code, _, err = cli(test_script.main, argv, capsys)
    assert code == 2
    assert tree_snapshot(folder) == before


def test_help_in_a_subprocess():
    proc = subprocess.run([sys.executable, "test.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--images" in proc.stdout and "--threshold" in proc.stdout


def test_no_baseline_uses_raw_maps_and_must_match_validation(tiny_run, tmp_path, capsys):
    run = copy_run(tiny_run, tmp_path / "run")
    code, _, err = cli(validate.main, ["-p", str(run), "-a", str(AREA)], capsys)
    assert code == 0, err
    code, _, err = cli(test_script.main, ["-p", str(run), "--no-baseline"], capsys)
    assert code == 2 and "computed with the residual baseline" in err and "--no-baseline" in err
    code, _, err = cli(validate.main, ["-p", str(run), "-a", str(AREA), "--no-baseline", "--false-alarms", "0"], capsys)
    assert code == 0, err
    result = json.loads((run / "validation" / "ssim" / f"a{AREA}" / "validation_result.json").read_text())
    assert result["baseline"] is False
    assert_threshold_matches(result["threshold"], recomputed_validation_maps(run, baseline=False), AREA)
    code, _, err = cli(test_script.main, ["-p", str(run)], capsys)
    assert code == 0, err
    (tested,) = run.glob("test/ssim/a*_t*/test_result.json")
    assert json.loads(tested.read_text())["baseline"] is False
    # What the training images say is usual is cached in the run (per method, scales, passes and
    # baseline), recomputed only when the model changes.
    assert (run / f"calibration_ssim_s{inference.DEFAULT_SCALES}_p{inference.DEFAULT_PASSES}.npz").is_file()
    assert (run / f"calibration_ssim_s{inference.DEFAULT_SCALES}_p{inference.DEFAULT_PASSES}_raw.npz").is_file()


def test_scales_are_recorded_followed_and_checked(tiny_run, tmp_path, capsys):
    run = copy_run(tiny_run, tmp_path / "run")
    argv = ["-p", str(run), "-a", str(AREA), "--scales", "1", "--false-alarms", "0"]  # the threshold recomputed below
    code, out, err = cli(validate.main, argv, capsys)
    assert code == 0, err
    assert out.startswith("ssim at 1 scale, 4 passes, minus baseline: threshold")
    result = json.loads((run / "validation" / "ssim" / f"a{AREA}" / "validation_result.json").read_text())
    assert result["scales"] == 1
    assert_threshold_matches(result["threshold"], recomputed_validation_maps(run, scales=1), AREA)
    code, _, err = cli(test_script.main, ["-p", str(run), "--scales", "2"], capsys)
    assert code == 2 and "computed with --scales 1" in err and "--scales 2" in err
    code, out, err = cli(test_script.main, ["-p", str(run)], capsys)
    assert code == 0, err
    assert out.startswith("ssim at 1 scale, 4 passes, minus baseline, threshold")
    (tested_file,) = run.glob("test/ssim/a*_t*/metrics.json")
    tested = json.loads(tested_file.read_text())
    assert (
        tested["scales"] == 1
        and tested["baseline_quantile"] == result["baseline_quantile"] == inference.BASELINE_QUANTILE
    )
    assert tested["baseline_tolerance"] == result["baseline_tolerance"] == inference.BASELINE_TOLERANCE == 1
    # A validation result from before --scales existed was made with the plain map.
    del result["scales"]
    storage.write_json(run / "validation" / "ssim" / f"a{AREA}" / "validation_result.json", result)
    assert inference.resolve_threshold(runs.find_run(run), "ssim")[2] == inference.MapOptions(
        True, 1, inference.DEFAULT_PASSES
    )
    # Results made with an older baseline (the mean; the quantile without tolerance) have
    # thresholds that no longer fit the maps: refused, and nothing is written.
    before = tree_snapshot(run / "test")
    for stale, said in [
        ({"baseline_tolerance": None}, "quantile 0.75, 0-px tolerance"),
        ({"baseline_quantile": None, "baseline_tolerance": None}, "the mean"),
    ]:
        storage.write_json(run / "validation" / "ssim" / f"a{AREA}" / "validation_result.json", {**result, **stale})
        code, _, err = cli(test_script.main, ["-p", str(run)], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and tree_snapshot(run / "test") == before
        assert (
            f"older residual baseline ({said} instead of quantile 0.75, 1-px tolerance); "
            "run validate.py again, or pass -t and -a"
        ) in err
    # A 48-px image cannot hold an 11-px SSIM window at an eighth of its size.
    code, _, err = cli(validate.main, ["-p", str(run), "-a", str(AREA), "--scales", "4"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"--scales must be 1 to 3 for ssim maps of this {SIZE}-px model, got 4" in err
    code, _, err = cli(test_script.main, ["-p", str(run), "-t", "0.1", "-a", "5", "--scales", "0"], capsys)
    assert code == 2 and "--scales must be 1 to 3" in err


def test_passes_are_recorded_followed_and_checked(tiny_run, tmp_path, capsys):
    run = copy_run(tiny_run, tmp_path / "run")
    folder = run / "validation" / "ssim" / f"a{AREA}"
    for passes in (1, 2):
        # --false-alarms 0: the threshold recomputed below. Without it (the balanced policy) the
        # threshold lies halfway to the next painted copy's peak, which moved with each session's
        # training: 0.6-1.4 % above the recomputation in about a third of the runs.
        argv = ["-p", str(run), "-a", str(AREA), "--passes", str(passes), "--false-alarms", "0"]
        code, out, err = cli(validate.main, argv, capsys)
        assert code == 0, err
        result = json.loads((folder / "validation_result.json").read_text())
        assert result["passes"] == passes and result["threshold"] == result["zero_false_alarm_threshold"]
        maps = recomputed_validation_maps(run, passes=passes)
        assert_threshold_matches(result["threshold"], maps, AREA, repainted=passes > 1)
    assert out.startswith("ssim at 2 scales, 2 passes, minus baseline: threshold")
    assert (result["mask_quantile"], result["mask_sigma"], result["mask_feather"]) == (0.999, 4.0, 1.5)
    code, _, err = cli(test_script.main, ["-p", str(run), "--passes", "3"], capsys)
    assert code == 2 and "computed with --passes 2; run validate.py again with --passes 3, or pass -t and -a" in err
    code, out, err = cli(test_script.main, ["-p", str(run)], capsys)
    assert code == 0, err
    assert out.startswith("ssim at 2 scales, 2 passes, minus baseline, threshold")
    (tested_file,) = run.glob("test/ssim/a*_t*/metrics.json")
    assert json.loads(tested_file.read_text())["passes"] == 2
    # A result from before --passes existed was made with one reconstruction.
    storage.write_json(folder / "validation_result.json", {k: v for k, v in result.items() if k != "passes"})
    assert inference.resolve_threshold(runs.find_run(run), "ssim")[2] == inference.MapOptions(True, 2, 1)
    # Other mask settings give other maps: refused, nothing written.
    storage.write_json(folder / "validation_result.json", {**result, "mask_quantile": 0.99})
    before = tree_snapshot(run / "test")
    code, _, err = cli(test_script.main, ["-p", str(run)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and tree_snapshot(run / "test") == before
    assert "other mask settings for later passes" in err and "run validate.py again, or pass -t and -a" in err
    code, _, err = cli(validate.main, ["-p", str(run), "-a", str(AREA), "--passes", "0"], capsys)
    assert code == 2 and "--passes must be >= 1, got 0" in err


def test_closed_stdout_ends_quietly_without_traceback():
    # `validate.py ... | head -n 1` closes the pipe before the script's last print.
    code = (
        "import sys; sys.path.insert(0, '.'); from utils import run_cli\n"
        "def main(argv):\n    raise BrokenPipeError(32, 'Broken pipe')\n"
        "sys.exit(run_cli(main))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 141 and proc.stderr == ""
