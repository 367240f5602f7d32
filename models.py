"""CAE architectures: one factory function per architecture (functional API, no Lambda).

* :func:`mvtec_cae` — the convolutional autoencoder of Bergmann et al. (SSIM-AE, 2018;
  MVTec AD, CVPR 2019) with a 1×1×``latent_dim`` bottleneck.
* :func:`mvtec2_cae` — the same encoder/decoder family, but the bottleneck stays
  *spatial* (``size/32``×``size/32``×``latent_channels`` at 256 px, 8×8×32 by default): the
  code keeps *where* things are, so reconstructions stay sharp and aligned, while the
  narrow channel count still keeps the network from copying defects through.
* :func:`resnet_cae` — Keras's ``InceptionResNetV2`` (no top) as encoder and a
  transposed-convolution decoder with residual blocks back to the input size.

All take and return images in [0, 1]; the output shape always equals the input shape.
"""

from __future__ import annotations

import os

import keras
from keras import layers

from utils import SettingError

IMAGENET_WEIGHTS_FILE = "inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5"
MIN_SIZE = 32
RESNET_MIN_SIZE = 75

# Bergmann et al.'s encoder: (filters, kernel, stride) per layer.
_MVTEC_ENCODER = ((32, 4, 2), (32, 4, 2), (32, 3, 1), (64, 4, 2), (64, 3, 1), (128, 4, 2), (64, 3, 1), (32, 3, 1))


def _extra_strides(size):
    """Extra stride-2 convolutions in front: one at 256 px and above, as the paper does."""
    return 1 if size >= 256 else 0


def valid_mvtec_sizes(limit: int = 1024) -> list[int]:
    """Square sides the mvtec/mvtec2 architectures accept, up to ``limit``."""
    return [s for s in range(MIN_SIZE, limit + 1) if s % (16 * 2 ** _extra_strides(s)) == 0]


def _check_common(size, channels, name):
    if channels not in (1, 3):
        raise ValueError(f"{name}: channels must be 1 (grayscale) or 3 (rgb), got {channels!r}")
    if not isinstance(size, int) or size <= 0:
        raise ValueError(f"{name}: size must be a positive integer, got {size!r}")


def _check_mvtec_size(size, name):
    if size not in valid_mvtec_sizes(max(size, MIN_SIZE)):
        shown = ", ".join(str(s) for s in valid_mvtec_sizes(512))
        raise ValueError(
            f"{name}: size {size} does not fit the network's strides; valid sizes are multiples of 16 "
            f"from {MIN_SIZE} to 240 and multiples of 32 from 256 on ({shown}, ...)"
        )


def _input(size, channels, fully_convolutional):
    # Surface runs train on size-px patches and score whole images of any (stride-multiple) shape.
    side = None if fully_convolutional else size
    return keras.Input((side, side, channels), name="input")


def _conv(x, filters, kernel, stride, name):
    x = layers.Conv2D(filters, kernel, strides=stride, padding="same", name=f"{name}_conv")(x)
    return layers.LeakyReLU(0.2, name=f"{name}_lrelu")(x)


def _deconv(x, filters, kernel, stride, name):
    if stride == 1:
        x = layers.Conv2D(filters, kernel, padding="same", name=f"{name}_conv")(x)
    else:
        x = layers.Conv2DTranspose(filters, kernel, strides=stride, padding="same", name=f"{name}_deconv")(x)
    return layers.LeakyReLU(0.2, name=f"{name}_lrelu")(x)


def _mvtec_encoder(inputs, size):
    x = inputs
    for i in range(_extra_strides(size)):
        x = _conv(x, 32, 4, 2, f"enc_block0_{i}")
    for i, (filters, kernel, stride) in enumerate(_MVTEC_ENCODER, start=1):
        x = _conv(x, filters, kernel, stride, f"enc_block{i}")
    return x


