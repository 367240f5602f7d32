"""Fast checks of figures.py (visualize.py's figures): every figure writes a readable PNG and closes its figure."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import matplotlib.pyplot as plt  # noqa: E402

import figures as viz  # noqa: E402

H, W = 32, 40


# --------------------------------------------------------------------------- helpers


def check_png(path, min_w=150, min_h=100):
    """The file exists, is a non-empty PNG Pillow can decode, of a sensible size."""
    path = Path(path)
    assert path.is_file(), path
    assert path.stat().st_size > 0
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()
        w, h = im.size
    assert min_w <= w <= 8000 and min_h <= h <= 8000, (w, h)
    return w, h


@pytest.fixture(autouse=True)
def no_open_figures(monkeypatch):
    monkeypatch.setattr(viz, "DPI", 60)  # keeps the suite fast; layout is DPI-independent
    plt.close("all")
    yield
    assert plt.get_fignums() == [], "a figure was left open"


def make_image(kind, rng):
    base = rng.random((H, W)).astype(np.float32)
    if kind == "hw":
        return base
    if kind == "hw1":
        return base[..., None]
    return rng.random((H, W, 3)).astype(np.float32)


def blob_mask(r0, r1, c0, c1):
    m = np.zeros((H, W), dtype=bool)
    m[r0:r1, c0:c1] = True
    return m


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def thresholds():
    return np.round(np.arange(0.05, 0.8, 0.05), 3)


# --------------------------------------------------------------------------- module


def test_import_does_not_pull_in_tensorflow_and_uses_agg():
    code = (
        "import sys, matplotlib, visualize; "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules; "
        "assert matplotlib.get_backend().lower() == 'agg', matplotlib.get_backend()"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


def test_figures_import_nothing_of_the_suite():
    """figures.py sits below every module of the suite but methods.py (the map methods' labels,
    a table that imports nothing): importing it loads none of the others (nor TensorFlow);
    visualize.py, the command line, sits on top of it."""
    code = (
        "import pathlib, sys, figures; "
        "suite = {p.stem for p in pathlib.Path('.').glob('*.py')} - {'figures', 'methods'}; "
        "loaded = sorted(suite & set(sys.modules)); "
        "assert not loaded, loaded; "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules; "
        "import visualize; "
        "assert 'tensorflow' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


def test_save_figure_creates_parent_and_closes(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    out = tmp_path / "a" / "b" / "fig.png"
    assert viz.save_figure(fig, out) == out
    assert plt.get_fignums() == []
    check_png(out, min_w=50, min_h=50)


def test_save_figure_accepts_str_path(tmp_path):
    fig, _ = plt.subplots()
    out = str(tmp_path / "s" / "fig.png")
    assert viz.save_figure(fig, out) == out
    check_png(out, min_w=50, min_h=50)


# --------------------------------------------------------------------------- training


@pytest.mark.parametrize("with_lr", [False, True])
def test_plot_loss_curve(tmp_path, with_lr):
    e = np.arange(1, 41)
    hist = pd.DataFrame(
        {"epoch": e, "loss": 0.5 * np.exp(-e / 6) + 0.01, "val_loss": 0.6 * np.exp(-e / 7) + 0.02 + 1e-4 * e}
    )
    if with_lr:
        hist["learning_rate"] = np.where(e < 20, 1e-3, 1e-4)
    out = tmp_path / "plots" / "loss.png"
    assert viz.plot_loss_curve(hist, out, title="bottle") == out
    check_png(out)


def test_plot_loss_curve_small_range_and_nan(tmp_path):
    hist = pd.DataFrame({"epoch": [0, 1, 2], "loss": [0.11, 0.1, 0.09], "val_loss": [np.nan, 0.12, 0.115]})
    check_png(viz.plot_loss_curve(hist, tmp_path / "loss.png"))


def test_plot_loss_curve_zero_based_epochs_shown_from_one(tmp_path, monkeypatch):
    seen = {}
    real_save = viz.save_figure

    def spy(fig, path):
        line = fig.axes[0].get_lines()[0]
        seen["x"] = list(line.get_xdata())
        return real_save(fig, path)

    monkeypatch.setattr(viz, "save_figure", spy)
    hist = pd.DataFrame({"epoch": [0, 1, 2], "loss": [0.3, 0.2, 0.1], "val_loss": [0.35, 0.25, 0.2]})
    check_png(viz.plot_loss_curve(hist, tmp_path / "loss.png"))
    assert seen["x"] == [1, 2, 3]


def test_plot_loss_curve_single_epoch(tmp_path):
    hist = pd.DataFrame({"epoch": [1], "loss": [0.2], "val_loss": [0.25]})
    check_png(viz.plot_loss_curve(hist, tmp_path / "loss.png"))


# --------------------------------------------------------------------------- threshold search


def test_plot_threshold_search(tmp_path, thresholds):
    largest = (5000 * np.exp(-thresholds / 0.08)).astype(int)
    out = tmp_path / "t" / "search.png"
    assert viz.plot_threshold_search(thresholds, largest, 0.35, 20, out) == out
    check_png(out)


def test_plot_threshold_search_with_zeros_l2(tmp_path, thresholds):
    largest = (5000 * np.exp(-thresholds / 0.08)).astype(int)
    largest[-4:] = 0
    out = viz.plot_threshold_search(
        list(thresholds[::-1]), list(largest[::-1]), 0.4, 10, tmp_path / "search.png", method="l2"
    )
    check_png(out)


def test_plot_regions_vs_threshold(tmp_path, thresholds):
    n = (3000 * np.exp(-thresholds / 0.1)).astype(int)
    n[-2:] = 0
    out = tmp_path / "r" / "regions.png"
    assert viz.plot_regions_vs_threshold(thresholds, n, out) == out
    check_png(out)


def test_plot_area_stats_vs_threshold(tmp_path, thresholds):
    mean = 200 * np.exp(-thresholds / 0.1) + 1
    std = 0.7 * mean
    mean[-3:] = np.nan
    std[-3:] = np.nan
    out = tmp_path / "s" / "stats.png"
    assert viz.plot_area_stats_vs_threshold(thresholds, mean, std, out, method="l2") == out
    check_png(out)


def test_plot_area_distribution(tmp_path, rng):
    areas = np.ceil(rng.exponential(8, 500)).astype(int)
    out = tmp_path / "d" / "dist.png"
    assert viz.plot_area_distribution(areas, 50, out, threshold=0.3) == out
    check_png(out)


def test_plot_area_distribution_empty_and_large_max(tmp_path):
    check_png(viz.plot_area_distribution(np.array([]), 20, tmp_path / "empty.png"))
    check_png(viz.plot_area_distribution([1, 2, 5000], 2000, tmp_path / "wide.png"))


@pytest.mark.parametrize("n_thresholds", [1, 4, 30])
def test_plot_area_distributions(tmp_path, rng, n_thresholds):
    ts = np.linspace(0.1, 0.6, n_thresholds)
    areas = {float(t): np.ceil(rng.exponential(20 * (1 - t), int(400 * (1 - t)))) for t in ts}
    areas[float(ts[-1])] = np.array([])  # a threshold with no regions
    out = tmp_path / "d" / "dists.png"
    assert viz.plot_area_distributions(areas, 100, out) == out
    check_png(out)


def test_plot_area_distributions_empty_dict(tmp_path):
    check_png(viz.plot_area_distributions({}, 10, tmp_path / "none.png"))


# --------------------------------------------------------------------------- single images


@pytest.mark.parametrize("kind", ["hw", "hw1", "rgb"])
@pytest.mark.parametrize("method", ["ssim", "l2"])
def test_plot_sample(tmp_path, rng, kind, method):
    img, rec = make_image(kind, rng), make_image(kind, rng)
    res = rng.random((H, W)).astype(np.float32) * (2.0 if method == "ssim" else 0.2)
    out = tmp_path / "s" / f"sample_{kind}.png"
    assert viz.plot_sample(img, rec, res, out, title="a sample", method=method) == out
    check_png(out)


@pytest.mark.parametrize("kind", ["hw", "hw1", "rgb"])
def test_plot_stages(tmp_path, rng, kind):
    img, rec = make_image(kind, rng), make_image(kind, rng)
    res = rng.random((H, W)).astype(np.float32)
    pred, gt = blob_mask(5, 15, 5, 15), blob_mask(8, 20, 8, 18)
    out = tmp_path / "st" / "with_gt.png"
    assert viz.plot_stages(img, rec, res, pred, out, gt_mask=gt, threshold=0.5, min_area=10, title="stages") == out
    w_gt, _ = check_png(out)
    out2 = viz.plot_stages(img, rec, res, pred, tmp_path / "st" / "no_gt.png", method="l2")
    w_no_gt, _ = check_png(out2)
    assert w_gt > w_no_gt  # the ground-truth panel adds width


@pytest.mark.parametrize("kind", ["hw", "hw1", "rgb"])
def test_plot_overlay(tmp_path, rng, kind):
    img, rec = make_image(kind, rng), make_image(kind, rng)
    res = rng.random((H, W)).astype(np.float32)
    pred = blob_mask(0, 10, 0, 12)  # touches the border: outline must still close
    pred[20:25, 30:36] = True
    gt = blob_mask(2, 12, 2, 14)
    out = tmp_path / "o" / "overlay.png"
    assert (
        viz.plot_overlay(img, rec, res, pred, out, gt_mask=gt, title="bottle 003", verdict="defective", score=0.734)
        == out
    )
    check_png(out)


def test_overlay_bar_is_as_tall_as_the_map_and_its_labels_do_not_overlap(tmp_path, drawn, rng):
    """The overlay's fixed layout: a wide image's colour bar spans the map drawn, not its taller
    axes, and the threshold's label sits between the bar and its label, overlapping neither
    the bar's label nor the next panel."""
    wide = rng.random((20, 80)).astype(np.float32)
    viz.plot_overlay(wide, wide, wide, wide > 0.5, tmp_path / "o.png", threshold=0.4, method="l2", score=1.2)
    fig = drawn[0]
    fig.canvas.draw()  # places the axis labels at this canvas's resolution
    renderer = fig.canvas.get_renderer()
    cmap_ax, cax, outlines_ax = fig.axes[2], fig.axes[4], fig.axes[3]
    box, bar = cmap_ax.get_position(), cax.get_position(original=True)  # with its extend triangle
    assert box.height < 0.5 * cmap_ax.get_position(original=True).height  # the wide map is drawn low
    assert (bar.y0, bar.height) == pytest.approx((box.y0, box.height))
    (label,) = [t for t in cax.texts if t.get_text() == "threshold"]
    mark, name = label.get_window_extent(renderer), cax.yaxis.label.get_window_extent(renderer)
    assert mark.x0 > cax.get_window_extent(renderer).x1 - 1  # right of the bar ...
    assert mark.x1 < name.x0 and name.x1 < outlines_ax.get_window_extent(renderer).x0  # ... and in order
    assert fig.get_layout_engine() is None  # fixed places: drawn once per image, not laid out


