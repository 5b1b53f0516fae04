"""Streaming sources over sharded files: WebDataset tars and TFRecords.

Both are re-exported by `keras_clip.data`, whose docstring describes the
pipeline options every source accepts.
"""

import logging
import os
import re
import tarfile

import numpy as np
import tensorflow as tf

from keras_clip.data.pipeline import build_pipeline
from keras_clip.data.pipeline import check_batching
from keras_clip.data.pipeline import with_model
from keras_clip.data.tfrecord import file_samples
from keras_clip.data.decode import MISSING_CAPTION
from keras_clip.data.decode import MISSING_IMAGE
from keras_clip.data.decode import OK
from keras_clip.data.decode import SHARD_ERROR
from keras_clip.data.decode import as_bytes

logger = logging.getLogger("keras_clip.data")

# File extensions img2dataset may write for the image of a sample, by priority.
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "gif", "bmp")
_STREAM_SHUFFLE_BUFFER = 2000


def check_sharding(num_shards, shard_index):
    """Raises unless `0 <= shard_index < num_shards` (ints)."""
    if not (isinstance(num_shards, int) and num_shards >= 1):
        raise ValueError(
            f"Expected a positive int `num_shards`. Received: {num_shards!r}"
        )
    if not (isinstance(shard_index, int) and 0 <= shard_index < num_shards):
        raise ValueError(
            "Expected 0 <= `shard_index` < `num_shards`. Received: "
            f"shard_index={shard_index!r}, num_shards={num_shards}"
        )


def expand_braces(pattern):
    """Expands a shard pattern: `"a/{000..002}.tar"` -> `["a/000.tar", ...]`.

    Supports numeric ranges `{lo..hi}` (zero padding kept from `lo`) and lists
    `{x,y}`, several per pattern.
    """
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        return [pattern]
    body = match.group(1)
    head, tail = pattern[: match.start()], pattern[match.end() :]
    numeric = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if numeric:
        lo, hi = numeric.groups()
        width = len(lo)
        choices = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    else:
        choices = body.split(",")
    return [
        expanded
        for choice in choices
        for expanded in expand_braces(head + choice + tail)
    ]


def expand_files(files, what):
    """Paths from a path, brace pattern, glob, or a list of those."""
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    paths = []
    for item in files:
        for pattern in expand_braces(os.fspath(item)):
            if any(ch in pattern for ch in "*?["):
                paths.extend(sorted(tf.io.gfile.glob(pattern)))
            else:
                paths.append(pattern)
    if not paths:
        raise ValueError(f"Expected at least one {what} file. Received: {files!r}")
    return paths