def _mvtec_decoder(x, size, channels):
    # Mirror of the encoder: reversed layer list, stride-2 convs become transposed convs.
    for i, (filters, kernel, stride) in reversed(list(enumerate(_MVTEC_ENCODER, start=1))):
        x = _deconv(x, filters, kernel, stride, f"dec_block{i}")
    for i in range(_extra_strides(size)):
        x = _deconv(x, 32, 4, 2, f"dec_block0_{i}")
    return layers.Conv2D(channels, 3, padding="same", activation="sigmoid", name="dec_output")(x)


def mvtec_cae(
    size: int = 256, channels: int = 1, latent_dim: int = 100, fully_convolutional: bool = False
) -> keras.Model:
    """Bergmann et al.'s CAE with a dense 1×1×``latent_dim`` bottleneck.

    Encoder Conv 32/4/s2, 32/4/s2, 32/3, 64/4/s2, 64/3, 128/4/s2, 64/3, 32/3 (LeakyReLU
    0.2), then a valid convolution to 1×1×latent; the decoder mirrors it and ends in a
    sigmoid. At 256 px and above one more stride-2 convolution stands in front.
    ``fully_convolutional``: accept any height and width that are multiples of the total
    stride (``size`` is then the training patch side; the code becomes a spatial map).
    """
    _check_common(size, channels, "mvtec_cae")
    _check_mvtec_size(size, "mvtec_cae")
    if latent_dim < 1:
        raise ValueError(f"mvtec_cae: latent_dim must be >= 1, got {latent_dim!r}")
    inputs = _input(size, channels, fully_convolutional)
    x = _mvtec_encoder(inputs, size)
    # The code convolution spans the whole encoded patch (fully convolutional: the training patch's).
    side = size // (16 * 2 ** _extra_strides(size))
    latent = layers.Conv2D(latent_dim, side, padding="valid", name="latent_conv")(x)
    x = layers.Conv2DTranspose(32, side, padding="valid", name="dec_latent_deconv")(latent)
    x = layers.LeakyReLU(0.2, name="dec_latent_lrelu")(x)
    outputs = _mvtec_decoder(x, size, channels)
    return keras.Model(inputs, outputs, name="mvtec_cae")


def mvtec2_cae(
    size: int = 256, channels: int = 1, latent_channels: int = 32, fully_convolutional: bool = False
) -> keras.Model:
    """The mvtec CAE with a spatial bottleneck: ``size/16``×``size/16``×``latent_channels``
    (``size/32`` at 256 px and above, i.e. 8×8×k at 256 px) instead of 1×1×100.

    Keeping a small map as the code preserves location information, so good regions are
    reconstructed in place and sharp, while ``latent_channels`` (default 32: 2,048 numbers
    at 256 px, 24× fewer than a 128-px RGB image has values) limits how much an unseen
    defect can be copied through. On MVTec bottle, 32 channels reconstructed much better
    than 8 and as well as 64 (bench/README.md). ``fully_convolutional``: as in :func:`mvtec_cae`.
    """
    _check_common(size, channels, "mvtec2_cae")
    _check_mvtec_size(size, "mvtec2_cae")
    if latent_channels < 1:
        raise ValueError(f"mvtec2_cae: latent_channels must be >= 1, got {latent_channels!r}")
    inputs = _input(size, channels, fully_convolutional)
    x = _mvtec_encoder(inputs, size)
    latent = layers.Conv2D(latent_channels, 1, padding="same", name="latent_conv")(x)
    x = layers.Conv2D(32, 1, padding="same", name="dec_latent_conv")(latent)
    x = layers.LeakyReLU(0.2, name="dec_latent_lrelu")(x)
    outputs = _mvtec_decoder(x, size, channels)
    return keras.Model(inputs, outputs, name="mvtec2_cae")


def imagenet_weights_path() -> str:
    """Where Keras's cache keeps the official InceptionResNetV2 no-top weights."""
    keras_home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    return os.path.join(keras_home, "models", IMAGENET_WEIGHTS_FILE)


