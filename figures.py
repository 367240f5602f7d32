"""Every figure of the suite: layout, colours and saving live here and nowhere else.

``visualize.py`` is the command line on top of these; the modules that draw (training,
validation, finetuning, evaluation) import this one, which imports nothing of the suite but
``methods`` (the map methods' labels) and nothing above NumPy, matplotlib, Pillow and
scikit-image (no TensorFlow/Keras).

All plotting functions take the output ``path`` as their last positional argument,
write a PNG (or whatever the suffix says) through :func:`save_figure`, close the
figure and return the path they wrote. Nothing is ever shown on screen: the
non-interactive ``Agg`` backend is selected at import.

Conventions of the data passed in:

* images are float arrays in [0, 1], shaped HxW or HxWx1 (grayscale) or HxWx3 (RGB);
* residual maps are float HxW: SSIM residual ``1 - SSIM`` in [0, 2], L2 residual in [0, 1];
* masks are bool HxW (True = defect);
* ``method`` is a map method's name (methods.py, any case) and picks the residual's colour range and
  labels (:class:`methods.Method`'s ``label``, ``residual_label``, ``colorbar_label``, ``colour_range``).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Mapping

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (after matplotlib.use)
import numpy as np  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from numpy.typing import ArrayLike  # noqa: E402

import methods  # noqa: E402

PathLike = str | os.PathLike

DPI = 150
"""Resolution of every saved figure (dots per inch)."""

RESIDUAL_CMAP = "inferno"
"""Colormap of residual heat maps (perceptually uniform, dark = no difference)."""

PRED_COLOR = "red"
"""Outline colour of predicted defects."""

GT_COLOR = "lime"
"""Outline colour of ground-truth defects (green that stays visible on dark images)."""

TRAIN_COLOR = "tab:blue"
VAL_COLOR = "tab:orange"
ACCENT_COLOR = "tab:red"

_STYLE = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "figure.titlesize": 13,
    "figure.titleweight": "bold",
    "axes.grid": False,
    "grid.alpha": 0.3,
    "savefig.facecolor": "white",
    "figure.facecolor": "white",
}

# --------------------------------------------------------------------------- helpers


def _method(method):
    return methods.get(str(method).lower())


def _styled(func):
    """Run a plotting function inside the module's style; never leak a figure on error."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        before = set(plt.get_fignums())
        try:
            with plt.rc_context(_STYLE):
                return func(*args, **kwargs)
        except BaseException:
            for num in set(plt.get_fignums()) - before:
                plt.close(num)
            raise

    return wrapper


def save_figure(fig: matplotlib.figure.Figure, path: PathLike, crop: bool | None = None) -> PathLike:
    """Save ``fig`` to ``path`` (parent folders created), close it and return ``path``. ``crop``:
    trim the canvas to what is drawn; by default only for a figure without a layout engine."""
    parent = os.path.dirname(os.fspath(path))
    if parent:
        os.makedirs(parent, exist_ok=True)
    if crop is None:
        # A figure laid out by its engine fits its canvas already; the "tight" crop would lay
        # it out a second time (0.1-0.2 s a figure).
        crop = fig.get_layout_engine() is None
    try:
        fig.savefig(path, dpi=DPI, bbox_inches="tight" if crop else None)
    finally:
        plt.close(fig)
    return path


def _display_image(image):
    """Return (array, imshow kwargs) for an HxW, HxWx1 or HxWx3 image in [0, 1]."""
    arr = np.asarray(image)
    if np.issubdtype(arr.dtype, np.integer):
        arr = arr.astype(np.float32) / 255.0
    arr = arr.astype(np.float32, copy=False)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        return np.clip(arr, 0.0, 1.0), {"cmap": "gray", "vmin": 0.0, "vmax": 1.0}
    if arr.ndim == 3 and arr.shape[-1] == 3:
        return np.clip(arr, 0.0, 1.0), {}
    raise ValueError(f"image must be HxW, HxWx1 or HxWx3, got shape {np.shape(image)}")


def _as_2d(array, what):
    arr = np.asarray(array)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise ValueError(f"{what} must be HxW, got shape {np.shape(array)}")
    return arr


def _residual_range(resmap, method):
    """Colour range of a residual map: the method's fixed one (SSIM 0..1, clipped), else 0..max of the map."""
    fixed = _method(method).colour_range
    if fixed is not None:
        return fixed
    finite = resmap[np.isfinite(resmap)]
    vmax = float(finite.max()) if finite.size else 0.0
    return 0.0, (vmax if vmax > 0 else 1.0)


