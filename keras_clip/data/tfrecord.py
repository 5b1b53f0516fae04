"""Reading one TFRecord file so that every record lost is counted.

A TFRecord file is a sequence of records framed as `length (8 bytes) |
masked CRC-32C of length (4) | data | masked CRC-32C of data (4)`.
TensorFlow's reader stops at the first record whose checksum fails or that
the file cuts short (`DataLossError`), and a record that is not a
`tf.train.Example` fails to parse. `file_samples` turns both into counted
samples instead of silent losses:

- records are read natively and the bytes they span are summed; when the
  file ends before its size, `lost_records` surveys the rest in Python (it
  reads record headers only) and the pipeline counts each record found
  there as `data_loss`, and the `keras_clip.data` logger names the file,
  the byte where reading stopped and the bytes lost;
- each record is numbered before parsing, so a record whose parse fails
  leaves a gap in the numbers, counted as `invalid_record`.
"""

import logging

import tensorflow as tf

from keras_clip.data.decode import DATA_LOSS
from keras_clip.data.decode import INVALID_RECORD
from keras_clip.data.decode import MISSING_CAPTION
from keras_clip.data.decode import MISSING_IMAGE
from keras_clip.data.decode import OK

logger = logging.getLogger("keras_clip.data")

_HEADER = 12  # length and its CRC
_FRAMING = 16  # header and the data's CRC
_CHUNK = 1 << 20  # bytes searched at a time for the next record header
_BUDGET = 200_000  # candidate headers checked per file before giving up


