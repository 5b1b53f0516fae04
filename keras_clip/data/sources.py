"""The four sources of image-caption pairs: CSV, WebDataset, TFRecord, arrays.

See `keras_clip.data` for what they share (output, options, skipped samples).
"""

import csv
import difflib
import io
import os

import numpy as np
import tensorflow as tf

from keras_clip.data.skips import SkipCounter
from keras_clip.data.skips import SkipCountLogger
from keras_clip.data.pipeline import build_pipeline
from keras_clip.data.pipeline import with_model
from keras_clip.data.pipeline import check_batching
from keras_clip.data.pipeline import check_enough_samples
from keras_clip.data.shards import IMAGE_EXTENSIONS
from keras_clip.data.shards import check_sharding
from keras_clip.data.shards import expand_braces
from keras_clip.data.shards import from_tfrecord
from keras_clip.data.shards import from_webdataset
from keras_clip.data.shards import write_tfrecord
from keras_clip.data.decode import MISSING_IMAGE
from keras_clip.data.decode import OK
from keras_clip.data.decode import REASONS
from keras_clip.data.decode import as_bytes
from keras_clip.data.decode import decode_image

__all__ = [
    "IMAGE_EXTENSIONS",
    "REASONS",
    "SkipCountLogger",
    "SkipCounter",
    "build_pipeline",
    "decode_image",
    "expand_braces",
    "from_arrays",
    "from_csv",
    "from_tfrecord",
    "from_webdataset",
    "pretokenized",
    "read_csv_pairs",
    "write_tfrecord",
]


def _finish_rows(rows, num_shards, shard_index, shuffle_buffer, options):
    """Shards an in-memory table of raw samples; shuffles it when training."""
    training = options.get("training", False)
    seed = options.get("seed")
    rows = rows.shard(num_shards, shard_index)
    if training:
        buffer = shuffle_buffer or max(1, int(rows.cardinality()))
        rows = rows.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    return rows


def csv_separator(path, separator=None):
    """`separator`, or open_clip's default for `path`: a tab for `.tsv` / `.txt`, else a comma."""
    if separator is not None:
        return separator
    return "\t" if os.fspath(path).endswith((".tsv", ".txt")) else ","


# Separators tried when a header lacks the columns asked for, and their names.
_SEPARATOR_NAMES = {",": "commas", "\t": "tabs", ";": "semicolons", "|": "pipes"}


def _split_header(line, separator):
    return next(csv.reader(io.StringIO(line), delimiter=separator), [])


def _missing_columns_error(path, header, columns, wanted, separator):
    """The one-line `ValueError` for a header without the wanted columns."""
    said = _SEPARATOR_NAMES.get(separator, repr(separator))
    expected = (
        f"Expected the columns {wanted[0]!r} (image paths) and {wanted[1]!r} "
        f"(captions) in the header of {path}, split on {said}. "
        f"Received the columns {columns}"
    )
    # The header may be split on another separator: say which and the fix.
    for other, name in _SEPARATOR_NAMES.items():
        if other == separator:
            continue
        split = _split_header(header, other)
        if len(split) > len(columns) and any(w in split for w in wanted):
            return ValueError(
                f"{expected}. The header splits on {name} into {split}: pass "
                f"separator={other!r} (or name the file .tsv for tabs)."
            )
    hints = []
    free = [c for c in columns if c not in wanted]  # columns nobody asked for
    for what, column in zip(("image_column", "caption_column"), wanted):
        if column not in columns:
            guess = difflib.get_close_matches(column, free, n=1)
            guess = guess or (free if len(free) == 1 else [])
            hints.append(f"{what}=" + (repr(guess[0]) if guess else "one of them"))
    return ValueError(f"{expected}. Pass {' and '.join(hints)}.")