def _hide_ticks(ax):
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _show_image(ax, image, title):
    arr, kwargs = _display_image(image)
    ax.imshow(arr, interpolation="nearest", **kwargs)
    ax.set_title(title)
    _hide_ticks(ax)
    return arr


def _show_residual(fig, ax, resmap, method, title=None, threshold=None, cax=None):
    """The map with its colour bar (in ``cax`` if given, else beside ``ax``); with ``threshold``,
    one scale for every image of a run (0 to twice the threshold) and the threshold marked on
    the bar."""
    info = _method(method)
    res = _as_2d(resmap, "resmap").astype(np.float32, copy=False)
    vmin, vmax = _residual_range(res, method) if threshold is None else (0.0, 2.0 * float(threshold) or 1.0)
    im = ax.imshow(res, cmap=RESIDUAL_CMAP, vmin=vmin, vmax=vmax, interpolation="nearest")
    finite = res[np.isfinite(res)]
    peak = float(finite.max()) if finite.size else float("nan")
    ax.set_title(title or f"{info.residual_label} map\n(max {peak:.3g})")
    _hide_ticks(ax)
    extend = "max" if finite.size and peak > vmax else "neither"
    if cax is None:
        cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03, extend=extend)
    else:
        cbar = fig.colorbar(im, cax=cax, extend=extend)
    if threshold is not None:
        cbar.ax.axhline(float(threshold), color=PRED_COLOR, linewidth=2)
        cbar.ax.text(
            1.2,
            float(threshold),
            "threshold",
            transform=cbar.ax.get_yaxis_transform(),
            va="center",
            color=PRED_COLOR,
            fontsize="small",
            bbox={"facecolor": "white", "edgecolor": "none", "pad": 1},
        )
    # Clear of the threshold's label (drawn over the tick labels), which it used to cover.
    cbar.set_label(info.colorbar_label, labelpad=None if threshold is None else 26)
    return res


