"""Tests for keras_clip.data: sources, decoding, skip counts, sharding, fit."""

import io
import logging
import os
import tarfile

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_clip import data
from keras_clip.data import pipeline as data_pipeline

L = 8  # context length of the stand-in tokenizer
SIZE = 16


def hash_tokenizer(captions):
    """Graph-mode stand-in for CLIPTokenizer: hashed words, SOT/EOT, pad to L."""
    words = tf.strings.split(tf.strings.lower(captions))
    ids = tf.strings.to_hash_bucket_fast(words, 1000) + 1
    sot = tf.ones_like(ids[..., :1]) * 1001
    eot = tf.ones_like(ids[..., :1]) * 1002
    ids = tf.concat([sot, ids[..., : L - 2], eot], axis=-1)
    if isinstance(ids, tf.RaggedTensor):
        return ids.to_tensor(shape=[None, L])
    return tf.pad(ids, [[0, L - tf.shape(ids)[0]]])


def encode(array, fmt, **kwargs):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def random_image(seed, h=24, w=20):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)


def good_and_bad_samples():
    """Returns {name: (image bytes or None, caption bytes)} and expected counts."""
    samples = {f"good{i}": (encode(random_image(i), "JPEG"), f"photo {i}".encode())
               for i in range(6)}
    samples["gray"] = (encode(random_image(7)[..., 0], "PNG"), b"gray square")
    samples["rgba"] = (encode(np.dstack([random_image(8), np.full((24, 20), 128,
                       np.uint8)]), "PNG"), b"half transparent")
    samples["gif"] = (encode(random_image(9), "GIF"), b"a gif")
    samples["bmp"] = (encode(random_image(10), "BMP"), b"a bitmap")
    jpeg = encode(random_image(11), "JPEG")
    samples["truncated"] = (jpeg[: len(jpeg) // 2], b"cut in half")
    samples["corrupt"] = (b"this is not an image at all" * 3, b"corrupt bytes")
    samples["zero"] = (b"", b"zero bytes")
    samples["missing"] = (None, b"no file")
    samples["latin1"] = (encode(random_image(12), "PNG"), "café".encode("latin-1"))
    samples["nocaption"] = (encode(random_image(13), "PNG"), b"  ")
    expected = dict.fromkeys(("ok",) + data.REASONS, 0)
    expected.update(ok=10, decode_error=1, unknown_image_format=1, empty_image=1,
                    missing_image=1, invalid_utf8_caption=1, empty_caption=1)
    return samples, expected


def write_csv(folder, samples, separator=","):
    os.makedirs(folder / "img", exist_ok=True)
    lines = [f"filepath{separator}title".encode()]
    for name, (image, caption) in samples.items():
        path = f"img/{name}.bin"
        if image is not None:
            (folder / path).write_bytes(image)
        lines.append(path.encode() + separator.encode() + caption)
    csv_path = folder / ("pairs.tsv" if separator == "\t" else "pairs.csv")
    csv_path.write_bytes(b"\n".join(lines) + b"\n")
    return csv_path


def add_member(tar, name, payload):
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def write_shards(folder, samples, num_shards=2):
    paths = [folder / f"shard-{i:05d}.tar" for i in range(num_shards)]
    tars = [tarfile.open(p, "w") for p in paths]
    for i, (name, (image, caption)) in enumerate(samples.items()):
        tar = tars[i % num_shards]
        if image is not None:
            add_member(tar, f"{i:08d}.jpg", image)
        add_member(tar, f"{i:08d}.txt", caption)
        add_member(tar, f"{i:08d}.json", b'{"status": "success"}')
    for tar in tars:
        tar.close()
    return paths


def collect(ds):
    batches = list(ds)
    return batches, sum(int(b["images"].shape[0]) for b in batches)


def test_csv_skip_counts_and_outputs(tmp_path):
    samples, expected = good_and_bad_samples()
    csv_path = write_csv(tmp_path, samples)
    ds = data.from_csv(csv_path, hash_tokenizer, batch_size=4, image_size=SIZE)
    batches, count = collect(ds)
    assert count == expected["ok"]
    assert ds.skip_counter.last_pass() == expected
    for batch in batches:
        assert batch["images"].dtype == tf.float32
        assert batch["images"].shape[1:] == (SIZE, SIZE, 3)
        assert batch["token_ids"].dtype == tf.int32
        assert batch["token_ids"].shape[1:] == (L,)
    # A second pass counts again; totals add up.
    collect(ds)
    assert ds.skip_counter.num_passes == 2
    assert ds.skip_counter.totals()["decode_error"] == 2


def test_tsv_custom_columns(tmp_path):
    (tmp_path / "a.png").write_bytes(encode(random_image(0), "PNG"))
    (tmp_path / "list.tsv").write_text(
        "caption\tpath\na red thing\ta.png\nthe same thing\ta.png\n")
    ds = data.from_csv(tmp_path / "list.tsv", hash_tokenizer, 2, image_size=SIZE,
                       image_column="path", caption_column="caption")
    assert collect(ds)[1] == 2
    with pytest.raises(ValueError, match="columns 'filepath' .* Received the columns "
                       r"\['caption', 'path'\]\. Pass image_column=.*caption_column"):
        data.from_csv(tmp_path / "list.tsv", hash_tokenizer, 2)


def test_webdataset_skip_counts_and_truncated_shard(tmp_path):
    samples, expected = good_and_bad_samples()
    samples["onlyimage"] = (encode(random_image(14), "PNG"), None)
    paths = write_shards(tmp_path, {k: v for k, v in samples.items()
                                    if v[1] is not None})
    with tarfile.open(paths[0], "a") as tar:
        add_member(tar, "99999999.png", samples["onlyimage"][0])
    # A third shard: two good samples, then cut inside the third image.
    good = {f"t{i}": (encode(random_image(20 + i, 64, 64), "PNG"), b"x y")
            for i in range(3)}
    os.makedirs(tmp_path / "cut")
    (cut,) = write_shards(tmp_path / "cut", good, 1)
    with tarfile.open(cut) as tar:
        offset = tar.getmember("00000002.jpg").offset_data
    cut.write_bytes(cut.read_bytes()[: offset + 100])
    pattern = str(tmp_path / "shard-{00000..00001}.tar")
    ds = data.from_webdataset([pattern, str(cut)], hash_tokenizer, batch_size=3,
                              image_size=SIZE, training=True, seed=3)
    batches, count = collect(ds)
    expected.update(ok=expected["ok"] + 2, missing_caption=1, shard_error=1)
    counts = ds.skip_counter.last_pass()
    assert counts == expected
    assert count == 12 - 12 % 3  # training drops the remainder
    assert all(b["images"].shape[0] == 3 for b in batches)


def test_tfrecord_round_trip_and_missing_features(tmp_path):
    samples, expected = good_and_bad_samples()
    kept = {k: v for k, v in samples.items() if v[0] is not None}
    path = tmp_path / "pairs.tfrecord"
    n = data.write_tfrecord(path, [v[0] for v in kept.values()],
                            [v[1] for v in kept.values()])
    assert n == len(kept)
    with tf.io.TFRecordWriter(str(tmp_path / "extra.tfrecord")) as writer:
        only_caption = tf.train.Example(features=tf.train.Features(feature={
            "caption": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"x"]))
        }))
        writer.write(only_caption.SerializeToString())
    ds = data.from_tfrecord(str(tmp_path / "*.tfrecord"), hash_tokenizer, 5,
                            image_size=SIZE)
    assert collect(ds)[1] == expected["ok"]
    assert ds.skip_counter.last_pass() == expected  # 1 missing image, as before


