"""The map-method registry (methods.py) against what the code does with each method: every flag
is checked on the function that branches on it, so a wrong record fails here, in seconds."""

import argparse
import ast
import dataclasses
import importlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import ROOT

import figures
import inference
import methods
import resmaps
import runs
import settings
import ssim
from inference import MapOptions
from utils import UserError

ORDER = ("ssim", "l2", "learned", "median", "lowfreq", "fused")
# What figures drew before the registry (figures._METHODS): title name, map name, colour bar.
LABELS = {
    "ssim": ("SSIM", "SSIM residual", "1 − SSIM  (0 = identical)"),
    "l2": ("L2", "L2 residual", "squared difference  (0 = identical)"),
    "learned": ("learned", "learned residual", "defect probability (segmentation head)"),
    "median": ("median", "median residual", "|image − 21-px median|  (0 = as its neighbourhood)"),
    "lowfreq": ("low-frequency", "low-frequency residual", "|blurred image − its median brightness|"),
    "fused": ("fused", "fused residual", "fused map  (1 ≈ top 0.1 % of good pixels)"),
}
METHOD_HELP = (  # --method's help before the registry wrote it
    "residual map: ssim (1 - SSIM map), l2 (squared difference), learned (the segmentation head's "
    "defect probability), median (|image - its 21-px median|, no training), lowfreq (blurred image against its "
    "median brightness, no training) or fused (those maps combined with weights validate.py chooses); "
    "default: fused for runs with a learned head (train.py's default), else the training loss's family"
)


def test_the_methods_in_order_and_get_refuses_others():
    assert tuple(methods.METHODS) == ORDER
    assert all(methods.get(name).name == name for name in ORDER)
    for bad in ("nope", "SSIM", None):
        with pytest.raises(ValueError) as caught:
            methods.get(bad)
        assert repr(bad) in str(caught.value) and "choose one of ssim, l2, learned, median, lowfreq, fused" in str(
            caught.value
        )
    with pytest.raises(dataclasses.FrozenInstanceError):
        methods.get("ssim").fusable = False