def _crc32c_table():
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def masked_crc32c(data):
    """The masked CRC-32C (Castagnoli) that frames TFRecord lengths and data."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _header_length(header):
    """The record length a 12-byte header states, or None if it is damaged."""
    if len(header) < _HEADER:
        return None
    if masked_crc32c(header[:8]) != int.from_bytes(header[8:12], "little"):
        return None
    return int.from_bytes(header[:8], "little")


def _next_header(f, start, size, budget):
    """The first offset >= `start` holding a valid header, else `size`.

    Gives up (returns `size`) once `budget[0]` candidates were checked, so a
    long stretch of zeros or of foreign data costs a bounded time.
    """
    position = start
    while position < size:
        f.seek(position)
        chunk = f.read(_CHUNK + _HEADER)
        # A length under 4 GiB has four zero high bytes: try only there.
        found = chunk.find(b"\0\0\0\0", 4)
        while found != -1 and found - 4 <= len(chunk) - _HEADER:
            candidate = found - 4
            if _header_length(chunk[candidate : candidate + _HEADER]) is not None:
                return position + candidate
            budget[0] -= 1
            if budget[0] <= 0:
                return size
            found = chunk.find(b"\0\0\0\0", found + 1)
        position += _CHUNK
    return size


def survey(path, offset):
    """What a TFRecord file holds from byte `offset` (where reading stopped) on.

    Args:
        path: the file.
        offset: int, bytes read intact.

    Returns:
        `(size, records, cut_short, exact)`: the file's size; the records
        found from `offset` to the end, a stretch of bytes without a valid
        header counting as one; whether the record at `offset` runs past
        the end; and whether the search for headers ran to the end (else
        `records` is a lower bound).
    """
    budget = [_BUDGET]
    with tf.io.gfile.GFile(path, "rb") as f:
        size = f.size()
        records, position, cut_short = 0, offset, False
        while position < size:
            f.seek(position)
            length = _header_length(f.read(_HEADER))
            records += 1
            end = size if length is None else position + _FRAMING + length
            cut_short |= position == offset and (
                position + _HEADER > size or end > size
            )
            if length is None:  # damaged framing: skip to the next header
                position = _next_header(f, position + 1, size, budget)
            else:
                position = end
    return size, records, cut_short, budget[0] > 0


def lost_records(path, consumed):
    """Counts and logs the records of `path` past byte `consumed` (eager)."""
    path = path.numpy().decode("utf-8", "surrogateescape")
    consumed = int(consumed.numpy())
    try:
        size, records, cut_short, exact = survey(path, consumed)
    except Exception as error:  # noqa: BLE001 - an error here would be dropped unseen
        logger.warning(
            "TFRecord file %s could not be read past byte %d (%s: %s); counted "
            "as one record lost (data_loss).", path, consumed,
            type(error).__name__, error,
        )
        return 1
    if records:
        what = "a record cut short" if cut_short else "a record that fails its checksum"
        logger.warning(
            "TFRecord file %s is damaged at byte %d of %d (%s): %s%d record(s), "
            "%d bytes, from there on were lost and are counted as data_loss. "
            "Write the file again or fetch a fresh copy.",
            path, consumed, size, what, "" if exact else "at least ", records,
            size - consumed,
        )
    return records


def _report_invalid(path, index, count):
    """Logs the records `index - count` .. `index - 1` of `path` (eager)."""
    first, last = int(index - count), int(index) - 1
    which = (
        f"record {first} (numbered from 0) is" if first == last
        else f"records {first}-{last} (numbered from 0) are"
    )
    logger.warning(
        "TFRecord file %s: %s not a tf.train.Example; counted as invalid_record.",
        path.numpy().decode("utf-8", "surrogateescape"), which,
    )
    return count


def file_samples(path, image_key, caption_key):
    """One TFRecord file as raw samples `(image, caption, status)`.

    Records without the image or the caption feature get the status
    `missing_image` / `missing_caption`; each record that is not a
    `tf.train.Example` becomes an empty sample with the status
    `invalid_record`, and each record lost to damage (see `survey`) one with
    `data_loss`, so that the pipeline counts them.

    Args:
        path: scalar `tf.string`, the file.
        image_key: feature name of the encoded image.
        caption_key: feature name of the caption.

    Returns:
        A `tf.data.Dataset` of `(tf.string, tf.string, tf.int32)` scalars.
    """
    int64 = lambda x: tf.cast(x, tf.int64)
    spec = {
        image_key: tf.io.VarLenFeature(tf.string),
        caption_key: tf.io.VarLenFeature(tf.string),
    }
    # Reading stops at the first damaged record; the marker closes the file.
    records = tf.data.TFRecordDataset(path).ignore_errors()
    records = records.map(lambda r: (r, int64(tf.strings.length(r)) + _FRAMING, False))
    records = records.concatenate(tf.data.Dataset.from_tensors(
        (tf.constant(""), tf.constant(0, tf.int64), tf.constant(True))
    ))

    def number(state, record):
        index, consumed = state
        data, framed, is_end = record
        state = (index + 1, consumed + framed)
        return state, (data, is_end, index, consumed + framed)

    records = records.scan((tf.constant(0, tf.int64), tf.constant(0, tf.int64)), number)

    def parse(data, is_end, index, consumed):
        def example():
            parsed = tf.io.parse_single_example(data, spec)
            return parsed[image_key].values, parsed[caption_key].values

        empty = lambda: (tf.constant([], tf.string), tf.constant([], tf.string))
        image, caption = tf.cond(is_end, empty, example)
        status = tf.where(
            tf.size(image) == 0,
            MISSING_IMAGE,
            tf.where(tf.size(caption) == 0, MISSING_CAPTION, OK),
        )
        first = lambda v: tf.concat([v, [""]], 0)[0]
        return first(image), first(caption), status, is_end, index, consumed

    # A record that is not an Example fails here and leaves a gap in `index`.
    samples = records.map(parse, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors()

    def find_gaps(last, sample):
        image, caption, status, is_end, index, consumed = sample
        invalid = index - last - 1
        invalid = tf.cond(
            invalid > 0,
            lambda: tf.reshape(tf.py_function(
                _report_invalid, [path, index, invalid], tf.int64), []),
            lambda: invalid,
        )
        return index, (image, caption, status, is_end, consumed, invalid)

    samples = samples.scan(tf.constant(-1, tf.int64), find_gaps)

    def expand(image, caption, status, is_end, consumed, invalid):
        lost = tf.cond(
            is_end,
            lambda: tf.reshape(tf.py_function(
                lost_records, [path, consumed], tf.int64), []),
            lambda: tf.constant(0, tf.int64),
        )
        keep = 1 - int64(is_end)  # the marker itself is no sample
        blanks = tf.fill([invalid + lost], "")
        statuses = tf.concat([
            tf.fill([invalid], INVALID_RECORD),
            tf.fill([lost], DATA_LOSS),
            tf.fill([keep], tf.cast(status, tf.int32)),
        ], 0)
        return (
            tf.concat([blanks, tf.fill([keep], image)], 0),
            tf.concat([blanks, tf.fill([keep], caption)], 0),
            statuses,
        )

    return samples.map(expand).unbatch()