def _example(image, caption):
    feature = {key: tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
               for key, value in (("image", image), ("caption", caption))}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def test_tfrecord_damage_is_counted_and_named(tmp_path, caplog):
    # Three 20-record files: one flipped byte inside record 12's data, one
    # cut inside record 15, and one whose record 5 is not an Example.
    records = [_example(encode(random_image(i, 8, 8), "PNG"), f"thing {i}".encode())
               for i in range(20)]
    offsets = np.cumsum([0] + [16 + len(r) for r in records])
    for name in ("good", "flipped", "cut", "foreign"):
        with tf.io.TFRecordWriter(str(tmp_path / f"{name}.tfrecord")) as writer:
            for i, record in enumerate(records):
                writer.write(b"\x08\x01 not an Example" if name == "foreign" and i == 5
                             else record)
    good = (tmp_path / "good.tfrecord").read_bytes()
    flipped = bytearray(good)
    flipped[offsets[12] + 30] ^= 0x40
    (tmp_path / "flipped.tfrecord").write_bytes(bytes(flipped))
    (tmp_path / "cut.tfrecord").write_bytes(good[: offsets[15] + 40])
    expected = {
        "good": dict(ok=20),
        "flipped": dict(ok=12, data_loss=8),  # reading stops at record 12
        "cut": dict(ok=15, data_loss=1),
        "foreign": dict(ok=19, invalid_record=1),
    }
    for name, counts in expected.items():
        path = tmp_path / f"{name}.tfrecord"
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="keras_clip.data"):
            ds = data.from_tfrecord(str(path), hash_tokenizer, 4, image_size=SIZE)
            assert collect(ds)[1] == counts["ok"], name
        assert ds.skip_counter.last_pass() == {
            **dict.fromkeys(("ok",) + data.REASONS, 0), **counts}, name
        lost = [r.getMessage() for r in caplog.records if str(path) in r.getMessage()]
        assert bool(lost) == (name != "good"), (name, caplog.text)
        if name == "flipped":
            assert f"damaged at byte {offsets[12]} of {len(good)}" in lost[0]
            assert f"8 record(s), {len(good) - offsets[12]} bytes" in lost[0]
        if name == "cut":
            assert "a record cut short" in lost[0] and "1 record(s), 40 bytes" in lost[0]
        if name == "foreign":
            assert "record 5 (numbered from 0) is not a tf.train.Example" in lost[0]
    # All four files at once: the losses add up.
    ds = data.from_tfrecord(str(tmp_path / "*.tfrecord"), hash_tokenizer, 4,
                            image_size=SIZE)
    collect(ds)
    counts = ds.skip_counter.last_pass()
    assert (counts["ok"], counts["data_loss"], counts["invalid_record"]) == (66, 9, 1)
    with pytest.raises(FileNotFoundError, match="do not exist"):
        data.from_tfrecord(str(tmp_path / "absent.tfrecord"), hash_tokenizer, 4)


