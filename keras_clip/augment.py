"""Image transforms for CLIP training and evaluation, as TensorFlow ops.

Everything here runs inside `tf.data.Dataset.map` (graph mode) and eagerly.
Images enter as `uint8` (or float in `[0, 255]`) tensors of shape `(H, W, 3)`
and leave as `float32` tensors of shape `(size, size, 3)`.

- Training: a random-resized square crop (CLIP, Radford et al. 2021, trains
  on random square crops of resized images; open_clip uses a random-resized
  crop with scale `(0.9, 1.0)`), then an optional small rotation, an
  optional random drop in resolution and optional colour distortion.
- Evaluation: bicubic resize of the shorter side to `size`, then a center
  crop, as OpenAI's and open_clip's preprocessing do.
- Both end with OpenAI's per-channel mean / std normalisation.

Randomness uses stateless ops: pass `seed`, an integer tensor of shape `(2,)`,
and the same seed gives the same output. With `seed=None` a seed is drawn
from TensorFlow's global generator (not reproducible).
"""

import math

import tensorflow as tf

# OpenAI CLIP's normalisation constants (openai/CLIP `_transform`), RGB order,
# for pixel values scaled to [0, 1].
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

# torchvision's RandomResizedCrop tries this many boxes before falling back
# to a center crop; we draw them all at once and keep the first that fits.
_CROP_ATTEMPTS = 10


def _check_range(name, value, low=None):
    value = tuple(float(v) for v in value)
    if len(value) != 2 or value[0] > value[1] or (
        low is not None and value[0] <= low
    ):
        raise ValueError(
            f"Expected `{name}` to be a pair (min, max) with "
            f"{'' if low is None else f'{low} < '}min <= max. "
            f"Received: {name}={value}"
        )
    return value


def _seed_or_random(seed):
    if seed is None:
        return tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int32)
    seed = tf.convert_to_tensor(seed)
    if seed.dtype not in (tf.int32, tf.int64):
        seed = tf.cast(seed, tf.int64)
    return seed


def normalize(image):
    """Scales pixel values `[0, 255]` to `[0, 1]` and applies OpenAI mean/std.

    Args:
        image: float or integer tensor `(..., 3)` with values in `[0, 255]`.

    Returns:
        A `float32` tensor of the same shape.
    """
    image = tf.cast(image, tf.float32) / 255.0
    mean = tf.constant(OPENAI_MEAN, tf.float32)
    std = tf.constant(OPENAI_STD, tf.float32)
    return (image - mean) / std


def denormalize(image):
    """Inverts `normalize`: returns `float32` pixel values in `[0, 255]`."""
    mean = tf.constant(OPENAI_MEAN, tf.float32)
    std = tf.constant(OPENAI_STD, tf.float32)
    return (tf.cast(image, tf.float32) * std + mean) * 255.0


