"""Training losses for the CAE: SSIM, MS-SSIM, L2 and MSE.

Each loss is a pure function ``f(y_true, y_pred) -> (batch,)`` returning **one value per
image** (Keras then averages over the batch, so results do not depend on a distribution
strategy), plus a small serialisable :class:`keras.losses.Loss` wrapper, registered under
the package ``cae`` so saved ``.keras`` models load in safe mode without custom objects
(importing this module is enough). Images are float tensors in [0, 1], NHWC.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from settings import LOSSES  # noqa: F401  (re-exported: the names -l offers)
from ssim import SSIM_FILTER_SIZE, SSIM_SIGMA, ssim_map
from utils import SettingError

MSSSIM_POWER_FACTORS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def ssim_loss(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """1 − SSIM per image: ``1 − mean_{h,w,c} SSIM map`` (see :func:`ssim_map`, valid window
    positions as in ``tf.image.ssim``). For RGB every channel counts, not just one.
    """
    return 1.0 - tf.reduce_mean(ssim_map(y_true, y_pred), axis=[1, 2, 3])


def msssim_scales(size: int) -> int:
    """Number of MS-SSIM scales an image side of ``size`` pixels allows (at most 5).

    Scale s works on the image downsampled 2^(s-1) times, which must still exceed the
    11-px window: ``size > (11 - 1) · 2^(s-1)``; 5 scales need sides ≥ 161 px.
    """
    size = int(size)
    if size <= SSIM_FILTER_SIZE - 1:
        return 0
    return max(1, min(len(MSSSIM_POWER_FACTORS), int(math.floor(math.log2((size - 1) / (SSIM_FILTER_SIZE - 1)))) + 1))


def mssim_loss(y_true: tf.Tensor, y_pred: tf.Tensor, scales: int | None = None) -> tf.Tensor:
    """1 − MS-SSIM per image.

    ``MS-SSIM = Π_{s<S} cs_s^{w_s} · ssim_S^{w_S}`` over ``S`` dyadic scales with the
    weights of Wang et al. (2003), truncated to ``S`` scales and renormalised to sum 1.
    ``scales`` defaults to :func:`msssim_scales` of the smaller image side.
    """
    if scales is None:
        side = min(int(y_true.shape[1]), int(y_true.shape[2]))
        scales = msssim_scales(side)
    if scales < 1:
        raise ValueError(f"MS-SSIM needs image sides of at least {SSIM_FILTER_SIZE} px, got {y_true.shape[1:3]}")
    weights = MSSSIM_POWER_FACTORS[:scales]
    total = sum(weights)
    weights = [w / total for w in weights]
    return 1.0 - tf.image.ssim_multiscale(
        y_true,
        y_pred,
        max_val=1.0,
        power_factors=weights,
        filter_size=SSIM_FILTER_SIZE,
        filter_sigma=SSIM_SIGMA,
    )


def l2_loss(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """Sum of squared differences per image: ``Σ_{h,w,c} (y − ŷ)²`` (Bergmann et al.'s L2)."""
    return tf.reduce_sum(tf.square(y_true - y_pred), axis=[1, 2, 3])


def mse_loss(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """Mean squared error per image: ``mean_{h,w,c} (y − ŷ)²``."""
    return tf.reduce_mean(tf.square(y_true - y_pred), axis=[1, 2, 3])


@keras.saving.register_keras_serializable(package="cae")
class SSIMLoss(keras.losses.Loss):
    """Serializable wrapper of :func:`ssim_loss` (1 − SSIM per image)."""

    def __init__(self, name="ssim", reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    def call(self, y_true, y_pred):
        return ssim_loss(y_true, y_pred)


@keras.saving.register_keras_serializable(package="cae")
class MSSSIMLoss(keras.losses.Loss):
    """Serializable wrapper of :func:`mssim_loss`; ``scales`` is fixed at build time."""

    def __init__(self, scales=5, name="mssim", reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.scales = int(scales)

    def call(self, y_true, y_pred):
        return mssim_loss(y_true, y_pred, scales=self.scales)

    def get_config(self):
        return {**super().get_config(), "scales": self.scales}


@keras.saving.register_keras_serializable(package="cae")
class L2Loss(keras.losses.Loss):
    """Serializable wrapper of :func:`l2_loss` (sum of squared differences per image)."""

    def __init__(self, name="l2", reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    def call(self, y_true, y_pred):
        return l2_loss(y_true, y_pred)


@keras.saving.register_keras_serializable(package="cae")
class MSELoss(keras.losses.Loss):
    """Serializable wrapper of :func:`mse_loss` (mean squared error per image)."""

    def __init__(self, name="mse", reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    def call(self, y_true, y_pred):
        return mse_loss(y_true, y_pred)


def get_loss(name: str, size: int) -> keras.losses.Loss:
    """The loss object for ``name`` at square image side ``size``.

    Raises ``ValueError`` (repeating the bad value) for an unknown name, and a
    :class:`utils.SettingError` (a ValueError) for a size that MS-SSIM cannot handle.
    """
    if name == "ssim":
        return SSIMLoss()
    if name == "mssim":
        scales = msssim_scales(size)
        if scales < 2:
            raise SettingError(
                f"MS-SSIM needs at least 2 scales, i.e. images of at least {2 * (SSIM_FILTER_SIZE - 1) + 1} px; "
                f"got `size={size}` (use `loss=ssim`)"
            )
        return MSSSIMLoss(scales=scales)
    if name == "l2":
        return L2Loss()
    if name == "mse":
        return MSELoss()
    raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