def test_the_registry_imports_nothing_of_the_suite():
    """Every layer reads it (figures.py too, which imports nothing else of the suite)."""
    tree = ast.parse((ROOT / "methods.py").read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported == {"__future__", "dataclasses", "types"}


def test_names_filter_and_listing():
    assert methods.names() == ORDER
    assert methods.names(training_free=True) == ("median", "lowfreq")
    assert methods.names(fixed=True) == ("ssim", "l2", "median", "lowfreq")
    assert methods.names(calibrated=True, multiscale=True) == ("ssim", "l2")
    assert methods.listing(["a"]) == "a" and methods.listing("abc", "and") == "a, b and c"


@pytest.mark.parametrize("name", ORDER)
def test_figures_draw_the_records_labels(name, monkeypatch):
    """The labels are the ones figures drew before, and figures draws them: the threshold
    search's title and x label, the stages' map title and colour bar."""
    record = methods.get(name)
    assert (record.label, record.residual_label, record.colorbar_label) == LABELS[name]
    texts = []

    def keep_texts(fig, path, crop=None):
        texts.extend(t.get_text() for t in fig.findobj(lambda o: hasattr(o, "get_text")))
        figures.plt.close(fig)
        return path

    monkeypatch.setattr(figures, "save_figure", keep_texts)
    figures.plot_threshold_search([0.1, 0.2], [9, 1], 0.15, 4, "unused.png", method=name)
    drawn = "\n".join(texts)
    assert f"Threshold search ({record.label}):" in drawn and f"threshold on {record.residual_label}" in drawn
    texts.clear()
    image = np.zeros((8, 8))
    figures.plot_stages(image, image, np.full((8, 8), 0.5), image > 0, "unused.png", method=name.upper())
    drawn = "\n".join(texts)
    assert f"3. {record.residual_label} map" in drawn and record.colorbar_label in drawn


def test_colour_range_is_fixed_only_for_ssim():
    peak = np.array([[0.0, 1.5]], np.float32)
    assert figures._residual_range(peak, "ssim") == (0.0, 1.0)
    for name in ORDER[1:]:
        assert methods.get(name).colour_range is None and figures._residual_range(peak, name) == (0.0, 1.5)


def _function(dotted):
    """The function a record names by ``module.name`` (or ``module.Class.name``)."""
    module, *path = dotted.split(".")
    target = importlib.import_module(module)
    for part in path:
        target = getattr(target, part)
    return target


class _Run:
    """Enough of a run for inference's network loading; records what is loaded."""

    def __init__(self, tmp_path, head):
        self.loaded = []
        self.dir = tmp_path
        self.shape = (16, 16)
        self.head_path = tmp_path / "head.keras"
        if head:
            self.head_path.write_bytes(b"head")

    def load_model(self, **_):
        self.loaded.append("model")

    def load_head(self, **_):
        self.loaded.append("head")


@pytest.mark.parametrize("head", [True, False])
@pytest.mark.parametrize("name", ORDER)
def test_networks_loaded_are_what_the_record_says(name, head, tmp_path):
    record = methods.get(name)
    run = _Run(tmp_path, head)
    inference.load_networks(run, name, None, MapOptions(False, 1, 1))
    # As before the registry: no network for the training-free maps; the head for learned, and
    # for fused when the run has one (a fused map without a head is ssim/l2 and the free maps).
    expected = [] if name in ("median", "lowfreq") else ["model"]
    expected += ["head"] if name == "learned" or (name == "fused" and head) else []
    assert run.loaded == expected
    assert run.loaded == ["model"] * record.needs_model + ["head"] * (record.needs_head or (record.uses_head and head))
    assert record.needs_model == (not record.training_free) and record.fixed == (not record.uses_head)
    assert not record.needs_head or record.uses_head  # the head's own map depends on the head


@pytest.mark.parametrize("name", methods.names(training_free=True))
def test_training_free_maps_need_no_network(name, tmp_path):
    images = np.random.default_rng(0).random((2, 24, 24, 3)).astype(np.float32)
    run = _Run(tmp_path, head=False)
    recons, maps = inference.run_maps(run, images, name, MapOptions(False, 1, 1))
    assert run.loaded == [] and recons.shape == images.shape and maps.shape == (2, 24, 24)
    assert np.allclose(maps, _function(methods.get(name).numpy_map)(images))
    assert inference.expected_reconstructions(run, name, MapOptions(False, 1, 1), 5) == 0


@pytest.mark.parametrize("name", ORDER)
def test_map_options_apply_to_multiscale_methods_only(name):
    if methods.get(name).multiscale:
        assert MapOptions.from_args(None, 2, 3, name) == MapOptions(True, 2, 3)
        if not methods.get(name).composite:
            assert MapOptions(True, 2, 3).component(name) == MapOptions(True, 2, 3)
    else:
        with pytest.raises(UserError) as caught:
            MapOptions.from_args(scales=2, method=name)
        assert str(caught.value) == (
            f"`baseline=False`, `scales` and `passes` apply to ssim, l2 and fused maps, not to `method={name}`"
        )
        assert caught.value.setting == "method"
        assert MapOptions(True, 2, 3).component(name) == MapOptions(False, 1, 1)


@pytest.mark.parametrize("name", ORDER)
def test_fusion_takes_the_fusable_methods(name):
    record = methods.get(name)
    assert record.fusable == (not record.composite)
    if record.fusable:
        assert inference.Fusion((name,), (1.0,), (0.0,), (1.0,)).components == (name,)
    else:
        with pytest.raises(ValueError, match="components must be among ssim, l2, learned, median, lowfreq, got"):
            inference.Fusion((name,), (1.0,), (0.0,), (1.0,))


def test_fused_components_of_a_run(tmp_path):
    run = _Run(tmp_path, head=True)
    run.setup = SimpleNamespace(loss="mssim")
    assert inference.fusion_components(run) == ("learned", "ssim", "median", "lowfreq")
    run.head_path.unlink()
    run.setup = SimpleNamespace(loss="mse")
    assert inference.fusion_components(run) == ("l2", "median", "lowfreq")


@pytest.mark.parametrize("name", ORDER)
def test_calibrated_methods_are_the_residual_formulas(name):
    record = methods.get(name)
    x = np.random.default_rng(1).random((1, 32, 32, 1)).astype(np.float32)
    if record.calibrated:
        assert resmaps.residual_maps(x, x * 0.9, name).shape == (1, 32, 32)
        assert record.multiscale and record.fixed and record.needs_model
    else:
        with pytest.raises(ValueError, match=f"unknown residual method '{name}'; choose ssim or l2"):
            resmaps.residual_maps(x, x, name)


def test_smallest_scale_holds_the_ssim_window():
    assert methods.get("ssim").min_scale_side == ssim.SSIM_FILTER_SIZE
    assert [resmaps.max_scales(s, "ssim") for s in (16, 32, 48, 128, 256)] == [1, 2, 3, 4, 4]
    assert [resmaps.max_scales(s, "l2") for s in (1, 2, 4, 16)] == [1, 2, 3, 4]


def test_every_loss_has_its_family():
    family = {loss: methods.default_for_loss(loss) for loss in settings.LOSSES}
    assert family == {"ssim": "ssim", "mssim": "ssim", "l2": "l2", "mse": "l2"}
    assert all(methods.get(m).calibrated for m in family.values())


def test_head_users_and_unknown_names():
    assert [m for m in ORDER if methods.uses_head(m)] == ["learned", "fused"]
    assert methods.uses_head("fused_ssim_learned")  # an older version's fusion: never trusted across heads


@pytest.mark.parametrize("field", ["numpy_map", "tf_map"])
@pytest.mark.parametrize("name", ORDER)
def test_named_map_functions_exist(name, field):
    assert callable(_function(getattr(methods.get(name), field)))


def _method_action(parser):
    (action,) = [a for a in parser._actions if "--method" in a.option_strings]
    return action


@pytest.mark.parametrize("script", ["validate", "test", "finetune", "visualize"])
def test_scripts_offer_every_method(script):
    action = _method_action(importlib.import_module(script).get_parser())
    assert tuple(action.choices) == ORDER
    assert action.help == METHOD_HELP


def test_export_offers_the_exportable_methods():
    import export

    assert tuple(_method_action(export.get_parser()).choices) == methods.names(exportable=True) == ORDER


def test_run_options_parse_every_method():
    parser = runs.add_run_arguments(argparse.ArgumentParser())
    for name in ORDER:
        assert parser.parse_args(["-p", str(Path("RUN")), "--method", name]).method == name
