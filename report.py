"""``report.html``: one page a quality engineer opens to see a test or a prediction run.

:func:`write_report` builds it from the files a finished result folder holds, so it needs
nothing in memory and can be written again later:

* a labelled test (``RUN/test/<method>/a<AREA>_t<THR>/``): ``classification.csv``,
  ``test_result.json``, ``metrics.json``, ``roc_curves.png``, ``pro_curve.png`` and
  ``anomaly_maps/<defect>/<stem>.tiff``, all in that one folder; with ``--save`` the overlays;
* ``test.py --images`` predictions: ``predictions.csv``, ``prediction_setup.json`` and the
  masks and overlays it names;
* the run folder: ``setup.json``, ``loss_curve.png``,
  ``validation/<method>/a<AREA>/validation_result.json`` and ``threshold_search.png``,
  ``finetune/<method>/*.png``; each section appears when its files exist.

The page is self-contained: plain HTML, CSS and inline JavaScript (no network), the run's
figures embedded, every image's thumbnails (JPEG) written into ``report_files/`` beside it.
The gallery lists every image (thumbnail, anomaly map on one colour scale for the whole run, truth,
verdict, score), misses and false alarms first, sortable and filterable in the browser;
thumbnails load lazily, so thousands of images stay fast. ``report.html`` and
``report_files/`` are written under temporary names and renamed into place.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import html
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import numpy as np
from PIL import Image, UnidentifiedImageError

import data
import metrics
import runs
import storage
from utils import UserError, warn

PAGE = "report.html"
FILES = "report_files"
FILES_MARKER = ".cae-report"  # report_files/ holds it: a folder this module may replace
GENERATOR = '<meta name="generator" content="cae-report">'  # report.html holds it: a page this module may replace
THUMB = 96  # longest side of a gallery thumbnail, px
PROGRESS_FROM = 200  # images from which writing thumbnails shows a progress bar
SCORE_MEANING = "a score above 1 means a region of at least the minimum area lies above the threshold (defective)"
OUTCOMES = {  # (truth, verdict) -> (key, label); the gallery's default order follows this table
    ("defective", "good"): ("miss", "miss"),
    ("good", "defective"): ("false-alarm", "false alarm"),
    ("defective", "defective"): ("found", "found"),
    ("good", "good"): ("passed", "passed"),
}
SOURCES = {
    "validation": "chosen by validate.py on the held-back good training images (and painted copies of them), "
    "never on test images",
    "command line": "given on the command line (-t and -a)",
    "area from validation, threshold from command line": "threshold given on the command line (-t), minimum "
    "area from the validation result",
}
METRIC_MEANINGS = (
    (
        "image_auroc",
        "image AUROC",
        "chance that a defective image scores higher than a good one (1 = perfect ranking, 0.5 = chance); "
        "does not depend on the threshold",
    ),
    (
        "pixel_auroc",
        "pixel AUROC",
        "the same for pixels: defect pixels of the ground-truth masks against defect-free pixels, ranked by "
        "the anomaly map",
    ),
    (
        "au_pro",
        "AU-PRO (FPR ≤ 0.3)",
        "share of each ground-truth defect region the map covers, averaged over map thresholds that mark at "
        "most 30% of good pixels, scaled to 0–1; small defects count as much as large ones",
    ),
)


# ---------------------------------------------------------------- reading the result folder


def _read_json(path: Path) -> dict | None:
    """An optional JSON file of the page, or None when it is missing or unreadable (with a warning)."""
    if not path.is_file():
        return None
    try:
        return storage.read_json(path)
    except UserError as exc:
        warn(f"report: {exc}; left out")
        return None


def _read_setup(run_dir: Path):
    """The run's setup (:func:`runs.read_setup`), or None when it is missing or unreadable (with a warning)."""
    if not runs.Layout(run_dir).setup.is_file():
        return None
    try:
        return runs.read_setup(run_dir)
    except UserError as exc:
        warn(f"report: {exc}; left out")
        return None


