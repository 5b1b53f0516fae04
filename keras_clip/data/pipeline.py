"""The shared half of every input pipeline: checks, decoding, skip counting.

A source (see `keras_clip.data`) yields raw samples `(image, caption, status)`
where `image` is a file path, encoded bytes or a `uint8` array. This module
turns them into batches `{"images": float32 (B, H, W, 3), "token_ids": int32
(B, L)}` and accounts for every sample it drops.

How skip counts leave the graph. An end marker follows the last raw sample;
every map keeps element order, so the marker stays last. Counts travel in
`scan` states, which belong to one iterator, so a second or abandoned
iterator over the same dataset cannot disturb them:

1. a `scan` counts the samples that enter;
2. a parallel map classifies each (missing / empty image, unknown format,
   bad caption; the file is read here), a `scan` counts each reason and the
   bad samples are dropped;
3. a parallel map decodes and transforms the rest; `ignore_errors` drops
   the ones that fail (truncated or corrupt data). Training on an in-memory
   array batches first and augments whole batches
   (`augment.train_transform_batch`): nothing there can fail to decode;
4. after batching and tokenizing, a one-batch look-ahead `scan`, the last
   stage, counts decoded samples. When the marker arrives it closes the pass
   (`decode_error = passed checks - decoded`, plus any sample lost in step
   2; a last batch of a single pair is dropped as `batch_of_one`: a
   contrastive batch of one has no negatives), adds it to the
   `SkipCounter`'s variables, logs a line and raises if nothing survived or
   `drop_remainder` left no full batch, and only then releases the last
   batch.

Nothing reads ahead of the look-ahead (no prefetch or parallel map after it),
so a pass is closed when the consumer asks for its last batch, not when an
abandoned iterator's read-ahead reaches the end.
"""

import numbers

import numpy as np
import tensorflow as tf

from keras_clip.data import augment
from keras_clip.data.decode import END
from keras_clip.data.decode import NUM_CHECKED
from keras_clip.data.decode import OK
from keras_clip.data.decode import REASONS  # noqa: F401 - re-exported
from keras_clip.data.decode import check_sample
from keras_clip.data.decode import decode_image
from keras_clip.data.skips import SkipCounter
from keras_clip.data.skips import SkipCountLogger  # noqa: F401 - re-exported


def check_batching(batch_size, image_size=224):
    """Raises unless `batch_size` is an int >= 2 and `image_size` a positive int.

    A contrastive batch of one pair has no negatives: its loss is 0 and its
    accuracy 1 whatever the weights, so nothing is learned.
    """
    if (
        isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral)
        or batch_size < 2
    ):
        raise ValueError(
            "Expected `batch_size` to be an int >= 2: a contrastive batch of "
            "one pair has no negatives, so its loss is 0 and it learns "
            f"nothing. Received: batch_size={batch_size!r}. Pass 2 or more."
        )
    if (
        isinstance(image_size, bool) or not isinstance(image_size, numbers.Integral)
        or image_size < 1
    ):
        raise ValueError(
            "Expected `image_size` to be a positive int, the side of the "
            f"square images fed to the model. Received: image_size={image_size!r}. "
            "Pass e.g. image_size=224, or the model's `config.image_size`."
        )


def check_enough_samples(count, batch_size, options, where):
    """Raises when `count` known samples cannot make one batch to yield.

    For sources whose size is known before the first pass (CSV rows with an
    existing image, in-memory arrays): fewer than two pairs (a last batch of
    one is dropped), or fewer than `batch_size` under `drop_remainder`.

    Args:
        count: int, the samples this worker will read.
        batch_size: int.
        options: the pipeline options given to the source.
        where: str, names the samples counted, for the message.
    """
    drop_remainder = options.get("drop_remainder")
    if drop_remainder is None:
        drop_remainder = options.get("training", False)
    if drop_remainder and count < batch_size:
        raise ValueError(
            f"Expected at least one full batch of {batch_size} pairs, since "
            "`drop_remainder=True` (the default when training) drops the "
            f"last partial batch. Received: {count} {where}, so no batch "
            f"would be yielded. Lower `batch_size` to {max(2, count)} or less, "
            "or pass drop_remainder=False."
        )
    if count < 2:
        raise ValueError(
            "Expected at least 2 pairs: a contrastive batch of one has no "
            f"negatives, and is dropped. Received: {count} {where}. Add pairs."
        )


def _end_marker(spec):
    """A raw sample shaped like `spec` whose status marks the end of a pass."""
    image_spec = spec[0]
    if image_spec.dtype == tf.string:
        image = tf.constant("")
    else:
        image = tf.zeros([d or 1 for d in image_spec.shape], image_spec.dtype)
    return tf.data.Dataset.from_tensors((image, tf.constant(""), tf.constant(END)))


