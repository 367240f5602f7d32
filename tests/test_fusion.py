"""The image score in the threshold's units, the threshold policies, the median and fused maps,
and the proxy's defect families (issue 22, issue 23 point 3)."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
from scipy import ndimage
from skimage.measure import label

import detector
import evaluation
import inference
import metrics
import resmaps
import synthetic
import validation


def classify(maps, threshold, min_area):
    """Per map (verdict, largest area, region count) from :func:`resmaps.regions`, as arrays."""
    found = [resmaps.regions(m, threshold, min_area) for m in maps]
    return tuple(np.array(v) for v in zip(*((mask.any(), largest, count) for mask, largest, count in found)))


def _peak_by_brute_force(m, area):
    """Independent: scan every value of the map upwards with scikit-image's labelling."""
    for v in np.unique(m):
        labels = label(m > v, connectivity=2)
        largest = np.bincount(labels.ravel())[1:].max() if labels.max() else 0
        if largest < area:
            return float(v)
    raise AssertionError("unreachable: nothing lies above the top value")


def test_area_peak_is_the_highest_threshold_that_still_holds_a_region_of_the_area():
    rng = np.random.default_rng(0)
    maps = ndimage.gaussian_filter(rng.random((6, 20, 24)), (0, 1.5, 1.5)).astype(np.float32)
    for area in (1, 5, 30):
        peaks = resmaps.area_peaks(maps, area)
        assert list(peaks) == [_peak_by_brute_force(m, area) for m in maps]


def test_a_lone_hot_pixel_does_not_raise_the_score_and_a_large_faint_region_does():
    m = np.zeros((2, 30, 30), np.float32)
    m[0, 3, 3] = 9.0  # one hot pixel
    m[1, 5:15, 5:15] = 0.5  # 100 px, faint
    peaks = resmaps.area_peaks(m, 10)
    assert peaks[0] == 0.0 and peaks[1] == 0.5


@pytest.mark.parametrize("where", ["quartile", "median", "an image's own peak"])
def test_score_above_one_is_exactly_the_verdict(where):
    rng = np.random.default_rng(1)
    maps = ndimage.gaussian_filter(rng.random((20, 16, 16)), (0, 1, 1)).astype(np.float32)
    peaks = np.array([_peak_by_brute_force(m, 6) for m in maps])
    threshold = {"quartile": np.quantile(peaks, 0.25), "median": np.median(peaks)}.get(where, peaks[3])
    scores = detector.image_scores(maps, threshold, 6)
    defective, _, _ = classify(maps, threshold, 6)
    assert 0 < defective.sum() < len(maps)
    assert list(scores > 1.0) == list(defective)
    if where == "an image's own peak":
        assert scores[3] == 1.0 and not defective[3]  # at its peak an image is not (yet) defective


def test_zero_false_alarm_policy_is_the_top_good_peak_and_a_rate_allows_that_share():
    good = [0.1, 0.4, 0.3, 0.2]
    t, rec = validation.choose_threshold(good, [0.9], false_alarms=0.0)
    assert t == 0.4 and rec["validation_tnr"] == 1.0 and rec["proxy_tpr"] == 1.0
    assert rec["validation_tnr_interval"] == pytest.approx([0.025**0.25, 1.0])  # 4 of 4 passed: at least 0.40
    assert rec["proxy_tpr_interval"] == pytest.approx([0.025, 1.0])  # 1 of 1 found
    t, rec = validation.choose_threshold(good, None, false_alarms=0.25)  # one image of four may be flagged
    assert t == 0.3 and rec["validation_tnr"] == 0.75
    assert rec["validation_tnr_interval"] == pytest.approx(metrics.rate_interval(3, 4))
    assert rec["proxy_tpr"] is None and rec["proxy_tpr_interval"] is None
    t, _ = validation.choose_threshold(good, None, None)  # no painted copies: zero false alarms
    assert t == 0.4
    with pytest.raises(ValueError, match="false-alarm rate must be in"):
        validation.choose_threshold(good, None, 1.0)