def test_tfrecord_survey_finds_records_past_a_damaged_header(tmp_path):
    from keras_clip.data import tfrecord

    records = [_example(bytes([i]) * (50 + i), b"x") for i in range(10)]
    path = tmp_path / "r.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)
    good = path.read_bytes()
    offsets = np.cumsum([0] + [16 + len(r) for r in records])
    damaged = bytearray(good)
    damaged[offsets[4] + 2] ^= 1  # record 4's length, so its framing is lost
    path.write_bytes(bytes(damaged))
    # Record 4's bytes count as one; records 5-9 are found after them.
    assert tfrecord.survey(str(path), int(offsets[4])) == (len(good), 6, False, True)
    path.write_bytes(good[: offsets[7] + 5])  # cut inside record 7's header
    assert tfrecord.survey(str(path), int(offsets[7])) == (offsets[7] + 5, 1, True, True)


@pytest.mark.parametrize("source", ["csv", "arrays", "tfrecord", "webdataset"])
def test_batch_size_and_image_size_are_checked(tmp_path, source):
    images = np.stack([random_image(i) for i in range(4)])
    captions = [f"thing {i}" for i in range(4)]
    samples = {c: (encode(im, "PNG"), c.encode()) for c, im in zip(captions, images)}
    if source == "csv":
        path = write_csv(tmp_path, samples)
        make = lambda b, **kw: data.from_csv(path, hash_tokenizer, b, **kw)
    elif source == "arrays":
        make = lambda b, **kw: data.from_arrays(images, captions, hash_tokenizer, b, **kw)
    elif source == "tfrecord":
        path = str(tmp_path / "pairs.tfrecord")
        data.write_tfrecord(path, images, captions)
        make = lambda b, **kw: data.from_tfrecord(path, hash_tokenizer, b, **kw)
    else:
        shards = write_shards(tmp_path, samples, 1)
        make = lambda b, **kw: data.from_webdataset(shards, hash_tokenizer, b, **kw)
    for batch_size in (1, 0, -2, 2.0):
        with pytest.raises(ValueError, match=r"Expected `batch_size` to be an int >= 2: .* "
                           rf"learns nothing\. Received: batch_size={batch_size!r}\. Pass 2"):
            make(batch_size)
    for image_size in (0, -32, 3.5):
        with pytest.raises(ValueError, match=r"Expected `image_size` to be a positive int.* "
                           rf"Received: image_size={image_size!r}\. Pass e\.g\."):
            make(2, image_size=image_size)
    ds = make(3, image_size=SIZE)  # 4 pairs: a batch of 3, then one of 1
    batches, count = collect(ds)
    assert count == 3 and len(batches) == 1
    assert ds.skip_counter.last_pass()["batch_of_one"] == 1
    assert ds.skip_counter.last_pass()["ok"] == 3