def test_plot_overlay_empty_masks_no_warnings(tmp_path, rng, recwarn):
    img = make_image("hw", rng)
    empty = np.zeros((H, W), dtype=bool)
    out = viz.plot_overlay(
        img,
        img,
        np.zeros((H, W), np.float32),
        empty,
        tmp_path / "overlay.png",
        gt_mask=empty,
        verdict=False,
        score=0.0,
        method="l2",
    )
    check_png(out)
    assert not [w for w in recwarn if "contour" in str(w.message).lower()]


def test_plot_overlay_rejects_mismatched_mask(tmp_path, rng):
    img = make_image("hw", rng)
    with pytest.raises(ValueError):
        viz.plot_overlay(img, img, np.zeros((H, W), np.float32), np.zeros((3, 3), bool), tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_bad_image_shape_and_method_raise(tmp_path, rng):
    res = np.zeros((H, W), np.float32)
    with pytest.raises(ValueError):
        viz.plot_sample(np.zeros((H, W, 2)), np.zeros((H, W)), res, tmp_path / "x.png")
    with pytest.raises(ValueError):
        viz.plot_sample(np.zeros((H, W)), np.zeros((H, W)), res, tmp_path / "y.png", method="mse")


# --------------------------------------------------------------------------- evaluation curves


def test_plot_roc_curves(tmp_path):
    x = np.linspace(0, 1, 50)
    curves = {"image": (x, x**0.3, 0.87), "pixel": (x, x**0.1, 0.95), "unknown": (x, x, float("nan"))}
    out = tmp_path / "e" / "roc.png"
    assert viz.plot_roc_curves(curves, out, title="ROC bottle") == out
    check_png(out)


def test_plot_pro_curve(tmp_path):
    f = np.linspace(0, 1, 100)
    p = 1 - np.exp(-f / 0.1)
    out = tmp_path / "e" / "pro.png"
    assert viz.plot_pro_curve(f, p, 0.62, out) == out
    check_png(out)


def test_plot_pro_curve_short_curve(tmp_path):
    # curve that never reaches the FPR limit, unsorted input
    check_png(viz.plot_pro_curve([0.1, 0.0, 0.05], [0.5, 0.0, 0.3], 0.4, tmp_path / "pro.png", fpr_limit=0.3))


def test_long_curves_are_decimated_to_the_same_line(tmp_path):
    # A pixel PRO curve has millions of points; the drawn line keeps a few thousand that
    # stay within a thousandth of the axes of the full curve (ends and corners kept).
    rng = np.random.default_rng(0)
    f = np.concatenate(([0.0], np.sort(rng.random(400_000)), [1.0]))
    p = np.minimum(1.0, np.sqrt(f) + 0.02 * (f > 0.25))  # with a jump at 0.25
    fd, pd_ = viz._decimate(f, p)
    assert len(fd) <= viz.CURVE_POINTS + 2 and (fd[0], pd_[0], fd[-1], pd_[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fd) >= 0)
    assert np.max(np.abs(np.interp(f, fd, pd_) - p)) < 2e-3
    zoom_f, zoom_p = viz._decimate(f[f <= 0.3], p[f <= 0.3], x_span=0.3)
    assert np.max(np.abs(np.interp(f[f <= 0.3], zoom_f, zoom_p) - p[f <= 0.3])) < 2e-3
    short = np.linspace(0, 1, 10)
    assert len(viz._decimate(short, short)[0]) == 10  # short curves untouched
    check_png(viz.plot_pro_curve(f, p, 0.5, tmp_path / "long.png"))


def test_long_curves_that_do_not_rise_are_decimated_along_their_length():
    # Not monotone (a y that falls back): points at even steps of the drawn length instead.
    t = np.linspace(0.0, 1.0, 200_001)
    x, y = t, 0.5 + 0.4 * np.sin(12 * np.pi * t)
    xd, yd = viz._decimate(x, y)
    assert len(xd) <= viz.CURVE_POINTS + 2 and (xd[0], xd[-1]) == (0.0, 1.0)
    assert np.max(np.abs(np.interp(x, xd, yd) - y)) < 3e-3  # chords of a bending curve


# --------------------------------------------------------------------------- masks


@pytest.mark.parametrize("shape", [(H, W), (H, W, 1)])
def test_save_mask_png_round_trip(tmp_path, rng, shape):
    mask = rng.random(shape) > 0.6
    out = tmp_path / "m" / "mask.png"
    assert viz.save_mask_png(mask, out) == out
    with Image.open(out) as im:
        assert im.format == "PNG"
        assert im.mode == "L"
        arr = np.asarray(im)
    assert arr.dtype == np.uint8
    assert arr.shape == (H, W)
    assert set(np.unique(arr)) <= {0, 255}
    np.testing.assert_array_equal(arr == 255, mask.reshape(H, W))
    assert plt.get_fignums() == []


def test_save_mask_png_all_false(tmp_path):
    out = viz.save_mask_png(np.zeros((4, 5), bool), tmp_path / "z.png")
    with Image.open(out) as im:
        assert np.asarray(im).max() == 0


# --------------------------------------------------------------------------- what is drawn


@pytest.fixture
def drawn(monkeypatch):
    """The figures the plot functions save, kept open for inspection (closed afterwards)."""
    figures = []

    def keep(fig, path, crop=None):
        figures.append(fig)
        fig.savefig(path, dpi=20)
        return path

    monkeypatch.setattr(viz, "save_figure", keep)
    yield figures
    for fig in figures:
        plt.close(fig)


def _line(ax, label_start):
    return next(line for line in ax.get_lines() if str(line.get_label()).startswith(label_start))


def test_loss_curve_draws_the_epochs_from_one_and_marks_the_best(tmp_path, drawn):
    history = pd.DataFrame({"epoch": [0, 1, 2, 3], "loss": [0.9, 0.6, 0.5, 0.45], "val_loss": [0.8, 0.55, 0.6, 0.7]})
    viz.plot_loss_curve(history, tmp_path / "l.png")
    (ax,) = drawn[0].axes
    train = _line(ax, "training loss")
    np.testing.assert_array_equal(train.get_xdata(), [1, 2, 3, 4])
    np.testing.assert_allclose(train.get_ydata(), history["loss"])
    np.testing.assert_allclose(_line(ax, "validation loss").get_ydata(), history["val_loss"])
    best = _line(ax, "best validation")
    assert list(best.get_xdata()) == [2] and list(best.get_ydata()) == [0.55]
    assert best.get_label() == "best validation: epoch 2, loss 0.55"
    assert ax.get_title() == "Loss per epoch (4 epochs)"


def test_threshold_search_marks_the_chosen_threshold_and_min_area(tmp_path, drawn, thresholds):
    areas = np.linspace(400, 0, thresholds.size)
    viz.plot_threshold_search(thresholds, areas, 0.3, 20, tmp_path / "t.png")
    (ax,) = drawn[0].axes
    curve = _line(ax, "largest region")
    np.testing.assert_allclose(curve.get_xdata(), thresholds)
    np.testing.assert_allclose(curve.get_ydata(), areas)
    chosen = _line(ax, "chosen threshold")
    assert list(chosen.get_xdata()) == [0.3, 0.3] and chosen.get_label() == "chosen threshold = 0.3"
    assert list(_line(ax, "min_area").get_ydata()) == [20, 20]
    point = [line for line in ax.get_lines() if line.get_marker() == "o" and len(line.get_xdata()) == 1][0]
    assert point.get_xdata()[0] == 0.3 and point.get_ydata()[0] == pytest.approx(np.interp(0.3, thresholds, areas))


def test_regions_vs_threshold_draws_the_counts_sorted(tmp_path, drawn):
    viz.plot_regions_vs_threshold([0.3, 0.1, 0.2], [1, 9, 4], tmp_path / "r.png", method="l2")
    (ax,) = drawn[0].axes
    (line,) = ax.get_lines()
    np.testing.assert_allclose(line.get_xdata(), [0.1, 0.2, 0.3])
    np.testing.assert_allclose(line.get_ydata(), [9, 4, 1])
    assert "l2" in ax.get_title().lower() or "squared" in ax.get_title().lower() or "L2" in ax.get_title()


def test_roc_curves_draw_each_curve_with_its_auc(tmp_path, drawn):
    fpr, tpr = np.array([0.0, 0.2, 1.0]), np.array([0.0, 0.7, 1.0])
    viz.plot_roc_curves(
        {"image": (fpr, tpr, 0.8125), "pixel": (tpr * 0, tpr, None)}, tmp_path / "roc.png", title="ROC x"
    )
    (ax,) = drawn[0].axes
    image = _line(ax, "image")
    np.testing.assert_allclose(image.get_xdata(), fpr)
    np.testing.assert_allclose(image.get_ydata(), tpr)
    assert image.get_label() == "image (AUC = 0.812)" and _line(ax, "pixel").get_label() == "pixel (AUC = n/a)"
    assert list(_line(ax, "chance").get_xdata()) == [0, 1] and ax.get_title() == "ROC x"


def test_pro_curve_draws_the_curve_the_limit_and_the_area(tmp_path, drawn):
    fprs, pros = np.array([0.0, 0.1, 0.3, 1.0]), np.array([0.0, 0.5, 0.8, 1.0])
    viz.plot_pro_curve(fprs, pros, 0.4567, tmp_path / "pro.png", fpr_limit=0.3)
    full, zoom = drawn[0].axes[:2]
    curve = _line(full, "PRO curve")
    np.testing.assert_allclose(curve.get_xdata(), fprs)
    np.testing.assert_allclose(curve.get_ydata(), pros)
    assert list(_line(full, "FPR limit").get_xdata()) == [0.3, 0.3]
    labels = [t.get_text() for t in full.get_legend().get_texts()]
    assert "AU-PRO (FPR ≤ 0.3) = 0.457" in labels
    shaded = full.collections[0].get_paths()[0].vertices
    assert shaded[:, 0].max() == pytest.approx(0.3)  # the area is shaded up to the limit only
    assert zoom.get_xlim()[1] == pytest.approx(0.306) and zoom.get_title() == "zoom: FPR ≤ 0.3"


def test_overlay_shows_the_images_the_verdict_and_the_outlines(tmp_path, drawn, rng):
    image, recon = make_image("hw", rng), make_image("hw", rng)
    pred, gt = blob_mask(5, 12, 6, 15), blob_mask(20, 25, 20, 30)
    viz.plot_overlay(
        image,
        recon,
        make_image("hw", rng),
        pred,
        tmp_path / "o.png",
        gt_mask=gt,
        title="hole/000.png",
        verdict=True,
        score=0.123456,
    )
    fig = drawn[0]
    axes = fig.axes
    np.testing.assert_allclose(axes[0].images[0].get_array(), image)
    np.testing.assert_allclose(axes[1].images[0].get_array(), recon)
    text = fig._suptitle.get_text()
    assert "hole/000.png" in text and "verdict: DEFECTIVE" in text and "score: 0.1235" in text
    labels = [t.get_text() for t in axes[3].get_legend().get_texts()]
    assert labels == ["predicted defect", "ground truth"]
    assert len(axes[3].collections) + len(axes[3].get_lines()) >= 2  # both outlines are drawn
