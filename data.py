"""The MVTec AD data layout, image loading and the training input pipeline.

One home for: which files count as images, how a class folder is laid out
(``train/good``, ``test/<defect>``, ``ground_truth/<defect>/<stem>_mask.png``), loading
and resizing to the model's size and colour mode, the seeded validation split, and the
``tf.data`` pipeline with augmentation.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from settings import DEFAULT_ROTATION
from utils import SettingError, UserError, warn

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
COLOR_MODES = {"grayscale": ("L", 1), "rgb": ("RGB", 3)}
GOOD = "good"


def is_image_name(path) -> bool:
    """True when ``path`` has a supported image extension (any case)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def list_images(folder, recursive: bool = False) -> list[Path]:
    """Sorted image files in ``folder`` (recursively if asked). Nothing is skipped without a
    word: other files get a warning each, broken symbolic links too, and hidden files (a
    name, or with ``recursive`` a folder below ``folder``, starting with a dot: ``.DS_Store``,
    ``.ipynb_checkpoints/``, this tool's staging folders) one warning for all."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"folder not found: {folder}")
    entries = folder.rglob("*") if recursive else folder.iterdir()
    images, hidden = [], []
    for path in sorted(entries):
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            if not path.is_dir():
                hidden.append(path)
            continue
        if path.is_symlink() and not path.exists():
            warn(f"skipping {path}: a broken symbolic link (its target {os.readlink(path)} does not exist)")
            continue
        if not path.is_file():
            continue
        if is_image_name(path):
            images.append(path)
        else:
            warn(f"skipping {path}: not an image file (supported: {', '.join(IMAGE_EXTENSIONS)})")
    if hidden:
        warn(
            f"skipping {len(hidden)} hidden file(s) under {folder} (names or folders starting with '.'), "
            f"e.g. {hidden[0].relative_to(folder)}"
        )
    return images


def output_stems(paths) -> list[str]:
    """A name per image for its output files: the file stem, or the whole name with the dot
    replaced where two images in one folder share a stem (``x.png`` and ``x.bmp``)."""
    seen = {}
    for p in paths:
        key = (Path(p).parent, Path(p).stem)
        seen[key] = seen.get(key, 0) + 1
    return [
        Path(p).stem if seen[(Path(p).parent, Path(p).stem)] == 1 else Path(p).name.replace(".", "_") for p in paths
    ]


def channels_of(color: str) -> int:
    """Number of channels of a colour mode (``grayscale`` → 1, ``rgb`` → 3)."""
    if color not in COLOR_MODES:
        raise ValueError(f"unknown colour mode {color!r}; choose one of {', '.join(COLOR_MODES)}")
    return COLOR_MODES[color][1]


_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")  # Pillow modes of more than 8 bits a channel


def to_uint8(array: np.ndarray, path="image") -> np.ndarray:
    """Pixel values of any depth as 8 bits, the one rule every reader of the suite follows:

    - float (e.g. a float32 TIFF): values in [0, 1] are scaled by 255, in [0, 255] kept,
      larger ones scaled from 16 bits; rounded; NaN or infinity refused (one line);
    - one-channel 16/32-bit integers: scaled from 16 bits when any value exceeds 255, else
      kept (an 8-bit image stored in 16 bits); truncated;
    - several-channel 16-bit integers: the high byte (as Pillow reads 16-bit colour PNGs);
    - negative values become 0, values above the range 255.
    """
    array = np.asarray(array)
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if array.dtype.kind == "f":
        values = array.astype(np.float64)
        if not np.isfinite(values).all():
            raise UserError(f"cannot read image {path}: it holds NaN or infinite pixel values")
        top = values.max(initial=0.0)
        scale = 255.0 if top <= 1.0 else 1.0 if top <= 255.0 else 255.0 / 65535.0
        return np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)
    if array.dtype.kind not in "ui":
        raise UserError(f"cannot read image {path}: pixel type {array.dtype} is not supported")
    if array.ndim == 3 and array.shape[-1] > 1 and array.dtype == np.uint16:
        return (array >> 8).astype(np.uint8)
    values = array.astype(np.float64)
    top = 65535.0 if values.max(initial=0.0) > 255 else 255.0
    return np.clip(values / top * 255.0, 0, 255).astype(np.uint8)


def _array_image(array, path):
    """A Pillow image (L or RGB) of a decoded pixel array of any depth (:func:`to_uint8`):
    H×W, or H×W×C with 1-4 channels (a second or fourth one, alpha, dropped) or planar C×H×W."""
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 2, 3, 4):
        array = np.moveaxis(array, 0, -1)  # planar TIFF
    if array.ndim == 3 and array.shape[-1] in (1, 2):
        array = array[..., 0]
    elif array.ndim == 3 and array.shape[-1] == 4:
        array = array[..., :3]
    if array.ndim != 2 and not (array.ndim == 3 and array.shape[-1] == 3):
        raise UserError(f"cannot read image {path}: pixel array of shape {array.shape} is not one image")
    return Image.fromarray(to_uint8(array, path))


def _to_mode(image, color, path="image"):
    mode = COLOR_MODES[color][0]
    if image.mode in _WIDE_MODES:
        # 16-bit, 32-bit and float images: to 8 bits by to_uint8 instead of clipping (a float
        # image in [0, 1] would otherwise be read as black).
        image = _array_image(np.asarray(image), path)
    if image.mode in ("RGBA", "LA", "P", "PA"):
        image = image.convert("RGBA").convert("RGB") if mode == "RGB" else image.convert("L")
    return image.convert(mode)


def _is_tiff(path):
    return Path(path).suffix.lower() in (".tif", ".tiff")


def _decode(path, color):
    """One image file as a Pillow image in ``color``'s mode: Pillow, and for TIFFs Pillow
    cannot open (several channels of 16 bits or floats) tifffile; both by :func:`to_uint8`."""
    try:
        with _open_image(path) as image:
            image.load()
            return _to_mode(image, color, path)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, MemoryError) as exc:
        if not _is_tiff(path):
            raise UserError(f"cannot read image {path}: {exc.__class__.__name__}") from None
        failure = exc
    try:
        import tifffile

        array = tifffile.imread(path)
    except Exception:  # noqa: BLE001 - tifffile cannot read it either: Pillow's reason is reported
        raise UserError(f"cannot read image {path}: {failure.__class__.__name__}") from None
    return _to_mode(_array_image(array, path), color, path)


TINY_SHARE = 4  # an image whose smaller side is under size / TINY_SHARE gets a warning when enlarged


def _open_image(path):
    """``Image.open`` that refuses decompression bombs (Pillow's pixel limit) as unreadable,
    instead of decoding gigapixels or aborting the whole batch."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return Image.open(path)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise UserError(
                f"cannot read image {path}: too many pixels (over Pillow's limit of "
                f"{Image.MAX_IMAGE_PIXELS} px; a decompression bomb?)"
            ) from None