def read_csv_pairs(path, image_column="filepath", caption_column="title", separator=None):
    """Reads the image paths and captions of a CSV/TSV file of pairs.

    The layout of `from_csv` (open_clip's): a header row naming the columns,
    one pair per row. Each mistake in the layout is one `ValueError` that
    says what was expected, what the file holds and the fix: an empty file,
    a header without the columns asked for (naming the columns found and,
    when another separator splits the header, that separator), a header
    with no rows after it.

    Args:
        path: path of the CSV/TSV file.
        image_column: str, column of image paths.
        caption_column: str, column of captions.
        separator: str; defaults to a tab for `.tsv` / `.txt`, else `","`.

    Returns:
        `(image_paths, captions)`: two lists of `str` (undecodable bytes
        kept as surrogates), `""` for a missing cell.
    """
    path = os.fspath(path)
    separator = csv_separator(path, separator)
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        text = f.read()
    if not text.strip():
        raise ValueError(
            f"Expected a header row naming the columns {image_column!r} and "
            f"{caption_column!r}, then one image-caption pair per row, in "
            f"{path}. Received: an empty file ({len(text)} characters). "
            "Write the header and the rows, or pass the right file."
        )
    reader = csv.DictReader(io.StringIO(text), delimiter=separator)
    columns = reader.fieldnames or []
    wanted = (image_column, caption_column)
    if any(column not in columns for column in wanted):
        header = text.lstrip("\ufeff").splitlines()[0]
        raise _missing_columns_error(path, header, columns, wanted, separator)
    images, captions = [], []
    for row in reader:
        images.append(row.get(image_column) or "")
        caption = row.get(caption_column)
        captions.append("" if caption is None else caption)
    if not images:
        raise ValueError(
            f"Expected at least one image-caption row after the header of "
            f"{path}. Received: only the header {columns}. Add rows, or pass "
            "the right file."
        )
    return images, captions


def _shard_words(num_shards, shard_index):
    if num_shards == 1:
        return ""
    return f" for shard {shard_index} of {num_shards}"


def from_csv(
    path,
    tokenizer=None,
    batch_size=None,
    *,
    model=None,
    image_column="filepath",
    caption_column="title",
    separator=None,
    image_root=None,
    num_shards=1,
    shard_index=0,
    shuffle_buffer=None,
    **options,
):
    """Pipeline over a CSV/TSV file of image paths and captions.

    The layout is open_clip's `--csv-img-key` / `--csv-caption-key` /
    `--csv-separator`: a header row naming the columns, one pair per row.
    Relative image paths are resolved against `image_root` (default: the
    folder of the CSV). Missing image files are found when the pipeline is
    built and counted as `missing_image`. A layout mistake (empty file,
    wrong column names or separator, no rows) raises a `ValueError` that
    names the fix (see `read_csv_pairs`), and so do fewer rows with an
    existing image than one batch can use.

    Args:
        path: path of the CSV/TSV file.
        tokenizer: see `build_pipeline`; defaults to `model.tokenizer`.
        batch_size: int >= 2.
        model: optional `CLIPModel` whose tokenizer, image size and
            normalisation the pipeline uses (`with_model`).
        image_column: str, column of image paths.
        caption_column: str, column of captions.
        separator: str; defaults to a tab for `.tsv` / `.txt`, else `","`.
        image_root: optional folder that relative paths start from.
        num_shards: int, number of workers reading disjoint parts.
        shard_index: int, this worker's part.
        shuffle_buffer: int; defaults to the whole file (a full shuffle).
        **options: pipeline options, see `build_pipeline`.

    Returns:
        A batched `tf.data.Dataset` with a `skip_counter` attribute.
    """
    tokenizer, options = with_model(model, tokenizer, options)
    check_sharding(num_shards, shard_index)
    check_batching(batch_size, options.get("image_size", 224))
    path = os.fspath(path)
    root = os.path.dirname(os.path.abspath(path)) if image_root is None else image_root
    rows, texts = read_csv_pairs(path, image_column, caption_column, separator)
    images, captions, status = [], [], []
    for rel, caption in zip(rows, texts):
        full = os.path.join(root, rel) if rel else ""
        images.append(os.fsencode(full))
        captions.append(as_bytes(caption))
        status.append(OK if rel and os.path.isfile(full) else MISSING_IMAGE)
    if all(s != OK for s in status):
        raise ValueError(
            f"Every image listed in {path} is missing ({len(rows)} rows). "
            f"First path tried: {images[0].decode(errors='replace')!r}"
        )
    check_enough_samples(
        sum(s == OK for s in status[shard_index::num_shards]), batch_size, options,
        f"rows with an existing image in {path}{_shard_words(num_shards, shard_index)}",
    )
    table = tf.data.Dataset.from_tensor_slices(
        (images, captions, np.asarray(status, np.int32))
    )
    table = _finish_rows(table, num_shards, shard_index, shuffle_buffer, options)
    return build_pipeline(
        table, "path", tokenizer, batch_size, name=f"csv:{path}", **options
    )