def trim_token_ids(token_ids, multiple):
    """Drops the padding columns past a batch's longest caption.

    Keeps the first `ceil(n / multiple) * multiple` columns (at most all of
    them), where `n` is one past the last non-zero id of any row: a row's
    end-of-text is its last non-zero id, so nothing but padding is cut.

    Args:
        token_ids: int tensor `(B, L)`, padded with 0.
        multiple: positive int.

    Returns:
        `token_ids[:, :length]`.
    """
    width = tf.shape(token_ids)[1]
    positions = tf.range(1, width + 1)[None]
    used = tf.reduce_max(tf.where(token_ids != 0, positions, 0))
    length = tf.minimum((used + multiple - 1) // multiple * multiple, width)
    return token_ids[:, :length]


def _renormalizer(mean, std):
    """A map from OpenAI-normalised images to ones normalised with `mean` /
    `std` (per-channel affine: back to `[0, 1]` pixels, then the new
    statistics), or the identity when both are OpenAI's or `None`."""
    mean = augment.OPENAI_MEAN if mean is None else tuple(float(v) for v in mean)
    std = augment.OPENAI_STD if std is None else tuple(float(v) for v in std)
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(
            "Expected `image_mean` and `image_std` as 3 values each, std > 0. "
            f"Received: image_mean={mean}, image_std={std}"
        )
    if np.allclose(mean, augment.OPENAI_MEAN) and np.allclose(std, augment.OPENAI_STD):
        return lambda images: images
    scale = tf.constant(np.divide(augment.OPENAI_STD, std), tf.float32)
    shift = tf.constant(np.divide(np.subtract(augment.OPENAI_MEAN, mean), std), tf.float32)
    return lambda images: images * scale + shift


def with_model(model, tokenizer, options):
    """The tokenizer and pipeline options a source uses for `model`.

    With `model=None` both come back as given. Otherwise the tokenizer
    defaults to `model.tokenizer`, and `image_size`, `image_mean` and
    `image_std` default to the model's configuration; a given value that
    contradicts the model (another image size, a tokenizer with another
    context length or more ids than the model embeds) is a `ValueError`
    naming both.
    """
    if model is None:
        return tokenizer, options
    config = model.config
    if tokenizer is None:
        tokenizer = getattr(model, "tokenizer", None)
        if tokenizer is None:
            raise ValueError(
                "`model` carries no tokenizer. Expected `model.tokenizer` or a "
                "`tokenizer` argument. Received: neither"
            )
    options = dict(options)
    size = options.setdefault("image_size", config.image_size)
    if size != config.image_size:
        raise ValueError(
            f"`image_size={size}` contradicts the model's image size "
            f"{config.image_size}. Leave `image_size` out to use the model's."
        )
    options.setdefault("image_mean", config.image_mean)
    options.setdefault("image_std", config.image_std)
    context = getattr(tokenizer, "context_length", None)
    if context is not None and context != config.context_length:
        raise ValueError(
            f"The tokenizer's context length {context} differs from the model's "
            f"{config.context_length}. Use the model's tokenizer, or build the "
            "model from this tokenizer."
        )
    vocabulary = getattr(tokenizer, "vocabulary_size", None)
    if vocabulary is not None and vocabulary > config.vocabulary_size:
        raise ValueError(
            f"The tokenizer has {vocabulary} ids but the model embeds only "
            f"{config.vocabulary_size}. Use the model's tokenizer, or build the "
            "model from this tokenizer."
        )
    return tokenizer, options


def build_pipeline(
    raw,
    image_kind,
    tokenizer,
    batch_size,
    *,
    image_size=224,
    training=False,
    crop_scale=(0.9, 1.0),
    crop_ratio=(3.0 / 4.0, 4.0 / 3.0),
    rotation=0.0,
    color_jitter=0.0,
    grayscale=0.0,
    downscale=0.0,
    seed=None,
    deterministic=None,
    drop_remainder=None,
    keep_captions=False,
    token_multiple=None,
    counter=None,
    name="dataset",
    image_mean=None,
    image_std=None,
):
    """Turns raw `(image, caption, status)` samples into model batches.

    Sources in `keras_clip.data` call this after reading, sharding and
    shuffling; its keyword arguments are the pipeline options they all accept.

    Args:
        raw: `tf.data.Dataset` of `(image, caption, status)`; `image` is a
            path (`image_kind="path"`), encoded bytes (`"bytes"`) or a
            `uint8` `(H, W, 3)` array (`"array"`); `status` is an `int32`
            reason code set by the source (0 when nothing is known wrong).
        image_kind: one of `"path"`, `"bytes"`, `"array"`.
        tokenizer: callable mapping a `tf.string` tensor `(B,)` to integer ids
            `(B, L)` inside `tf.data` (e.g. `keras_clip.CLIPTokenizer`), or
            `None` to return the raw captions under `"captions"` instead.
        batch_size: int >= 2 (a contrastive batch of one learns nothing).
        image_size: int, side of the square output images.
        training: bool, random-resized crop (and rotation) vs. resize + center
            crop; also the default for `drop_remainder`.
        crop_scale: pair, area fraction range of the training crop.
        crop_ratio: pair, aspect-ratio range of the training crop.
        rotation: float, largest training rotation in degrees (0: none).
        color_jitter: float in `[0, 1]`, training colour distortion strength
            (`augment.color_jitter`; 0: none).
        grayscale: float in `[0, 1]`, training probability of dropping colour.
        downscale: float in `[0, 1]`, training probability of a random drop
            in resolution (`augment.random_downscale`, to 0.25-1 of the side).
        seed: optional int; makes augmentation (and shuffling, in sources)
            reproducible.
        deterministic: bool, whether sources may interleave files out of
            order (`False` is faster when some files are slow). Maps here
            always keep order. Defaults to `True` for evaluation or when
            `seed` is given.
        drop_remainder: bool, drop the last partial batch. Defaults to
            `training`. Either way a pass's last batch of a single pair is
            dropped and counted as `batch_of_one` (no negatives to learn
            from).
        keep_captions: bool, also return the caption strings as `"captions"`.
        token_multiple: optional int; cuts each batch's `token_ids` after
            its longest caption's end-of-text, rounded up to a multiple of
            it (at most the context length). The columns cut hold only
            padding, which a causal text tower never attends to from the
            end-of-text position, so the text features are the same at
            less cost when captions are much shorter than the context.
            Batches then vary in length: each length is one more trace on
            JAX, or with `jit_compile=True`, so a multiple of 8 or 16 keeps
            their number small.
        counter: optional `SkipCounter`; a new one is made otherwise. Either
            way it is reachable as `dataset.skip_counter`.
        name: str, names the source in log lines.
        image_mean: optional per-channel mean of `[0, 1]` pixels that the
            images are normalised with; `None` is OpenAI's (the default of
            every preset). Sources given `model=` take the model's.
        image_std: optional per-channel standard deviation, as `image_mean`.

    Returns:
        A `tf.data.Dataset` of dicts `{"images": float32 (B, H, W, 3),
        "token_ids": int32 (B, L)}`, with a `skip_counter` attribute. Add no
        `prefetch` after it: reading ahead would close passes early.
    """
    if image_kind not in ("path", "bytes", "array"):
        raise ValueError(
            "Expected `image_kind` in ('path', 'bytes', 'array'). "
            f"Received: image_kind={image_kind!r}"
        )
    if token_multiple is not None and (
        isinstance(token_multiple, bool) or not isinstance(token_multiple, int)
        or token_multiple < 1
    ):
        raise ValueError(
            f"Expected `token_multiple` to be None or a positive int. Received: {token_multiple!r}"
        )
    check_batching(batch_size, image_size)
    batch_size = int(batch_size)
    if tokenizer is not None and not callable(tokenizer):
        raise TypeError(f"Expected a callable `tokenizer`. Received: {tokenizer!r}")
    counter = SkipCounter(name) if counter is None else counter
    counter._attach()
    if deterministic is None:
        deterministic = seed is not None or not training
    drop_remainder = training if drop_remainder is None else drop_remainder
    parallel = dict(num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    # These functions branch on Python values only: no AutoGraph needed.
    plain = tf.autograph.experimental.do_not_convert
    size = int(image_size)
    int64 = lambda x: tf.cast(x, tf.int64)

    # 1. Count what enters; the end marker carries the count.
    ds = raw.concatenate(_end_marker(raw.element_spec))

    def count_entered(entered, sample):
        entered += int64(sample[2] != END)
        return entered, sample + (entered,)

    ds = ds.scan(tf.constant(0, tf.int64), plain(count_entered))

    # 2. Classify, count per reason, drop the bad samples.
    def check(image, caption, status, entered):
        image, caption, reason = check_sample(image, caption, status, image_kind)
        reason = tf.where(tf.equal(status, END), END, reason)
        return image, caption, reason, entered

    ds = ds.map(plain(check), **parallel).ignore_errors()

    def count_reasons(counts, sample):
        image, caption, reason, entered = sample
        counts += tf.one_hot(reason, NUM_CHECKED, dtype=tf.int64)  # 0 at END
        tally = tf.concat([[entered], counts], axis=0)  # (1 + NUM_CHECKED,)
        return counts, (image, caption, reason, tally)

    ds = ds.scan(tf.zeros([NUM_CHECKED], tf.int64), plain(count_reasons))
    ds = ds.filter(plain(lambda i, c, r, t: (r == OK) | (r == END)))

    # 3. Decode and transform; failures are dropped (counted in step 4).
    def transform(sample, sample_seed):
        image, caption, reason, tally = sample
        is_end = tf.equal(reason, END)

        def decoded():
            pixels = image if image_kind == "array" else decode_image(image)
            if training:
                return augment.train_transform(
                    pixels, size, crop_scale, crop_ratio, rotation, sample_seed,
                    jitter=color_jitter, grayscale=grayscale, downscale=downscale,
                )
            return augment.eval_transform(pixels, size)

        pixels = tf.cond(is_end, lambda: tf.zeros([size, size, 3]), decoded)
        return pixels, caption, is_end, tally

    def transform_batch(samples, batch_seeds):
        # In-memory arrays of one shape cannot fail to decode: augment whole
        # batches in batched ops (`augment.train_transform_batch`), one op
        # per batch instead of one per image. The end marker is augmented
        # too and dropped by the look-ahead, as in the per-image path.
        images, captions, reasons, tally = samples
        pixels = augment.train_transform_batch(
            images, size, crop_scale, crop_ratio, rotation, batch_seeds[0],
            jitter=color_jitter, grayscale=grayscale, downscale=downscale,
        )
        return pixels, captions, tf.equal(reasons, END), tally

    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    ds = tf.data.Dataset.zip(ds, seeds.batch(2))
    if image_kind == "array" and training and raw.element_spec[0].shape.is_fully_defined():
        # 3-4. Batch (the marker rides in the last batch), then augment.
        ds = ds.batch(batch_size).map(plain(transform_batch), **parallel)
    else:
        ds = ds.map(plain(transform), **parallel).ignore_errors()
        # 4. Batch (the marker rides in the last batch), tokenize, look ahead.
        ds = ds.batch(batch_size)

    renormalize = _renormalizer(image_mean, image_std)

    def to_inputs(images, captions, is_end, tally):
        out = {"images": renormalize(images)}
        if tokenizer is not None:
            out["token_ids"] = tf.cast(tokenizer(captions), tf.int32)
        if tokenizer is None or keep_captions:
            out["captions"] = captions
        return out, is_end, tally

    ds = ds.map(to_inputs, **parallel)
    spec = ds.element_spec
    empty = lambda s: tf.zeros([0] + [d or 0 for d in s.shape[1:]], s.dtype)
    # One empty batch after the end flushes the held batch.
    ds = ds.concatenate(
        tf.data.Dataset.from_tensors(tf.nest.map_structure(empty, spec))
    )

    def look_ahead(state, batch):
        held, decoded = state
        inputs, is_end, tally = batch
        has_end = tf.reduce_any(is_end)
        keep = tf.logical_not(is_end)
        real = tf.nest.map_structure(lambda x: tf.boolean_mask(x, keep), inputs)
        n_real = tf.shape(real["images"])[0]
        decoded += int64(n_real)
        end_tally = tf.reduce_sum(tf.boolean_mask(tally, is_end), axis=0)
        if drop_remainder:  # drop any batch short of `batch_size`
            keep_batch = tf.equal(n_real, batch_size)
            batch_of_one = tf.constant(0, tf.int64)
        else:  # only the last batch can be short: drop it if it holds one
            single = has_end & tf.equal(n_real, 1)
            keep_batch = tf.logical_not(single)
            batch_of_one = int64(single)
        closed = tf.cond(
            has_end,
            lambda: counter._close_pass(end_tally, decoded, batch_of_one, full_batch),
            lambda: tf.constant(True),
        )
        real = tf.cond(
            keep_batch,
            lambda: real,
            lambda: tf.nest.map_structure(lambda x: x[:0], real),
        )
        with tf.control_dependencies([closed]):
            out = tf.nest.map_structure(tf.identity, held)
        decoded = tf.where(has_end, tf.constant(0, tf.int64), decoded)
        return (real, decoded), out

    full_batch = tf.constant(batch_size if drop_remainder else 1, tf.int64)
    initial = (tf.nest.map_structure(empty, spec[0]), tf.constant(0, tf.int64))
    ds = ds.scan(initial, plain(look_ahead))
    ds = ds.filter(plain(lambda out: tf.shape(out["images"])[0] > 0))
    static_batch = batch_size if drop_remainder else None
    ds = ds.map(
        lambda out: tf.nest.map_structure(
            lambda x, s: tf.ensure_shape(x, [static_batch] + s.shape[1:]),
            out,
            spec[0],
        )
    )
    if token_multiple and tokenizer is not None:
        ds = ds.map(lambda out: {**out, "token_ids": trim_token_ids(out["token_ids"], token_multiple)})
    options = tf.data.Options()
    options.deterministic = deterministic
    options.experimental_optimization.map_parallelization = False
    options.experimental_optimization.inject_prefetch = False
    ds = ds.with_options(options)
    ds.skip_counter = counter
    return ds
