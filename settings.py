"""Settings as frozen dataclasses: the scripts build them from argparse and pass them whole.

Library functions take these objects, never an argparse ``Namespace``, so benchmarks and
tests build exactly the settings they mean and nothing travels as a row of positional
values.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

# The names setup.json may hold, here without Keras so that checking a run's setup does not
# import TensorFlow: models.ARCHITECTURES maps each to its factory (tests/test_models.py
# keeps the two equal) and custom_loss_functions.LOSSES is this tuple.
ARCHITECTURES = ("mvtec", "mvtec2", "resnet")
LOSSES = ("ssim", "mssim", "l2", "mse")
# How validate.py weighs the fused map's components (validation.choose_fusion), here without
# the heavy imports so that validate.py's --help answers at once.
FUSION_RULES = ("equal", "proxy")
DEFAULT_FUSION_RULE = "equal"


@dataclass(frozen=True)
class MapRequest:
    """How a post-training step is asked to make residual maps; ``None`` means the default.

    ``method``: ``ssim``, ``l2`` or ``learned`` (default: :meth:`runs.Run.method`).
    ``baseline``, ``scales``, ``passes``: see :class:`inference.MapOptions`; for ssim/l2 maps
    the defaults are :meth:`inference.MapOptions.from_args`'s, and where a validation result
    is followed, what it recorded. ``batch``: images per inference batch.
    """

    method: str | None = None
    baseline: bool | None = None
    scales: int | None = None
    passes: int | None = None
    batch: int = 16

    @classmethod
    def from_args(cls, args) -> MapRequest:
        """The request of the options :func:`runs.add_run_arguments` adds to a parser."""
        return cls(args.method, args.baseline, args.scales, args.passes, args.batch)


@dataclass(frozen=True)
class TrainConfig:
    """What ``train.py new`` is asked to train: every option of its command line, by name.

    The user-facing defaults live in one place, train.py's parser (``--help`` shows them);
    code that builds a config itself names every option, except those added after the
    first callers were written, which default to the plain object-mode autoencoder
    without the learned head, trained on one device in float32.
    """

    directory: str
    architecture: str
    batch: int
    loss: str
    color: str
    instances: int | None
    tag: str
    size: int | None
    epochs: int | None
    lr: float
    seed: int
    val_split: float
    patience: int | None
    no_augment: bool
    rotation: float
    flip: bool
    denoise: float
    weights: str
    out: str
    mode: str = "object"
    patch: int | None = None
    head_steps: int = 0
    strategy: str = "one"
    precision: str = "float32"
    jit: bool = False

    @classmethod
    def from_args(cls, args) -> TrainConfig:
        """The config of ``train.py new``'s parsed arguments."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})
