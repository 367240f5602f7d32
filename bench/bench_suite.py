"""Suite benchmark: the *default* configuration on every category, as a new user runs it.

    .venv/bin/python bench/bench_suite.py [--categories NAME ...] [--seeds 0 1 2] [--append]
    .venv/bin/python bench/bench_suite.py --quick            # smoke run at 64 px (about a minute a category)

Categories: every class folder under ``../shared/data/*/*`` (read only; skipped with a
note when absent) and generated texture classes (``make_dataset.py --classes brick
gravel`` with its default settings, written under ``--out``, never into ``mvtec/``).
Nothing is chosen per category: each one runs exactly

    train.py new -d CLASS --out OUT/runs --seed SEED [--extra-train-args]
    validate.py -p RUN [-a AREA] [--extra-eval-args]
    test.py -p RUN [--extra-eval-args]

each command in its own process, so one category's failure is reported in its row and
the others go on. The minimum area is ``validate.py``'s default when it has one, else
one fixed rule for every category: ``max(1, size² // 800)`` px at the run's model size
(20 px at 128, 81 px at 256; the rule of the bottle benchmark). The table reads
``RUN/setup.json`` (training time, regime), the validation result (the proxy score,
when ``validate.py`` reports one), ``test_result.json`` (TPR/TNR at the validated
threshold) and ``metrics.json`` (image AUROC, pixel AUROC, AU-PRO). Rows are appended to
``OUT/suite.jsonl``; each category's commands and output go to ``OUT/logs/``.
``--append`` adds the tables to the "Suite" section of bench/README.md.
"""

import argparse
import datetime as dt
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from utils import UserError, run_cli  # noqa: E402

DEFAULT_REAL = ROOT.parent / "shared" / "data"
DEFAULT_OUT = ROOT / "bench" / "results" / "suite"
README = ROOT / "bench" / "README.md"
SECTION = "## Suite"
GENERATED = "generated"  # dataset name of the generated texture classes (OUT/generated/<class>)
AREA_DIVISOR = 800  # fixed area rule when validate.py has no default: size² // 800 px
# --quick: tiny data and training, only to show every step works end to end.
QUICK_DATA = ("--size", "64", "--train", "10", "--test-good", "2", "--test-defect", "1")
# Each used only when train.py has the option (the suite drives whatever train.py is checked out).
QUICK_TRAIN = (("--size", "64"), ("--epochs", "1"), ("--head-steps", "20"))
# Flags the suite sets itself; an experiment may not override them through the passthrough.
RESERVED_TRAIN = {"-d", "--directory", "--out", "--seed"}
RESERVED_EVAL = {"-p", "--path"}
COMPARE = ("fused", "learned", "ssim")  # map methods --compare evaluates by default
ALL_METHODS = ("fused", "learned", "ssim", "l2", "median", "lowfreq")  # --leave-one-out's default comparison
METRICS = ("image_auroc", "pixel_auroc", "au_pro", "tpr", "tnr", "proxy", "training_minutes", "wall_minutes")


@dataclass(frozen=True)
class Settings:
    """What one suite run does (built from the command line)."""

    categories: tuple  # names to run ("dataset/class" or "class"); empty = all
    textures: tuple
    seeds: tuple
    out: Path
    real: Path
    quick: bool
    extra_train: tuple
    extra_eval: tuple
    append: bool
    readme: Path
    python: str
    compare: tuple = ()  # map methods also evaluated on every run (besides its default one)
    leave_one_out: bool = False  # report each category with the method the other categories choose


