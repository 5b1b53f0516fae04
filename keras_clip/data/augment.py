"""Image transforms for CLIP training and evaluation, as TensorFlow ops.

Everything here runs inside `tf.data.Dataset.map` (graph mode) and eagerly.
Images enter as `uint8` (or float in `[0, 255]`) tensors of shape `(H, W, 3)`
and leave as `float32` tensors of shape `(size, size, 3)`.

- Training: a random-resized square crop (CLIP, Radford et al. 2021, trains
  on random square crops of resized images; open_clip uses a random-resized
  crop with scale `(0.9, 1.0)`), then an optional small rotation, an
  optional random drop in resolution and optional colour distortion.
- Training on a batch of same-size images (`train_transform_batch`): the
  same transform per image, in batched ops.
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
    uniforms = tf.random.stateless_uniform([4, _CROP_ATTEMPTS], seed=seed)
    return _crop_boxes(height, width, uniforms, scale, ratio)


def _crop_boxes(height, width, uniforms, scale, ratio):
    """`random_resized_crop_box` from drawn uniforms `(4, ..., attempts)`:
    int32 boxes `(..., 4)`, one per leading index of `uniforms[0]`."""
    h = tf.cast(height, tf.float32)
    w = tf.cast(width, tf.float32)
    area = h * w
    target_area = area * (scale[0] + (scale[1] - scale[0]) * uniforms[0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = tf.exp(log_lo + (log_hi - log_lo) * uniforms[1])
    box_w = tf.round(tf.sqrt(target_area * aspect))
    box_h = tf.round(tf.sqrt(target_area / aspect))
    fits = (box_w > 0) & (box_w <= w) & (box_h > 0) & (box_h <= h)
    first = tf.argmax(tf.cast(fits, tf.int32), axis=-1, output_type=tf.int32)
    batch_dims = len(uniforms.shape) - 2

    def at_first(x):
        return tf.gather(x, first[..., None], batch_dims=batch_dims)[..., 0]

    box_h, box_w = at_first(box_h), at_first(box_w)
    top = tf.floor(at_first(uniforms[2]) * (h - box_h + 1.0))
    left = tf.floor(at_first(uniforms[3]) * (w - box_w + 1.0))
    sampled = tf.stack([top, left, box_h, box_w], axis=-1)

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
    box = tf.where(tf.reduce_any(fits, axis=-1)[..., None], sampled, fallback)
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


def _keys_cubic(x):
    # Keys' cubic convolution kernel with a = -0.5, for x >= 0.
    outer = ((-0.5 * x + 2.5) * x - 4.0) * x + 2.0
    inner = (1.5 * x - 2.5) * x * x + 1.0
    return tf.where(x < 1.0, inner, tf.where(x < 2.0, outer, 0.0))


def _triangle(x):
    return tf.maximum(1.0 - x, 0.0)


_KERNELS = {"bicubic": _keys_cubic, "bilinear": _triangle}


def resize_weights(in_size, start, length, out_size, method, antialias=True, out_length=None):
    """One image axis' resize as matrices, one per image of a batch.

    Row `i` of matrix `b` holds the weights `tf.image.resize` gives the
    source pixels `start[b] ... start[b] + length[b] - 1` of an axis of
    `in_size` pixels for output pixel `i`, when that stretch alone is
    resized to `out_length[b]` pixels (TensorFlow's `scale_and_translate`:
    half-pixel centres, the kernel widened by the shrink factor when
    `antialias`, each row's weights summing to one). A crop-and-resize of a
    batch is then two batched matmuls, `R_h @ image @ R_w^T`.

    Args:
        in_size: int, pixels along the source axis.
        start: int tensor `(B,)`, first source pixel of each stretch.
        length: int tensor `(B,)`, its number of pixels (>= 1).
        out_size: int, rows of each matrix.
        method: `"bicubic"` (Keys, a = -0.5) or `"bilinear"` (triangle).
        antialias: bool, widen the kernel when shrinking.
        out_length: optional int tensor `(B,)` <= `out_size`: resize to
            that many pixels instead and leave the rows past it zero.

    Returns:
        A float32 tensor `(B, out_size, in_size)`.
    """
    if method not in _KERNELS:
        raise ValueError(
            f"Expected `method` in {tuple(_KERNELS)}. Received: method={method!r}"
        )
    kernel = _KERNELS[method]
    start = tf.cast(start, tf.float32)[:, None, None]
    length = tf.cast(length, tf.float32)[:, None, None]
    rows = tf.range(out_size, dtype=tf.float32)[None, :, None]
    if out_length is None:
        out_length = tf.fill(tf.shape(start)[:1], float(out_size))
    out_length = tf.cast(out_length, tf.float32)[:, None, None]
    inv_scale = length / out_length
    kernel_scale = tf.maximum(inv_scale, 1.0) if antialias else tf.ones_like(inv_scale)
    # Source pixel centres in the stretch's own coordinates, and where each
    # output pixel's centre falls among them.
    source = tf.range(in_size, dtype=tf.float32)[None, None, :] - start + 0.5
    sample = (rows + 0.5) * inv_scale
    weights = kernel(tf.abs(source - sample) / kernel_scale)
    inside = (source > 0.0) & (source < length) & (rows < out_length)
    weights = tf.where(inside, weights, 0.0)
    total = tf.reduce_sum(weights, axis=-1, keepdims=True)
    return tf.math.divide_no_nan(weights, total)


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
    rotated = _rotate(tf.cast(image, tf.float32)[None], angle[None], fill_value)[0]
    return tf.ensure_shape(rotated, image.shape)


def _rotate(images, angles, fill_value):
    """Rotates each image of `(B, H, W, C)` about its centre by its angle
    (radians, `(B,)`): bilinear, corners filled with `fill_value`."""
    shape = tf.shape(images)
    cy = (tf.cast(shape[1], tf.float32) - 1.0) / 2.0
    cx = (tf.cast(shape[2], tf.float32) - 1.0) / 2.0
    cos, sin = tf.cos(angles), tf.sin(angles)
    zero = tf.zeros_like(angles)
    # Maps each output pixel (x, y) to the input pixel it samples.
    transforms = tf.stack(
        [
            cos, -sin, cx - cos * cx + sin * cy,
            sin, cos, cy - sin * cx - cos * cy,
            zero, zero,
        ],
        axis=1,
    )
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=shape[1:3],
        fill_value=float(fill_value),
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )


def _check_downscale(probability, scale, names=("probability", "scale")):
    """Checks a drop in resolution's probability and side-fraction range;
    returns the range as floats. `names`: the arguments' names in errors."""
    if not 0.0 <= float(probability) <= 1.0:
        raise ValueError(
            f"Expected `{names[0]}` in [0, 1]. Received: {names[0]}={probability!r}"
        )
    low, high = _check_range(names[1], scale, low=0.0)
    if high > 1.0:
        raise ValueError(
            f"Expected `{names[1]}` within (0, 1]. Received: {names[1]}={(low, high)}"
        )
    return low, high


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
    low, high = _check_downscale(probability, scale)
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


def train_transform_batch(
    images,
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
    """`train_transform` of a batch of same-size images, in batched ops.

    Each image gets its own crop box, angle and drop in resolution, drawn
    from the same distributions as `train_transform` (from one seed for the
    batch, so not the values a per-image seed would give), and the same
    operations: the crop's bicubic antialiased resize and the drop's
    bilinear down-and-up as per-image resize matrices (`resize_weights`)
    applied by batched matmuls, the rotation as one batched projective
    transform. Per image, the result equals `train_transform` given the same
    draws, to float rounding. Colour distortion (`jitter`, `grayscale`)
    runs image by image.

    In a `tf.data` pipeline over small in-memory images this costs a few
    percent of mapping `train_transform` over single images (each op runs
    once per batch, not once per image). The resize matrices are dense
    `(size, H)`, so the matmuls cost `O(size * H * W)` per image: meant for
    small images (up to about 128 px), not for resizing full photographs.

    Args:
        images: tensor `(B, H, W, 3)`, values in `[0, 255]`, `H` and `W`
            known statically.
        size, scale, ratio, rotation, fill_value, jitter, grayscale,
            downscale, downscale_range: as in `train_transform`.
        seed: optional integer tensor of shape `(2,)` for the whole batch.

    Returns:
        A normalised `float32` tensor `(B, size, size, 3)`.
    """
    scale = _check_range("scale", scale, low=0.0)
    ratio = _check_range("ratio", ratio, low=0.0)
    images = tf.convert_to_tensor(images)
    if images.shape.rank != 4 or None in images.shape[1:3]:
        raise ValueError(
            "Expected `images` of shape (batch, height, width, 3) with known height "
            f"and width. Received: shape={images.shape}"
        )
    height, width = images.shape[1], images.shape[2]
    low, high = _check_downscale(downscale, downscale_range, ("downscale", "downscale_range"))
    batch = tf.shape(images)[0]
    seeds = tf.random.experimental.stateless_split(_seed_or_random(seed), num=4)
    uniforms = tf.random.stateless_uniform([4, batch, _CROP_ATTEMPTS], seed=seeds[0])
    boxes = _crop_boxes(height, width, uniforms, scale, ratio)
    angles = None
    if rotation:
        angles = tf.random.stateless_uniform(
            [batch], seed=seeds[1], minval=-rotation, maxval=rotation
        ) * (math.pi / 180.0)
    sides = None
    if downscale:
        drop = tf.random.stateless_uniform([2, batch], seed=seeds[2])
        sides = tf.maximum(
            tf.cast(tf.round((low + (high - low) * drop[0]) * size), tf.int32), 1
        )
        sides = tf.where(drop[1] < downscale, sides, size)
    out = _crop_rotate_downscale(images, size, boxes, angles, sides, fill_value)
    if jitter or grayscale:
        image_seeds = tf.random.experimental.stateless_split(seeds[3], num=batch)
        out = tf.map_fn(
            lambda x: color_jitter(x[0], jitter, grayscale, x[1]),
            (out, image_seeds),
            fn_output_signature=tf.float32,
        )
    out = tf.ensure_shape(out, [None, size, size, 3])
    return normalize(out)


def _crop_rotate_downscale(images, size, boxes, angles=None, sides=None, fill_value=255.0):
    """The geometric half of `train_transform_batch`, for given draws.

    Args:
        images: float tensor `(B, H, W, 3)` in `[0, 255]`.
        size: int, output side.
        boxes: int tensor `(B, 4)`, crop boxes `[top, left, height, width]`.
        angles: optional float tensor `(B,)`, rotations in radians.
        sides: optional int tensor `(B,)`, the side each image drops to and
            comes back from (`size`: no drop).
        fill_value: float, fill of the rotated-in corners.

    Returns:
        A float32 tensor `(B, size, size, 3)` in `[0, 255]`.
    """
    images = tf.cast(images, tf.float32)
    height, width = images.shape[1], images.shape[2]
    rows = resize_weights(height, boxes[:, 0], boxes[:, 2], size, "bicubic")
    cols = resize_weights(width, boxes[:, 1], boxes[:, 3], size, "bicubic")
    out = tf.einsum("bih,bhwc,bjw->bijc", rows, images, cols)
    out = tf.clip_by_value(out, 0.0, 255.0)
    if angles is not None:
        out = _rotate(out, angles, fill_value)
    if sides is not None:
        full = tf.fill(tf.shape(sides), size)
        zeros = tf.zeros_like(sides)
        down = resize_weights(size, zeros, full, size, "bilinear", out_length=sides)
        up = resize_weights(size, zeros, sides, size, "bilinear", antialias=False)
        matrix = tf.matmul(up, down)
        out = tf.einsum("bih,bhwc,bjw->bijc", matrix, out, matrix)
        out = tf.clip_by_value(out, 0.0, 255.0)
    return out


def eval_transform(image, size):
    """Evaluation transform: resize shorter side, center crop, normalise.

    Args:
        image: tensor `(H, W, 3)`, values in `[0, 255]`.
        size: int, output side.

    Returns:
        A normalised `float32` tensor `(size, size, 3)`.
    """
    return normalize(resize_and_center_crop(image, size))