def load_image(path, color: str, size=None) -> np.ndarray:
    """Read one image as float32 H×W×C in [0, 1], in ``color`` mode, resized to ``size``
    (a square side, or ``(height, width)`` for surface runs that keep the aspect ratio).

    Shrinking uses area interpolation (Pillow's box filter); enlarging uses bicubic.
    Raises :class:`UserError` if the file cannot be read as an image (including
    decompression bombs).
    """
    return _load_image(path, color, size)[0]


def model_size(size) -> tuple[int, int]:
    """Pillow ``(width, height)`` of a model input size: a square side or a ``(height, width)`` pair."""
    if size is None:
        return None
    if isinstance(size, (tuple, list)):
        return int(size[1]), int(size[0])
    return int(size), int(size)


def _load_image(path, color, size=None):
    """:func:`load_image` plus the file's own (width, height)."""
    image = _decode(path, color)
    original = image.size
    target = model_size(size)
    if target is not None and image.size != target:
        shrinking = image.size[0] >= target[0] and image.size[1] >= target[1]
        image = image.resize(target, Image.Resampling.BOX if shrinking else Image.Resampling.BICUBIC)
    array = np.asarray(image, dtype=np.float32) / 255.0
    if array.ndim == 2:
        array = array[..., None]
    return array, original