def test_balanced_policy_takes_the_middle_of_the_best_interval_within_the_false_alarm_cap():
    good = np.linspace(0.0, 0.9, 10)  # 10 good images: at most one may be flagged
    painted = [0.85, 0.95, 1.5, 2.0]
    t, rec = validation.choose_threshold(good, painted)
    # Flagging the top good image (0.9) finds 0.85 too? No: 0.85 < 0.9 stays below any t >= 0.8.
    # Intervals: [0.8, 0.85) TNR 0.9 TPR 1.0 -> J 1.9; [0.85, 0.9) J 0.9 + 0.75; [0.9, 0.95) J 1.0 + 0.75.
    assert t == pytest.approx((0.8 + 0.85) / 2) and rec["validation_tnr"] == 0.9 and rec["proxy_tpr"] == 1.0
    assert rec["zero_false_alarm_threshold"] == 0.9
    # With every copy above the good images the policy keeps zero false alarms, half-way to the copies.
    t, rec = validation.choose_threshold(good, [1.5, 2.0])
    assert t == pytest.approx(1.2) and rec["validation_tnr"] == 1.0


def test_fusion_combines_normalised_components_and_checks_itself():
    a = np.array([[[1.0, 3.0]]], np.float32)
    b = np.array([[[10.0, 0.0]]], np.float32)
    f = inference.Fusion(("ssim", "median"), (0.75, 0.25), (1.0, 2.0), (2.0, 4.0))
    # 0.75 log(1 + max(0, (a-1)/2)) + 0.25 log(1 + max(0, (b-2)/4)): [0 + 0.25 log 3, 0.75 log 2 + 0]
    np.testing.assert_allclose(f.combine([a, b]), [[[0.25 * np.log(3), 0.75 * np.log(2)]]], rtol=1e-6)
    assert inference.Fusion.from_record(json.loads(json.dumps(f.record()))) == f
    with pytest.raises(ValueError, match="weights must be"):
        inference.Fusion(("ssim",), (0.0,), (0.0,), (1.0,))
    with pytest.raises(ValueError, match="spreads must be"):
        inference.Fusion(("ssim",), (1.0,), (0.0,), (0.0,))
    with pytest.raises(ValueError, match="components must be among"):
        inference.Fusion(("sobel",), (1.0,), (0.0,), (1.0,))


def test_fusion_subtracts_each_components_usual_map_before_its_centre():
    a = np.array([[[1.0, 3.0]]], np.float32)
    b = np.array([[[10.0, 0.0]]], np.float32)
    f = inference.Fusion(("ssim", "median"), (0.75, 0.25), (1.0, 2.0), (2.0, 4.0), usual=True)
    usual = [np.array([[0.0, 2.0]], np.float32), np.array([[4.0, 0.0]], np.float32)]
    # 0.75 log(1 + max(0, (a-u-1)/2)) + 0.25 log(1 + max(0, (b-u-2)/4)): [0 + 0.25 log 2, 0 + 0]
    np.testing.assert_allclose(f.combine([a, b], usual=usual), [[[0.25 * np.log(2), 0.0]]], rtol=1e-6, atol=0)
    assert f.describe() == "0.75×ssim + 0.25×median, each minus its usual map"
    assert inference.Fusion.from_record(json.loads(json.dumps(f.record()))) == f
    with pytest.raises(ValueError, match="pass `usual`"):
        f.combine([a, b])
    assert f.record()["usual_tolerance"] == 4 and inference.Fusion.from_record(f.record()) == f
    assert dataclasses.replace(f, usual=False).record()["usual_tolerance"] is None
    earlier = {k: v for k, v in f.record().items() if k != "usual_tolerance"}  # validated with 3×3 usual maps
    with pytest.raises(ValueError, match="usual maps of a 1-px tolerance, today's are 4 px"):
        inference.Fusion.from_record(earlier)
    with pytest.raises(ValueError, match="usual maps of a 2-px tolerance"):
        inference.Fusion.from_record({**earlier, "usual_tolerance": 2})
    assert inference.Fusion.from_record({**earlier, "usual": False}).usual is False  # nothing subtracted: fine
    old = {k: v for k, v in f.record().items() if k not in ("usual", "usual_tolerance")}  # before usual maps
    assert inference.Fusion.from_record(old).usual is False
    with pytest.raises(ValueError, match="usual must be true or false"):
        inference.Fusion.from_record({**old, "usual": "yes"})
    with pytest.raises(ValueError, match="needs components"):
        inference.Fusion.from_record({"weights": [1.0]})