class MissingWeights(SettingError, FileNotFoundError):
    """The encoder weights asked for are not on this machine (a FileNotFoundError naming the setting)."""


def _resolve_weights(weights):
    if weights in (None, "none"):
        return None
    if weights == "imagenet":
        path = imagenet_weights_path()
        if not os.path.isfile(path):
            raise MissingWeights(
                f"ImageNet weights for InceptionResNetV2 are not in Keras's cache: {path} is missing "
                f"(no internet here). On a connected machine download {IMAGENET_WEIGHTS_FILE} "
                f"(e.g. by building keras.applications.InceptionResNetV2(include_top=False) once) and copy it "
                f"to {os.path.dirname(path)}/, or use `weights=PATH` to a weights file, or `weights=none`"
            )
        return "imagenet"
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"weights file not found: {weights}")
    return weights


def _residual_block(x, filters, name):
    shortcut = x
    y = layers.Conv2D(filters, 3, padding="same", name=f"{name}_conv1")(x)
    y = layers.LeakyReLU(0.2, name=f"{name}_lrelu1")(y)
    y = layers.Conv2D(filters, 3, padding="same", name=f"{name}_conv2")(y)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.LeakyReLU(0.2, name=f"{name}_lrelu2")(y)


def resnet_cae(
    size: int = 256,
    channels: int = 3,
    weights: str | None = "none",
    decoder_filters: tuple[int, ...] = (256, 128, 64, 32, 16),
) -> keras.Model:
    """CAE with Keras's InceptionResNetV2 (``include_top=False``) as encoder.

    Inputs in [0, 1] are rescaled to the encoder's [-1, 1] inside the model by a
    ``Rescaling`` layer (grayscale is repeated to 3 channels by a ``Concatenate``); the
    decoder upsamples with stride-2 transposed convolutions, each followed by a residual
    block (``x + conv(conv(x))``), resizes to exactly ``size`` and ends in a sigmoid.
    ``weights``: ``"imagenet"`` (from Keras's cache only), ``"none"``, or a weights file.
    The encoder is the sub-model named ``encoder``.
    """
    _check_common(size, channels, "resnet_cae")
    if size < RESNET_MIN_SIZE:
        raise ValueError(f"resnet_cae: size must be at least {RESNET_MIN_SIZE} (InceptionResNetV2), got {size!r}")
    resolved = _resolve_weights(weights)
    inputs = keras.Input((size, size, channels), name="input")
    x = layers.Rescaling(2.0, offset=-1.0, name="enc_rescale")(inputs)
    if channels == 1:
        x = layers.Concatenate(name="enc_gray_to_rgb")([x, x, x])
    encoder = keras.applications.InceptionResNetV2(
        include_top=False, weights=resolved, input_shape=(size, size, 3), name="encoder"
    )
    x = encoder(x)
    x = layers.Conv2D(decoder_filters[0], 1, padding="same", name="dec_reduce_conv")(x)
    for i, filters in enumerate(decoder_filters, start=1):
        x = layers.Conv2DTranspose(filters, 4, strides=2, padding="same", name=f"dec_block{i}_deconv")(x)
        x = layers.LeakyReLU(0.2, name=f"dec_block{i}_lrelu")(x)
        x = _residual_block(x, filters, f"dec_block{i}_res")
    x = layers.Resizing(size, size, interpolation="bilinear", name="dec_resize")(x)
    outputs = layers.Conv2D(channels, 3, padding="same", activation="sigmoid", name="dec_output")(x)
    return keras.Model(inputs, outputs, name="resnet_cae")


def _resnet(size, channels, weights="none", fully_convolutional=False):
    if fully_convolutional:
        raise ValueError("resnet_cae cannot be fully convolutional (InceptionResNetV2 needs whole square images)")
    return resnet_cae(size=size, channels=channels, weights=weights)