def detect_color(paths, sample: int = 16) -> str:
    """``rgb`` when any of the first ``sample`` images has colour (channels that differ), else ``grayscale``."""
    for path in list(paths)[:sample]:
        try:
            rgb = load_image(path, "rgb", 64)
        except UserError:
            continue
        if np.abs(rgb - rgb.mean(axis=-1, keepdims=True)).max() > 2.0 / 255.0:
            return "rgb"
    return "grayscale"


def image_size(path) -> tuple[int, int]:
    """(width, height) of an image file without decoding its pixels (a TIFF Pillow cannot
    open: as :func:`load_image` reads it)."""
    try:
        with _open_image(path) as image:
            return image.size
    except (UnidentifiedImageError, OSError) as exc:
        if not _is_tiff(path):
            raise UserError(f"cannot read image {path}: {exc.__class__.__name__}") from None
    return _decode(path, "grayscale").size


def load_images(
    paths, color: str, size, progress=None, allow_none: bool = False, with_sizes: bool = False
) -> tuple[np.ndarray, list] | tuple[np.ndarray, list, list]:
    """Load many images into one float32 N×H×W×C array.

    ``progress``: a description for a progress bar, or an open tqdm bar advanced by one
    per file (a stream's bar over all its chunks). Unreadable files are skipped with a
    warning; returns ``(array, kept_paths)``. Raises :class:`UserError` when none can be
    read, unless ``allow_none`` (then the array is empty: one chunk of a longer stream may
    hold only unreadable files). ``with_sizes``: also each kept file's own (width, height),
    read while decoding it (no second opening of the file).
    """
    from tqdm import tqdm

    arrays, kept, sizes, tiny = [], [], [], []
    bar = progress if hasattr(progress, "update") else None
    if isinstance(progress, str):
        iterator = tqdm(paths, desc=progress, unit="img", leave=False, disable=None)
    else:
        iterator = paths
    for path in iterator:
        if bar is not None:
            bar.update(1)
        try:
            array, (width, height) = _load_image(path, color, size)
        except UserError as exc:
            warn(f"skipping: {exc}")
            continue
        arrays.append(array)
        kept.append(Path(path))
        sizes.append((width, height))
        if size is not None and min(width, height) * TINY_SHARE < min(model_size(size)):
            tiny.append(f"{path} ({width}x{height})")
    if tiny:
        warn(
            f"{len(tiny)} image(s) are far smaller than the model's {size} px and were enlarged, so they carry little "
            f"detail, e.g. {tiny[0]}"
        )
    if not arrays:
        if allow_none:
            return (
                (np.zeros((0, 0, 0, 0), np.float32), [], []) if with_sizes else (np.zeros((0, 0, 0, 0), np.float32), [])
            )
        raise UserError(f"no readable images among {len(paths)} file(s)")
    return (np.stack(arrays), kept, sizes) if with_sizes else (np.stack(arrays), kept)


def load_mask(path, size: tuple[int, int]) -> np.ndarray:
    """Read a ground-truth mask as a bool array of ``size`` (nearest-neighbour resize, with a warning)."""
    try:
        with _open_image(path) as image:
            mask = image.convert("L")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise UserError(f"cannot read mask {path}: {exc.__class__.__name__}") from None
    if size is not None and mask.size != tuple(size):
        warn(
            f"mask {path} is {mask.size[0]}x{mask.size[1]}, its image {size[0]}x{size[1]}: resized (nearest neighbour)"
        )
        mask = mask.resize(tuple(size), Image.Resampling.NEAREST)
    return np.asarray(mask) > 127


# ---- the MVTec layout ----


