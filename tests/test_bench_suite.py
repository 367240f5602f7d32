"""bench/bench_suite.py: a --quick smoke run on tiny generated data, and its table logic."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, cli

from utils import UserError  # noqa: E402


def _load_suite():
    spec = importlib.util.spec_from_file_location("bench_suite", ROOT / "bench" / "bench_suite.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


suite = _load_suite()
README_TEXT = (
    "# Benchmarks\n\n## Suite — bench/bench_suite.py\n\nHow it works.\n\n## Training throughput\n\nOther text.\n"
)


def test_quick_suite_runs_every_category_and_reports_a_failure_in_its_row(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(README_TEXT)
    out = tmp_path / "out"
    # --compare with no method: only the run's default map (the comparison table is checked below on fixed rows).
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "bench_suite.py"),
            "--quick",
            "--textures",
            "brick",
            "nosuch",
            "--real-data",
            str(tmp_path / "absent"),
            "--out",
            str(out),
            "--append",
            "--readme",
            str(readme),
            "--compare",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )  # its steps end with it (pdeathsig)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"note: no real categories under {tmp_path / 'absent'}" in done.stdout

    rows = [json.loads(line) for line in (out / "suite.jsonl").read_text().splitlines()]
    brick, bad = rows
    # One category failing (an unknown texture: make_dataset.py refuses it) does not stop the other.
    assert bad["category"] == "generated/nosuch" and bad["status"] == "failed"
    assert bad["error"].startswith("generate: make_dataset.py: error:") and "nosuch" in bad["error"]
    assert brick["category"] == "generated/brick" and brick["status"] == "ok", brick["error"]

    # The generated data and the run stay under --out (never in the repository's mvtec/).
    assert Path(brick["directory"]) == out / "quick" / "generated" / "brick"
    run = Path(brick["run"])
    assert run.is_relative_to(out / "quick" / "runs" / "generated" / "brick")
    setup = json.loads((run / "setup.json").read_text())
    assert setup["seed"] == 0 and setup["size"] == 64 and setup["epochs_run"] == 1
    assert brick["training_minutes"] == pytest.approx(setup["training_seconds"] / 60)
    assert brick["wall_minutes"] * 60 >= setup["training_seconds"]

    # Figures are the ones the scripts wrote.
    (result_path,) = run.glob(f"test/{brick['method']}/a*_t*/test_result.json")
    result = json.loads(result_path.read_text())
    scores = json.loads((result_path.parent / "metrics.json").read_text())
    for key in ("image_auroc", "pixel_auroc", "au_pro"):
        assert brick[key] == scores[key] and 0 <= brick[key] <= 1
    assert (brick["tpr"], brick["tnr"]) == (result["tpr"], result["tnr"])
    assert result["min_area"] == brick["min_area"]
    if not suite.validate_has_default_area(suite.settings_from_args(suite.get_parser().parse_args([]))):
        assert brick["min_area"] == suite.area_rule(64) == 5
    assert set(brick["per_defect_type"]) == {"contamination", "crack", "hole", "scratch", "stain"}

    # The table went into the Suite section, before the next section, marked as a smoke run.
    text = readme.read_text()
    start, block, end = text.index("## Suite"), text.index("### Suite run"), text.index("## Training throughput")
    assert start < text.index("How it works.") < block < end
    assert text.endswith("## Training throughput\n\nOther text.\n")
    table = text[block:end]
    assert "--quick smoke run on tiny data: not a quality figure" in table and "default configuration" in table
    assert brick["image_auroc_interval"] == scores["image_auroc_interval"]
    assert (brick["tpr_interval"], brick["tnr_interval"]) == (result["tpr_interval"], result["tnr_interval"])
    low, high = brick["image_auroc_interval"]
    (tpr_low, tpr_high), (tnr_low, tnr_high) = brick["tpr_interval"], brick["tnr_interval"]
    assert (
        f"| generated/brick | 0 | {brick['mode'] or '–'} | {brick['image_auroc']:.3f} ({low:.2f}–{high:.2f}) | "
        f"{brick['pixel_auroc']:.3f} | {brick['au_pro']:.3f} | {brick['tpr']:.3f} ({tpr_low:.2f}–{tpr_high:.2f}) | "
        f"{brick['tnr']:.3f} ({tnr_low:.2f}–{tnr_high:.2f}) |"
    ) in table
    assert "in brackets, a run's 95% intervals" in table
    assert "| generated/nosuch | 0 |" in table and "generate: make_dataset.py: error:" in table
    assert "**mean of 1 category** (1 failed, not counted)" in table
    assert "| generated/brick | 0 | hole | 1 |" in table
    assert table in done.stdout


def _row(category, seed, status="ok", **values):
    return {
        "category": category,
        "seed": seed,
        "status": status,
        "error": None if status == "ok" else "train: boom",
        **values,
    }


def test_summary_means_over_seeds_then_categories_and_skips_failures():
    rows = [
        _row("a/x", 0, image_auroc=0.8, au_pro=0.5, wall_minutes=2.0),
        _row("a/x", 1, image_auroc=0.6, au_pro=0.7, wall_minutes=4.0),
        _row("a/x", 2, status="failed", wall_minutes=1.0),
        _row("b/y", 0, image_auroc=1.0, au_pro=0.9, wall_minutes=1.0),
        _row("c/z", 0, status="failed"),
    ]
    table, overall = suite.summarize(rows)
    assert [r["seed"] for r in table] == [0, 1, 2, "mean of 2", 0, 0]
    mean_x = table[3]
    assert mean_x["image_auroc"] == pytest.approx(0.7) and mean_x["au_pro"] == pytest.approx(0.6)
    assert mean_x["wall_minutes"] == pytest.approx(3.0)  # failed seed's time not in the mean
    assert overall["image_auroc"] == pytest.approx(0.85) and overall["au_pro"] == pytest.approx(0.75)
    assert overall["category"] == "**mean of 2 categories** (1 failed, not counted)"
    assert overall["pixel_auroc"] is None
    text = suite.format_tables(rows, "### header")
    assert "proxy" not in text  # no validation result reported one
    assert "| c/z | 0 | – | – |" in text and "train: boom" in text


def test_a_runs_intervals_are_printed_beside_its_figures_and_means_have_none():
    rows = [
        _row("a/x", 0, image_auroc=0.8, image_auroc_interval=[0.61, 0.93], tnr=0.9, tnr_interval=[0.683, 0.988]),
        _row("a/x", 1, image_auroc=0.6, tnr=0.8),  # a row saved before test.py stored intervals
    ]
    text = suite.format_tables(rows, "### header")
    assert "| a/x | 0 | – | 0.800 (0.61–0.93) | – | – | – | 0.900 (0.68–0.99) |" in text
    assert "| a/x | 1 | – | 0.600 | – | – | – | 0.800 |" in text
    assert "| a/x | mean of 2 | – | 0.700 | – | – | – | 0.850 |" in text


def test_proxy_and_regime_are_read_whatever_their_shape():
    assert suite.proxy_score({"proxy": {"pixel_auroc": 0.9, "au_pro": 0.7}}) == (0.7, "proxy.au_pro")
    assert suite.proxy_score({"proxy_au_pro": 0.5, "threshold": 0.1}) == (0.5, "proxy_au_pro")
    assert suite.proxy_score({"proxy": {"score": 0.4, "n": 3}})[0] == 0.4
    assert suite.proxy_score({"threshold": 0.1}) == (None, None)
    assert suite._mode({}) is None
    assert suite._mode({"mode": "surface"}) == "surface"
    assert suite._mode({"mode": "surface", "mode_requested": "auto"}) == "surface (auto)"
    assert suite._mode({"mode": {"requested": "auto", "chosen": "object"}}) == "object"
    text = suite.format_tables([_row("a/x", 0, image_auroc=0.9, proxy=0.61, mode="surface")], "### h")
    assert "| proxy |" in text and "| a/x | 0 | surface | 0.900 |" in text and "| 0.610 |" in text


def test_method_table_sets_the_proxy_against_the_real_au_pro():
    def methods(proxy_ssim, au_pro_ssim, proxy_learned, au_pro_learned):
        return {
            "ssim": {"au_pro": au_pro_ssim, "proxy": proxy_ssim, "image_auroc": 0.9},
            "learned": {"au_pro": au_pro_learned, "proxy": proxy_learned},
        }

    rows = [
        _row("a/x", 0, methods=methods(0.5, 0.8, 0.6, 0.7)),  # proxy prefers learned, the test set ssim
        _row("b/y", 0, methods=methods(0.2, 0.3, 0.4, 0.6)),  # both prefer learned
        _row("c/z", 0, methods={"ssim": {"au_pro": 0.5, "proxy": 0.1}, "learned": {"error": "test learned: boom"}}),
        _row("d/w", 0, methods={"ssim": {"au_pro": 0.5}}),
    ]  # one method only: not in the table
    text = suite.method_table(rows)
    assert "| a/x | 0 | ssim | 0.900 | – | 0.800 | – | – | 0.500 |" in text
    assert "| c/z | 0 | learned | failed: test learned: boom |" in text and "d/w" not in text
    assert "The proxy picked the method with the better real AU-PRO on 1 of 2 runs." in text
    assert suite.method_table([_row("d/w", 0, methods={"ssim": {"au_pro": 0.5}})]) == ""


def test_bad_options_give_one_line_errors(tmp_path, capsys):
    base = ["--real-data", str(tmp_path), "--out", str(tmp_path / "out")]
    for argv, message in (
        (["--categories", "nosuch"], "unknown category 'nosuch'; available: generated/brick, generated/gravel"),
        (["--extra-train-args", "--seed 3"], "--extra-train-args may not set --seed"),
        (["--extra-eval-args", "--method 'l2"], "--extra-eval-args: cannot split"),
        (["--seeds", "1", "1"], "--seeds lists a seed twice"),
        (["--seeds", "-1"], "--seeds must be whole numbers >= 0"),
    ):
        code, out, err = cli(suite.main, argv + base, capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (argv, err)
    with pytest.raises(UserError, match="not found"):
        suite.settings_from_args(suite.get_parser().parse_args(["--append", "--readme", str(tmp_path / "none.md")]))
    assert not (tmp_path / "out").exists()


def test_trivial_table_names_every_metric_below_a_trivial_detector():
    trivial = {"median": {"image_auroc": 0.8, "pixel_auroc": 0.9, "au_pro": 0.7}, "brightness": {"image_auroc": 0.75}}
    low = _row("a/x", 0, image_auroc=0.78, pixel_auroc=0.95, au_pro=0.69, trivial=trivial)
    high = _row("a/x", 1, image_auroc=0.9, pixel_auroc=0.95, au_pro=0.8, trivial=trivial)
    assert suite.below_trivial(low) == [
        "image_auroc 0.780 < median 0.800",
        "au_pro 0.690 < median 0.700",
    ]
    assert suite.below_trivial(high) == []
    text = suite.trivial_table([low, high])
    assert "| a/x | 0.800 | 0.900 | 0.700 | 0.750 | seed 0: image_auroc 0.780 < median 0.800; au_pro" in text
    assert text.count("| a/x |") == 1  # one line per category, whatever its seeds
    assert suite.trivial_table([_row("b/y", 0)]) == ""  # no trivial figures: no table


def test_trivial_detectors_score_a_class_folder(tmp_path):
    """On a generated class with painted defects the median detector finds them (well above chance)."""
    import make_dataset

    sys.path.insert(0, str(ROOT / "bench"))
    import trivial

    (class_dir,) = make_dataset.generate(
        tmp_path, classes=("brick",), size=48, n_train=6, n_test_good=3, n_test_defect=2, seed=0
    )
    got = trivial.trivial_metrics(class_dir)
    assert set(got) == {"median", "brightness"}
    assert 0.5 < got["median"]["pixel_auroc"] <= 1 and 0 <= got["brightness"]["image_auroc"] <= 1


def test_leave_one_out_scores_each_category_with_the_method_the_others_prefer():
    def m(q, tpr=0.5):
        return {"image_auroc": q, "pixel_auroc": q, "au_pro": q, "tpr": tpr, "tnr": 0.9}

    rows = [
        _row("a/x", 0, methods={"fused": m(0.9), "ssim": m(0.5)}),
        _row("a/x", 1, methods={"fused": m(0.7), "ssim": m(0.5)}),
        _row("b/y", 0, methods={"fused": m(0.6), "ssim": m(0.8)}),
        _row("c/z", 0, methods={"fused": m(0.9), "ssim": m(0.2), "median": m(1.0)}),
    ]
    chosen = suite.leave_one_out(rows)
    # Without a/x: fused (0.6 + 0.9) / 2 beats ssim (0.8 + 0.2) / 2; median is not on every other category.
    assert chosen["a/x"]["method"] == "fused" and chosen["a/x"]["image_auroc"] == pytest.approx(0.8)
    # Without b/y: fused (mean 0.8 over a/x's seeds, 0.9) beats ssim (0.5, 0.2).
    assert chosen["b/y"] == {"method": "fused", **m(0.6)} | {"image_auroc": 0.6}
    # Without c/z: fused (0.8, 0.6) = 0.7 beats ssim (0.5, 0.8) = 0.65.
    assert chosen["c/z"]["method"] == "fused" and chosen["c/z"]["au_pro"] == 0.9
    text = suite.leave_one_out_table(rows)
    assert "| b/y | fused | 0.600 | 0.600 | 0.600 | 0.500 | 0.900 |" in text
    assert suite.leave_one_out([_row("a/x", 0, methods={"fused": m(0.9)})]) == {}