def get_parser():
    """Command-line options of the suite benchmark."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--categories",
        nargs="+",
        default=[],
        metavar="NAME",
        help="run only these categories: dataset/class (kolektorsdd/commutator, generated/brick) or the class "
        "name alone (default: all)",
    )
    p.add_argument(
        "--textures",
        nargs="+",
        default=["brick", "gravel"],
        metavar="CLASS",
        help="generated texture classes (make_dataset.py classes)",
    )
    p.add_argument(
        "--seeds", nargs="+", type=int, default=[0], help="training seeds; each category is trained once per seed"
    )
    p.add_argument(
        "--out", default=str(DEFAULT_OUT), help="folder for generated data, run folders, logs and suite.jsonl"
    )
    p.add_argument(
        "--real-data", default=str(DEFAULT_REAL), help="root of the real categories (<root>/<dataset>/<class>)"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: generated data at 64 px with 10 training images, real categories whole "
        f"(they are small) but trained and scored tiny: {' '.join(' '.join(f) for f in QUICK_TRAIN)} where train.py has these options",
    )
    p.add_argument(
        "--extra-train-args",
        default="",
        metavar="ARGS",
        help="extra train.py options for an experiment, as one quoted string (recorded in the table header)",
    )
    p.add_argument(
        "--extra-eval-args",
        default="",
        metavar="ARGS",
        help="extra options for validate.py and test.py, e.g. '--method l2' (recorded in the table header)",
    )
    p.add_argument(
        "--compare",
        nargs="*",
        default=None,
        metavar="METHOD",
        help="map methods also validated and tested on every trained run, besides the run's default one "
        "(same area), for the method table and the proxy's ranking; 'none' (or no method): only the default "
        f"(default: {' '.join(COMPARE)}; with --leave-one-out every method: {' '.join(ALL_METHODS)})",
    )
    p.add_argument(
        "--leave-one-out",
        action="store_true",
        help="also report each category with the map method the other categories choose (their best mean of "
        "image AUROC, pixel AUROC and AU-PRO); compares every map method unless --compare names them",
    )
    p.add_argument("--append", action="store_true", help="add the tables to the Suite section of the README")
    p.add_argument(
        "--report",
        default=None,
        metavar="JSONL",
        help="run nothing: print (and with --append add) the tables of rows saved in this suite.jsonl",
    )
    p.add_argument("--readme", default=str(README), help="README that --append writes to")
    return p


def settings_from_args(args) -> Settings:
    """Check the command line and turn it into :class:`Settings` (one-line errors)."""
    if any(s < 0 for s in args.seeds):
        raise UserError(f"--seeds must be whole numbers >= 0, got {' '.join(map(str, args.seeds))}")
    if len(set(args.seeds)) != len(args.seeds):
        raise UserError(f"--seeds lists a seed twice: {' '.join(map(str, args.seeds))}")
    extra_train = _split(args.extra_train_args, "--extra-train-args", RESERVED_TRAIN)
    extra_eval = _split(args.extra_eval_args, "--extra-eval-args", RESERVED_EVAL)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    readme = Path(args.readme)
    if args.append and not readme.is_file():
        raise UserError(f"--readme {readme} not found")
    return Settings(
        tuple(args.categories),
        tuple(dict.fromkeys(args.textures)),
        tuple(args.seeds),
        out.resolve(),
        Path(args.real_data),
        args.quick,
        extra_train,
        extra_eval,
        args.append,
        readme,
        sys.executable,
        tuple(
            dict.fromkeys(
                m
                for m in (args.compare if args.compare is not None else ALL_METHODS if args.leave_one_out else COMPARE)
                if m != "none"
            )
        ),
        args.leave_one_out,
    )


def _split(text, flag, reserved):
    try:
        words = tuple(shlex.split(text))
    except ValueError as exc:
        raise UserError(f"{flag}: cannot split {text!r}: {exc}") from None
    clash = sorted({w.split("=")[0] for w in words} & reserved)
    if clash:
        raise UserError(f"{flag} may not set {', '.join(clash)}: the suite sets it for every category")
    return words


# --------------------------------------------------------------------------- categories


@dataclass(frozen=True)
class Category:
    """One class folder to benchmark: a real one (read only) or a generated texture."""

    name: str  # dataset/class
    directory: Path  # for generated classes: where make_dataset.py writes it
    generated: bool


def discover(settings: Settings):
    """The categories to run, in order (real first), and notes on what was skipped."""
    notes = []
    real = sorted(p for p in settings.real.glob("*/*") if (p / "train" / "good").is_dir())
    if not real:
        notes.append(f"no real categories under {settings.real} (expected <dataset>/<class>/train/good): skipped")
    data_root = (settings.out / "quick" if settings.quick else settings.out) / GENERATED
    found = [Category(f"{p.parent.name}/{p.name}", p, False) for p in real]
    found += [Category(f"{GENERATED}/{t}", data_root / t, True) for t in settings.textures]
    if not settings.categories:
        return found, notes
    chosen = []
    for want in settings.categories:
        match = [c for c in found if want in (c.name, c.name.split("/")[1])]
        if not match:
            raise UserError(f"unknown category {want!r}; available: {', '.join(c.name for c in found)}")
        chosen += [c for c in match if c not in chosen]
    return chosen, notes


# --------------------------------------------------------------------------- one category


class StepFailed(Exception):
    """A command of one category exited non-zero; the message is its last error line."""

    def __init__(self, step, message):
        super().__init__(f"{step}: {message}")
        self.step = step


def _die_with_parent():
    """In the child, before it starts: ask Linux to end it when the suite ends, however the suite
    ends (even killed), so no training keeps running behind an interrupted benchmark."""
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _run_step(settings, step, script, argv, log):
    """Run ``python SCRIPT ARGV`` from the repository root; log it; return its stdout lines."""
    command = [settings.python, str(ROOT / script), *argv]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "MPLBACKEND": "Agg"}
    started = time.time()
    done = subprocess.run(
        command,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
    )
    with log.open("a") as f:
        f.write(
            f"$ {shlex.join(command)}\n{done.stdout}{done.stderr}[exit {done.returncode}, {time.time() - started:.0f} s]\n\n"
        )
    if done.returncode != 0:
        # The script's own one-line error ("x.py: error: ..."), else the last line of stderr (a
        # traceback's exception), never a TensorFlow log line that happens to say "error".
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        errors = [line for line in lines if re.match(r"[\w.-]+\.py: error: ", line)]
        raise StepFailed(step, ((errors or lines or [f"exit code {done.returncode}"])[-1]).strip()[:200])
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    if not lines:
        raise StepFailed(step, "printed nothing (expected the output folder on its last line)")
    return lines


def validate_has_default_area(settings: Settings) -> bool:
    """True when ``validate.py`` runs without ``-a`` (its usage shows ``[-a AREA]``)."""
    done = subprocess.run(
        [settings.python, str(ROOT / "validate.py"), "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    return bool(re.search(r"\[-a [A-Z_]+\]", done.stdout))


def quick_train_args(settings: Settings) -> tuple:
    """The --quick training options this train.py accepts (from its usage)."""
    done = subprocess.run(
        [settings.python, str(ROOT / "train.py"), "new", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    return tuple(word for flag in QUICK_TRAIN if re.search(rf"\[{flag[0]}[ \]]", done.stdout) for word in flag)


def area_rule(size: int) -> int:
    """The one minimum area for every category when validate.py has no default: size² // 800 px."""
    return max(1, int(size) ** 2 // AREA_DIVISOR)


def _mode(setup):
    """The training regime setup.json records (None before the regimes existed)."""
    mode = setup.get("mode")
    if isinstance(mode, dict):
        chosen = next((mode[k] for k in ("chosen", "resolved", "mode", "value") if k in mode), None)
        return str(chosen) if chosen is not None else json.dumps(mode, sort_keys=True)
    requested = setup.get("mode_requested")
    if mode is not None and requested not in (None, mode):
        return f"{mode} ({requested})"
    return None if mode is None else str(mode)


def proxy_score(validation: dict):
    """The proxy score a validation result reports, as ``(value, what)``; ``(None, None)`` if none.

    Accepts a number under a key starting with ``proxy``, or a dict of them there (AU-PRO
    preferred, then pixel AUROC, image AUROC, ``score``, any other fraction).
    """
    for key in sorted(k for k in validation if k.lower().startswith("proxy")):
        value = validation[key]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value), key
        if isinstance(value, dict):
            numbers = {k: v for k, v in value.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            # Named scores first, then any fraction (whole numbers are likely counts).
            others = sorted(numbers, key=lambda k: (isinstance(numbers[k], int), k))
            for name in ("au_pro", "pixel_auroc", "image_auroc", "score", *others):
                if name in numbers:
                    return float(numbers[name]), f"{key}.{name}"
    return None, None


def run_category(
    settings: Settings, category: Category, seed: int, default_area: bool, log: Path, quick_train=()
) -> dict:
    """Generate (if needed), train, validate and test one category; return its row.

    A failing step ends this category only: the row says which step failed and why.
    ``quick_train``: the training options of --quick (see :func:`quick_train_args`).
    """
    row = {"category": category.name, "seed": seed, "status": "failed", "error": None}
    started = time.time()
    base = settings.out / "quick" if settings.quick else settings.out
    try:
        directory = category.directory
        if category.generated:
            _run_step(
                settings,
                "generate",
                "make_dataset.py",
                [
                    "--out",
                    str(directory.parent),
                    "--classes",
                    directory.name,
                    "--seed",
                    "0",
                    *(QUICK_DATA if settings.quick else ()),
                ],
                log,
            )
        row["directory"] = str(directory)
        try:  # the floor the default must clear, on the same test set (no training)
            import trivial

            row["trivial"] = trivial.trivial_metrics(directory)
        except (OSError, ValueError, UserError) as exc:
            row["trivial"] = {"error": str(exc)}
        train_argv = [
            "new",
            "-d",
            str(directory),
            "--out",
            str(base / "runs"),
            "--seed",
            str(seed),
            *quick_train,
            *settings.extra_train,
        ]
        run_dir = Path(_run_step(settings, "train", "train.py", train_argv, log)[-1])
        row["run"] = str(run_dir)
        setup = json.loads((run_dir / "setup.json").read_text())
        row.update(
            training_minutes=setup.get("training_seconds", 0) / 60,
            mode=_mode(setup),
            size=setup.get("size"),
            epochs_run=setup.get("epochs_run"),
        )
        area = [] if default_area else ["-a", str(area_rule(setup["size"]))]
        val_dir = Path(
            _run_step(settings, "validate", "validate.py", ["-p", str(run_dir), *area, *settings.extra_eval], log)[-1]
        )
        validation = json.loads((val_dir / "validation_result.json").read_text())
        row["proxy"], row["proxy_key"] = proxy_score(validation)
        row.update(
            min_area=validation.get("min_area"), threshold=validation.get("threshold"), method=validation.get("method")
        )
        test_dir = Path(_run_step(settings, "test", "test.py", ["-p", str(run_dir), *settings.extra_eval], log)[-1])
        result = json.loads((test_dir / "test_result.json").read_text())
        scores = json.loads((test_dir / "metrics.json").read_text())
        row.update(
            {k: scores.get(k) for k in ("image_auroc", "pixel_auroc", "au_pro", "image_auroc_interval")},
            tpr=result.get("tpr"),
            tnr=result.get("tnr"),
            tpr_interval=result.get("tpr_interval"),
            tnr_interval=result.get("tnr_interval"),
            n_good=result.get("n_good"),
            n_defective=result.get("n_defective"),
            detection_rate_per_defect_type=result.get("detection_rate_per_defect_type", {}),
            per_defect_type=scores.get("per_defect_type", {}),
            status="ok",
        )
        row["methods"] = {row["method"]: _method_row(row)}
        for method in (m for m in settings.compare if m != row["method"]):
            try:
                row["methods"][method] = _evaluate_method(settings, run_dir, method, validation["min_area"], log)
            except (StepFailed, OSError, ValueError, KeyError) as exc:
                row["methods"][method] = {"error": str(exc)}
    except StepFailed as exc:
        row["error"] = str(exc)
    except (OSError, ValueError, KeyError) as exc:  # a result file missing or unreadable
        row["error"] = f"reading results: {exc.__class__.__name__}: {exc}"
    row["wall_minutes"] = (time.time() - started) / 60
    return row


def _method_row(row):
    return {k: row.get(k) for k in ("image_auroc", "pixel_auroc", "au_pro", "tpr", "tnr", "proxy")}


def _evaluate_method(settings, run_dir, method, area, log):
    """Validate and test an already trained run with another map ``method`` (same minimum area)."""
    flags = ["-p", str(run_dir), "--method", method]
    val_dir = Path(_run_step(settings, f"validate {method}", "validate.py", [*flags, "-a", str(area)], log)[-1])
    validation = json.loads((val_dir / "validation_result.json").read_text())
    test_dir = Path(_run_step(settings, f"test {method}", "test.py", flags, log)[-1])
    result = json.loads((test_dir / "test_result.json").read_text())
    scores = json.loads((test_dir / "metrics.json").read_text())
    return {
        **{k: scores.get(k) for k in ("image_auroc", "pixel_auroc", "au_pro")},
        "tpr": result.get("tpr"),
        "tnr": result.get("tnr"),
        "proxy": proxy_score(validation)[0],
    }


def method_table(rows):
    """Markdown: every evaluated map method per run (real test metrics beside the proxy), and how
    often the proxy AU-PRO picks the method with the better real AU-PRO."""
    ok = [r for r in rows if r.get("status") == "ok" and len(r.get("methods", {})) > 1]
    if not ok:
        return ""
    lines = [
        "",
        "Map methods on the same trained runs (default first; proxy = AU-PRO on validation images with painted "
        "defects, no test image used):",
        "",
        "| category | seed | method | image AUROC | pixel AUROC | AU-PRO | TPR | TNR | proxy AU-PRO |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    agree = total = 0
    for r in ok:
        for method, m in r["methods"].items():
            if "error" in m:
                lines.append(f"| {r['category']} | {r['seed']} | {method} | failed: {m['error'][:80]} | | | | | |")
                continue
            lines.append(
                f"| {r['category']} | {r['seed']} | {method} | "
                + " | ".join(_fmt(m.get(k)) for k in ("image_auroc", "pixel_auroc", "au_pro", "tpr", "tnr", "proxy"))
                + " |"
            )
        good = {k: v for k, v in r["methods"].items() if v.get("au_pro") is not None and v.get("proxy") is not None}
        if len(good) > 1:
            total += 1
            agree += max(good, key=lambda k: good[k]["proxy"]) == max(good, key=lambda k: good[k]["au_pro"])
    if total:
        lines += ["", f"The proxy picked the method with the better real AU-PRO on {agree} of {total} runs."]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- tables


def _mean(values):
    values = [v for v in values if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v))]
    return sum(values) / len(values) if values else None


