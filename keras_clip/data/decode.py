"""Decoding and validity checks for raw image-caption samples (TF ops).

Reason codes name why a sample is skipped; sources set some in a sample's
`status` (missing parts, unreadable shards and records), `check_sample`
finds the others before decoding, and the pipeline counts `decode_image`
failures as `decode_error` and a pass's last batch of one as `batch_of_one`.
"""

import tensorflow as tf

# Reason codes. Sources set some in `status`; checks add the rest.
OK = 0
MISSING_IMAGE = 1
EMPTY_IMAGE = 2
UNKNOWN_IMAGE_FORMAT = 3
MISSING_CAPTION = 4
INVALID_UTF8_CAPTION = 5
EMPTY_CAPTION = 6
SHARD_ERROR = 7
INVALID_RECORD = 8
DATA_LOSS = 9
NUM_CHECKED = 10  # codes decided before decoding
END = -1  # status / reason of the end-of-pass marker
# Names of the codes 1.., then of the two decided after decoding.
REASONS = (
    "missing_image",  # file or tar member absent
    "empty_image",  # zero bytes
    "unknown_image_format",  # not JPEG / PNG / GIF / BMP / WebP
    "missing_caption",
    "invalid_utf8_caption",
    "empty_caption",  # empty or whitespace only
    "shard_error",  # a tar shard that could not be read to its end
    "invalid_record",  # a TFRecord record that is not a `tf.train.Example`
    "data_loss",  # a TFRecord record lost to damage: bad checksum, cut short
    "decode_error",  # truncated or corrupt image data
    "batch_of_one",  # a pass's last batch held one pair: no negatives, dropped
)


def _has_prefix(data, prefix, offset=0):
    return tf.strings.substr(data, offset, len(prefix)) == prefix


def is_supported_image(data):
    """True when `data` (scalar string) starts like JPEG/PNG/GIF/BMP/WebP."""
    # Pad the header so that `substr` never reads past the end.
    data = tf.strings.join([tf.strings.substr(data, 0, 12), b"\0" * 12])
    return (
        _has_prefix(data, b"\xff\xd8\xff")
        | _has_prefix(data, b"\x89PNG\r\n\x1a\n")
        | _has_prefix(data, b"GIF8")
        | _has_prefix(data, b"BM")
        | (_has_prefix(data, b"RIFF") & _has_prefix(data, b"WEBP", 8))
    )


def to_rgb(image):
    """Converts a `uint8` image with 1, 2, 3 or 4 channels to RGB.

    Alpha (2 or 4 channels) is composited onto white; grayscale is repeated
    over the three channels.
    """
    image = tf.convert_to_tensor(image)
    channels = tf.shape(image)[-1]

    def composite():
        pixels = tf.cast(image, tf.float32)
        color = tf.cond(
            channels >= 3,
            lambda: pixels[..., :3],
            lambda: tf.repeat(pixels[..., :1], 3, axis=-1),
        )
        alpha = tf.cond(
            tf.equal(channels % 2, 0),
            lambda: pixels[..., -1:] / 255.0,
            lambda: tf.ones_like(pixels[..., :1]),
        )
        rgb = color * alpha + 255.0 * (1.0 - alpha)
        return tf.cast(tf.round(rgb), tf.uint8)

    # RGB (most JPEGs) passes through untouched: no float round trip.
    rgb = tf.cond(
        tf.equal(channels, 3), lambda: tf.cast(image, tf.uint8), composite
    )
    return tf.ensure_shape(rgb, [None, None, 3])


def decode_image(data):
    """Decodes JPEG/PNG/GIF/BMP/WebP bytes to a `uint8` RGB image `(H, W, 3)`.

    Alpha is composited onto white, grayscale expanded, and only the first
    frame of an animated GIF kept. Raises `InvalidArgumentError` on corrupt
    or truncated data (pipelines drop and count such samples).
    """
    image = tf.io.decode_image(data, channels=0, expand_animations=False)
    return to_rgb(image)


def check_sample(image, caption, status, image_kind):
    """Classifies one raw sample; reads the file when `image` is a path."""
    if image_kind == "path":
        image = tf.cond(
            tf.equal(status, OK), lambda: tf.io.read_file(image), lambda: ""
        )
    valid_utf8 = tf.equal(
        tf.strings.unicode_transcode(
            caption, "UTF-8", "UTF-8", errors="replace"
        ),
        caption,
    )
    empty_caption = tf.equal(tf.strings.length(tf.strings.strip(caption)), 0)
    if image_kind == "array":
        empty_image = tf.constant(False)
        known_format = tf.constant(True)
    else:
        empty_image = tf.equal(tf.strings.length(image), 0)
        known_format = is_supported_image(image)
    reason = tf.constant(OK)
    # Checked from the least to the most important: the last match wins.
    for code, failed in (
        (UNKNOWN_IMAGE_FORMAT, tf.logical_not(known_format)),
        (EMPTY_CAPTION, empty_caption),
        (INVALID_UTF8_CAPTION, tf.logical_not(valid_utf8)),
        (EMPTY_IMAGE, empty_image),
    ):
        reason = tf.where(failed, code, reason)
    # What the source found wrong (missing parts, damage) comes first.
    reason = tf.where(tf.equal(status, OK), reason, status)
    return image, caption, reason


def as_bytes(text):
    """Caption `str` -> UTF-8 `bytes`; `bytes` pass through unchanged."""
    if isinstance(text, bytes):
        return text
    # Undo `surrogateescape`, so undecodable bytes reach the UTF-8 check.
    return str(text).encode("utf-8", "surrogateescape")