def _read_csv(path: Path) -> list[dict]:
    try:
        with open(path, newline="") as handle:
            return list(csv.DictReader(handle))
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (csv.Error, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not a readable CSV file ({exc})") from None


def _verdict(value: str, path: Path) -> str:
    """``good``/``defective`` from a CSV verdict (older files write True/False)."""
    text = str(value).strip().lower()
    if text in ("defective", "true", "1"):
        return "defective"
    if text in ("good", "false", "0"):
        return "good"
    raise UserError(f"{path}: verdict {value!r} is neither good nor defective (edited by hand?)")


def _score(value: str, path: Path) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UserError(f"{path}: score {value!r} is not a number (edited by hand?)") from None


def _labelled_rows(result_dir: Path) -> list[dict]:
    """Gallery rows of a labelled test, from classification.csv (anomaly maps in the same folder)."""
    csv_path = result_dir / "classification.csv"
    table = _read_csv(csv_path)
    stems = data.output_stems([r.get("path", "") for r in table])
    maps_dir = result_dir / "anomaly_maps"
    rows = []
    for record, stem in zip(table, stems):
        path, defect = Path(record.get("path", "")), record.get("defect_type", "")
        truth = record.get("truth", "")
        if truth not in ("good", "defective"):
            raise UserError(f"{csv_path}: truth {truth!r} is neither good nor defective (edited by hand?)")
        verdict = _verdict(record.get("verdict", record.get("prediction", "")), csv_path)
        rows.append(
            {
                "path": path,
                "name": f"{defect}/{path.name}",
                "defect": defect,
                "truth": truth,
                "verdict": verdict,
                "score_text": record.get("score", ""),
                "score": _score(record.get("score"), csv_path),
                "largest_area": record.get("largest_area", ""),
                "n_regions": record.get("n_regions", ""),
                "map": maps_dir / defect / f"{stem}.tiff",
                "mask": result_dir / defect / f"{stem}_mask.png",  # (--save) shown where the map is missing
                "overlay": result_dir / defect / f"{stem}_overlay.png",
            }
        )
    return rows


def _prediction_rows(result_dir: Path, prediction: dict) -> list[dict]:
    """Gallery rows of ``--images`` predictions, from predictions.csv (masks beside it) and
    ``prediction``, their prediction_setup.json."""
    csv_path = result_dir / "predictions.csv"
    images = Path(prediction.get("images") or "")
    rows = []
    for record in _read_csv(csv_path):
        path = Path(record.get("path", ""))
        try:
            name = path.relative_to(images).as_posix() if images.parts else path.name
        except ValueError:
            name = path.name
        mask, overlay = record.get("mask") or "", record.get("overlay") or ""
        rows.append(
            {
                "path": path,
                "name": name,
                "defect": "",
                "truth": None,
                "verdict": _verdict(record.get("verdict", ""), csv_path),
                "score_text": record.get("score", ""),
                "score": _score(record.get("score"), csv_path),
                "largest_area": record.get("largest_area", ""),
                "n_regions": record.get("n_regions", ""),
                "map": None,
                "mask": Path(mask) if mask else None,
                "overlay": Path(overlay) if overlay else None,
            }
        )
    return rows


def _outcome(row: dict) -> tuple[str, str] | None:
    return OUTCOMES.get((row["truth"], row["verdict"])) if row["truth"] else None


def default_order(rows: list[dict]) -> list[dict]:
    """Misses first, then false alarms, found defects, passed good images (without truth:
    defective verdicts first); highest score first within each group, then by name."""
    keys = [key for key, _ in OUTCOMES.values()]

    def rank(row):
        outcome = _outcome(row)
        group = keys.index(outcome[0]) if outcome else (0 if row["verdict"] == "defective" else 1)
        score = row["score"] if math.isfinite(row["score"]) else -math.inf
        return group, -score, row["name"]

    return sorted(rows, key=rank)


# ---------------------------------------------------------------- thumbnails


def _to_8bit(image: Image.Image) -> Image.Image:
    """An image Pillow opened, as 8-bit L or RGB (16-bit and float images scaled, not clipped)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if array.max() > 255 else (1.0 if image.mode == "F" and array.max() <= 1 else 255.0)
        return Image.fromarray(np.clip(array / top * 255.0, 0, 255).astype(np.uint8))
    if image.mode in ("L", "RGB"):
        return image
    if image.mode in ("1", "LA") or (image.mode == "P" and "transparency" not in image.info):
        return image.convert("L" if image.mode != "P" else "RGB")
    return image.convert("RGBA").convert("RGB") if image.mode != "CMYK" else image.convert("RGB")


def _thumb_size(width: int, height: int, side: int) -> tuple[int, int]:
    scale = side / max(width, height, 1)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _image_thumb(path: Path, side: int) -> Image.Image | None:
    """A thumbnail of an image file (longest side ``side``), or None when it cannot be read."""
    try:
        with Image.open(path) as image:
            image.draft("RGB" if image.mode not in ("L", "1") else "L", (side * 2, side * 2))
            image = _to_8bit(image)
            image.thumbnail((side, side), Image.Resampling.LANCZOS)
            return image.copy()
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError, ValueError):
        return None


def _read_map(path: Path) -> np.ndarray | None:
    """A float32 anomaly map from its TIFF, or None when it is missing or unreadable."""
    if path is None or not path.is_file():
        return None
    try:
        import tifffile

        array = np.asarray(tifffile.imread(path), dtype=np.float32)
    except Exception:  # noqa: BLE001 - an unreadable map only costs its thumbnail
        return None
    array = np.squeeze(array)
    return array if array.ndim == 2 else None


def _map_thumb(array: np.ndarray, side: int, vmax: float, lut: np.ndarray) -> Image.Image:
    """A map drawn on the run's one colour scale (0..``vmax``), area-averaged to ``side`` px."""
    height, width = array.shape
    small = Image.fromarray(np.nan_to_num(array, nan=0.0).astype(np.float32), mode="F").resize(
        _thumb_size(width, height, side), Image.Resampling.BOX
    )
    index = np.clip(np.asarray(small) / vmax * 255.0, 0, 255).astype(np.uint8)
    return Image.fromarray(lut[index], mode="RGB")


def _mask_thumb(image: Image.Image | None, mask_path: Path | None, side: int) -> Image.Image | None:
    """The image thumbnail with its defect mask tinted red, or None without a readable mask."""
    if mask_path is None or not mask_path.is_file():
        return None
    try:
        with Image.open(mask_path) as mask:
            mask = mask.convert("L")
            size = image.size if image is not None else _thumb_size(*mask.size, side)
            marked = np.asarray(mask.resize(size, Image.Resampling.BOX)) > 0
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError, ValueError):
        return None
    base = (
        np.asarray(image.convert("RGB"), dtype=np.float32)
        if image is not None
        else np.zeros((*marked.shape, 3), np.float32)
    )
    red = np.array([255.0, 0.0, 0.0], np.float32)
    base[marked] = 0.45 * base[marked] + 0.55 * red
    return Image.fromarray(base.astype(np.uint8), mode="RGB")


