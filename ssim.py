"""SSIM, once: its window and constants, and the map in both forms the suite computes it in.

* :func:`ssim_map` — per-pixel SSIM in TensorFlow (differentiable): the training losses
  (``custom_loss_functions``) and graphs that hold the whole map pipeline (``exporting``).
* :func:`scale_map_numpy` — one scale of a residual map (1 − SSIM, or L2) for one image pair
  in NumPy/OpenCV: what ``resmaps.residual_maps`` computes per image, about 3× faster on CPU.
* :func:`scale_maps_tf` — the same for a batch, as TensorFlow ops (the exported detector).

The two forms agree to within ~3e-6 (``tests/test_resmaps.py``). TensorFlow is imported only
by the TensorFlow functions, so the NumPy maps need no TensorFlow import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    import tensorflow as tf

# SSIM's window and constants, shared by the training loss (in TensorFlow) and the maps (NumPy).
SSIM_FILTER_SIZE = 11
SSIM_SIGMA = 1.5
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2


def gaussian_window(size: int = SSIM_FILTER_SIZE, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """Normalised 1-D Gaussian window (the SSIM window is its outer product)."""
    ax = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(ax**2) / (2.0 * sigma**2))
    return (g / g.sum()).astype(np.float32)


def ssim_map(x: tf.Tensor | np.ndarray, y: tf.Tensor | np.ndarray, full: bool = False) -> tf.Tensor:
    """Per-pixel SSIM of two N×H×W×C batches in [0, 1] (TensorFlow, differentiable).

    ``SSIM = ((2 μx μy + C1)(2 σxy + C2)) / ((μx² + μy² + C1)(σx² + σy² + C2))`` with
    local statistics under an 11×11 Gaussian window (σ 1.5), data range 1, C1 = 0.01²,
    C2 = 0.03², per channel. The window is applied as two 1-D passes (5.5× cheaper than
    a 2-D one). ``full=False``: only positions where the window fits (H−10 × W−10, as
    ``tf.image.ssim``); ``full=True``: images padded by reflection (``a b c | c b a``,
    scipy's ``reflect``) so the map has the input's size and equals scikit-image's
    ``structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1, full=True)``.
    """
    import tensorflow as tf

    x = tf.convert_to_tensor(x, tf.float32)
    y = tf.convert_to_tensor(y, tf.float32)
    channels = int(x.shape[-1])
    g = gaussian_window()
    # The five local statistics are blurred in one pass, stacked along channels.
    k_rows = tf.constant(np.tile(g[:, None, None, None], (1, 1, 5 * channels, 1)))
    k_cols = tf.constant(np.tile(g[None, :, None, None], (1, 1, 5 * channels, 1)))
    pad = SSIM_FILTER_SIZE // 2

    def blur(t):
        if full:
            t = tf.pad(t, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="SYMMETRIC")
        t = tf.nn.depthwise_conv2d(t, k_rows, strides=[1, 1, 1, 1], padding="VALID")
        return tf.nn.depthwise_conv2d(t, k_cols, strides=[1, 1, 1, 1], padding="VALID")

    mu_x, mu_y, exx, eyy, exy = tf.split(blur(tf.concat([x, y, x * x, y * y, x * y], axis=-1)), 5, axis=-1)
    sxx, syy, sxy = exx - mu_x * mu_x, eyy - mu_y * mu_y, exy - mu_x * mu_y
    num = (2.0 * mu_x * mu_y + SSIM_C1) * (2.0 * sxy + SSIM_C2)
    den = (mu_x * mu_x + mu_y * mu_y + SSIM_C1) * (sxx + syy + SSIM_C2)
    return num / den


def scale_maps_tf(x, y, method):
    """One scale of ``resmaps.residual_maps`` for a batch, as TensorFlow ops (``method``, ssim
    or l2, already checked): for graphs that hold the whole map pipeline (``exporting.py``)."""
    import tensorflow as tf

    if method == "ssim":
        maps = 1.0 - ssim_map(x, y, full=True)
    else:
        maps = tf.square(x - y)
    return tf.reduce_mean(maps, axis=-1)


def scale_map_numpy(x, y, method):
    """One scale of ``resmaps.residual_maps`` for one image pair as C×H×W planes (NumPy/OpenCV), H×W.

    The same computation as :func:`scale_maps_tf` (which stays, in TensorFlow, for
    graphs such as the exported detector's): the SSIM map of
    :func:`ssim_map` ``(..., full=True)``, its 11-px Gaussian window applied
    as two 1-D passes with mirrored borders (``a b c | c b a``).
    """
    if method == "l2":
        return np.square(x - y).mean(axis=0)
    window = gaussian_window()
    c = x.shape[0]
    stats = np.empty((5 * c,) + x.shape[1:], np.float32)  # the five local statistics, blurred in place
    stats[:c], stats[c : 2 * c] = x, y
    np.multiply(x, x, out=stats[2 * c : 3 * c])
    np.multiply(y, y, out=stats[3 * c : 4 * c])
    np.multiply(x, y, out=stats[4 * c :])
    for plane in stats:
        cv2.sepFilter2D(plane, cv2.CV_32F, window, window, dst=plane, borderType=cv2.BORDER_REFLECT)
    mu_x, mu_y, exx, eyy, exy = stats.reshape((5, c) + x.shape[1:])
    mu_xy, mu_xx, mu_yy = mu_x * mu_y, mu_x * mu_x, mu_y * mu_y
    num = (2.0 * mu_xy + SSIM_C1) * (2.0 * (exy - mu_xy) + SSIM_C2)
    den = (mu_xx + mu_yy + SSIM_C1) * ((exx - mu_xx) + (eyy - mu_yy) + SSIM_C2)
    return (1.0 - num / den).mean(axis=0)
