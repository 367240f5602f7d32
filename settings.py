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
# Training defaults that other modules also need (data augmentation, the learned head).
DEFAULT_ROTATION = 10.0  # degrees: largest random rotation of the augmentation
DEFAULT_DENOISE = 0.5  # share of inputs that get a pasted patch with a bare --denoise
DEFAULT_HEAD_STEPS = 1500  # steps of the learned residual's segmentation head
# Images per inference batch: every map, calibration and backend default reads this one value
# (--batch of test.py / validate.py / finetune.py overrides it per run).
BATCH = 16
# Map and verdict defaults that the command line's help also states (runs.add_run_arguments,
# validate.py), so the numbers are written once; inference reads them from here.
DEFAULT_SCALES = 2  # best measured on MVTec bottle (bench/README.md)
DEFAULT_PASSES = 4  # best measured on MVTec bottle; 5 or 6 add at most 0.0003 AU-PRO (bench/README.md)
DEFAULT_AREA_SHARE = 1 / 800  # validate.py's default minimum area, as a share of the whole image (bottle's rule)
MIN_AREA_FLOOR = 4  # px: the default minimum area is never below this


def default_min_area(shape: tuple[int, int]) -> int:
    """Default minimum defect area for whole images of ``shape`` (height, width) at the model's scale."""
    return max(MIN_AREA_FLOOR, int(shape[0] * shape[1] * DEFAULT_AREA_SHARE))


@dataclass(frozen=True)
class MapRequest:
    """How a post-training step is asked to make residual maps; ``None`` means the default.

    ``method``: a name of :data:`methods.METHODS` (default: :meth:`runs.Run.method`).
    ``baseline``, ``scales``, ``passes``: see :class:`inference.MapOptions`; for ssim/l2 maps
    the defaults are :meth:`inference.MapOptions.from_args`'s, and where a validation result
    is followed, what it recorded. ``batch``: images per inference batch.
    """

    method: str | None = None
    baseline: bool | None = None
    scales: int | None = None
    passes: int | None = None
    batch: int = BATCH

    @classmethod
    def from_args(cls, args) -> MapRequest:
        """The request of the options :func:`runs.add_run_arguments` adds to a parser."""
        return cls(args.method, args.baseline, args.scales, args.passes, args.batch)


@dataclass(frozen=True)
class TrainConfig:
    """What ``train.py new`` is asked to train: every option of its command line, by name.

    The defaults are ``train.py new``'s, in this one place: its parser reads them from here
    (``--help`` shows them), so ``TrainConfig(directory=...)`` is exactly what
    ``train.py new -d ...`` trains.
    """

    directory: str
    architecture: str = "mvtec2"
    batch: int = 8
    loss: str = "ssim"
    color: str = "auto"
    instances: int | None = None
    tag: str = ""
    size: int | None = None
    epochs: int | None = None
    lr: float = 1e-3
    seed: int = 0
    val_split: float = 0.1
    patience: int | None = 10
    no_augment: bool = False
    rotation: float = DEFAULT_ROTATION
    flip: bool = False
    denoise: float = DEFAULT_DENOISE
    weights: str = "imagenet"
    out: str = "saved_models"
    mode: str = "auto"
    patch: int | None = None
    head_steps: int = DEFAULT_HEAD_STEPS
    strategy: str = "auto"
    precision: str = "float32"
    jit: bool = False

    @classmethod
    def default(cls, name: str):
        """The default of the option ``name`` (what ``train.py new`` uses when it is not given)."""
        return next(f.default for f in fields(cls) if f.name == name)

    @classmethod
    def from_args(cls, args) -> TrainConfig:
        """The config of ``train.py new``'s parsed arguments."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})