def colormap() -> np.ndarray:
    """256×3 uint8 lookup table of the residual colormap (figures.RESIDUAL_CMAP)."""
    import matplotlib

    import figures

    return (matplotlib.colormaps[figures.RESIDUAL_CMAP](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)


def map_scale(rows: list[dict], threshold: float | None) -> tuple[float, str]:
    """The one colour scale of every map on the page: ``(top value, how it was chosen)``.

    0 to 2 × threshold, so the threshold sits in the middle; without a positive threshold,
    0 to the 99th percentile of all maps' pixels (sampled)."""
    if threshold is not None and math.isfinite(threshold) and threshold > 0:
        return (
            2.0 * threshold,
            f"0 (black) to 2 × threshold = {2 * threshold:.4g} (yellow); the threshold is the middle",
        )
    rng = np.random.default_rng(0)
    samples = []
    for row in rows:
        array = _read_map(row["map"])
        if array is not None:
            flat = array.ravel()
            samples.append(flat[rng.integers(0, flat.size, min(flat.size, 2000))])
    top = float(np.percentile(np.concatenate(samples), 99)) if samples else 1.0
    top = top if math.isfinite(top) and top > 0 else 1.0
    return top, f"0 (black) to {top:.4g} (yellow), the 99th percentile of all maps' pixels"


def _write_thumbs(rows: list[dict], folder: Path, side: int, vmax: float | None, lut: np.ndarray | None) -> None:
    """Write each row's image thumbnail and map (or mask) thumbnail into ``folder``; record
    their file names and sizes in the row."""

    def one(item):
        i, row = item
        image = _image_thumb(row["path"], side)
        if image is not None:
            row["thumb"] = f"{i:05d}.jpg"
            image.save(folder / row["thumb"], quality=85)
            row["thumb_size"] = _thumb_size(*image.size, side)  # shown at ``side`` px, also when smaller
        second = None
        array = _read_map(row["map"]) if vmax is not None else None
        if array is not None:
            second = _map_thumb(array, side, vmax, lut)
        elif row["mask"] is not None:
            second = _mask_thumb(image, row["mask"], side)
        if second is not None:
            row["map_thumb"] = f"{i:05d}_m.jpg"
            second.save(folder / row["map_thumb"], quality=85)
            row["map_thumb_size"] = _thumb_size(*second.size, side)

    from tqdm import tqdm

    with (
        ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool,
        tqdm(
            total=len(rows),
            desc="report thumbnails",
            unit="img",
            leave=False,
            disable=True if len(rows) < PROGRESS_FROM else None,
        ) as bar,
    ):
        for _ in pool.map(one, enumerate(rows)):
            bar.update(1)


# ---------------------------------------------------------------- HTML pieces

e = html.escape


def _link(target: Path, page_dir: Path) -> str:
    """A URL to ``target`` relative to the page (so the folder can be opened anywhere)."""
    try:
        rel = os.path.relpath(target, page_dir)
    except ValueError:
        return Path(target).resolve().as_uri()
    return quote(Path(rel).as_posix())


def _interval(interval, share: bool = True) -> str:
    """`` (95% CI 7%–65%)`` of a rate's interval (:func:`metrics.rate_interval`), `` (95% CI
    0.819–0.951)`` of a score's (``share`` False); nothing without one."""
    return f" ({metrics.interval_text(interval, 3, share)})" if interval else ""


def _counted(k: int, n: int) -> str:
    """``k of n (share, 95 % CI …)``: a rate with how far a count of ``n`` pins it."""
    return f"{k} of {n} ({k / n:.0%}, {metrics.interval_text(metrics.rate_interval(k, n), share=True)})"


def _fmt(value, digits=3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else str(value)
    return str(value)


def _embedded(path: Path) -> str | None:
    """A figure of the result or run folder as a ``data:`` URL (None when it is missing), so
    the page shows it wherever it is opened and the result folders hold no copies."""
    try:
        return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")
    except OSError:
        return None


def _figure(src: str, caption: str) -> str:
    return f'<figure><img src="{src}" alt="{e(caption)}" loading="lazy"><figcaption>{e(caption)}</figcaption></figure>'


def _table(header: list[str] | None, body: list[list[str]], cls: str = "") -> str:
    """An HTML table (no header row for ``None``); cells are HTML already."""
    head = "<thead><tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr></thead>" if header else ""
    rows = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in body)
    return f'<table class="{cls}">{head}<tbody>{rows}</tbody></table>'


def _setup_section(setup: runs.RunSetup, run_dir: Path) -> str:
    height, width = setup.shape
    fields = [
        ("run folder", str(run_dir)),
        ("images trained on", setup.directory),
        ("tag", setup.tag),
        ("architecture / loss", f"{setup.architecture} / {setup.loss}"),
        ("regime", f"{setup.mode} (alignment {_fmt(setup.alignment, 2)})"),
        ("colour", setup.color),
        ("model input", f"{width} × {height} px"),
        ("training images / held back", f"{setup.n_train} / {setup.n_validation}"),
        ("epochs run (best)", f"{setup.epochs_run} ({setup.best_epoch})"),
        ("best validation loss", _fmt(setup.best_val_loss, 4) if setup.best_val_loss is not None else None),
        ("learned head steps", setup.head_steps),
        ("precision", setup.precision),
        (
            "training time",
            f"{setup.training_seconds:.0f} s" if storage.is_number(setup.training_seconds) else None,
        ),
        ("command", setup.command),
        ("status", setup.status),
        ("versions", ", ".join(f"{k} {v}" for k, v in (setup.versions or {}).items()) or None),
    ]
    body = [[e(k), e(str(v))] for k, v in fields if v not in (None, "", "None / None", "None (None)")]
    return _table(["setting", "value"], body, "kv")


def _validation_summary(result: dict) -> str:
    proxy = result.get("proxy") if isinstance(result.get("proxy"), dict) else {}
    fields = [
        ("threshold", _fmt(result.get("threshold"), 6)),
        ("minimum area", f"{result.get('min_area')} px"),
        ("held-back good images", result.get("n_images")),
        ("policy", result.get("policy")),
        (
            "held-back good images passed",
            _fmt(result.get("validation_tnr"), 2) + _interval(result.get("validation_tnr_interval"))
            if "validation_tnr" in result
            else None,
        ),
        (
            "painted copies found",
            _fmt(result.get("proxy_tpr"), 2) + _interval(result.get("proxy_tpr_interval"))
            if result.get("proxy_tpr") is not None
            else None,
        ),
        (
            "zero-false-alarm threshold",
            _fmt(result.get("zero_false_alarm_threshold"), 6) if "zero_false_alarm_threshold" in result else None,
        ),
        (
            "largest region at the threshold",
            f"{result['largest_area_at_threshold']} px" if "largest_area_at_threshold" in result else None,
        ),
        (
            "proxy (good images with painted defects)",
            f"image AUROC {_fmt(proxy.get('image_auroc'))}, pixel AUROC {_fmt(proxy.get('pixel_auroc'))}, "
            f"AU-PRO {_fmt(proxy.get('au_pro'))}, found at this threshold {_fmt(proxy.get('detected'), 2)}"
            if proxy
            else None,
        ),
    ]
    return _table(None, [[e(k), e(str(v))] for k, v in fields if v is not None], "kv")


def _metrics_section(result: dict, scores: dict | None, rows: list[dict]) -> str:
    n_def = sum(r["truth"] == "defective" for r in rows)
    n_good = sum(r["truth"] == "good" for r in rows)
    found = sum(r["truth"] == "defective" and r["verdict"] == "defective" for r in rows)
    passed = sum(r["truth"] == "good" and r["verdict"] == "good" for r in rows)
    body = []
    for key, label, meaning in METRIC_MEANINGS:
        value = (scores or {}).get(key)
        if scores is not None and key in scores:
            spread = _interval(scores.get(f"{key}_interval"), share=False)  # the image AUROC's bootstrap
            body.append([e(label), f"<b>{_fmt(value)}</b>{e(spread)}", e(meaning)])
    body.append(
        [
            "TPR",
            f"<b>{_fmt(result.get('tpr'))}</b>",
            e(
                "share of defective images judged defective at this threshold and minimum area: "
                + (_counted(found, n_def) if n_def else "none")
            ),
        ]
    )
    body.append(
        [
            "TNR",
            f"<b>{_fmt(result.get('tnr'))}</b>",
            e("share of good images judged good: " + (_counted(passed, n_good) if n_good else "none")),
        ]
    )
    notes = list(result.get("notes") or []) + list((scores or {}).get("notes") or [])
    note_html = "".join(f'<p class="note">note: {e(str(n))}</p>' for n in notes)
    return _table(["metric", "value", "what it means"], body, "metrics") + note_html


def _defect_table(rows: list[dict], scores: dict | None) -> str:
    per = (scores or {}).get("per_defect_type") or {}
    types = sorted({r["defect"] for r in rows}, key=lambda t: (t != "good", t))
    body = []
    for t in types:
        mine = [r for r in rows if r["defect"] == t]
        flagged = sum(r["verdict"] == "defective" for r in mine)
        good = all(r["truth"] == "good" for r in mine)
        judged = _counted(flagged, len(mine))
        what = "false alarms" if good else "found"
        m = per.get(t) or {}
        link = f'<a href="#gallery" class="pick-defect" data-defect="{e(t)}">{e(t)}</a>'
        body.append(
            [
                link,
                str(len(mine)),
                f"{what}: {judged}",
                _fmt(m.get("image_auroc")) + _interval(m.get("image_auroc_interval"), share=False) if m else "",
                _fmt(m.get("pixel_auroc")) if m else "",
                _fmt(m.get("au_pro")) if m else "",
            ]
        )
    header = ["defect type", "images", "judged defective", "image AUROC", "pixel AUROC", "AU-PRO"]
    if not per:  # no metrics.json: the verdicts only
        header, body = header[:3], [row[:3] for row in body]
    return _table(header, body, "defects")


def _gradient(lut: np.ndarray) -> str:
    stops = ", ".join(
        f"rgb({r},{g},{b}) {i / 10:.0%}" for i, (r, g, b) in enumerate(lut[np.linspace(0, 255, 11).astype(int)])
    )
    return f"linear-gradient(to right, {stops})"


def _gallery_rows(rows: list[dict], page_dir: Path, labelled: bool) -> str:
    out = []
    for i, row in enumerate(rows):
        outcome = _outcome(row)
        attrs = {
            "data-i": str(i),
            "data-name": row["name"],
            "data-score": row["score_text"],
            "data-verdict": row["verdict"],
        }
        if labelled:
            attrs.update({"data-truth": row["truth"], "data-defect": row["defect"], "data-outcome": outcome[0]})
        cells = []
        src_link = _link(row["path"], page_dir)
        if row.get("thumb"):
            w, h = row["thumb_size"]
            cells.append(
                f'<a href="{src_link}"><img data-src="{FILES}/{row["thumb"]}" width="{w}" height="{h}" '
                f'loading="lazy" alt=""></a>'
            )
        else:
            cells.append('<span class="missing">image not found</span>')
        if row.get("map_thumb"):
            w, h = row["map_thumb_size"]
            target = row["overlay"] if row["overlay"] is not None and row["overlay"].is_file() else None
            img = f'<img data-src="{FILES}/{row["map_thumb"]}" width="{w}" height="{h}" loading="lazy" alt="">'
            cells.append(f'<a href="{_link(target, page_dir)}" title="overlay figure">{img}</a>' if target else img)
        else:
            cells.append('<span class="missing">–</span>')
        cells.append(f'<a href="{src_link}" title="{e(str(row["path"]))}">{e(row["name"])}</a>')
        if labelled:
            cells.append(e(row["defect"]))
            cells.append(f'<span class="tag {row["truth"]}">{row["truth"]}</span>')
        cells.append(f'<span class="tag {row["verdict"]}">{row["verdict"]}</span>')
        if labelled:
            cells.append(f'<span class="tag {outcome[0]}">{outcome[1]}</span>')
        cells.append(f'<span title="{e(row["score_text"])}">{_fmt(row["score"])}</span>')
        cells.append(e(str(row["largest_area"])))
        cells.append(e(str(row["n_regions"])))
        attr_text = " ".join(f'{k}="{e(v)}"' for k, v in attrs.items())
        out.append(f"<tr {attr_text}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return "\n".join(out)


def _select(ident: str, label: str, options: list[tuple[str, str]]) -> str:
    opts = "".join(f'<option value="{e(v)}">{e(t)}</option>' for v, t in [("", "all"), *options])
    return f'<label>{e(label)} <select id="{ident}">{opts}</select></label>'


CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0 auto;max-width:1200px;padding:0 16px 40px;color:#222}
h1{font-size:22px;margin:18px 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd}
nav a{margin-right:12px}table{border-collapse:collapse;margin:6px 0}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:left;vertical-align:middle}
th{background:#f4f4f4}table.kv td:first-child{color:#555}.metrics td:nth-child(2){text-align:right}
.summary{font-size:16px;background:#f6f8fa;border:1px solid #ddd;padding:8px 12px;margin:10px 0}
figure{display:inline-block;margin:6px 12px 6px 0;vertical-align:top}
figure img{max-width:560px;max-height:420px;border:1px solid #ddd}figcaption{color:#555;font-size:12px}
.tag{padding:1px 6px;border-radius:3px;white-space:nowrap}.defective{background:#fde2e1}.good{background:#e3f4e4}
.miss{background:#d7263d;color:#fff}.false-alarm{background:#f49d37}.found{background:#c8e6c9}.passed{background:#eee}
.missing{color:#999;font-size:12px}.note{color:#8a5a00}.controls{position:sticky;top:0;background:#fff;padding:6px 0;
z-index:1;border-bottom:1px solid #ddd}.controls label{margin-right:12px}.controls button{margin-right:6px}
#gallery-table td:nth-child(1),#gallery-table td:nth-child(2){padding:2px;width:98px;height:98px;text-align:center}
.scale{display:inline-block;width:240px;height:14px;vertical-align:middle;border:1px solid #999;position:relative}
.scale i{position:absolute;left:50%;top:-3px;bottom:-3px;border-left:2px solid #0af}
"""

JS = """
(function(){
  var body=document.getElementById('gallery-body'); if(!body) return;
  var rows=Array.prototype.slice.call(body.rows), count=document.getElementById('gallery-count');
  var sorted={key:'default',dir:1};
  function val(r,key){return key==='score'?parseFloat(r.dataset.score):key==='name'?r.dataset.name:+r.dataset.i;}
  function sortBy(key,dir){
    rows.sort(function(a,b){var x=val(a,key),y=val(b,key);
      if(key==='score'){if(isNaN(x))x=-Infinity;if(isNaN(y))y=-Infinity;}
      return x<y?-dir:x>y?dir:(+a.dataset.i)-(+b.dataset.i);});
    var frag=document.createDocumentFragment(); rows.forEach(function(r){frag.appendChild(r);}); body.appendChild(frag);
    sorted={key:key,dir:dir};
    document.querySelectorAll('button.sort').forEach(function(b){
      var on=b.dataset.key===key; b.setAttribute('aria-pressed',on?'true':'false');
      b.textContent=b.dataset.label+(on&&key!=='default'?(dir>0?' ▲':' ▼'):'');});
  }
  document.querySelectorAll('button.sort').forEach(function(b){
    b.addEventListener('click',function(){var key=b.dataset.key;
      var dir=key==='score'?-1:1; if(sorted.key===key&&key!=='default') dir=-sorted.dir; sortBy(key,dir);});});
  var filters=['verdict','truth','defect','outcome'].map(function(k){return [k,document.getElementById('filter-'+k)];})
    .filter(function(p){return p[1];});
  function apply(){var n=0;
    rows.forEach(function(r){var show=filters.every(function(p){return !p[1].value||r.dataset[p[0]]===p[1].value;});
      r.hidden=!show; if(show) n++;});
    count.textContent=n+' of '+rows.length+' images shown';}
  filters.forEach(function(p){p[1].addEventListener('change',apply);});
  document.querySelectorAll('a.pick-defect').forEach(function(a){a.addEventListener('click',function(){
    var s=document.getElementById('filter-defect'); if(s){s.value=a.dataset.defect; apply();}});});
  apply();
  // Thumbnails load when their row comes near the screen: 10,000 <img src> with loading="lazy"
  // alone cost the browser seconds to parse (bench/README.md, "Report page").
  function show(r){r.querySelectorAll('img[data-src]').forEach(function(i){i.src=i.dataset.src;i.removeAttribute('data-src');});}
  if('IntersectionObserver' in window){
    var io=new IntersectionObserver(function(es){es.forEach(function(x){if(x.isIntersecting){show(x.target);io.unobserve(x.target);}});},
      {rootMargin:'800px'});
    rows.forEach(function(r){io.observe(r);});
  } else rows.forEach(show);
})();
"""


def _page(title: str, sections: list[tuple[str, str, str]], subtitle: str) -> str:
    nav = "".join(f'<a href="#{ident}">{e(name)}</a>' for ident, name, _ in sections)
    body = "".join(f'<section id="{ident}"><h2>{e(name)}</h2>{content}</section>' for ident, name, content in sections)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">{GENERATOR}'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{e(title)}</title>'
        f"<style>{CSS}</style></head><body><h1>{e(title)}</h1><p>{subtitle}</p><nav>{nav}</nav>{body}"
        f"<script>{JS}</script></body></html>\n"
    )


# ---------------------------------------------------------------- the page


def _inferred_source(run_dir: Path, method, min_area, threshold) -> str:
    """Where a result that does not record it (prediction_setup.json) took its threshold
    from: the run's validation result for its method and area when that holds the same threshold."""
    if method and storage.is_number(min_area) and threshold is not None:
        found = _read_json(runs.Layout(run_dir).validation_result(method, min_area))
        if found is not None and found.get("threshold") == threshold:
            return "validation"
    return "command line"


def _check_replaceable(page: Path, files: Path) -> None:
    """Refuse (one line) to replace a report.html or report_files/ this module did not write."""
    if files.exists() and not (files / FILES_MARKER).is_file():
        raise UserError(f"{files} exists and was not written by this tool: report not written (nothing deleted)")
    if page.exists():
        try:
            with open(page, encoding="utf-8", errors="replace") as handle:
                ours = GENERATOR in handle.read(4096)
        except OSError:
            ours = False
        if not ours:
            raise UserError(f"{page} exists and was not written by this tool: report not written (nothing deleted)")


def _headline(rows: list[dict], labelled: bool) -> str:
    n_def = sum(r["verdict"] == "defective" for r in rows)
    if not labelled:
        return f"{len(rows)} images: <b>{n_def}</b> judged defective, <b>{len(rows) - n_def}</b> good."
    misses = sum(_outcome(r)[0] == "miss" for r in rows)
    alarms = sum(_outcome(r)[0] == "false-alarm" for r in rows)
    n_truth_def = sum(r["truth"] == "defective" for r in rows)
    n_truth_good = len(rows) - n_truth_def
    return (
        f"{len(rows)} test images: found <b>{n_truth_def - misses} of {n_truth_def}</b> defective images, "
        f"passed <b>{n_truth_good - alarms} of {n_truth_good}</b> good ones; "
        f"<b>{misses}</b> miss{'es' if misses != 1 else ''} (defective judged good), "
        f"<b>{alarms}</b> false alarm{'s' if alarms != 1 else ''} (good judged defective)."
    )


def _decision_section(result: dict, rows: list[dict], labelled: bool, run_dir: Path) -> str:
    method, threshold, min_area = result.get("method"), _threshold(result), result.get("min_area")
    source = result.get("threshold_source") or _inferred_source(run_dir, method, min_area, threshold)
    origin = f"{source}: {SOURCES[source]}" if source in SOURCES else str(source)
    if source == "validation" and method and storage.is_number(min_area):
        found = _read_json(runs.Layout(run_dir).validation_result(method, min_area)) or {}
        origin += f"; policy: {found['policy']}" if found.get("policy") else ""
    return f'<div class="summary">{_headline(rows, labelled)}</div>' + _table(
        None,
        [
            ["map", e(str(method))],
            ["threshold", f"<b>{_fmt(threshold, 6)}</b>"],
            ["minimum area", f"<b>{e(str(min_area))} px</b> (at the model's resolution)"],
            ["where they came from", e(origin)],
            ["verdict", "defective when a connected region of at least the minimum area lies above the threshold"],
            ["score", e(SCORE_MEANING)],
        ],
        "kv",
    )


def _sort_button(key: str, label: str, pressed: bool = False) -> str:
    state = ' aria-pressed="true"' if pressed else ""
    return f'<button type="button" class="sort" data-key="{key}" data-label="{e(label)}" id="sort-{key}"{state}>{e(label)}</button>'


def _gallery_section(rows: list[dict], labelled: bool, result_dir: Path, scale: str | None) -> str:
    """The gallery: colour scale, sort buttons, filters and one row per image (already in default order)."""
    controls = [_select("filter-verdict", "verdict", [("defective", "defective"), ("good", "good")])]
    header = ["image", "map" if labelled else "defect mask (red)", "name"]
    if labelled:
        types = sorted({r["defect"] for r in rows})
        controls += [
            _select("filter-truth", "truth", [("defective", "defective"), ("good", "good")]),
            _select("filter-defect", "defect type", [(t, t) for t in types]),
            _select("filter-outcome", "outcome", [(k, label) for k, label in OUTCOMES.values()]),
        ]
        header += ["defect type", "truth", "verdict", "outcome"]
    else:
        header += ["verdict"]
    header += ["score", "largest region (px)", "regions"]
    first = _sort_button("default", "misses and false alarms first" if labelled else "defective first", True)
    sorts = f"{first}{_sort_button('score', 'score')}{_sort_button('name', 'name')}"
    if scale:
        explain = f"<p>{scale} Click a map for its overlay figure (written with --save), an image for its file.</p>"
    elif labelled:
        explain = (
            "<p>No anomaly maps in anomaly_maps/: the map column shows the defect mask in red where test.py "
            "wrote it (--save).</p>"
        )
    else:
        explain = (
            "<p>Red: the defect mask (regions of at least the minimum area above the threshold). "
            "Click it for the overlay figure, an image for its file.</p>"
        )
    return (
        explain + f'<div class="controls">sort: {sorts} · filter: {" ".join(controls)} '
        f'<span id="gallery-count">{len(rows)} images</span></div>'
        + f'<table id="gallery-table"><thead><tr>{"".join(f"<th>{h}</th>" for h in header)}</tr></thead>'
        + f'<tbody id="gallery-body">\n{_gallery_rows(rows, result_dir, labelled)}\n</tbody></table>'
    )


def _scale_text(lut: np.ndarray, scale_text: str, scores: dict | None) -> str:
    sigma = (scores or {}).get("smooth_sigma")
    smoothing = f" (smoothed by a Gaussian of σ {sigma:g} px)" if storage.is_number(sigma) and sigma > 0 else ""
    return (
        f'Map colours, one scale for every image: <span class="scale" style="background:{_gradient(lut)}">'
        f"<i></i></span> {e(scale_text)}. The maps are those of anomaly_maps/{smoothing}; verdicts use the "
        "unsmoothed map."
    )


def _story_sections(run_dir: Path, setup: runs.RunSetup | None, result: dict) -> list[tuple[str, str, str]]:
    """The run's own sections, each when its files exist: setup, training, validation, finetune."""
    sections = []
    method, threshold, min_area = result.get("method"), _threshold(result), result.get("min_area")
    if setup is not None:
        sections.append(("setup", "Run setup", _setup_section(setup, run_dir)))
    layout = runs.Layout(run_dir)
    src = _embedded(layout.loss_plot)
    if src:
        sections.append(("training", "Training", _figure(src, "training and validation loss per epoch")))
    if method and storage.is_number(min_area):
        folder = layout.validation(method, min_area)
        found = _read_json(layout.validation_result(method, min_area))
        src = _embedded(folder / "threshold_search.png")
        content = _validation_summary(found) if found is not None else ""
        if found is not None and found.get("threshold") != threshold:
            content = f'<p class="note">These verdicts used another threshold than this validation result.</p>{content}'
        if src:
            content += _figure(
                src, "largest region area against the threshold on held-back good images; the choice marked"
            )
        if content:
            sections.append(("validation", "Validation (threshold choice)", content))
    if method:
        pngs = sorted(layout.finetune(method).glob("*.png"))
        figs = [_figure(src, p.stem.replace("_", " ")) for p in pngs if (src := _embedded(p))]
        if figs:
            sections.append(("finetune", "Finetune (choosing the minimum area)", "".join(figs)))
    return sections


def _run_line(setup: runs.RunSetup | None, run_dir: Path) -> str:
    """One line about the run under the title."""
    if setup is None:
        return f"Run {e(str(run_dir))} (no setup.json)."
    height, width = setup.shape
    known = lambda value: "?" if value is None else value  # noqa: E731  (hand-made setups lack them)
    return e(
        f"Run: {setup.architecture} autoencoder, {setup.loss} loss, {setup.mode} regime, "
        f"{setup.color} {width}×{height} px, trained {known(setup.epochs_run)} epochs on {known(setup.n_train)} "
        f"good images (tag {setup.tag!s})."
    )


def _threshold(result: dict) -> float | None:
    value = result.get("threshold")
    return float(value) if storage.is_number(value) else None


def write_report(result_dir: Path, run_dir: Path, shown_as: Path | None = None) -> Path:
    """Write ``report.html`` (and its thumbnails in ``report_files/``) into ``result_dir``, a
    finished labelled-test folder (``classification.csv``) or ``--images`` prediction folder
    (``predictions.csv``), with the story of ``run_dir`` (the run folder, or its model file).
    Reads only files; written whole or not at all. Returns the page's path.

    ``shown_as``: the folder's name on the page when ``result_dir`` is a staging folder that is
    renamed to it afterwards (test.py writes the page inside the labelled result it commits); it
    must be a sibling, so links to files outside the folder stay right after the rename.
    """
    result_dir, run_dir = Path(result_dir), Path(run_dir)
    if run_dir.is_file():
        run_dir = run_dir.parent
    labelled = (result_dir / "classification.csv").is_file()
    if labelled:
        result = storage.read_json(result_dir / "test_result.json")
        scores = _read_json(result_dir / "metrics.json")
        rows = _labelled_rows(result_dir)
    elif (result_dir / "predictions.csv").is_file():
        result = _read_json(result_dir / "prediction_setup.json") or {}
        scores = None
        rows = _prediction_rows(result_dir, result)
    else:
        raise UserError(f"{result_dir} holds neither classification.csv nor predictions.csv: no result to report")
    setup = _read_setup(run_dir)
    page, files = result_dir / PAGE, result_dir / FILES
    _check_replaceable(page, files)
    rows = default_order(rows)
    lut = colormap()
    has_maps = any(r["map"] is not None and r["map"].is_file() for r in rows)
    vmax, scale_text = map_scale(rows, _threshold(result)) if has_maps else (None, "")

    sections = [("decision", "Verdicts", _decision_section(result, rows, labelled, run_dir))]
    if labelled:
        sections.append(("metrics", "Metrics", _metrics_section(result, scores, rows)))
        curves = [
            (_embedded(result_dir / "roc_curves.png"), "ROC curves (image and pixel)"),
            (_embedded(result_dir / "pro_curve.png"), "PRO curve (AU-PRO up to FPR 0.3)"),
        ]
        if any(src for src, _ in curves):
            sections.append(("curves", "Curves", "".join(_figure(src, cap) for src, cap in curves if src)))
        sections.append(("defects", "Per defect type", _defect_table(rows, scores)))
    with storage.atomic_path(page) as tmp_page, storage.StagedFolder(files) as staged:
        (staged / FILES_MARKER).write_text("thumbnails of report.html, written by report.py\n")
        _write_thumbs(rows, staged, THUMB, vmax, lut)  # fills in each row's thumbnail names
        scale = _scale_text(lut, scale_text, scores) if has_maps else None
        sections.append(("gallery", f"Every image ({len(rows)})", _gallery_section(rows, labelled, result_dir, scale)))
        sections += _story_sections(run_dir, setup, result)
        klass = Path(setup.directory).name if setup is not None else "run"
        title = f"{klass} — {result.get('method')} map — {'labelled test' if labelled else 'predictions'}"
        stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
        subtitle = f"{_run_line(setup, run_dir)}<br>Result folder {e(str(shown_as or result_dir))}, written {stamp}."
        tmp_page.write_text(_page(title, sections, subtitle), encoding="utf-8")
    return page