def summarize(rows):
    """Rows per category (one per seed, then the mean over seeds when there are several) and the
    mean over categories (of each category's mean over its successful seeds).

    Returns ``(table rows, overall mean row)``; failed seeds keep their row and error.
    """
    table, means = [], []
    for name in dict.fromkeys(r["category"] for r in rows):
        mine = [r for r in rows if r["category"] == name]
        table += mine
        ok = [r for r in mine if r["status"] == "ok"]
        if not ok:
            continue
        mean = {
            "category": name,
            "seed": f"mean of {len(ok)}" if len(ok) > 1 else ok[0]["seed"],
            "status": "ok",
            **{k: _mean([r.get(k) for r in ok]) for k in METRICS},
        }
        modes = sorted({str(r.get("mode")) for r in ok if r.get("mode")})
        mean["mode"] = "/".join(modes) or None
        if len(mine) > 1:
            table.append(mean)
        means.append(mean)
    overall = None
    if means:
        failed = len({r["category"] for r in rows}) - len(means)
        overall = {
            "category": f"**mean of {len(means)} categor{'y' if len(means) == 1 else 'ies'}**"
            + (f" ({failed} failed, not counted)" if failed else ""),
            "seed": "",
            "status": "ok",
            "mode": None,
            **{k: _mean([m.get(k) for m in means]) for k in METRICS},
        }
    return table, overall