def _spot_parts(defects_on_spot: bool):
    """One component and its usual map, hot at one place (a rim the training images had).
    Off the spot: the good maps and copies are hot there too, and the painted defects, fainter,
    lie elsewhere. On the spot: the validation maps are not hot there, and the defects are."""
    rng = np.random.default_rng(5)
    good = rng.random((8, 24, 24)).astype(np.float32) * 0.1
    painted = rng.random((8, 24, 24)).astype(np.float32) * 0.1
    spot = np.zeros((24, 24), np.float32)
    spot[2:6, 2:6] = 1.0
    if not defects_on_spot:
        good, painted = good + spot, painted + spot
    masks = np.zeros((8, 24, 24), bool)
    where = (slice(2, 6), slice(2, 6)) if defects_on_spot else (slice(14, 20), slice(14, 20))
    masks[(slice(None), *where)] = True
    painted = painted + 0.5 * masks
    return {"ssim": (good, (painted, masks, ["dark_area"] * 8))}, [spot + 0.1]


@pytest.mark.parametrize("on_spot", [False, True])
def test_usual_maps_are_subtracted_only_when_the_painted_copies_say_so(on_spot):
    parts, usual = _spot_parts(on_spot)
    fusion, _ = validation.choose_fusion(parts, 4)
    chosen, measured = validation.choose_usual(fusion, parts, usual, 4)
    assert chosen.usual is (not on_spot) and measured["usual"] is chosen.usual
    assert chosen.weights == fusion.weights and chosen.centres == fusion.centres  # only the subtraction changes
    better, worse = (measured["with"], measured["without"]) if not on_spot else (measured["without"], measured["with"])
    assert better["image_auroc"] > worse["image_auroc"] + 0.3  # the rim beats every defect / the defect is erased


def test_fusion_search_prefers_the_component_that_sees_the_painted_defects():
    rng = np.random.default_rng(2)
    good = rng.random((4, 24, 24)).astype(np.float32) * 0.1
    painted = rng.random((4, 24, 24)).astype(np.float32) * 0.1
    masks = np.zeros((4, 24, 24), bool)
    masks[:, 8:16, 8:16] = True
    seeing = painted + 0.08 * masks  # this component lights up, faintly, where the defects are
    blind_good = rng.random((4, 24, 24)).astype(np.float32)
    blind = 0.5 * rng.random((4, 24, 24)).astype(np.float32) * (1 - masks)  # darker, darkest on the defects
    families = ["dark_area"] * 4
    parts = {"ssim": (good, (seeing, masks, families)), "median": (blind_good, (blind, masks, families))}
    fusion, searched = validation.choose_fusion(parts, 4, "proxy")
    assert fusion.components == ("ssim", "median") and fusion.weights == (1.0, 0.0)
    assert [s["weights"] for s in searched] == [[0, 1], [0.25, 0.75], [0.5, 0.5], [0.75, 0.25], [1, 0]]
    assert searched[0]["objective"] < searched[-1]["objective"]
    # Equally good components: the even mix wins the tie.
    twin = {"ssim": parts["ssim"], "l2": (good.copy(), (seeing.copy(), masks, families))}
    assert validation.choose_fusion(twin, 4, "proxy")[0].weights == (0.5, 0.5)
    # The equal rule: the component that sees the copies counts, the one that goes dark does not.
    equal, measured = validation.choose_fusion(parts, 4, "equal")
    assert equal.weights == (1.0, 0.0) and measured[0]["skill"] == 1.0 and measured[1]["skill"] <= 0.5
    assert validation.choose_fusion(twin, 4)[0].weights == (0.5, 0.5)  # "equal" is the default
    with pytest.raises(ValueError, match="unknown fusion rule"):
        validation.choose_fusion(parts, 4, "vote")


def test_median_residual_equals_scipys_median_filter():
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (2, 40, 50, 3)).astype(np.float32) / 255
    expected = np.abs(images - ndimage.median_filter(images, size=(1, 21, 21, 1), mode="nearest") / 1.0).max(-1)
    np.testing.assert_allclose(resmaps.median_residual(images), expected, atol=1e-6)
    with pytest.raises(ValueError, match="odd number"):
        resmaps.median_images(images, 20)