def _show_mask(ax, mask, title):
    m = _as_2d(mask, "mask").astype(bool)
    ax.imshow(m, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    n = int(m.sum())
    ax.set_title(f"{title}\n{n} px ({100.0 * n / max(m.size, 1):.2g}% of image)")
    _hide_ticks(ax)
    return m


def _mask_outlines(mask):
    """Outline polylines (row, col) of a bool mask, closed also where it touches the border."""
    from skimage.measure import find_contours

    m = np.pad(_as_2d(mask, "mask").astype(float), 1)
    if not m.any():
        return []
    return [c - 1.0 for c in find_contours(m, 0.5)]


def _draw_outline(ax, mask, color):
    """Every region's outline as one collection (one artist, however many regions)."""
    outlines = [c[:, ::-1] for c in _mask_outlines(mask)]  # (row, col) -> (x, y)
    if outlines:
        ax.add_collection(LineCollection(outlines, colors=color, linewidths=1.5), autolim=False)


def _image_size_label(image):
    shape = np.shape(image)
    return f"{shape[1]}×{shape[0]} px"


def _suptitle(fig, *parts):
    text = " — ".join(str(p) for p in parts if p not in (None, ""))
    if text:
        fig.suptitle(text)


def _sorted_xy(x, *ys):
    x = np.asarray(x, dtype=float).ravel()
    # Curves usually arrive sorted (a PRO curve has millions of points): skip the argsort then.
    order = slice(None) if np.all(x[1:] >= x[:-1]) else np.argsort(x, kind="stable")
    out = [x[order]]
    for y in ys:
        y = np.asarray(y, dtype=float).ravel()
        if y.shape != x.shape:
            raise ValueError(f"length mismatch: {x.size} thresholds but {y.size} values")
        out.append(y[order])
    return out


def _spans_decades(values, decades=1.0):
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    if v.size < 2:
        return False
    return math.log10(v.max() / v.min()) > decades


def _count_scale(ax, values, extra=()):
    """Log y for counts/areas spanning more than a decade; symlog when zeros are present."""
    allv = np.concatenate([np.asarray(values, dtype=float).ravel(), np.asarray(extra, dtype=float).ravel()])
    allv = allv[np.isfinite(allv)]
    if not _spans_decades(allv):
        return
    if np.any(allv <= 0):
        ax.set_yscale("symlog", linthresh=1.0)
        ax.set_ylim(bottom=0)
    else:
        ax.set_yscale("log")


def _threshold_label(method):
    return f"threshold on {_method(method).residual_label}"


def _n_regions(n):
    return f"{n} region" + ("" if n == 1 else "s")


def _verdict_text(verdict):
    if verdict is None:
        return None
    if isinstance(verdict, (bool, np.bool_)):
        return "verdict: " + ("DEFECTIVE" if verdict else "good")
    return f"verdict: {verdict}"


# --------------------------------------------------------------------------- training


@_styled
def plot_loss_curve(history, path: PathLike, title: str | None = None) -> PathLike:
    """Training and validation loss per epoch, best validation epoch marked.

    ``history`` is a DataFrame with ``epoch``, ``loss``, ``val_loss`` and optionally
    ``learning_rate`` (drawn in a small panel underneath). Epochs are shown counted from 1:
    a 0-based ``epoch`` column (as Keras' CSVLogger writes it) is shifted by one, so the
    plot agrees with the 1-based ``best_epoch`` reported elsewhere.
    """
    if "loss" not in history.columns:
        raise ValueError("history needs a 'loss' column")
    epochs = (
        history["epoch"].to_numpy(dtype=float)
        if "epoch" in history.columns
        else np.arange(1, len(history) + 1, dtype=float)
    )
    if epochs.size and np.nanmin(epochs) == 0:
        epochs = epochs + 1
    loss = history["loss"].to_numpy(dtype=float)
    val = history["val_loss"].to_numpy(dtype=float) if "val_loss" in history.columns else None
    lr = None
    if "learning_rate" in history.columns:
        lr = history["learning_rate"].to_numpy(dtype=float)
        if not np.isfinite(lr).any():
            lr = None

    if lr is not None:
        fig, (ax, ax_lr) = plt.subplots(
            2, 1, figsize=(8, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}, layout="constrained"
        )
    else:
        fig, ax = plt.subplots(figsize=(8, 4.8), layout="constrained")
        ax_lr = None

    marker = "o" if len(epochs) <= 30 else None
    ax.plot(epochs, loss, color=TRAIN_COLOR, marker=marker, markersize=3, label="training loss")
    curves = [loss]
    if val is not None:
        ax.plot(epochs, val, color=VAL_COLOR, marker=marker, markersize=3, label="validation loss")
        curves.append(val)
        if np.isfinite(val).any():
            best = int(np.nanargmin(val))
            bx, by = epochs[best], val[best]
            ax.plot(
                [bx],
                [by],
                marker="*",
                markersize=16,
                color=ACCENT_COLOR,
                markeredgecolor="black",
                linestyle="none",
                label=f"best validation: epoch {bx:g}, loss {by:.4g}",
                zorder=5,
            )
            right = bx > epochs.min() + 0.7 * (epochs.max() - epochs.min())
            # put the note above the star unless the star sits in the upper half
            finite = np.concatenate([c[np.isfinite(c)] for c in (loss, val)])
            lo, hi = finite.min(), finite.max()
            if _spans_decades(finite) and lo > 0:
                lo, hi, yb = np.log10(lo), np.log10(hi), np.log10(by)
            else:
                yb = by
            upper = hi > lo and (yb - lo) / (hi - lo) > 0.5
            ax.annotate(
                f"best epoch {bx:g}\nval loss {by:.4g}",
                xy=(bx, by),
                xytext=(-20 if right else 20, -45 if upper else 35),
                textcoords="offset points",
                ha="right" if right else "left",
                va="top" if upper else "bottom",
                fontsize=9,
                bbox={"boxstyle": "round", "fc": "white", "ec": "0.6"},
                arrowprops={"arrowstyle": "->", "color": "0.3"},
            )
    if _spans_decades(np.concatenate(curves)):
        ax.set_yscale("log")
        ax.set_ylabel("loss (log scale)")
    else:
        ax.set_ylabel("loss")
    ax.grid(True, which="both")
    ax.legend(loc="best")
    ax.set_title(f"Loss per epoch ({len(epochs)} epochs)")
    if ax_lr is not None:
        ax_lr.plot(epochs, lr, color="tab:green", drawstyle="steps-mid")
        if _spans_decades(lr, decades=0.5):
            ax_lr.set_yscale("log")
        ax_lr.set_ylabel("learning rate")
        ax_lr.grid(True, which="both")
        ax_lr.set_xlabel("epoch (counted from 1)")
    else:
        ax.set_xlabel("epoch (counted from 1)")
    if len(epochs) <= 20:
        (ax_lr or ax).xaxis.get_major_locator().set_params(integer=True)
    _suptitle(fig, title)
    return save_figure(fig, path)


# --------------------------------------------------------------------------- threshold search


@_styled
def plot_threshold_search(
    thresholds: ArrayLike,
    largest_areas: ArrayLike,
    threshold: float,
    min_area: float,
    path: PathLike,
    method: str = "ssim",
) -> PathLike:
    """Largest defect region over all validation images vs threshold, chosen threshold marked."""
    info = _method(method)
    t, a = _sorted_xy(thresholds, largest_areas)
    fig, ax = plt.subplots(figsize=(8, 4.8), layout="constrained")
    ax.plot(
        t,
        a,
        color=TRAIN_COLOR,
        marker="o" if t.size <= 40 else None,
        markersize=3,
        label="largest region (all validation images)",
    )
    ax.axhline(min_area, color="0.3", linestyle="--", label=f"min_area = {min_area:g} px")
    ax.axvline(threshold, color=ACCENT_COLOR, linestyle=":", label=f"chosen threshold = {threshold:.4g}")
    if t.size:
        at = float(np.interp(threshold, t, a))
        ax.plot(
            [threshold],
            [at],
            marker="o",
            markersize=9,
            color=ACCENT_COLOR,
            markeredgecolor="black",
            linestyle="none",
            zorder=5,
        )
    finite = a[np.isfinite(a)]
    if np.any(finite <= 0) or min_area <= 0:
        ax.set_yscale("symlog", linthresh=1.0)
        ax.set_ylim(bottom=0)
        ax.set_ylabel("largest region area (px, symlog scale)")
    else:
        ax.set_yscale("log")
        ax.set_ylabel("largest region area (px, log scale)")
    ax.set_xlabel(_threshold_label(method))
    ax.set_title(
        f"Threshold search ({info.label}): smallest threshold whose largest region stays below min_area", fontsize=10
    )
    ax.grid(True, which="both")
    ax.legend(loc="upper right")
    return save_figure(fig, path)


@_styled
def plot_regions_vs_threshold(
    thresholds: ArrayLike, n_regions: ArrayLike, path: PathLike, method: str = "ssim"
) -> PathLike:
    """Total number of defect regions on the validation images vs threshold."""
    info = _method(method)
    t, n = _sorted_xy(thresholds, n_regions)
    fig, ax = plt.subplots(figsize=(8, 4.8), layout="constrained")
    ax.plot(t, n, color=TRAIN_COLOR, marker="o" if t.size <= 40 else None, markersize=3)
    _count_scale(ax, n)
    scale = {"log": ", log scale", "symlog": ", symlog scale"}.get(ax.get_yscale(), "")
    ax.set_ylabel(f"number of regions (validation images{scale})")
    ax.set_xlabel(_threshold_label(method))
    ax.set_title(f"Defect regions on validation images vs threshold ({info.label})")
    ax.grid(True, which="both")
    return save_figure(fig, path)


@_styled
def plot_area_stats_vs_threshold(
    thresholds: ArrayLike, mean_area: ArrayLike, std_area: ArrayLike, path: PathLike, method: str = "ssim"
) -> PathLike:
    """Mean region area with a ±1 standard-deviation band vs threshold."""
    info = _method(method)
    t, m, s = _sorted_xy(thresholds, mean_area, std_area)
    fig, ax = plt.subplots(figsize=(8, 4.8), layout="constrained")
    ax.fill_between(t, np.maximum(m - s, 0.0), m + s, color=TRAIN_COLOR, alpha=0.25, label="± 1 standard deviation")
    ax.plot(t, m, color=TRAIN_COLOR, marker="o" if t.size <= 40 else None, markersize=3, label="mean region area")
    empty = ~np.isfinite(m)
    if empty.any():
        ax.plot(
            t[empty],
            np.zeros(int(empty.sum())),
            linestyle="none",
            marker="x",
            color="0.45",
            clip_on=False,
            label="no regions at this threshold",
        )
    if t.size:
        pad = 0.02 * (t.max() - t.min() or 1.0)
        ax.set_xlim(t.min() - pad, t.max() + pad)
    ax.set_ylim(bottom=0)
    ax.set_xlabel(_threshold_label(method))
    ax.set_ylabel("region area (px)")
    ax.set_title(f"Region area on validation images vs threshold ({info.label})")
    ax.grid(True)
    ax.legend(loc="upper right")
    return save_figure(fig, path)


MAX_OVERLAID = 12
"""At most this many thresholds are overlaid in :func:`plot_area_distributions`."""


def _area_bins(max_area, target=150):
    """Integer-aligned bin edges covering 0..max_area, at most about ``target`` bins."""
    max_area = max(int(math.ceil(max_area)), 1)
    width = max(1, int(math.ceil((max_area + 1) / target)))
    return np.arange(0, max_area + width + 1, width) - 0.5, width


@_styled
def plot_area_distribution(
    areas: ArrayLike, max_area: float, path: PathLike, threshold: float = 0.0, method: str = "ssim"
) -> PathLike:
    """Histogram of region areas (px) at one threshold, x from 0 to ``max_area``."""
    info = _method(method)
    areas = np.asarray(areas, dtype=float).ravel()
    bins, width = _area_bins(max_area)
    shown = areas[areas <= max_area]
    hidden = int(areas.size - shown.size)
    fig, ax = plt.subplots(figsize=(8, 4.8), layout="constrained")
    if areas.size:
        counts, _, _ = ax.hist(shown, bins=bins, color=TRAIN_COLOR, edgecolor="none", label=_n_regions(areas.size))
        if hidden:
            ax.plot([], [], " ", label=f"{_n_regions(hidden)} > {max_area:g} px not shown")
        if np.percentile(areas, 50) <= max_area:
            med = float(np.median(areas))
            ax.axvline(med, color=ACCENT_COLOR, linestyle="--", label=f"median = {med:g} px")
        if _spans_decades(counts, decades=2):
            ax.set_yscale("log")
        ax.legend(loc="upper right")
    else:
        ax.text(
            0.5,
            0.5,
            "no regions at this threshold",
            transform=ax.transAxes,
            ha="center",
            va="center",
            fontsize=12,
            color="0.4",
        )
    ax.set_xlim(-0.5, max_area + 0.5)
    ax.set_xlabel("region area (px)" + (f", bins of {width} px" if width > 1 else ""))
    ax.set_ylabel("number of regions" + (" (log scale)" if ax.get_yscale() == "log" else ""))
    ax.set_title(f"Region areas on validation images at threshold {threshold:.4g} ({info.label})")
    ax.grid(True, axis="y", which="both")
    return save_figure(fig, path)


@_styled
def plot_area_distributions(
    areas_by_threshold: Mapping[float, ArrayLike], max_area: float, path: PathLike, method: str = "ssim"
) -> PathLike:
    """Region-area histograms at several thresholds, overlaid as coloured step lines.

    Colour runs from dark (low threshold) to yellow (high). With more than
    ``MAX_OVERLAID`` thresholds, that many evenly spaced ones are drawn (said in the title).
    """
    info = _method(method)
    items = sorted((float(k), np.asarray(v, dtype=float).ravel()) for k, v in dict(areas_by_threshold).items())
    n_given = len(items)
    if n_given > MAX_OVERLAID:
        pick = np.unique(np.round(np.linspace(0, n_given - 1, MAX_OVERLAID)).astype(int))
        items = [items[i] for i in pick]
    bins, width = _area_bins(max_area, target=50)
    fig, ax = plt.subplots(figsize=(9, 5), layout="constrained")
    if not items:
        ax.text(
            0.5, 0.5, "no thresholds given", transform=ax.transAxes, ha="center", va="center", fontsize=12, color="0.4"
        )
    ts = np.array([k for k, _ in items])
    norm = Normalize(
        vmin=ts.min() if ts.size else 0.0,
        vmax=ts.max() if ts.size and ts.max() > ts.min() else (ts.min() + 1 if ts.size else 1.0),
    )
    cmap = plt.get_cmap("viridis")
    all_counts = []
    for t, areas in items:
        color = cmap(norm(t))
        shown = areas[areas <= max_area]
        label = f"t = {t:.4g}  ({_n_regions(areas.size)})"
        if shown.size:
            counts, _, _ = ax.hist(shown, bins=bins, histtype="step", linewidth=1.6, color=color, label=label)
            all_counts.append(counts)
        else:
            ax.plot([], [], color=color, label=label + " — none shown")
    if all_counts and _spans_decades(np.concatenate(all_counts), decades=2):
        ax.set_yscale("log")
    if items:
        ax.legend(loc="upper right", title=_threshold_label(method))
    ax.set_xlim(-0.5, max_area + 0.5)
    ax.set_xlabel("region area (px)" + (f", bins of {width} px" if width > 1 else ""))
    ax.set_ylabel("number of regions" + (" (log scale)" if ax.get_yscale() == "log" else ""))
    shown_note = f", {len(items)} of {n_given} thresholds shown" if n_given > len(items) else ""
    ax.set_title(f"Region areas on validation images at several thresholds ({info.label}{shown_note})")
    ax.grid(True, axis="y", which="both")
    return save_figure(fig, path)


# --------------------------------------------------------------------------- single images


@_styled
def plot_sample(
    image: ArrayLike,
    reconstruction: ArrayLike,
    resmap: ArrayLike,
    path: PathLike,
    title: str | None = None,
    method: str = "ssim",
) -> PathLike:
    """Input, reconstruction and residual heat map side by side."""
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4), layout="constrained")
    _show_image(axes[0], image, f"input ({_image_size_label(image)})")
    _show_image(axes[1], reconstruction, "reconstruction")
    _show_residual(fig, axes[2], resmap, method)
    _suptitle(fig, title)
    return save_figure(fig, path)