def check_class_dir(directory) -> tuple[Path, Path]:
    """Validate a class folder for training; return ``(class_dir, train_good_dir)``."""
    class_dir = Path(directory)
    if not class_dir.is_dir():
        raise UserError(f"directory not found: {directory}")
    good = class_dir / "train" / GOOD
    if not good.is_dir():
        raise UserError(f"no train/good folder in {directory} (expected MVTec AD layout: <class>/train/good/*.png)")
    return class_dir, good


def ground_truth_path(class_dir, defect: str, image_path) -> Path | None:
    """The ground-truth mask of a test image of ``defect`` (the folder under ``test/``), or None:
    ``ground_truth/<defect>/<stem>_mask.png`` when it exists; ``good`` images have none."""
    if defect == GOOD:
        return None
    mask = Path(class_dir) / "ground_truth" / defect / f"{Path(image_path).stem}_mask.png"
    return mask if mask.is_file() else None


def list_test_images(class_dir) -> list[tuple[Path, str, Path | None]]:
    """Every test image of a class: list of ``(path, defect_type, mask_path_or_None)``.

    Folder ``good`` is defect-free; any other folder under ``test/`` is a defect type with
    masks where :func:`ground_truth_path` finds them.
    """
    test_dir = Path(class_dir) / "test"
    if not test_dir.is_dir():
        raise UserError(f"no test folder in {class_dir} (expected <class>/test/<good|defect>/*.png)")
    items = []
    for defect_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
        defect = defect_dir.name
        items += [(path, defect, ground_truth_path(class_dir, defect, path)) for path in list_images(defect_dir)]
    if not items:
        raise UserError(f"no test images under {test_dir}")
    return items


def split_validation(paths, val_split: float, seed: int) -> tuple[list, list]:
    """Random, seeded split of ``paths`` into ``(train, validation)``, both sorted.

    At least one image goes to each side; raises :class:`UserError` if that is impossible.
    """
    if not 0.0 < val_split < 1.0:
        raise SettingError(f"`val_split` must be between 0 and 1 (exclusive), got {val_split}")
    paths = sorted(paths)
    n_val = max(1, int(round(len(paths) * val_split)))
    if len(paths) - n_val < 1:
        raise UserError(
            f"{len(paths)} training image(s) are too few for a validation split of {val_split}: "
            "need at least 2 (one to train on, one to validate)"
        )
    order = np.random.default_rng(seed).permutation(len(paths))
    val = sorted(paths[i] for i in order[:n_val])
    train = sorted(paths[i] for i in order[n_val:])
    return train, val


def files_hash(names) -> str:
    """SHA-256 of a list of file names (recorded so a run's validation list can be checked)."""
    return hashlib.sha256("\n".join(str(n) for n in names).encode()).hexdigest()


def relative_to(path, root) -> str:
    """``path`` relative to ``root`` as a POSIX string (falls back to the absolute path)."""
    try:
        return Path(os.path.relpath(path, root)).as_posix()
    except ValueError:
        return str(Path(path).resolve())


# ---- tf.data pipeline ----


def augmenter(flip=False, seed=0, rotation=DEFAULT_ROTATION):
    """Keras preprocessing layers for training images: rotation ±``rotation``°, shift 5%, mirror if ``flip``
    (brightness ×0.95–1.05 is applied in :func:`tf_dataset`)."""
    import keras

    steps = [
        keras.layers.RandomRotation(rotation / 360.0, fill_mode="reflect", seed=seed),
        keras.layers.RandomTranslation(0.05, 0.05, fill_mode="reflect", seed=seed + 1),
    ]
    if flip:
        steps.append(keras.layers.RandomFlip("horizontal_and_vertical", seed=seed + 2))
    return keras.Sequential(steps, name="augment")