def test_csv_layout_errors_name_the_fix(tmp_path):
    samples = {f"p{i}": (encode(random_image(i), "PNG"), f"photo {i}".encode())
               for i in range(3)}
    csv_path = write_csv(tmp_path, samples)
    # A wrong column name: the columns found, and the closest one.
    with pytest.raises(ValueError, match=r"columns 'filepath' \(image paths\) and 'caption' "
                       r".*Received the columns \['filepath', 'title'\]\. Pass "
                       r"caption_column='title'\.$"):
        data.from_csv(csv_path, hash_tokenizer, 2, caption_column="caption")
    # A tab-separated file named .csv: the separator that splits the header.
    tabs = tmp_path / "tabs.csv"
    tabs.write_bytes(write_csv(tmp_path, samples, "\t").read_bytes())
    with pytest.raises(ValueError) as error:
        data.from_csv(tabs, hash_tokenizer, 2)
    assert str(error.value).endswith(
        "split on commas. Received the columns ['filepath\\ttitle']. The header splits "
        "on tabs into ['filepath', 'title']: pass separator='\\t' (or name the file "
        ".tsv for tabs).")
    assert collect(data.from_csv(tabs, hash_tokenizer, 3, separator="\t",
                                 image_size=SIZE))[1] == 3
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match=r"Received: an empty file .* Write the header"):
        data.from_csv(tmp_path / "empty.csv", hash_tokenizer, 2)
    (tmp_path / "header.csv").write_text("filepath,title\n")
    with pytest.raises(ValueError, match=r"Received: only the header \['filepath', 'title'\]\. "
                       "Add rows"):
        data.from_csv(tmp_path / "header.csv", hash_tokenizer, 2)
    # Fewer pairs than one batch, when the remainder is dropped.
    with pytest.raises(ValueError, match=r"full batch of 8 pairs.* Received: 3 rows with an "
                       r"existing image in .*pairs.csv, .* Lower `batch_size` to 3 or less"):
        data.from_csv(csv_path, hash_tokenizer, 8, training=True)
    with pytest.raises(ValueError, match=r"full batch of 4 pairs.* Received: 3 image-caption "
                       "pairs, "):
        data.from_arrays(np.stack([random_image(i) for i in range(3)]), ["a", "b", "c"],
                         hash_tokenizer, 4, drop_remainder=True)
    with pytest.raises(ValueError, match=r"at least 2 pairs.* Received: 1 image-caption pairs "
                       "for shard 1 of 3"):
        data.from_arrays(np.stack([random_image(i) for i in range(4)]), list("abcd"),
                         hash_tokenizer, 2, num_shards=3, shard_index=1)


def test_streaming_source_short_of_one_batch_raises_on_the_pass(tmp_path):
    path = str(tmp_path / "few.tfrecord")
    data.write_tfrecord(path, [encode(random_image(i), "PNG") for i in range(3)],
                        ["a", "b", "c"])
    ds = data.from_tfrecord(path, hash_tokenizer, 4, image_size=SIZE, training=True)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"full batch of 4 pairs.*"
                       r"Received: 3 usable pairs in the pass.* Lower `batch_size` to 3"):
        collect(ds)
    data.write_tfrecord(path, [encode(random_image(0), "PNG")], ["a"])
    ds = data.from_tfrecord(path, hash_tokenizer, 4, image_size=SIZE)
    with pytest.raises(tf.errors.InvalidArgumentError, match="batch of one has no negatives"):
        collect(ds)


def test_arrays_uint8_and_bytes():
    images = np.stack([random_image(i) for i in range(7)])
    captions = [f"thing {i}" for i in range(7)]
    ds = data.from_arrays(images, captions, hash_tokenizer, 3, image_size=SIZE)
    batches, count = collect(ds)
    # The last batch would hold one pair: dropped, and counted.
    assert count == 6 and [b["images"].shape[0] for b in batches] == [3, 3]
    assert ds.skip_counter.last_pass()["batch_of_one"] == 1
    encoded = [encode(i, "PNG") for i in images]
    ds2 = data.from_arrays(encoded, captions, hash_tokenizer, 3, image_size=SIZE)
    for a, b in zip(batches, ds2):  # PNG is lossless: same pixels, same order
        np.testing.assert_allclose(a["images"], b["images"], atol=1e-5)
        np.testing.assert_array_equal(a["token_ids"], b["token_ids"])
    with pytest.raises(ValueError, match="uint8 array"):
        data.from_arrays(images.astype(np.float32), captions, hash_tokenizer, 3)