@_styled
def plot_stages(
    image: ArrayLike,
    reconstruction: ArrayLike,
    resmap: ArrayLike,
    mask: ArrayLike,
    path: PathLike,
    gt_mask: ArrayLike | None = None,
    threshold: float | None = None,
    min_area: float | None = None,
    title: str | None = None,
    method: str = "ssim",
) -> PathLike:
    """One row: input → reconstruction → residual map → thresholded mask (→ ground truth)."""
    info = _method(method)
    n = 5 if gt_mask is not None else 4
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n + 0.6, 4.4), layout="constrained")
    _show_image(axes[0], image, f"1. input ({_image_size_label(image)})")
    _show_image(axes[1], reconstruction, "2. reconstruction")
    res = _as_2d(resmap, "resmap")
    finite = res[np.isfinite(res)]
    peak = float(finite.max()) if finite.size else float("nan")
    _show_residual(fig, axes[2], resmap, method, title=f"3. {info.residual_label} map\n(max {peak:.3g})")
    rule = []
    if threshold is not None:
        rule.append(f"residual > {threshold:.4g}")
    if min_area is not None:
        rule.append(f"regions ≥ {min_area:g} px")
    mask_title = "4. predicted defects" + (f"\n{', '.join(rule)}" if rule else "")
    _show_mask(axes[3], mask, mask_title)
    if gt_mask is not None:
        _show_mask(axes[4], gt_mask, "5. ground truth")
    _suptitle(fig, title)
    return save_figure(fig, path)