def paste_anomalies(x, probability=0.5, min_radius=0.03, max_radius=0.15):
    """Denoising-training corruption: paste one random elliptical patch into some images.

    A batch ``x`` (N×H×W×C, [0, 1]) gets, in each image with ``probability``, an ellipse
    (radii ``min_radius``–``max_radius`` of the side) filled either with a shifted piece of
    another image of the batch or with a random flat colour plus noise, blended with a
    random opacity of 0.5–1. The model is trained to output the clean image, so it learns
    to *remove* what does not belong instead of copying it (a denoising autoencoder).
    """
    import tensorflow as tf

    n, h, w = tf.shape(x)[0], tf.shape(x)[1], tf.shape(x)[2]
    hf, wf = tf.cast(h, tf.float32), tf.cast(w, tf.float32)
    cy = tf.random.uniform([n, 1, 1], 0.0, 1.0) * hf
    cx = tf.random.uniform([n, 1, 1], 0.0, 1.0) * wf
    ry = tf.random.uniform([n, 1, 1], min_radius, max_radius) * hf
    rx = tf.random.uniform([n, 1, 1], min_radius, max_radius) * wf
    yy = tf.cast(tf.range(h), tf.float32)[None, :, None]
    xx = tf.cast(tf.range(w), tf.float32)[None, None, :]
    inside = tf.cast(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0, tf.float32)
    chosen = tf.cast(tf.random.uniform([n, 1, 1]) < probability, tf.float32)
    alpha = tf.random.uniform([n, 1, 1], 0.5, 1.0)
    mask = (inside * chosen * alpha)[..., None]
    shift = tf.random.uniform([2], 0, tf.minimum(h, w), dtype=tf.int32)
    other = tf.roll(tf.roll(x, 1, axis=0), shift, axis=[1, 2])
    flat = tf.random.uniform([n, 1, 1, tf.shape(x)[3]]) + tf.random.normal(tf.shape(x), stddev=0.05)
    use_other = tf.cast(tf.random.uniform([n, 1, 1, 1]) < 0.5, tf.float32)
    source = tf.clip_by_value(use_other * other + (1.0 - use_other) * flat, 0.0, 1.0)
    return x * (1.0 - mask) + source * mask


def tf_dataset(
    images: np.ndarray,
    batch: int,
    training: bool,
    augment: bool = True,
    flip: bool = False,
    seed: int = 0,
    denoise: float = 0.0,
    rotation: float = DEFAULT_ROTATION,
    patch: int | None = None,
    per_epoch: int | None = None,
):
    """``tf.data`` pipeline of ``(input, target)`` batches from an in-memory N×H×W×C array.

    Images are decoded once (they arrive decoded) and cached; training batches are shuffled
    and augmented (vectorised per batch) in parallel with the model's step, then prefetched.
    The target is the (augmented) image itself; with ``denoise`` > 0 that share of the
    inputs additionally gets :func:`paste_anomalies`, so the model learns to repair rather
    than copy (older runs' ``true`` is converted to the default share by runs.upgrade_setup).
    With ``patch`` (surface runs), each training image contributes random
    ``patch``×``patch`` crops (one per epoch, or as many as ``per_epoch`` patches in all
    need), so a pattern is seen at every offset.
    """
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices(images).cache()
    if training and patch and per_epoch and per_epoch > len(images):
        ds = ds.repeat(-(-int(per_epoch) // len(images))).take(int(per_epoch))
    if training:
        ds = ds.shuffle(
            int(per_epoch or len(images)) if patch else len(images), seed=seed, reshuffle_each_iteration=True
        )
    if training and patch:
        crop = [int(patch), int(patch), int(images.shape[-1])]
        ds = ds.map(lambda x: tf.image.random_crop(x, crop), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch)
    if training and augment:
        layers = augmenter(flip=flip, seed=seed, rotation=rotation)

        def _augment(x):
            x = layers(x, training=True)
            gain = tf.random.uniform([tf.shape(x)[0], 1, 1, 1], 0.95, 1.05)
            return tf.clip_by_value(x * gain, 0.0, 1.0)

        ds = ds.map(_augment, num_parallel_calls=tf.data.AUTOTUNE)
    if training and denoise:
        share = float(denoise)
        ds = ds.map(lambda x: (paste_anomalies(x, probability=share), x), num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = ds.map(lambda x: (x, x))
    return ds.prefetch(tf.data.AUTOTUNE)