def pretokenized(tokenizer, captions, batch_size=1024):
    """Tokenizes `captions` once and returns a lookup-table tokenizer.

    The returned callable maps a `tf.string` tensor of captions to the ids
    `tokenizer` gave them, with a hash-table lookup and a gather instead of
    tokenizing again every epoch. Captions it was not given (and captions
    the pipeline skips: empty or not UTF-8) map to a row of zeros.

    Args:
        tokenizer: callable, `tf.string` `(B,)` -> ids `(B, L)`.
        captions: iterable of `str` / `bytes`.
        batch_size: int, captions per eager tokenizer call.

    Returns:
        A callable with the tokenizer contract.
    """
    unique = set()
    for caption in captions:
        caption = as_bytes(caption)
        try:
            if caption.decode("utf-8").strip():
                unique.add(caption)
        except UnicodeDecodeError:
            pass
    unique = sorted(unique)
    rows = [
        tf.cast(tokenizer(tf.constant(unique[i : i + batch_size])), tf.int32)
        for i in range(0, len(unique), batch_size)
    ]
    if not rows:
        return tokenizer
    ids = tf.concat(rows, axis=0)  # (U, L)
    ids = tf.concat([ids, tf.zeros_like(ids[:1])], axis=0)  # + unknown row
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(unique), tf.range(len(unique), dtype=tf.int64)
        ),
        default_value=len(unique),
    )

    def lookup(texts):
        return tf.gather(ids, table.lookup(texts))  # (..., L)

    lookup.table = table  # keeps the table alive with the callable
    return lookup