def _drawn_captions(ds, passes):
    """Captions per row position over `passes` passes of an unshuffled set."""
    drawn = []
    for batch in ds.repeat(passes):
        drawn += [c.decode() for c in np.asarray(batch["captions"])]
    return drawn


def test_arrays_several_captions_drawn_per_pass():
    images = np.stack([random_image(i) for i in range(4)])
    captions = [["0 a"], ["1 a", "1 b"], ["2 a", "2 b", "2 c"], "3 a"]
    passes = 300
    # Uniform: each caption of image i with probability 1 / len(captions[i]).
    drawn = _drawn_captions(data.from_arrays(images, captions, None, 4, image_size=SIZE), passes)
    assert len(drawn) == 4 * passes
    rows = [drawn[i::4] for i in range(4)]  # unshuffled: row i is image i
    for i, row in enumerate(rows):
        assert {c.split()[0] for c in row} == {str(i)}  # never another image's
        options = captions[i] if isinstance(captions[i], list) else [captions[i]]
        for option in options:
            p = 1.0 / len(options)
            assert abs(row.count(option) - passes * p) <= 5 * np.sqrt(passes * p * (1 - p)) + 1e-9
    # The first caption with probability 0.75, the others share the rest.
    drawn = _drawn_captions(data.from_arrays(
        images, captions, None, 4, image_size=SIZE, first_caption_probability=0.75), passes)
    expected = {"0 a": 1.0, "1 a": 0.75, "1 b": 0.25, "2 a": 0.75, "2 b": 0.125, "2 c": 0.125, "3 a": 1.0}
    for caption, p in expected.items():
        count = sum(c == caption for c in drawn)
        assert abs(count - passes * p) <= 5 * np.sqrt(passes * p * (1 - p)) + 1e-9, (caption, count)


def test_arrays_several_captions_tokens_seed_and_errors():
    images = np.stack([random_image(i) for i in range(6)])
    captions = [[f"thing {i}", f"other {i} name"] for i in range(6)]
    kwargs = dict(image_size=SIZE, training=True, seed=3, keep_captions=True)
    first = list(data.from_arrays(images, captions, hash_tokenizer, 3, **kwargs).repeat(4))
    second = list(data.from_arrays(images, captions, hash_tokenizer, 3, **kwargs).repeat(4))
    for a, b in zip(first, second):  # same seed, same draws and order
        np.testing.assert_array_equal(a["captions"], b["captions"])
        # Pretokenized alternatives: the ids of the caption that was drawn.
        np.testing.assert_array_equal(a["token_ids"], hash_tokenizer(a["captions"]))
    with pytest.raises(ValueError, match="at least one caption for image 1"):
        data.from_arrays(images[:2], [["a"], []], hash_tokenizer, 2)
    with pytest.raises(ValueError, match="without the control character"):
        data.from_arrays(images[:2], [["a"], ["b\x1fc"]], hash_tokenizer, 2)
    with pytest.raises(ValueError, match="needs several captions per image"):
        data.from_arrays(images[:2], ["a", "b"], hash_tokenizer, 2, first_caption_probability=0.5)
    with pytest.raises(ValueError, match=r"in \[0, 1\]. Received: 1.5"):
        data.from_arrays(images[:2], [["a"], ["b"]], hash_tokenizer, 2, first_caption_probability=1.5)


def test_all_bad_source_raises(tmp_path):
    with pytest.raises(ValueError, match="Every image listed"):
        data.from_csv(write_csv(tmp_path, {"m": (None, b"x")}), hash_tokenizer, 2)
    ds = data.from_arrays([b"junk", b""], ["a", "b"], hash_tokenizer, 2)
    with pytest.raises(tf.errors.InvalidArgumentError, match="Every sample"):
        list(ds)