def _fmt(value, digits=3):
    return "–" if value is None else f"{value:.{digits}f}"


def _with_interval(row, key):
    """A run's figure with its 95% interval from test.py's results (rows written before test.py
    stored intervals, and means over runs, have none)."""
    interval = row.get(f"{key}_interval")
    return _fmt(row.get(key)) + (f" ({interval[0]:.2f}–{interval[1]:.2f})" if interval else "")


def format_tables(rows, header, loo=False):
    """The Markdown block for one suite run: a header, the main table and a per-defect-type table."""
    table, overall = summarize(rows)
    proxy = any(r.get("proxy") is not None for r in rows)
    keys = {r.get("proxy_key") for r in rows if r.get("proxy") is not None}
    proxy_name = "proxy AU-PRO" if keys and all(str(k).endswith("au_pro") for k in keys) else "proxy"
    cols = [
        "category",
        "seed",
        "regime",
        "image AUROC",
        "pixel AUROC",
        "AU-PRO (FPR ≤ 0.3)",
        "TPR",
        "TNR",
        *([proxy_name] if proxy else []),
        "training min",
        "wall min",
        "note",
    ]
    lines = [header, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in table + ([overall] if overall else []):
        note = r.get("error") or ""
        if r.get("status") == "ok" and r.get("min_area") is not None:
            note = f"{r.get('method')} map, area {r['min_area']} px @ {r.get('size')}"
        cells = [
            r["category"],
            str(r["seed"]),
            r.get("mode") or "–",
            *(_with_interval(r, k) for k in ("image_auroc", "pixel_auroc", "au_pro", "tpr", "tnr")),
            *([_fmt(r.get("proxy"))] if proxy else []),
            _fmt(r.get("training_minutes"), 1),
            _fmt(r.get("wall_minutes"), 1),
            note.replace("|", "/"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    detail = [r for r in rows if r["status"] == "ok" and r.get("per_defect_type")]
    if detail:
        lines += [
            "",
            "Per defect type (that type's images with every good image; detection rate at the validated threshold):",
            "",
            "| category | seed | defect type | images | image AUROC | pixel AUROC | AU-PRO | detection rate |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in detail:
            for defect, m in r["per_defect_type"].items():
                rate = r.get("detection_rate_per_defect_type", {}).get(defect)
                lines.append(
                    f"| {r['category']} | {r['seed']} | {defect} | {m.get('n_defective', '–')} | "
                    f"{_fmt(m.get('image_auroc'))} | {_fmt(m.get('pixel_auroc'))} | {_fmt(m.get('au_pro'))} | {_fmt(rate, 2)} |"
                )
    return (
        "\n".join(lines) + "\n" + method_table(rows) + trivial_table(rows) + (leave_one_out_table(rows) if loo else "")
    )


LOO_METRICS = ("image_auroc", "pixel_auroc", "au_pro")


def _quality(m):
    values = [m.get(k) for k in LOO_METRICS]
    return None if any(v is None for v in values) else sum(values) / len(values)


def leave_one_out(rows) -> dict:
    """For each category, the map method the *other* categories would make the default (best mean
    of image AUROC, pixel AUROC and AU-PRO over their runs, every seed) and this category's figures
    with it: ``{category: {"method": ..., "image_auroc": ..., ...}}``. Only methods evaluated on
    every other category count; a category without others is left out."""
    ok = [r for r in rows if r.get("status") == "ok" and r.get("methods")]
    categories = list(dict.fromkeys(r["category"] for r in ok))
    out = {}
    for c in categories:
        others = [r for r in ok if r["category"] != c]
        if not others:
            continue
        per_category = {}
        for r in others:
            for m, figures_ in r["methods"].items():
                q = _quality(figures_)
                if q is not None:
                    per_category.setdefault(m, {}).setdefault(r["category"], []).append(q)
        names = {r["category"] for r in others}
        ranked = {m: _mean([_mean(v) for v in cats.values()]) for m, cats in per_category.items() if set(cats) == names}
        if not ranked:
            continue
        method = max(ranked, key=ranked.get)
        mine = [r["methods"].get(method) for r in ok if r["category"] == c]
        if any(x is None or _quality(x) is None for x in mine):
            continue
        out[c] = {"method": method, **{k: _mean([x.get(k) for x in mine]) for k in (*LOO_METRICS, "tpr", "tnr")}}
    return out


def leave_one_out_table(rows):
    """Markdown: each category scored with the method the other categories choose (see
    :func:`leave_one_out`)."""
    chosen = leave_one_out(rows)
    if not chosen:
        return ""
    lines = [
        "",
        "Leave one out: each category with the map method chosen on the *other* categories only (best mean of "
        "image AUROC, pixel AUROC and AU-PRO over their runs):",
        "",
        "| category | method chosen without it | image AUROC | pixel AUROC | AU-PRO | TPR | TNR |",
        "|---|---|---|---|---|---|---|",
    ]
    for c, m in chosen.items():
        lines.append(
            f"| {c} | {m['method']} | " + " | ".join(_fmt(m.get(k)) for k in (*LOO_METRICS, "tpr", "tnr")) + " |"
        )
    return "\n".join(lines) + "\n"


TRIVIAL_CHECKS = (
    ("median", "image_auroc"),
    ("median", "pixel_auroc"),
    ("median", "au_pro"),
    ("brightness", "image_auroc"),
)


def below_trivial(row) -> list[str]:
    """The metrics on which a run scores below a trivial detector (see bench/trivial.py)."""
    trivial = row.get("trivial") or {}
    below = []
    for detector, key in TRIVIAL_CHECKS:
        floor, got = (trivial.get(detector) or {}).get(key), row.get(key)
        if floor is not None and got is not None and got < floor:
            below.append(f"{key} {got:.3f} < {detector} {floor:.3f}")
    return below


def trivial_table(rows):
    """Markdown: the two trivial detectors beside each category, and every run below one of them."""
    ok = [r for r in rows if r.get("status") == "ok" and isinstance(r.get("trivial"), dict)]
    if not ok:
        return ""
    lines = [
        "",
        "Trivial detectors on the same test sets, no training (bench/trivial.py): |image − 21-px median| smoothed "
        "(σ 4) for pixels and images; mean brightness distance from the training images for images.",
        "",
        "| category | median: image AUROC | pixel AUROC | AU-PRO | brightness: image AUROC | default below a trivial detector |",
        "|---|---|---|---|---|---|",
    ]
    seen = set()
    for r in ok:
        t = r["trivial"]
        if r["category"] not in seen:
            seen.add(r["category"])
            median, bright = t.get("median") or {}, t.get("brightness") or {}
            lows = [f"seed {x['seed']}: " + "; ".join(below_trivial(x)) for x in ok if x["category"] == r["category"]]
            lows = [low for low in lows if not low.endswith(": ")]
            lines.append(
                f"| {r['category']} | {_fmt(median.get('image_auroc'))} | {_fmt(median.get('pixel_auroc'))} | "
                f"{_fmt(median.get('au_pro'))} | {_fmt(bright.get('image_auroc'))} | {' / '.join(lows) or 'no'} |"
            )
    return "\n".join(lines) + "\n"


def header_for(settings: Settings, default_area: bool, argv) -> str:
    """Table title: date, commit, command, and whether this is the default configuration."""
    git = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "-uno"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    what = []
    if settings.extra_train or settings.extra_eval:
        what.append(
            "**EXPERIMENT, not the default configuration**: "
            + ", ".join(
                f"{name} `{shlex.join(words)}`"
                for name, words in (("train.py", settings.extra_train), ("validate.py/test.py", settings.extra_eval))
                if words
            )
        )
    else:
        what.append("default configuration")
    if settings.quick:
        what.append("**--quick smoke run on tiny data: not a quality figure**")
    area = (
        "validate.py's default minimum area"
        if default_area
        else f"minimum area size² // {AREA_DIVISOR} px at the model size"
    )
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"### Suite run {stamp}, commit {git or '?'}{' (uncommitted changes)' if dirty else ''}: {'; '.join(what)}\n\n"
        f"`{shlex.join(['bench/bench_suite.py', *argv])}` — {area}; TPR/TNR at the threshold validate.py picks "
        f"on held-back good images; in brackets, a run's 95% intervals (test.py's: bootstrap for the image AUROC, "
        f"exact for TPR/TNR); wall time per category includes data generation, training, validation and testing."
    )


def append_to_readme(readme: Path, block: str):
    """Insert ``block`` at the end of the README's Suite section (a new section at the end if absent)."""
    text = readme.read_text()
    start = text.find("\n" + SECTION)
    if start < 0:
        text = text.rstrip("\n") + f"\n\n{SECTION}\n\n{block}"
    else:
        nxt = text.find("\n## ", start + 1)
        end = len(text) if nxt < 0 else nxt + 1
        text = text[:end].rstrip("\n") + "\n\n" + block + ("\n" if nxt >= 0 else "") + text[end:]
    tmp = readme.with_name(readme.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, readme)


# --------------------------------------------------------------------------- the suite


def run_suite(settings: Settings, argv=()) -> list:
    """Run every chosen category and seed; print the tables, append rows (and the README). Returns the rows."""
    categories, notes = discover(settings)
    for note in notes:
        print(f"note: {note}", flush=True)
    if not categories:
        raise UserError("no categories to run")
    default_area = validate_has_default_area(settings)
    quick_train = quick_train_args(settings) if settings.quick else ()
    logs = settings.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    jobs = [(c, s) for c in categories for s in settings.seeds]
    rows = []
    for i, (category, seed) in enumerate(jobs, 1):
        log = logs / f"{stamp}_{category.name.replace('/', '_')}_s{seed}.log"
        print(f"[{i}/{len(jobs)}] {category.name} seed {seed} (log: {log})", flush=True)
        row = run_category(settings, category, seed, default_area, log, quick_train)
        row.update(
            quick=settings.quick,
            extra_train_args=list(settings.extra_train),
            extra_eval_args=list(settings.extra_eval),
            started=stamp,
        )
        rows.append(row)
        summary = (
            f"image AUROC {_fmt(row.get('image_auroc'))}, pixel AUROC {_fmt(row.get('pixel_auroc'))}, "
            f"AU-PRO {_fmt(row.get('au_pro'))}, TPR {_fmt(row.get('tpr'))}, TNR {_fmt(row.get('tnr'))}"
            if row["status"] == "ok"
            else f"FAILED {row['error']}"
        )
        print(f"    {summary} ({row['wall_minutes']:.1f} min)", flush=True)
        with (settings.out / "suite.jsonl").open("a") as f:
            f.write(json.dumps(row, default=str) + "\n")
    block = format_tables(rows, header_for(settings, default_area, argv), settings.leave_one_out)
    print("\n" + block)
    if settings.append:
        append_to_readme(settings.readme, block)
        print(f"tables added to the Suite section of {settings.readme}")
    print(f"rows appended to {settings.out / 'suite.jsonl'}")
    return rows


def report(settings: Settings, jsonl: Path, argv=()) -> str:
    """The tables of rows saved by earlier runs (``OUT/suite.jsonl``), e.g. of one suite run that was
    split into parts; with ``--append`` added to the README too."""
    try:
        rows = [json.loads(line) for line in Path(jsonl).read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as exc:
        raise UserError(f"--report {jsonl}: cannot read saved rows: {exc.__class__.__name__}") from None
    if not rows:
        raise UserError(f"--report {jsonl}: no rows")
    stamps = sorted({str(r.get("started")) for r in rows})
    header = (
        header_for(settings, True, argv)
        + f"\n\nRows of {len(stamps)} suite run(s) started {', '.join(stamps)}, from `{jsonl}`."
    )
    block = format_tables(rows, header, settings.leave_one_out)
    print(block)
    if settings.append:
        append_to_readme(settings.readme, block)
    return block


def main(argv=None):
    """Parse arguments and run the suite (or, with --report, print the tables of saved rows)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = get_parser().parse_args(argv)
    if args.report:
        report(settings_from_args(args), Path(args.report), argv)
        return
    run_suite(settings_from_args(args), argv)


if __name__ == "__main__":
    sys.exit(run_cli(main))