def _tar_samples(path, image_extensions, caption_extension):
    """Yields `(image, caption, status)` per sample key of one tar shard."""
    # `from_generator` hands its `args` over as NumPy bytes.
    text = lambda v: v.decode() if isinstance(v, bytes) else str(v)
    path = text(path)
    image_extensions = [text(e) for e in image_extensions]
    caption_extension = text(caption_extension)
    wanted = set(image_extensions) | {caption_extension}

    def emit(parts):
        image = next((parts[e] for e in image_extensions if e in parts), None)
        caption = parts.get(caption_extension)
        if image is None:
            return b"", b"", MISSING_IMAGE
        if caption is None:
            return b"", b"", MISSING_CAPTION
        return image, caption, OK

    key, parts = None, {}
    try:
        with tarfile.open(path, "r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                folder, _, base = member.name.rpartition("/")
                stem, dot, extension = base.partition(".")
                if not dot or base.startswith("."):
                    continue
                member_key = f"{folder}/{stem}"
                if member_key != key:
                    if parts:
                        yield emit(parts)
                    key, parts = member_key, {}
                extension = extension.lower()
                # Other members (.json, ...) still mark the sample as present.
                data = b""
                if extension in wanted:
                    data = tar.extractfile(member).read()
                    if len(data) != member.size:
                        raise tarfile.ReadError("unexpected end of data")
                parts[extension] = data
        if parts:
            yield emit(parts)
    except (OSError, EOFError, tarfile.TarError) as error:
        logger.warning("Could not read shard %s to its end: %s", path, error)
        yield b"", b"", SHARD_ERROR


def from_webdataset(
    shards,
    tokenizer=None,
    batch_size=None,
    *,
    model=None,
    image_extensions=IMAGE_EXTENSIONS,
    caption_extension="txt",
    num_shards=1,
    shard_index=0,
    shuffle_buffer=_STREAM_SHUFFLE_BUFFER,
    cycle_length=4,
    **options,
):
    """Pipeline over WebDataset tar shards, as img2dataset writes them.

    Members sharing a key (`00000042.jpg`, `00000042.txt`, `00000042.json`)
    form one sample; the first image extension found in `image_extensions`
    is the image and `caption_extension` the caption. Tars are read with
    Python's `tarfile` (`Dataset.from_generator`), `cycle_length` shards at a
    time, and decoded in graph. A shard that cannot be read to its end counts
    once as `shard_error`; the samples before the damage are kept.

    Args:
        shards: a path, a brace pattern (`"data/{00000..00099}.tar"`), a glob,
            or a list of those.
        tokenizer: see `build_pipeline`; defaults to `model.tokenizer`.
        model: optional `CLIPModel` whose tokenizer, image size and
            normalisation the pipeline uses (`keras_clip.data.pipeline.with_model`).
        batch_size: int >= 2.
        image_extensions: tuple of image extensions, by priority.
        caption_extension: str, extension of the caption member.
        num_shards: int, number of workers. With at least as many tar files
            as workers each worker reads whole tars, else every worker reads
            all tars and keeps every `num_shards`-th sample.
        shard_index: int, this worker's part.
        shuffle_buffer: int, samples held for shuffling (training only).
        cycle_length: int, tars read concurrently.
        **options: pipeline options, see `build_pipeline`.

    Returns:
        A batched `tf.data.Dataset` with a `skip_counter` attribute.
    """
    check_sharding(num_shards, shard_index)
    tokenizer, options = with_model(model, tokenizer, options)
    check_batching(batch_size, options.get("image_size", 224))
    files = expand_files(shards, "tar")
    training = options.get("training", False)
    seed = options.get("seed")
    by_file = len(files) >= num_shards
    file_ds = tf.data.Dataset.from_tensor_slices(files)
    if by_file:
        file_ds = file_ds.shard(num_shards, shard_index)
    if training:
        file_ds = file_ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    extensions = tuple(e.lower() for e in image_extensions)
    signature = (
        tf.TensorSpec([], tf.string),
        tf.TensorSpec([], tf.string),
        tf.TensorSpec([], tf.int32),
    )
    samples = file_ds.interleave(
        lambda f: tf.data.Dataset.from_generator(
            _tar_samples,
            args=(f, extensions, caption_extension.lower()),
            output_signature=signature,
        ),
        cycle_length=cycle_length,
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    if not by_file:
        samples = samples.shard(num_shards, shard_index)
    if training:
        samples = samples.shuffle(shuffle_buffer, seed=seed)
    return build_pipeline(
        samples, "bytes", tokenizer, batch_size,
        name=f"webdataset:{files[0]} (+{len(files) - 1} more)", **options,
    )


def write_tfrecord(path, images, captions, image_key="image", caption_key="caption"):
    """Writes image-caption pairs to one TFRecord file of `tf.train.Example`s.

    Args:
        path: output file path.
        images: iterable of encoded images (`bytes`), image file paths
            (`str`), or `uint8` arrays `(H, W, 3)` (stored as PNG).
        captions: iterable of captions (`str` or `bytes`).
        image_key: feature name of the encoded image.
        caption_key: feature name of the caption.

    Returns:
        The number of records written.
    """
    count = 0
    with tf.io.TFRecordWriter(os.fspath(path)) as writer:
        for image, caption in zip(images, captions, strict=True):
            if isinstance(image, (str, os.PathLike)):
                with open(image, "rb") as f:
                    image = f.read()
            elif isinstance(image, np.ndarray):
                image = tf.io.encode_png(image).numpy()
            feature = {
                image_key: tf.train.Feature(
                    bytes_list=tf.train.BytesList(value=[bytes(image)])
                ),
                caption_key: tf.train.Feature(
                    bytes_list=tf.train.BytesList(value=[as_bytes(caption)])
                ),
            }
            example = tf.train.Example(features=tf.train.Features(feature=feature))
            writer.write(example.SerializeToString())
            count += 1
    return count


def from_tfrecord(
    files,
    tokenizer=None,
    batch_size=None,
    *,
    model=None,
    image_key="image",
    caption_key="caption",
    num_shards=1,
    shard_index=0,
    shuffle_buffer=_STREAM_SHUFFLE_BUFFER,
    cycle_length=4,
    **options,
):
    """Pipeline over TFRecord files of `tf.train.Example` image-caption pairs.

    Records lacking the image or the caption feature count as
    `missing_image` / `missing_caption`, and records that are not
    `tf.train.Example` protos as `invalid_record`. TFRecord files carry
    checksums, and reading a file stops at its first damaged record (one
    that fails its checksum or that the file cuts short): every record from
    there to the end of the file counts as `data_loss`, and a warning on the
    `keras_clip.data` logger names the file, the byte where reading stopped
    and the bytes and records lost (see `keras_clip.data.tfrecord`). A file
    that does not exist raises `FileNotFoundError`.

    Args:
        files: a path, brace pattern, glob, or a list of those.
        tokenizer: see `build_pipeline`; defaults to `model.tokenizer`.
        model: optional `CLIPModel` whose tokenizer, image size and
            normalisation the pipeline uses (`keras_clip.data.pipeline.with_model`).
        batch_size: int >= 2.
        image_key: feature name of the encoded image.
        caption_key: feature name of the caption.
        num_shards: int, number of workers (by file when there are enough
            files, else by record).
        shard_index: int, this worker's part.
        shuffle_buffer: int, records held for shuffling (training only).
        cycle_length: int, files read concurrently.
        **options: pipeline options, see `build_pipeline`.

    Returns:
        A batched `tf.data.Dataset` with a `skip_counter` attribute.
    """
    check_sharding(num_shards, shard_index)
    tokenizer, options = with_model(model, tokenizer, options)
    check_batching(batch_size, options.get("image_size", 224))
    paths = expand_files(files, "TFRecord")
    missing = [p for p in paths if not tf.io.gfile.exists(p)]
    if missing:
        raise FileNotFoundError(
            f"Expected existing TFRecord files. Received {len(missing)} "
            f"path(s) that do not exist: {missing[:5]}. Check the paths or "
            "the brace pattern."
        )
    training = options.get("training", False)
    seed = options.get("seed")
    by_file = len(paths) >= num_shards
    file_ds = tf.data.Dataset.from_tensor_slices(paths)
    if by_file:
        file_ds = file_ds.shard(num_shards, shard_index)
    if training:
        file_ds = file_ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    raw = file_ds.interleave(
        lambda path: file_samples(path, image_key, caption_key),
        cycle_length=cycle_length,
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    if not by_file:
        raw = raw.shard(num_shards, shard_index)
    if training:
        raw = raw.shuffle(shuffle_buffer, seed=seed)
    return build_pipeline(
        raw, "bytes", tokenizer, batch_size, name=f"tfrecord:{paths[0]}", **options
    )