def test_decode_formats_match_pil():
    rgba = random_image(1).copy()
    alpha = np.random.default_rng(2).integers(0, 256, (24, 20, 1), np.uint8)
    rgba = np.concatenate([rgba, alpha], axis=-1)
    expected = rgba[..., :3] * (alpha / 255.0) + 255.0 * (1 - alpha / 255.0)
    out = data.decode_image(encode(rgba, "PNG")).numpy()
    np.testing.assert_allclose(out, np.round(expected), atol=1)
    gray = random_image(3)[..., 0]
    out = data.decode_image(encode(gray, "PNG")).numpy()
    np.testing.assert_array_equal(out, np.repeat(gray[..., None], 3, axis=-1))
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    out = data.decode_image(buffer.getvalue()).numpy()
    assert out.shape == (8, 8, 3) and tuple(out[0, 0]) == (255, 0, 0)
    bmp = random_image(4)
    np.testing.assert_array_equal(data.decode_image(encode(bmp, "BMP")), bmp)


def test_seeded_pipelines_are_deterministic():
    images = np.stack([random_image(i, 40, 30) for i in range(12)])
    captions = [f"thing {i}" for i in range(12)]

    def first_epoch(seed):
        ds = data.from_arrays(images, captions, hash_tokenizer, 4, image_size=SIZE,
                              training=True, seed=seed, rotation=10.0)
        return [b["images"].numpy() for b in ds]

    a, b, c = first_epoch(5), first_epoch(5), first_epoch(6)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.allclose(a[0], c[0])


def test_downscale_option_reaches_the_training_transform():
    # One-pixel checkerboards: every drop in resolution greys them out.
    board = np.zeros((SIZE, SIZE, 3), np.uint8)
    board[::2, ::2] = board[1::2, 1::2] = 255
    images = np.stack([board] * 8)
    captions = [f"board {i}" for i in range(8)]

    def contrast(downscale):
        ds = data.from_arrays(images, captions, hash_tokenizer, 8, image_size=SIZE, training=True,
                              crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), seed=3,
                              downscale=downscale)
        batch = next(iter(ds))["images"].numpy()
        return np.abs(np.diff(batch, axis=2)).mean(axis=(1, 2, 3))

    sharp, dropped = contrast(0.0), contrast(1.0)
    # A side fraction drawn above 31/32 rounds back to 16 pixels (no drop):
    # most of the 8, not all, must be greyed.
    assert (dropped < 0.5 * sharp).sum() >= 6, (sharp, dropped)


@pytest.mark.parametrize("source", ["arrays", "webdataset"])
def test_sharding_partitions_the_data(tmp_path, source):
    n, num_shards = 12, 3
    captions = [f"item{i}" for i in range(n)]
    images = np.stack([random_image(i) for i in range(n)])
    samples = {c: (encode(im, "PNG"), c.encode()) for c, im in zip(captions, images)}
    seen = []
    for index in range(num_shards):
        kwargs = dict(num_shards=num_shards, shard_index=index, image_size=SIZE,
                      keep_captions=True)
        if source == "arrays":
            ds = data.from_arrays(images, captions, hash_tokenizer, 4, **kwargs)
        else:
            shards = write_shards(tmp_path, samples, num_shards=4)
            ds = data.from_webdataset(shards, hash_tokenizer, 4, **kwargs)
        seen.append({c.decode() for b in ds for c in b["captions"].numpy()})
    assert set().union(*seen) == set(captions)
    assert sum(len(s) for s in seen) == n
    with pytest.raises(ValueError, match="shard_index"):
        data.from_arrays(images, captions, hash_tokenizer, 4, num_shards=2,
                         shard_index=2)


def test_expand_braces():
    assert data.expand_braces("s/{000..002}.tar") == [
        "s/000.tar", "s/001.tar", "s/002.tar"]
    assert data.expand_braces("{a,b}-{1..2}") == ["a-1", "a-2", "b-1", "b-2"]


class TinyClip(keras.Model):
    """A two-tower stand-in: pooled image and mean word embeddings."""

    def __init__(self):
        super().__init__()
        self.pool = keras.layers.GlobalAveragePooling2D()
        self.image_proj = keras.layers.Dense(8)
        self.embed = keras.layers.Embedding(1003, 8)
        self.text_proj = keras.layers.Dense(8)

    def call(self, inputs):
        x = self.image_proj(self.pool(inputs["images"]))  # (B, 8)
        t = self.text_proj(keras.ops.mean(self.embed(inputs["token_ids"]), axis=1))
        return keras.ops.matmul(x, keras.ops.transpose(t))  # (B, B)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None,
                     training=True):
        labels = keras.ops.arange(keras.ops.shape(y_pred)[0])
        return keras.ops.mean(keras.losses.sparse_categorical_crossentropy(
            labels, y_pred, from_logits=True))