@_styled
def plot_overlay(
    image: ArrayLike,
    reconstruction: ArrayLike,
    resmap: ArrayLike,
    pred_mask: ArrayLike,
    path: PathLike,
    gt_mask: ArrayLike | None = None,
    title: str | None = None,
    method: str = "ssim",
    verdict: bool | str | None = None,
    score: float | None = None,
    threshold: float | None = None,
) -> PathLike:
    """Input, reconstruction, residual map and the input with defect outlines drawn on it.

    Predicted defects are outlined in red, ground-truth defects (if ``gt_mask``) in green.
    With ``threshold`` the map's colours run from 0 to twice the threshold, the same for every
    image of a run, and the threshold is marked on the colour bar.
    """
    fig, axes, cax = _overlay_axes()
    _show_image(axes[0], image, f"input ({_image_size_label(image)})")
    _show_image(axes[1], reconstruction, "reconstruction")
    _show_residual(fig, axes[2], resmap, method, threshold=threshold, cax=cax)
    axes[2].apply_aspect()  # the bar as tall as the map drawn (a wide image's is lower than its axes)
    box, bar = axes[2].get_position(), cax.get_position()
    cax.set_position((bar.x0, box.y0, bar.width, box.height))
    arr = _show_image(axes[3], image, "input with defect outlines")
    pred = _as_2d(pred_mask, "pred_mask").astype(bool)
    if pred.shape != arr.shape[:2]:
        raise ValueError(f"pred_mask shape {pred.shape} does not match image {arr.shape[:2]}")
    handles = []
    if gt_mask is not None:
        gt = _as_2d(gt_mask, "gt_mask").astype(bool)
        if gt.shape != arr.shape[:2]:
            raise ValueError(f"gt_mask shape {gt.shape} does not match image {arr.shape[:2]}")
        _draw_outline(axes[3], gt, GT_COLOR)
        handles.append(
            Line2D([], [], color=GT_COLOR, linewidth=2, label="ground truth" + ("" if gt.any() else " (none)"))
        )
    _draw_outline(axes[3], pred, PRED_COLOR)
    handles.insert(
        0, Line2D([], [], color=PRED_COLOR, linewidth=2, label="predicted defect" + ("" if pred.any() else " (none)"))
    )
    axes[3].set_xlim(-0.5, arr.shape[1] - 0.5)
    axes[3].set_ylim(arr.shape[0] - 0.5, -0.5)
    axes[3].legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.02),
        ncol=len(handles),
        frameon=False,
        handlelength=1.5,
    )
    score_text = None if score is None else f"score: {float(score):.4g}" + (" (> 1: defective)" if threshold else "")
    _suptitle(fig, title, _verdict_text(verdict), score_text)
    return save_figure(fig, path, crop=False)