def random_resized_crop_box(
    height, width, scale=(0.9, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0), seed=None
):
    """Samples a crop box as torchvision's `RandomResizedCrop` does.

    The box covers a fraction of the image area drawn uniformly from `scale`,
    with aspect ratio (width / height) drawn log-uniformly from `ratio`. Ten
    boxes are drawn and the first that fits inside the image is kept; if none
    fits, the whole image is center-cropped to the nearest allowed ratio.

    Args:
        height: scalar integer tensor, image height.
        width: scalar integer tensor, image width.
        scale: pair `(min, max)`, fraction of the image area to keep.
        ratio: pair `(min, max)`, aspect ratio range of the box.
        seed: optional integer tensor of shape `(2,)` for stateless sampling.

    Returns:
        An `int32` tensor `[top, left, box_height, box_width]`.
    """
    scale = _check_range("scale", scale, low=0.0)
    ratio = _check_range("ratio", ratio, low=0.0)
    seed = _seed_or_random(seed)
    h = tf.cast(height, tf.float32)
    w = tf.cast(width, tf.float32)
    area = h * w
    uniforms = tf.random.stateless_uniform([4, _CROP_ATTEMPTS], seed=seed)
    target_area = area * (scale[0] + (scale[1] - scale[0]) * uniforms[0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = tf.exp(log_lo + (log_hi - log_lo) * uniforms[1])
    box_w = tf.round(tf.sqrt(target_area * aspect))
    box_h = tf.round(tf.sqrt(target_area / aspect))
    fits = (box_w > 0) & (box_w <= w) & (box_h > 0) & (box_h <= h)
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
    top = tf.floor(uniforms[2, first] * (h - box_h[first] + 1.0))
    left = tf.floor(uniforms[3, first] * (w - box_w[first] + 1.0))
    sampled = tf.stack([top, left, box_h[first], box_w[first]])

    # Fallback: the largest centered box whose ratio lies within `ratio`.
    in_ratio = w / h
    fb_w = tf.where(
        in_ratio > ratio[1], tf.round(h * ratio[1]), w
    )
    fb_h = tf.where(
        in_ratio < ratio[0], tf.round(w / ratio[0]), h
    )
    fb_w = tf.clip_by_value(fb_w, 1.0, w)
    fb_h = tf.clip_by_value(fb_h, 1.0, h)
    fallback = tf.stack(
        [tf.floor((h - fb_h) / 2.0), tf.floor((w - fb_w) / 2.0), fb_h, fb_w]
    )
    box = tf.where(tf.reduce_any(fits), sampled, fallback)
    return tf.cast(box, tf.int32)


def _resize(image, height, width):
    # Bicubic with antialiasing: a Keys kernel (a = -0.5) widened when
    # shrinking, which is what PIL's BICUBIC (used by torchvision) computes.
    image = tf.image.resize(
        tf.cast(image, tf.float32),
        tf.stack([height, width]),
        method="bicubic",
        antialias=True,
    )
    return tf.clip_by_value(image, 0.0, 255.0)


def random_resized_crop(
    image, size, scale=(0.9, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0), seed=None
):
    """Random-resized square crop: crops a random box, resizes to `size`.

    Args:
        image: tensor `(H, W, C)`, values in `[0, 255]`.
        size: int, side of the square output.
        scale: pair, fraction of the area kept (open_clip: `(0.9, 1.0)`).
        ratio: pair, aspect-ratio range of the box before resizing.
        seed: optional integer tensor of shape `(2,)`.

    Returns:
        A `float32` tensor `(size, size, C)` with values in `[0, 255]`.
    """
    shape = tf.shape(image)
    box = random_resized_crop_box(shape[0], shape[1], scale, ratio, seed)
    crop = image[box[0] : box[0] + box[2], box[1] : box[1] + box[3]]
    return _resize(crop, size, size)


def resize_and_center_crop(image, size):
    """Eval transform: bicubic resize of the shorter side, then center crop.

    Follows torchvision's `Resize(size)` + `CenterCrop(size)` as used by
    OpenAI and open_clip: the longer side becomes `int(size * long / short)`
    and the crop offset is `round((side - size) / 2)`.

    Args:
        image: tensor `(H, W, C)`, values in `[0, 255]`.
        size: int, side of the square output.

    Returns:
        A `float32` tensor `(size, size, C)` with values in `[0, 255]`.
    """
    shape = tf.shape(image)
    h = tf.cast(shape[0], tf.float64)
    w = tf.cast(shape[1], tf.float64)
    short = tf.minimum(h, w)
    target = tf.constant(float(size), tf.float64)
    new_h = tf.where(h <= w, target, tf.floor(size * h / short))
    new_w = tf.where(w < h, target, tf.floor(size * w / short))
    new_h = tf.cast(new_h, tf.int32)
    new_w = tf.cast(new_w, tf.int32)
    resized = _resize(image, new_h, new_w)
    top = tf.cast(tf.round(tf.cast(new_h - size, tf.float32) / 2.0), tf.int32)
    left = tf.cast(tf.round(tf.cast(new_w - size, tf.float32) / 2.0), tf.int32)
    crop = resized[top : top + size, left : left + size]
    return tf.ensure_shape(crop, [size, size, image.shape[-1]])


def random_rotate(image, max_degrees, seed=None, fill_value=255.0):
    """Rotates by an angle drawn uniformly from `[-max_degrees, max_degrees]`.

    Bilinear sampling about the image center; uncovered corners are filled
    with `fill_value` (white by default, matching images composited on white).

    Args:
        image: tensor `(H, W, C)`.
        max_degrees: float, largest rotation in degrees.
        seed: optional integer tensor of shape `(2,)`.
        fill_value: float, value of pixels rotated in from outside.

    Returns:
        A `float32` tensor of the same shape.
    """
    seed = _seed_or_random(seed)
    angle = tf.random.stateless_uniform(
        [], seed=seed, minval=-max_degrees, maxval=max_degrees
    ) * (math.pi / 180.0)
    shape = tf.shape(image)
    cy = (tf.cast(shape[0], tf.float32) - 1.0) / 2.0
    cx = (tf.cast(shape[1], tf.float32) - 1.0) / 2.0
    cos, sin = tf.cos(angle), tf.sin(angle)
    # Maps each output pixel (x, y) to the input pixel it samples.
    transform = tf.stack(
        [
            cos, -sin, cx - cos * cx + sin * cy,
            sin, cos, cy - sin * cx - cos * cy,
            0.0, 0.0,
        ]
    )[None]
    rotated = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(image, tf.float32)[None],
        transforms=transform,
        output_shape=shape[:2],
        fill_value=float(fill_value),
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )[0]
    return tf.ensure_shape(rotated, image.shape)


def random_downscale(image, probability, scale=(0.25, 1.0), seed=None):
    """With `probability`, drops the image's resolution and scales it back.

    Each side shrinks to `round(u * side)` pixels for one `u` drawn uniformly
    from `scale` (at least 1 pixel), with an antialiased bilinear resize (a
    triangle filter widened when shrinking, as PIL's BILINEAR), then grows
    back to its size bilinearly: the drawing keeps its layout and colours
    and loses fine detail, so a model leans less on one artist's strokes.

    Args:
        image: float tensor `(H, W, C)`, values in `[0, 255]`.
        probability: float in `[0, 1]`; 0 leaves every image alone.
        scale: pair `(min, max)` with `0 < min <= max <= 1`, range of `u`.
        seed: optional integer tensor of shape `(2,)`.

    Returns:
        A float32 tensor `(H, W, C)` in `[0, 255]`.
    """
    if not 0.0 <= float(probability) <= 1.0:
        raise ValueError(
            f"Expected `probability` in [0, 1]. Received: probability={probability!r}"
        )
    low, high = _check_range("scale", scale, low=0.0)
    if high > 1.0:
        raise ValueError(
            f"Expected `scale` within (0, 1]. Received: scale={(low, high)}"
        )
    seeds = tf.random.experimental.stateless_split(_seed_or_random(seed), num=2)
    image = tf.cast(image, tf.float32)
    shape = tf.shape(image)
    u = tf.random.stateless_uniform([], seeds[0], minval=low, maxval=high)
    small = tf.maximum(tf.cast(tf.round(u * tf.cast(shape[:2], tf.float32)), tf.int32), 1)

    def downscaled():
        x = tf.image.resize(image, small, method="bilinear", antialias=True)
        return tf.clip_by_value(tf.image.resize(x, shape[:2], method="bilinear"), 0.0, 255.0)

    apply = tf.random.stateless_uniform([], seeds[1]) < probability
    return tf.cond(apply, downscaled, lambda: image)


def color_jitter(image, strength, grayscale=0.0, seed=None):
    """Random brightness, contrast, saturation and hue, then maybe grayscale.

    SimCLR's colour distortion with strength `s`: brightness shifted by up
    to `0.8 s` (of the full range), contrast and saturation scaled by a
    factor in `[1 - 0.8 s, 1 + 0.8 s]`, hue rotated by up to `0.2 s` turns;
    then, with probability `grayscale`, the luma copied to all channels.

    Args:
        image: float tensor `(H, W, 3)`, values in `[0, 255]`.
        strength: float in `[0, 1]`; 0 leaves colours alone.
        grayscale: float in `[0, 1]`, probability of dropping colour.
        seed: optional integer tensor of shape `(2,)`.

    Returns:
        A float32 tensor `(H, W, 3)` in `[0, 255]`.
    """
    for name, value in (("strength", strength), ("grayscale", grayscale)):
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"Expected `{name}` in [0, 1]. Received: {name}={value!r}")
    seeds = tf.random.experimental.stateless_split(_seed_or_random(seed), num=5)
    x = tf.cast(image, tf.float32) / 255.0
    if strength:
        x = tf.image.stateless_random_brightness(x, 0.8 * strength, seeds[0])
        low, high = 1.0 - 0.8 * strength, 1.0 + 0.8 * strength
        x = tf.image.stateless_random_contrast(x, low, high, seeds[1])
        x = tf.image.stateless_random_saturation(x, low, high, seeds[2])
        x = tf.image.stateless_random_hue(x, 0.2 * strength, seeds[3])
        x = tf.clip_by_value(x, 0.0, 1.0)
    if grayscale:
        gray = tf.tile(tf.image.rgb_to_grayscale(x), [1, 1, 3])
        drop = tf.random.stateless_uniform([], seeds[4]) < grayscale
        x = tf.where(drop, gray, x)
    return x * 255.0


