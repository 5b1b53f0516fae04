"""Eager image preprocessing with Pillow, as OpenAI CLIP and open_clip do it.

For inference on user images (files, PIL images, uint8 arrays of any size):
resize the shorter side with Pillow (bicubic by default), center-crop to a
square, scale to [0, 1], normalise with the model's mean and std. Pixel for
pixel the same as open_clip's evaluation transform (torchvision on PIL
images), so converted models give the reference's probabilities. Needs no
TensorFlow; the `tf.data` training and evaluation transforms live in
`keras_clip.data.augment`.
"""

import numpy as np
from PIL import Image

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}
INTERPOLATIONS = tuple(_RESAMPLE)  # = keras_clip.models.config.INTERPOLATIONS


def _to_pil(image):
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (str, bytes)) or hasattr(image, "__fspath__"):
        with Image.open(image) as opened:
            opened.load()
            return opened.copy()
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim not in (2, 3):
        raise ValueError(
            "Expected an image as a path, a PIL image, or a uint8 array of "
            "shape (H, W) or (H, W, C). Received: array of dtype "
            f"{array.dtype} and shape {array.shape}"
        )
    if array.ndim == 3 and array.shape[-1] not in (1, 3, 4):
        raise ValueError(
            "Expected 1, 3 or 4 channels (channels last). "
            f"Received: shape {array.shape}"
        )
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return Image.fromarray(array)


def resize_and_center_crop(image, size, interpolation="bicubic"):
    """Shorter side to `size`, then the central `size x size` square.

    Sizes and offsets are rounded as torchvision's `Resize(int)` and
    `CenterCrop` round them (long side truncated, offsets rounded).
    """
    if interpolation not in _RESAMPLE:
        raise ValueError(
            f"`interpolation` must be one of {INTERPOLATIONS}. "
            f"Received: interpolation={interpolation!r}"
        )
    image = _to_pil(image)
    width, height = image.size
    short, long = min(width, height), max(width, height)
    new_long = int(size * long / short)
    new_size = (size, new_long) if width <= height else (new_long, size)
    if (width, height) != new_size:
        image = image.resize(new_size, _RESAMPLE[interpolation])
    width, height = image.size
    left = int(round((width - size) / 2.0))
    top = int(round((height - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def preprocess_images(
    images, image_size, mean, std, interpolation="bicubic"
):
    """A batch of model inputs from images of any size.

    Args:
        images: a list of paths, PIL images or uint8 arrays, or a uint8
            array `(N, H, W, C)`.
        image_size: side of the square the model expects.
        mean, std: per-channel normalisation (RGB, on [0, 1] pixels).
        interpolation: "bicubic" (OpenAI), "bilinear", "nearest", "lanczos".

    Returns:
        float32 array `(N, image_size, image_size, 3)`.
    """
    if isinstance(images, np.ndarray) and images.ndim == 3:
        raise ValueError(
            "Expected a batch of images: a list or an array (N, H, W, C). "
            f"Received: one array of shape {images.shape}; wrap it in a list."
        )
    out = np.empty((len(images), image_size, image_size, 3), np.float32)
    mean = np.asarray(mean, np.float32)
    std = np.asarray(std, np.float32)
    for i, image in enumerate(images):
        square = resize_and_center_crop(image, image_size, interpolation)
        pixels = np.asarray(square.convert("RGB"), np.float32) / 255.0
        out[i] = (pixels - mean) / std
    return out
