"""The residual-map methods, one record each: what every other module knows about a method.

``--method`` picks one of :data:`METHODS` (``ssim``, ``l2``, ``learned``, ``median``,
``lowfreq``, ``fused``). Code that depends on a *property* of the method (does it need the
model? the learned head? does it take ``--scales``? can the fused map combine it?) reads its
:class:`Method` record here, never a list of names of its own; adding a method starts with a
record here. Where everything about a method is:

* its labels (figures.py's titles and colour bars) and ``--method``'s help text: the record;
* its NumPy map: :attr:`Method.numpy_map` (the formula, chosen by the method's name in that
  module); ssim and l2 go through ``resmaps.residual_maps`` (``--scales``) and
  ``inference.refined_maps`` (baseline, ``--passes``), every method through
  ``inference.run_maps``;
* its TensorFlow map, for the exported detector: :attr:`Method.tf_map`, called by
  ``exporting._Maps``; ``tests/test_export_methods.py`` checks both agree;
* its map options: ``inference.MapOptions`` (only :attr:`Method.multiscale` methods take any);
* the score rule, the same for every method: ``detector.image_scores`` (the image's area peak,
  ``resmaps.area_peaks``, over the threshold).

The functions are named by dotted paths, not imported: this module sits at the bottom layer
(README.md, "Layers") and imports nothing of the suite, so that every layer can read it
(``tests/test_methods.py`` checks each path names the function).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class Method:
    """One map method. The flags are what code branches on; see the module's docstring."""

    name: str
    help: str  # what --method's help says of it (runs.add_run_arguments)
    label: str  # figures: the method in titles
    residual_label: str  # figures: the map's name
    colorbar_label: str  # figures: the colour bar's unit
    calibrated: bool  # a formula of image and reconstruction: baselines and later passes learnt on training images
    training_free: bool  # no network at all (no model, no head)
    needs_head: bool  # computed by the learned head: the run must have one
    uses_head: bool  # results depend on the head when the run has one (the head's hash is recorded)
    composite: bool  # a weighted mix of other methods' maps (inference.Fusion), weights chosen by validate.py
    fusable: bool  # the fused map may combine it
    multiscale: bool  # --no-baseline, --scales and --passes apply to it
    exportable: bool  # exporting.py reproduces it in the graph
    numpy_map: str  # module.function computing its map for inference (see the module's docstring)
    tf_map: str  # module.function computing it as TensorFlow ops in the exported graph
    min_scale_side: int = 1  # px: the smallest image side one of its scales may have (SSIM's window must fit)
    colour_range: tuple[float, float] | None = None  # figures: a fixed colour range, else 0 to the map's maximum
    losses: tuple[str, ...] = ()  # the training losses whose family it is (default_for_loss)

    @property
    def needs_model(self) -> bool:
        """Whether its maps need the autoencoder (every method that is not training-free)."""
        return not self.training_free

    @property
    def fixed(self) -> bool:
        """Whether its maps are computed from the model alone (a fixed formula, not the head)."""
        return not self.uses_head


_RECORDS = (
    Method(
        name="ssim",
        help="1 - SSIM map",
        label="SSIM",
        residual_label="SSIM residual",
        colorbar_label="1 − SSIM  (0 = identical)",
        calibrated=True,
        training_free=False,
        needs_head=False,
        uses_head=False,
        composite=False,
        fusable=True,
        multiscale=True,
        exportable=True,
        numpy_map="ssim.scale_map_numpy",
        tf_map="ssim.scale_maps_tf",
        min_scale_side=11,  # ssim.SSIM_FILTER_SIZE
        colour_range=(0.0, 1.0),  # 1 − SSIM lies in [0, 2]; above 1 is clipped
        losses=("ssim", "mssim"),
    ),
    Method(
        name="l2",
        help="squared difference",
        label="L2",
        residual_label="L2 residual",
        colorbar_label="squared difference  (0 = identical)",
        calibrated=True,
        training_free=False,
        needs_head=False,
        uses_head=False,
        composite=False,
        fusable=True,
        multiscale=True,
        exportable=True,
        numpy_map="ssim.scale_map_numpy",
        tf_map="ssim.scale_maps_tf",
        losses=("l2", "mse"),
    ),
    Method(
        name="learned",
        help="the segmentation head's defect probability",
        label="learned",
        residual_label="learned residual",
        colorbar_label="defect probability (segmentation head)",
        calibrated=False,
        training_free=False,
        needs_head=True,
        uses_head=True,
        composite=False,
        fusable=True,
        multiscale=False,  # the head saw one plain reconstruction
        exportable=True,
        numpy_map="learned.learned_maps",
        tf_map="exporting._Maps.head_map",
    ),
    Method(
        name="median",
        help="|image - its 21-px median|, no training",
        label="median",
        residual_label="median residual",
        colorbar_label="|image − 21-px median|  (0 = as its neighbourhood)",
        calibrated=False,
        training_free=True,
        needs_head=False,
        uses_head=False,
        composite=False,
        fusable=True,
        multiscale=False,
        exportable=True,
        numpy_map="resmaps.median_residual",
        tf_map="exporting.median_residual",
    ),
    Method(
        name="lowfreq",
        help="blurred image against its median brightness, no training",
        label="low-frequency",
        residual_label="low-frequency residual",
        colorbar_label="|blurred image − its median brightness|",
        calibrated=False,
        training_free=True,
        needs_head=False,
        uses_head=False,
        composite=False,
        fusable=True,
        multiscale=False,
        exportable=True,
        numpy_map="resmaps.lowfreq_residual",
        tf_map="exporting.lowfreq_residual",
    ),
    Method(
        name="fused",
        help="those maps combined with weights validate.py chooses",
        label="fused",
        residual_label="fused residual",
        colorbar_label="fused map  (1 ≈ top 0.1 % of good pixels)",
        calibrated=False,
        training_free=False,
        needs_head=False,  # it uses the head when the run has one (inference.fusion_components)
        uses_head=True,
        composite=True,
        fusable=False,
        multiscale=True,  # passed on to its calibrated component (inference.MapOptions.component)
        exportable=True,
        numpy_map="inference.Fusion.combine",
        tf_map="inference.Fusion.combine",  # with exporting._GraphOps
    ),
)

METHODS = MappingProxyType({m.name: m for m in _RECORDS})
"""Every map method by name, in the order ``--method`` lists them."""


def get(name: str) -> Method:
    """The record of the method ``name``; ValueError naming it and the valid names otherwise."""
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}") from None


def names(**where) -> tuple[str, ...]:
    """The names of the methods whose fields or properties have the given values, in
    :data:`METHODS`' order: ``names(training_free=True)`` is ``("median", "lowfreq")``."""
    return tuple(m.name for m in METHODS.values() if all(getattr(m, k) == v for k, v in where.items()))


def listing(items, last: str = "or") -> str:
    """``a, b or c``: the items for a sentence (messages and help texts)."""
    items = [str(i) for i in items]
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} {last} {items[-1]}"


def uses_head(name: str) -> bool:
    """Whether results of ``name`` depend on the learned head. A name that is no method (a
    result folder of an older version's fusion, say) counts as using it: a result is then
    never trusted across a change of the head."""
    method = METHODS.get(name)
    return method is None or method.uses_head


def default_for_loss(loss: str) -> str:
    """The residual-map family of a training loss: ssim/mssim → ssim, l2/mse → l2 (and l2 for
    any other loss)."""
    return next((m.name for m in METHODS.values() if loss in m.losses), "l2")