def test_every_proxy_family_changes_the_image_only_inside_its_mask():
    rng = np.random.default_rng(4)
    images = ndimage.gaussian_filter(rng.random((3, 64, 80, 3)), (0, 2, 2, 0)).astype(np.float32)
    images = np.round(images * 255) / 255
    copies, masks, families = synthetic.proxy_copies(images, seed=5)
    assert sorted(set(families)) == sorted(synthetic.PROXY_FAMILIES) and len(copies) == 3 * 7
    for k, (copy, mask) in enumerate(zip(copies, masks)):
        source = images[(k // 7 + k % 7) % 3]
        changed = np.abs(copy - source).max(-1) > synthetic.VISIBLE
        assert mask.any() and np.array_equal(changed, mask)
    again = synthetic.proxy_copies(images, seed=5)
    assert np.array_equal(again[0], copies) and again[2] == families
    shading = masks[np.array(families) == "shading"]
    assert shading.mean() > 0.04  # large faint regions: a few percent of the image and more
    with pytest.raises(ValueError, match="unknown defect family"):
        synthetic.paint_family(images[0], "dent", rng)


def test_fused_run_validates_tests_and_every_overlay_shows_its_own_csv_score(tiny_run, tmp_path, monkeypatch):
    import pandas as pd

    import figures
    from settings import MapRequest

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    result, _ = validation.validate(run, 4, MapRequest(method="fused"))
    assert result["fusion"]["components"] == ["ssim", "median", "lowfreq"] and result["validation_tnr"] >= 0.9
    assert set(result["proxy"]["families"]) == set(synthetic.PROXY_FAMILIES)
    titles, thresholds = {}, set()
    real = figures.plot_overlay

    def spy(*args, **kwargs):
        titles[kwargs["title"]] = kwargs["score"]
        thresholds.add(kwargs["threshold"])  # one colour scale per run, the threshold marked
        return real(*args, **kwargs)

    monkeypatch.setattr(figures, "plot_overlay", spy)
    monkeypatch.setattr(inference, "STREAM_CHUNK", 3)  # several chunks: each overlay still gets its own score
    out, scores, _, folder = evaluation.test_run(run, MapRequest(method="fused"), save=True)
    frame = pd.read_csv(folder / "classification.csv")
    assert len(titles) == len(frame) and len(set(frame["score"])) > 3
    for row in frame.itertuples():
        key = f"{row.defect_type}/{row.path.rsplit('/', 1)[-1]}"
        assert titles[key] == pytest.approx(row.score, rel=1e-12)
        assert (row.score > 1.0) == (row.verdict == "defective")
    assert scores["image_score"] == detector.SCORE_RULE and out["fusion"] == result["fusion"]
    assert thresholds == {result["threshold"]}


def test_lowfreq_map_sees_a_large_faint_shading_that_the_median_map_misses():
    x = np.full((1, 96, 96, 1), 0.5, np.float32)
    x[0, 10:70, 10:70] *= 0.94  # 6 % darker over 40 % of the image
    low, med = resmaps.lowfreq_residual(x)[0], resmaps.median_residual(x)[0]
    assert low[40, 40] == pytest.approx(0.03, abs=1e-4) and low[90, 90] < 1e-3
    assert med[40, 40] < 1 / 255  # inside the region its neighbourhood is as dark: invisible to the median
    np.testing.assert_allclose(resmaps.lowfreq_images(x)[0, 0, 0], [0.5])


def test_validate_cli_false_alarm_rate_zero_is_the_zero_false_alarm_threshold(tiny_run, tmp_path, capsys):
    from conftest import cli

    import validate

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    code, out, _ = cli(validate.main, ["-p", str(run), "-a", "4", "--method", "ssim", "--false-alarms", "0"], capsys)
    assert code == 0
    result = json.loads((run / "validation" / "ssim" / "a4" / "validation_result.json").read_text())
    assert result["threshold"] == result["zero_false_alarm_threshold"] and result["validation_tnr"] == 1.0
    assert result["policy"] == "at most 0 of the validation images flagged" and "policy at most 0" in out
    code, _, err = cli(validate.main, ["-p", str(run), "--false-alarms", "1"], capsys)
    assert code == 2 and err.strip().endswith("--false-alarms must be a share in [0, 1), got 1.0")


def test_region_peak_moves_no_more_than_the_map():
    """Why runtimes that agree on maps agree on scores: a peak is 1-Lipschitz in the map's sup norm."""
    rng = np.random.default_rng(6)
    maps = ndimage.gaussian_filter(rng.random((8, 24, 24)), (0, 1, 1)).astype(np.float64)
    noise = rng.uniform(-1e-3, 1e-3, maps.shape)
    moved = np.abs(resmaps.area_peaks(maps + noise, 7) - resmaps.area_peaks(maps, 7))
    assert moved.max() <= 1e-3 + 1e-12 and moved.max() > 0


def test_usual_map_is_the_upper_quartile_of_training_maps_cached_for_the_model(tiny_run, tmp_path, monkeypatch):
    from scipy.ndimage import maximum_filter

    from settings import MapRequest

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    opened = detector.Detector.open_maps(run_dir, MapRequest(method="fused"))
    train = opened.run.training_paths()
    monkeypatch.setattr(inference, "USUAL_IMAGES", 4)  # more training images than that: 4 evenly spread
    train = [train[0], train[round((len(train) - 1) / 3)], train[round(2 * (len(train) - 1) / 3)], train[-1]]
    maps = opened.component("median").maps(train).maps
    # Independent: SciPy's Gaussian (σ 1, mirrored borders), the per-pixel upper quartile, its 9×9
    # maximum (4 px every way: the usual maps' tolerance, wider than the ssim baseline's 3×3).
    assert inference.USUAL_TOLERANCE == 4 and inference.BASELINE_TOLERANCE == 1
    expected = maximum_filter(
        np.quantile(ndimage.gaussian_filter(maps, (0, 1, 1), mode="reflect"), 0.75, axis=0), size=9, mode="nearest"
    )
    np.testing.assert_allclose(opened.usual("median"), expected, atol=1e-5)
    (cache,) = run_dir.glob("usual_median*.npz")

    def no_images(*args, **kwargs):
        raise AssertionError("the cached usual map was computed again")

    with monkeypatch.context() as m:
        m.setattr(inference, "inspect_stream", no_images)
        again = detector.Detector.open_maps(run_dir, MapRequest(method="fused")).usual("median")
    np.testing.assert_array_equal(again, opened.usual("median"))
    stored = dict(np.load(cache))
    np.savez(cache, **{**stored, "model_sha256": np.array("0" * 64), "usual": stored["usual"] + 1})
    fresh = detector.Detector.open_maps(run_dir, MapRequest(method="fused")).usual("median")  # another model's
    np.testing.assert_allclose(fresh, expected, atol=1e-5)
    assert str(np.load(cache)["model_sha256"]) == stored["model_sha256"]
    assert int(np.load(cache)["baseline_tolerance"]) == 4
    np.savez(cache, **{**stored, "baseline_tolerance": np.array(1), "usual": stored["usual"] + 1})
    older = detector.Detector.open_maps(run_dir, MapRequest(method="fused")).usual("median")  # a 3×3 one, cached before
    np.testing.assert_allclose(older, expected, atol=1e-5)


def test_a_fused_map_minus_usual_maps_is_what_validate_and_test_use(tiny_run, tmp_path, monkeypatch, capsys):
    from conftest import cli

    import test as test_script
    import validate
    from settings import MapRequest

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    real = validation.choose_usual

    def forced(fusion, *args):  # the proxy's figures, its choice overruled
        _, measured = real(fusion, *args)
        return dataclasses.replace(fusion, usual=True), {**measured, "usual": True}

    monkeypatch.setattr(validation, "choose_usual", forced)
    code, out, err = cli(validate.main, ["-p", str(run_dir), "-a", "4", "--method", "fused"], capsys)
    assert code == 0, err
    result = json.loads((run_dir / "validation" / "fused" / "a4" / "validation_result.json").read_text())
    measured = result["usual_search"]
    assert result["fusion"]["usual"] is True and measured["usual"] is True
    assert (
        f"usual maps subtracted: proxy objective {measured['with']['objective']:.3f} with them, "
        f"{measured['without']['objective']:.3f} without"
    ) in out
    low, high = result["validation_tnr_interval"]
    assert low <= result["validation_tnr"] <= high == 1.0
    assert (
        f"{result['validation_tnr']:.0%} (95% CI {low:.0%}–{high:.0%}) of the {result['n_images']} validation images pass"
        in out
    )
    ready = detector.Detector.open(run_dir, MapRequest(method="fused"))
    fusion = ready.options.fusion
    assert fusion.usual and fusion.describe().endswith("each minus its usual map")
    tests = sorted(ready.run.class_dir.glob("test/*/*.png"))[:4]
    parts = [ready.component(c).maps(tests).maps for c in fusion.components]
    by_hand = sum(
        w * np.log1p(np.maximum((m - ready.usual(c) - centre) / spread, 0))
        for m, c, w, centre, spread in zip(parts, fusion.components, fusion.weights, fusion.centres, fusion.spreads)
        if w
    )
    np.testing.assert_allclose(ready.maps(tests).maps, by_hand, atol=1e-5)
    scores = [p.score for p in ready.predict(tests)]
    np.testing.assert_allclose(scores, detector.image_scores(by_hand, ready.threshold, ready.min_area), rtol=1e-4)
    # A result validated before the usual maps' tolerance changed has a threshold for other maps.
    path = run_dir / "validation" / "fused" / "a4" / "validation_result.json"
    result["fusion"]["usual_tolerance"] = 1
    path.write_text(json.dumps(result))
    code, out, err = cli(test_script.main, ["-p", str(run_dir), "-a", "4", "--method", "fused"], capsys)
    assert code != 0 and "Traceback" not in err
    assert "usual maps of a 1-px tolerance, today's are 4 px; run validate.py again" in err
    assert not (run_dir / "test").exists()


def test_the_network_count_includes_a_usual_map_still_to_learn(tiny_run, tmp_path):
    """What decides between the ONNX twin and Keras counts the training images a usual map
    still needs (each through the component's passes), and nothing once it is cached."""

    from settings import MapRequest

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    opened = detector.Detector.open_maps(run_dir, MapRequest(method="fused"))
    base = inference.Fusion(("ssim", "median"), (1.0, 0.0), (0.0, 0.0), (1.0, 1.0))

    def count(usual):
        options = dataclasses.replace(opened.options, fusion=dataclasses.replace(base, usual=usual))
        return inference.expected_reconstructions(opened.run, "fused", options, 5)

    passes = opened.options.component("ssim").passes
    assert count(True) - count(False) == len(opened.run.training_paths()) * passes
    with pytest.MonkeyPatch.context() as m:
        m.setattr(inference, "USUAL_IMAGES", 3)  # at most 3 of them
        assert count(True) - count(False) == 3 * passes
    opened.usual("ssim")
    assert count(True) == count(False)


def test_a_usual_map_that_cannot_be_learnt_again_is_refused_in_one_line(tiny_run, tmp_path, monkeypatch):
    """A run moved without its dataset and without its cached usual maps: a one-line error
    before any output, not a traceback (with the cache the run still predicts)."""

    from settings import MapRequest
    from utils import UserError

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    monkeypatch.setattr(validation, "choose_usual", lambda f, *a: (dataclasses.replace(f, usual=True), {"usual": True}))
    validation.validate(run_dir, 4, MapRequest(method="fused"))
    image = detector.Detector.open(run_dir, MapRequest(method="fused")).run.validation_paths()[0]
    moved = detector.Detector.open(run_dir, MapRequest(method="fused"))
    expected = moved.predict([image])[0].score
    setup = json.loads((run_dir / "setup.json").read_text())
    setup["directory"] = str(tmp_path / "gone")
    (run_dir / "setup.json").write_text(json.dumps(setup))
    assert detector.Detector.open(run_dir, MapRequest(method="fused")).predict([image])[0].score == pytest.approx(
        expected, rel=1e-5
    )
    for cache in run_dir.glob("usual_*.npz"):
        cache.unlink()
    with pytest.raises(UserError, match=r"usual maps need the run's training images, but its dataset .*gone"):
        detector.Detector.open(run_dir, MapRequest(method="fused")).predict([image])