def test_fit_consumes_batches_and_logs_skips(tmp_path):
    samples, expected = good_and_bad_samples()
    ds = data.from_csv(write_csv(tmp_path, samples, "\t"), hash_tokenizer, 4,
                       image_size=SIZE, training=True, seed=0)
    model = TinyClip()
    model.compile(optimizer="adam")
    history = model.fit(ds, epochs=2, verbose=0, shuffle=False,
                        callbacks=[data.SkipCountLogger(ds.skip_counter)])
    assert np.isfinite(history.history["loss"]).all()
    skipped = sum(v for k, v in expected.items() if k != "ok")
    assert history.history["skipped_samples"] == [skipped, skipped]
    assert ds.skip_counter.num_passes == 2


def test_counter_is_single_use():
    counter = data.SkipCounter("mine")
    images = np.stack([random_image(0), random_image(1)])
    data.from_arrays(images, ["x", "y"], hash_tokenizer, 2, counter=counter)
    with pytest.raises(ValueError, match="fresh `SkipCounter`"):
        data.from_arrays(images, ["x", "y"], hash_tokenizer, 2, counter=counter)
    assert data_pipeline.REASONS[-2:] == ("decode_error", "batch_of_one")


def test_pretokenized_matches_tokenizer():
    captions = ["a red dog", "A red dog", "a red dog", b"\xff bad", "", "cat"]
    lookup = data.pretokenized(hash_tokenizer, captions)
    texts = tf.constant(["cat", "a red dog", "never seen"])
    expected = hash_tokenizer(texts).numpy()
    expected[2] = 0  # unknown captions map to zeros
    np.testing.assert_array_equal(lookup(texts), expected)
    images = np.stack([random_image(i) for i in range(6)])
    slow = data.from_arrays(images, captions, hash_tokenizer, 6, image_size=SIZE,
                            pretokenize=False)
    fast = data.from_arrays(images, captions, hash_tokenizer, 6, image_size=SIZE)
    a, b = next(iter(slow)), next(iter(fast))
    np.testing.assert_array_equal(a["token_ids"], b["token_ids"])


def test_training_arrays_augment_in_batches_as_encoded_images_do_one_by_one():
    # In-memory arrays take the batched transform, encoded images the
    # per-image one; with a whole-image crop both are the same resize, and
    # one seed gives both the same shuffle.
    images = np.stack([random_image(i, 40, 30) for i in range(10)])
    captions = [f"thing {i}" for i in range(10)]
    kwargs = dict(image_size=SIZE, training=True, seed=4, crop_scale=(1.0, 1.0),
                  crop_ratio=(0.75, 0.75), keep_captions=True)
    batched = list(data.from_arrays(images, captions, hash_tokenizer, 4, **kwargs))
    encoded = [encode(i, "PNG") for i in images]
    one_by_one = list(data.from_arrays(encoded, captions, hash_tokenizer, 4, **kwargs))
    assert [b["images"].shape[0] for b in batched] == [4, 4]  # the rest dropped
    for a, b in zip(batched, one_by_one, strict=True):
        np.testing.assert_array_equal(a["captions"], b["captions"])
        np.testing.assert_array_equal(a["token_ids"], b["token_ids"])
        np.testing.assert_allclose(a["images"], b["images"], atol=1e-4)
    counter = data.from_arrays(images, captions, hash_tokenizer, 4, **kwargs)
    list(counter)
    assert counter.skip_counter.last_pass()["ok"] == 10


def test_trim_token_ids_cuts_padding_only():
    rng = np.random.default_rng(0)
    ids = np.zeros((5, 12), np.int32)
    for row, n in enumerate([3, 7, 2, 5, 4]):
        ids[row, :n] = rng.integers(1, 50, n)
    ids[1, 3] = 0  # a real token with id 0 (OpenAI's "!") inside a caption
    for multiple, width in ((1, 7), (4, 8), (5, 10), (8, 8), (16, 12)):
        out = data_pipeline.trim_token_ids(tf.constant(ids), multiple).numpy()
        np.testing.assert_array_equal(out, ids[:, :width])
    assert data_pipeline.trim_token_ids(tf.constant(ids[:, :7]), 4).shape == (5, 7)


