"""The learned residual: a segmentation head that marks defects from image + reconstruction.

A fixed residual formula (1 − SSIM, squared difference) flags *every* difference between an
image and its reconstruction, including the texture an autoencoder never reproduces
exactly, and misses defects the decoder copies (thin dark cracks). The head
(:func:`models.segmentation_head`) instead learns which differences are defects: it is
trained after the autoencoder, on the run's good training images with simulated defects
pasted in (:mod:`synthetic`), to output the defect mask; the autoencoder stays frozen and
reconstructs the corrupted images as it would at test time. This is DRAEM's recipe
(Zavrtanik et al., ICCV 2021) at a size that trains on a CPU. The map method ``learned``
is the head's per-pixel defect probability.

The head trains on random patches (a surface run's own patch size; 64 px for objects, 4×
cheaper than whole 128-px images) and, being fully convolutional, then scores whole images
of any size.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

import networks
import resmaps
import storage
import synthetic
from settings import BATCH, DEFAULT_HEAD_STEPS

HEAD_BATCH = 8
HEAD_LR = 1e-3
HEAD_SHARE = 0.7  # share of training inputs that get a simulated defect; the rest teach "good"
SETTLE_BATCHES = 64  # training batches whose mean statistics the head's BatchNormalization keeps
OBJECT_HEAD_PATCH = 64  # px: object runs train the (local, fully convolutional) head on crops this size, 4x cheaper


def _crop(arrays: list[np.ndarray], patch: int | None, rng: np.random.Generator) -> list[np.ndarray]:
    """The same random ``patch``-px window of every N×H×W(×C) array (all of them with ``patch`` None)."""
    if patch is None:
        return arrays
    n, h, w = arrays[0].shape[:3]
    ys = rng.integers(0, h - patch + 1, size=n)
    xs = rng.integers(0, w - patch + 1, size=n)
    return [np.stack([a[i, y : y + patch, x : x + patch] for i, (y, x) in enumerate(zip(ys, xs))]) for a in arrays]


def training_batch(
    model,
    images: np.ndarray,
    patch: int | None,
    rng: np.random.Generator,
    batch: int = HEAD_BATCH,
    reconstruct=None,
) -> list[np.ndarray]:
    """One batch the head trains on: ``[inputs, their reconstructions, defect masks]`` of
    ``batch`` training images (``patch``-px crops) with simulated defects in ``HEAD_SHARE``.
    ``reconstruct``: how ``model`` is called (default: eagerly; see :func:`traced_reconstruction`)."""
    if reconstruct is None:
        reconstruct = lambda x: np.asarray(model(x, training=False), np.float32)  # noqa: E731
    picked = images[rng.integers(len(images), size=batch)]
    # A fully convolutional autoencoder (surface runs) reconstructs the crops themselves; an object
    # autoencoder only takes whole images, so those are corrupted and reconstructed whole, then cropped.
    if model.input_shape[1] is not None:
        x, masks = synthetic.corrupt(picked, rng, HEAD_SHARE)
        return _crop([x, reconstruct(x), masks], patch, rng)
    x, masks = synthetic.corrupt(_crop([picked], patch, rng)[0], rng, HEAD_SHARE)
    return [x, reconstruct(x), masks]


def traced_reconstruction(model):
    """``model`` in inference mode as a function traced once per input shape: 0.03 s a batch of
    8 64-px images against 0.11 s called eagerly. Its own, not Keras's predict function, which
    later calls at other sizes would retrace (with warnings)."""
    import tensorflow as tf

    traced = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    return lambda x: np.asarray(traced(x), np.float32)


def train_head(
    model,
    images: np.ndarray,
    path: Path,
    steps: int = DEFAULT_HEAD_STEPS,
    patch: int | None = None,
    seed: int = 0,
    batch: int = HEAD_BATCH,
    progress: bool = True,
    eager: bool = False,
) -> dict:
    """Train a segmentation head for the autoencoder ``model`` on good ``images`` and save it.

    Each step pastes simulated defects into ``HEAD_SHARE`` of a batch of training images
    (or ``patch``-px crops of them), reconstructs the batch with the frozen ``model``, and
    fits the head to the exact defect masks with a focal loss (defect pixels are rare).
    The head is written atomically to ``path``. Returns a summary for ``setup.json``.
    ``eager``: run the steps eagerly (Keras's ``run_eagerly``), quicker than tracing them for a
    handful of steps (:func:`training.eager` decides for a run's head).
    """
    import keras
    from tqdm import tqdm

    import models

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps!r}")
    rng = np.random.default_rng(seed)
    keras.utils.set_random_seed(seed)
    head = models.segmentation_head(channels=images.shape[-1])
    head.compile(
        optimizer=keras.optimizers.Adam(HEAD_LR),
        loss=keras.losses.BinaryFocalCrossentropy(gamma=2.0),
        run_eagerly=eager,
    )
    started = time.time()
    losses = []
    # Progress a person can follow: a bar on a terminal; in a log (nohup, CI, a container) a
    # plain line on stderr about every tenth of the steps, e.g. "head step 150/1500 loss 0.0123".
    try:
        terminal = progress and sys.stderr.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream is no terminal
        terminal = False
    every = max(1, round(steps / 10))
    bar = tqdm(range(steps), desc="learned residual head", unit="step", leave=False, disable=not terminal)

    reconstruct = traced_reconstruction(model)

    def draw():
        return training_batch(model, images, patch, rng, batch, reconstruct)

    for _ in bar:
        x, recon, masks = draw()
        loss = float(head.train_on_batch([x, recon], masks[..., None].astype(np.float32)))
        if not np.isfinite(loss):
            raise FloatingPointError(f"the head's loss became {loss} at step {len(losses) + 1}")
        losses.append(loss)
        if len(losses) % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        if progress and not terminal and (len(losses) % every == 0 or len(losses) == steps):
            recent = np.mean(losses[-every:])  # the mean since the last line
            print(f"head step {len(losses)}/{steps} loss {recent:.4f}", file=sys.stderr, flush=True)
    settle_batch_norm(head, draw)
    with storage.atomic_path(path) as tmp:
        head.save(tmp)
    return {
        "file": Path(path).name,
        "steps": steps,
        "patch": patch,
        "batch": batch,
        "share": HEAD_SHARE,
        "final_loss": float(np.mean(losses[-50:])),
        "seconds": round(time.time() - started, 1),
    }


def settle_batch_norm(head, draw, batches: int | None = None) -> None:
    """Set the moving statistics of every BatchNormalization layer of ``head`` to their mean
    over ``batches`` fresh training batches (``draw()`` → image, reconstruction, mask; default
    :data:`SETTLE_BATCHES`, read at call time), the weights fixed.

    Why: during training the moving averages (momentum 0.99) trail weights that keep
    changing, and inference uses them. A head whose statistics lag marks every pixel
    (seen on cookie: 0.5 everywhere in inference mode, 0.02 on the same crops in training
    mode); the exact statistics of the final weights make inference behave as training did.
    """
    import keras
    import tensorflow as tf

    batches = SETTLE_BATCHES if batches is None else batches
    layers = [layer for layer in head.layers if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in layers]
    sums = [[np.zeros(layer.moving_mean.shape), np.zeros(layer.moving_variance.shape)] for layer in layers]
    try:
        for layer in layers:
            layer.momentum = 0.0  # after a call in training mode, a layer's moving statistics are that batch's own

        # Traced once (the momentum is read then): 0.06 s a batch against 0.2 s called eagerly.
        @tf.function(reduce_retracing=True)
        def forward(x, recon):
            head([x, recon], training=True)

        for _ in range(batches):
            x, recon, _ = draw()
            forward(x, recon)
            for (mean, variance), layer in zip(sums, layers):
                mean += np.asarray(layer.moving_mean, np.float64)
                variance += np.asarray(layer.moving_variance, np.float64)
        for (mean, variance), layer in zip(sums, layers):
            layer.moving_mean.assign((mean / batches).astype("float32"))
            layer.moving_variance.assign((variance / batches).astype("float32"))
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum


def learned_maps(model, head, images: np.ndarray, batch: int = BATCH) -> tuple[np.ndarray, np.ndarray]:
    """``(reconstructions, maps)``: the head's defect probability per pixel (N×H×W float32)."""
    recons = resmaps.reconstruct(model, images, batch)
    return recons, networks.network(head).predict([images, recons], batch)[..., 0]