def train_transform(
    image,
    size,
    scale=(0.9, 1.0),
    ratio=(3.0 / 4.0, 4.0 / 3.0),
    rotation=0.0,
    seed=None,
    fill_value=255.0,
    jitter=0.0,
    grayscale=0.0,
    downscale=0.0,
    downscale_range=(0.25, 1.0),
):
    """Training transform: random-resized crop, optional rotation, drop in
    resolution (`random_downscale`) and colour distortion (`color_jitter`),
    normalise.

    Args:
        image: tensor `(H, W, 3)`, values in `[0, 255]`.
        size: int, output side.
        scale: pair, area fraction range of the crop.
        ratio: pair, aspect-ratio range of the crop.
        rotation: float, largest rotation in degrees (0 disables it).
        seed: optional integer tensor of shape `(2,)`; one seed drives
            both the crop and the rotation.
        fill_value: float, fill of the rotated-in corners in `[0, 255]`.
        jitter: float in `[0, 1]`, colour distortion strength (0: none).
        grayscale: float in `[0, 1]`, probability of dropping colour.
        downscale: float in `[0, 1]`, probability of `random_downscale`.
        downscale_range: pair, the range of its side fraction.

    Returns:
        A normalised `float32` tensor `(size, size, 3)`.

    Example:

    >>> image = tf.zeros((72, 64, 3), tf.uint8)
    >>> train_transform(image, 32, seed=[1, 2]).shape
    TensorShape([32, 32, 3])
    """
    seed = _seed_or_random(seed)
    seeds = tf.random.experimental.stateless_split(seed, num=3)
    out = random_resized_crop(image, size, scale, ratio, seeds[0])
    if rotation:
        out = random_rotate(out, rotation, seeds[1], fill_value)
    if downscale:
        # Its own stream, so the crop, rotation and colours of a seed stay
        # what they were without it.
        out = random_downscale(
            out, downscale, downscale_range, tf.random.experimental.stateless_fold_in(seed, 3)
        )
    if jitter or grayscale:
        out = color_jitter(out, jitter, grayscale, seeds[2])
    out = tf.ensure_shape(out, [size, size, 3])
    return normalize(out)


def eval_transform(image, size):
    """Evaluation transform: resize shorter side, center crop, normalise.

    Args:
        image: tensor `(H, W, 3)`, values in `[0, 255]`.
        size: int, output side.

    Returns:
        A normalised `float32` tensor `(size, size, 3)`.
    """
    return normalize(resize_and_center_crop(image, size))