ARCHITECTURES = {  # name -> factory(size, channels, weights, fully_convolutional): add a new architecture here
    "mvtec": lambda size, channels, weights="none", fully_convolutional=False: mvtec_cae(
        size=size, channels=channels, fully_convolutional=fully_convolutional
    ),
    "mvtec2": lambda size, channels, weights="none", fully_convolutional=False: mvtec2_cae(
        size=size, channels=channels, fully_convolutional=fully_convolutional
    ),
    "resnet": _resnet,
}
"""The architectures ``-a`` offers (train.py's choices and setup.json's check read this registry)."""


def build_model(
    architecture: str, size: int, channels: int, weights: str | None = "none", fully_convolutional: bool = False
) -> keras.Model:
    """Build the named architecture of :data:`ARCHITECTURES` (``mvtec`` and ``mvtec2`` can be
    ``fully_convolutional``, for surface runs; ``weights`` applies to ``resnet``)."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; choose one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[architecture](size, channels, weights=weights, fully_convolutional=fully_convolutional)


# ---- the learned residual (see learned.py) ----

HEAD_LEVELS = 3  # stride-2 steps of the segmentation head: inputs must be multiples of 2**HEAD_LEVELS


def segmentation_head(channels: int = 1, filters: tuple[int, ...] = (16, 32, 64, 128)) -> keras.Model:
    """Small U-Net that marks defects from an image and its reconstruction (fully convolutional).

    Inputs ``image`` and ``reconstruction`` (both H×W×``channels`` in [0, 1], H and W any
    multiples of 8) are joined with their squared difference; ``len(filters) - 1`` stride-2
    blocks go down, transposed convolutions with skip connections come back, and a 1×1
    sigmoid convolution gives the defect probability per pixel (H×W×1). The head learns
    *which* differences matter, instead of a fixed SSIM/L2 formula (DRAEM's discriminative
    sub-network, Zavrtanik et al., ICCV 2021, at a size that trains on a CPU).
    """
    if channels not in (1, 3):
        raise ValueError(f"segmentation_head: channels must be 1 (grayscale) or 3 (rgb), got {channels!r}")
    if len(filters) != HEAD_LEVELS + 1 or any(int(f) < 1 for f in filters):
        raise ValueError(f"segmentation_head: filters must be {HEAD_LEVELS + 1} positive counts, got {filters!r}")
    image = keras.Input((None, None, channels), name="image")
    recon = keras.Input((None, None, channels), name="reconstruction")
    diff = layers.Subtract(name="in_diff")([image, recon])
    x = layers.Concatenate(name="in_concat")([image, recon, layers.Multiply(name="in_diff_sq")([diff, diff])])
    skips = []
    for i, f in enumerate(filters):
        if i:
            x = layers.Conv2D(f, 3, strides=2, padding="same", name=f"down_block{i}_stride")(x)
            x = layers.LeakyReLU(0.2, name=f"down_block{i}_stride_lrelu")(x)
        x = layers.Conv2D(f, 3, padding="same", name=f"down_block{i}_conv")(x)
        x = layers.BatchNormalization(name=f"down_block{i}_bn")(x)
        x = layers.LeakyReLU(0.2, name=f"down_block{i}_lrelu")(x)
        skips.append(x)
    for i in range(len(filters) - 2, -1, -1):
        x = layers.Conv2DTranspose(filters[i], 4, strides=2, padding="same", name=f"up_block{i}_deconv")(x)
        x = layers.Concatenate(name=f"up_block{i}_skip")([x, skips[i]])
        x = layers.Conv2D(filters[i], 3, padding="same", name=f"up_block{i}_conv")(x)
        x = layers.BatchNormalization(name=f"up_block{i}_bn")(x)
        x = layers.LeakyReLU(0.2, name=f"up_block{i}_lrelu")(x)
    outputs = layers.Conv2D(1, 1, activation="sigmoid", name="out_conv")(x)
    return keras.Model([image, recon], outputs, name="segmentation_head")