def from_arrays(
    images,
    captions,
    tokenizer=None,
    batch_size=None,
    *,
    model=None,
    num_shards=1,
    shard_index=0,
    shuffle_buffer=None,
    pretokenize=None,
    first_caption_probability=None,
    **options,
):
    """Pipeline over in-memory images and captions.

    Args:
        images: `uint8` array `(N, H, W, 3)`, or a list of `N` encoded images
            (`bytes` of JPEG / PNG / GIF / BMP / WebP files).
        captions: list of `N` captions (`str`, or `bytes` in UTF-8); or,
            for several captions per image (COCO's five, or a name and its
            aliases), a list of `N` lists of captions, of which each pass
            over the data draws one per image.
        tokenizer: see `build_pipeline`; defaults to `model.tokenizer`.
        batch_size: int >= 2, and at most the pairs of this worker under
            `drop_remainder`.
        model: optional `CLIPModel` whose tokenizer, image size and
            normalisation the pipeline uses (`with_model`).
        num_shards: int, number of workers reading disjoint parts.
        shard_index: int, this worker's part.
        shuffle_buffer: int; defaults to `N` (a full shuffle).
        pretokenize: bool, tokenize every distinct caption once, now, and
            look ids up in the pipeline (see `pretokenized`). Defaults to
            `True` up to 200,000 captions.
        first_caption_probability: with several captions per image, `None`
            draws uniformly among them; a float draws the first caption with
            that probability, else one of the others uniformly.
        **options: pipeline options, see `build_pipeline`.

    Returns:
        A batched `tf.data.Dataset` with a `skip_counter` attribute.
    """
    tokenizer, options = with_model(model, tokenizer, options)
    check_sharding(num_shards, shard_index)
    check_batching(batch_size, options.get("image_size", 224))
    several = any(isinstance(c, (list, tuple)) for c in captions)
    if first_caption_probability is not None and not 0.0 <= first_caption_probability <= 1.0:
        raise ValueError(
            "Expected `first_caption_probability` in [0, 1]. Received: "
            f"{first_caption_probability}"
        )
    if several:
        choices = [_caption_choices(c, i) for i, c in enumerate(captions)]
        every = [c for row in choices for c in row]
        captions = [CAPTION_SEPARATOR.join(row) for row in choices]
    else:
        if first_caption_probability is not None:
            raise ValueError(
                "`first_caption_probability` needs several captions per image "
                "(a list of strings per image). Received one caption per image."
            )
        captions = [as_bytes(c) for c in captions]
        every = captions
    if pretokenize is None:
        pretokenize = len(every) <= 200_000
    if pretokenize and tokenizer is not None:
        tokenizer = pretokenized(tokenizer, every)
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(
                "Expected `images` as a uint8 array (N, H, W, 3). Received: "
                f"dtype={images.dtype}, shape={images.shape}"
            )
        kind = "array"
    else:
        images = [bytes(i) for i in images]
        kind = "bytes"
    if len(images) != len(captions) or not captions:
        raise ValueError(
            "Expected as many images as captions, at least one. Received: "
            f"{len(images)} images, {len(captions)} captions"
        )
    check_enough_samples(
        len(range(shard_index, len(captions), num_shards)), batch_size, options,
        f"image-caption pairs{_shard_words(num_shards, shard_index)}",
    )
    status = np.zeros([len(captions)], np.int32)
    table = tf.data.Dataset.from_tensor_slices((images, captions, status))
    table = _finish_rows(table, num_shards, shard_index, shuffle_buffer, options)
    if several:
        table = _draw_captions(table, first_caption_probability, options.get("seed"))
    return build_pipeline(
        table, kind, tokenizer, batch_size, name="arrays", **options
    )


# Joins an image's captions into one table entry (a control character no
# caption may contain).
CAPTION_SEPARATOR = b"\x1f"


def _caption_choices(captions, index):
    """One image's captions as a non-empty list of UTF-8 `bytes`."""
    if isinstance(captions, (str, bytes)):
        captions = [captions]
    captions = [as_bytes(c) for c in captions]
    if not captions:
        raise ValueError(
            f"Expected at least one caption for image {index}. Received an empty list."
        )
    for caption in captions:
        if CAPTION_SEPARATOR in caption:
            raise ValueError(
                f"Expected captions without the control character \\x1f (it separates "
                f"an image's captions). Received {caption!r} for image {index}."
            )
    return captions


def _draw_captions(rows, first_probability, seed):
    """Replaces each row's joined captions by one of them, drawn anew each pass.

    `first_probability=None` draws uniformly; otherwise the first caption
    with that probability and one of the others uniformly (the first when
    there are no others).
    """
    # Not `seed` itself: the augmentation draws from that stream.
    seed = None if seed is None else seed + 1
    draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)

    def draw(row, bits):
        image, joined, status = row
        choices = tf.strings.split(joined, CAPTION_SEPARATOR)
        count = tf.cast(tf.size(choices), tf.int64)
        # Two independent draws from one random integer (`%` floors: >= 0).
        unit = tf.cast(bits % (1 << 24), tf.float64) / float(1 << 24)
        pick = (bits // (1 << 24)) % (1 << 30)
        if first_probability is None:
            index = pick % count
        else:
            others = tf.maximum(count - 1, 1)
            index = tf.where(
                (unit < first_probability) | (count == 1), tf.constant(0, tf.int64),
                1 + pick % others,
            )
        return image, choices[index], status

    return tf.data.Dataset.zip(rows, draws).map(draw)