# The overlay's panels at fixed places (inches): drawn for every test image, a layout engine
# or the "tight" crop would lay each one out again (0.85 s an overlay at 150 dpi, 0.5 s fixed).
_OVERLAY_SIZE = (15.5, 4.6)
_OVERLAY_PANEL = (3.4, 3.45)  # width, height; bottom 0.45 in (the legend), titles and suptitle above
_OVERLAY_LEFT = (0.1, 3.65, 7.2, 12.0)  # the colour bar and its labels take 10.7-11.9
_OVERLAY_BAR = (10.72, 0.16)  # left, width


def _overlay_axes():
    """A new overlay figure: its four image axes and the colour bar's axes, at fixed places."""
    fig = plt.figure(figsize=_OVERLAY_SIZE)
    w_in, h_in = _OVERLAY_SIZE
    (w, h), bottom = _OVERLAY_PANEL, 0.45
    axes = [fig.add_axes((left / w_in, bottom / h_in, w / w_in, h / h_in)) for left in _OVERLAY_LEFT]
    cax = fig.add_axes((_OVERLAY_BAR[0] / w_in, bottom / h_in, _OVERLAY_BAR[1] / w_in, h / h_in))
    return fig, axes, cax


# --------------------------------------------------------------------------- evaluation curves

CURVE_POINTS = 3000  # a curve is drawn with about this many points (a pixel PRO curve has millions)