def test_token_multiple_trims_each_batch_and_training_matches_full_length():
    import keras_clip

    # Two long captions among short ones: some batches need more columns.
    animals = ["cat", "dog", "fox", "owl", "bee", "ant", "elk", "yak"]
    words = [animals[i % 8] for i in range(14)] + [" ".join(animals)] * 2
    tokenizer = keras_clip.CLIPTokenizer.train(words, vocabulary_size=600, context_length=16)
    keras.utils.set_random_seed(0)
    model = keras_clip.CLIPModel.from_preset(
        "tiny-vit", vocabulary_size=tokenizer.vocabulary_size,
        eot_token_id=tokenizer.eot_token_id, context_length=16)

    images = np.random.default_rng(1).integers(0, 256, (16, 32, 32, 3), np.uint8)
    kwargs = dict(image_size=32, training=True, seed=2, crop_scale=(1.0, 1.0))
    full = data.from_arrays(images, words, tokenizer, 4, **kwargs)
    trimmed = data.from_arrays(images, words, tokenizer, 4, token_multiple=4, **kwargs)
    widths = []
    for a, b in zip(full, trimmed, strict=True):
        width = b["token_ids"].shape[1]
        widths.append(width)
        np.testing.assert_array_equal(b["token_ids"], a["token_ids"][:, :width])
        assert width % 4 == 0 and not a["token_ids"].numpy()[:, width:].any()
        np.testing.assert_array_equal(a["images"], b["images"])
    assert len(set(widths)) > 1, widths  # the batches differ in length
    # The same training steps either way: the cut columns are padding.
    clone = keras_clip.CLIPModel.from_preset(
        "tiny-vit", vocabulary_size=tokenizer.vocabulary_size,
        eot_token_id=tokenizer.eot_token_id, context_length=16)
    clone.set_weights(model.get_weights())
    for m, ds in ((model, full), (clone, trimmed)):
        m.compile(optimizer=keras.optimizers.SGD(0.5))
        m.fit(ds, epochs=1, verbose=0)
    for a, b in zip(model.get_weights(), clone.get_weights()):
        np.testing.assert_allclose(a, b, atol=2e-5)
    with pytest.raises(ValueError, match="token_multiple"):
        data.from_arrays(images, words, tokenizer, 4, token_multiple=0)


def test_sources_take_the_model_s_settings(tmp_path):
    # `model=` gives the pipeline the model's tokenizer, image size and
    # normalisation; the same batches as passing them by hand, and images
    # normalised with a model's own statistics (NumPy reference from the
    # OpenAI-normalised pixels), on every source.
    import keras_clip

    captions = ["a red square", "a blue disc", "two green dots", "one big star"] * 2
    tok = keras_clip.CLIPTokenizer.train(captions * 3, vocabulary_size=600, context_length=16)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.5, 0.125)
    model = keras_clip.CLIPModel.from_preset(
        "tiny-vit", tokenizer=tok, vocabulary_size=tok.vocabulary_size,
        image_mean=mean, image_std=std)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 40, 36, 3), dtype=np.uint8)
    def stack(ds):
        batches = list(ds)
        return {k: np.concatenate([np.asarray(b[k]) for b in batches]) for k in batches[0]}

    by_hand = stack(data.from_arrays(images, captions, tok, 4, image_size=32))
    with_model = stack(data.from_arrays(images, captions, batch_size=4, model=model))
    np.testing.assert_array_equal(with_model["token_ids"], by_hand["token_ids"])
    openai_mean = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
    openai_std = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
    pixels = by_hand["images"] * openai_std + openai_mean
    np.testing.assert_allclose(with_model["images"], (pixels - mean) / np.array(std), atol=1e-5)
    # The CSV source too.
    samples = {f"i{i}": (encode(images[i], "PNG"), captions[i].encode()) for i in range(8)}
    csv_path = write_csv(tmp_path, samples)
    from_csv = stack(data.from_csv(csv_path, batch_size=4, model=model))
    np.testing.assert_allclose(from_csv["images"], with_model["images"], atol=1e-5)
    # Contradictions name both sides.
    with pytest.raises(ValueError, match="image_size=64.*32"):
        data.from_arrays(images, captions, batch_size=4, model=model, image_size=64)
    other = keras_clip.CLIPTokenizer.train(captions * 3, vocabulary_size=600, context_length=12)
    with pytest.raises(ValueError, match="context length 12.*16"):
        data.from_arrays(images, captions, other, 4, model=model)
    bare = keras_clip.CLIPModel.from_preset("tiny-vit")
    with pytest.raises(ValueError, match="no tokenizer"):
        data.from_arrays(images, captions, batch_size=4, model=bare)