def _decimate(x, y, max_points=CURVE_POINTS, x_span=None):
    """About ``max_points`` points of the polyline (x, y) that draw the same line, both ends
    included. Plotting millions of points took seconds and looked no different.

    A curve rising in x and y (every ROC and PRO curve) keeps the first point at or past
    each of ``max_points / 4`` even steps in x (of ``x_span`` or its range) and in y (of
    its range), each with its predecessor so corners stay: between two kept points the
    curve moves less than a step both ways, so it stays within a step (1/750 of the axes
    at the default 3000 points) of the drawn line. Found by binary search, without a pass
    over the points. Other curves keep points at even steps of their length (in fractions
    of the axes), each with its predecessor.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.size <= max_points:
        return x, y
    steps = max(max_points // 4, 1)
    if np.all(x[1:] >= x[:-1]) and np.all(y[1:] >= y[:-1]):  # (False with NaN)
        x_span = x_span or (x[-1] - x[0]) or 1.0
        levels_x = np.linspace(x[0], x[0] + x_span, steps + 1)[1:]
        levels_y = np.linspace(y[0], y[-1], steps + 1)[1:]
        picked = np.concatenate((np.searchsorted(x, levels_x), np.searchsorted(y, levels_y)))
    else:
        x_span = x_span or (np.ptp(x) or 1.0)
        y_span = np.ptp(y) or 1.0
        length = np.concatenate(([0.0], np.cumsum(np.hypot(np.diff(x) / x_span, np.diff(y) / y_span))))
        picked = np.searchsorted(length, np.linspace(0.0, length[-1], max_points // 2))
    keep = np.unique(np.concatenate((picked, picked - 1, [0, x.size - 1])).clip(0, x.size - 1))
    return x[keep], y[keep]


@_styled
def plot_roc_curves(
    curves: Mapping[str, tuple[ArrayLike, ArrayLike, float | None]], path: PathLike, title: str = "ROC"
) -> PathLike:
    """ROC curves: ``curves`` maps a name to ``(fpr, tpr, auc)``; AUC shown in the legend."""
    fig, ax = plt.subplots(figsize=(6, 6), layout="constrained")
    ax.plot([0, 1], [0, 1], color="0.5", linestyle="--", linewidth=1, label="chance (AUC = 0.5)")
    colors = plt.get_cmap("tab10")
    for i, (name, (fpr, tpr, auc)) in enumerate(dict(curves).items()):
        auc_text = "n/a" if auc is None or not np.isfinite(auc) else f"{float(auc):.3f}"
        ax.plot(*_decimate(fpr, tpr), color=colors(i % 10), linewidth=2, label=f"{name} (AUC = {auc_text})")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate (good flagged as defective)")
    ax.set_ylabel("true positive rate (defective detected)")
    ax.set_title(title)
    ax.grid(True)
    ax.legend(loc="lower right")
    return save_figure(fig, path)


@_styled
def plot_pro_curve(
    fprs: ArrayLike,
    pros: ArrayLike,
    au_pro: float | None,
    path: PathLike,
    fpr_limit: float = 0.3,
    title: str = "PRO curve",
) -> PathLike:
    """Per-region overlap vs false positive rate: full range and zoom to ``fpr_limit``.

    The area under the curve up to ``fpr_limit`` is shaded; ``au_pro`` is shown as given.
    """
    f, p = _sorted_xy(fprs, pros)
    # Sorted f is finite when its ends are (NaN sorts last): a PRO curve of millions of
    # points then needs no copy.
    if f.size and not (np.isfinite(f[[0, -1]]).all() and np.isfinite(p).all()):
        ok = np.isfinite(f) & np.isfinite(p)
        f, p = f[ok], p[ok]
    if f.size:
        p_lim = float(np.interp(fpr_limit, f, p))
        within = int(np.searchsorted(f, fpr_limit, side="right"))  # f <= fpr_limit: a prefix
        f_fill, p_fill = f[:within], p[:within]
        # The shaded area ends at the limit, with the curve's value there (added after
        # decimating, so the millions of points are not copied).
        end = ([fpr_limit], [p_lim]) if f[-1] >= fpr_limit else ([], [])
    else:
        f_fill = p_fill = np.array([])
        end = ([], [])

    def shaded(x_span):
        f_d, p_d = _decimate(f_fill, p_fill, x_span=x_span)
        return np.append(f_d, end[0]), np.append(p_d, end[1])

    au_text = "n/a" if au_pro is None or not np.isfinite(au_pro) else f"{float(au_pro):.3f}"
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.2), layout="constrained")
    # The zoomed panel gets its own decimation of the part it shows (and one point past it).
    shown = slice(0, int(np.searchsorted(f, fpr_limit * 1.02, side="right")) + 1)
    for ax, xmax, sub, (f_ax, p_ax), fill in (
        (axes[0], 1.0, "full FPR range", _decimate(f, p), shaded(1.0)),
        (
            axes[1],
            fpr_limit,
            f"zoom: FPR ≤ {fpr_limit:g}",
            _decimate(f[shown], p[shown], x_span=fpr_limit),
            shaded(fpr_limit),
        ),
    ):
        ax.fill_between(*fill, 0, color=TRAIN_COLOR, alpha=0.2, label=f"AU-PRO (FPR ≤ {fpr_limit:g}) = {au_text}")
        ax.plot(f_ax, p_ax, color=TRAIN_COLOR, linewidth=2, label="PRO curve")
        ax.axvline(fpr_limit, color=ACCENT_COLOR, linestyle="--", label=f"FPR limit = {fpr_limit:g}")
        ax.set_xlim(0, xmax * 1.02 if xmax < 1 else 1.0)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("false positive rate (fraction of good pixels flagged)")
        ax.set_ylabel("PRO (mean per-region overlap)")
        ax.set_title(sub)
        ax.grid(True)
    axes[0].legend(loc="lower right")
    _suptitle(fig, title)
    return save_figure(fig, path)


# --------------------------------------------------------------------------- masks


def save_mask_png(mask: ArrayLike, path: PathLike) -> PathLike:
    """Write a bool mask as an 8-bit grayscale PNG with values {0, 255} (Pillow, lossless)."""
    from PIL import Image

    m = _as_2d(mask, "mask").astype(bool)
    parent = os.path.dirname(os.fspath(path))
    if parent:
        os.makedirs(parent, exist_ok=True)
    Image.fromarray(m.astype(np.uint8) * 255).save(path, format="PNG")
    return path


__all__ = [
    "save_figure",
    "plot_loss_curve",
    "plot_threshold_search",
    "plot_regions_vs_threshold",
    "plot_area_stats_vs_threshold",
    "plot_area_distribution",
    "plot_area_distributions",
    "plot_sample",
    "plot_stages",
    "plot_overlay",
    "plot_roc_curves",
    "plot_pro_curve",
    "save_mask_png",
]
