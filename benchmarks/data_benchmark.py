"""Input-pipeline throughput: pairs/s for decode + augment + tokenize.

Builds a synthetic set of JPEGs (sizes like web images) as a CSV folder,
WebDataset tars, a TFRecord file and in-memory arrays, plus the Twemoji set,
then times full passes of each `keras_clip.data` pipeline and prints a
Markdown table of medians. A bare `tf.data` pipeline with the same decode and
transform, but without checks or skip counting, gives the overhead of the
accounting; in-memory arrays are also timed image by image (the per-image
transform, as before `from_arrays` augmented whole batches).

Usage:
    python benchmarks/data_benchmark.py [--pairs 256] [--repeats 3]
        [--tokenizer clip|hash]
"""

import argparse
import io
import os
import platform
import statistics
import tarfile
import tempfile
import time

import numpy as np
import tensorflow as tf
from PIL import Image

from keras_clip.data import augment
from keras_clip import data


def hash_tokenizer(captions, length=77):
    """Stand-in tokenizer: hashed words, SOT/EOT, padded to `length`."""
    words = tf.strings.split(tf.strings.lower(captions))
    ids = tf.strings.to_hash_bucket_fast(words, 49000) + 1
    sot = tf.ones_like(ids[..., :1]) * 49406
    eot = tf.ones_like(ids[..., :1]) * 49407
    ids = tf.concat([sot, ids[..., : length - 2], eot], axis=-1)
    return ids.to_tensor(shape=[None, length])


def get_tokenizer(kind):
    if kind == "hash":
        return hash_tokenizer, "hash stand-in"
    try:
        from keras_clip.text.tokenizer import CLIPTokenizer

        return CLIPTokenizer.from_openai_vocab(), "CLIPTokenizer (OpenAI BPE)"
    except Exception as error:  # the tokenizer may not be there yet
        return hash_tokenizer, f"hash stand-in ({type(error).__name__})"


def image_by_image(pixels, captions, tokenizer, batch_size, size, **options):
    """`from_arrays`'s pipeline as it was before it augmented whole batches:
    the same stages, but the arrays' shape hidden from `build_pipeline`, so
    it maps `augment.train_transform` over single images (no shuffle)."""
    from keras_clip.data import pipeline as data_pipeline

    raw = tf.data.Dataset.from_tensor_slices(
        (pixels, [c.encode() for c in captions], np.zeros(len(captions), np.int32)))

    def hide_shape(image, caption, status):
        shape = tf.shape(image) + 0 * status  # not a constant: unknown statically
        return tf.reshape(image, shape), caption, status

    raw = raw.map(hide_shape)
    assert not raw.element_spec[0].shape.is_fully_defined()
    return data_pipeline.build_pipeline(raw, "array", tokenizer, batch_size,
                                        image_size=size, **options)


def make_images(n, rng):
    images = []
    for i in range(n):
        h, w = rng.integers(240, 520, size=2)
        small = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((int(w), int(h)), Image.BILINEAR)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        images.append(buffer.getvalue())
    return images


def write_sources(folder, images, captions):
    os.makedirs(os.path.join(folder, "img"))
    rows = ["filepath\ttitle"]
    shards = [tarfile.open(os.path.join(folder, f"{i:05d}.tar"), "w") for i in range(4)]
    for i, (image, caption) in enumerate(zip(images, captions)):
        with open(os.path.join(folder, "img", f"{i}.jpg"), "wb") as f:
            f.write(image)
        rows.append(f"img/{i}.jpg\t{caption}")
        for suffix, payload in ((".jpg", image), (".txt", caption.encode())):
            info = tarfile.TarInfo(f"{i:08d}{suffix}")
            info.size = len(payload)
            shards[i % 4].addfile(info, io.BytesIO(payload))
    for shard in shards:
        shard.close()
    with open(os.path.join(folder, "pairs.tsv"), "w") as f:
        f.write("\n".join(rows) + "\n")
    data.write_tfrecord(os.path.join(folder, "pairs.tfrecord"), images, captions)


def plain_pipeline(folder, tokenizer, batch_size, size):
    """The same work without checks, skip counting or look-ahead."""
    lines = open(os.path.join(folder, "pairs.tsv")).read().split("\n")[1:-1]
    paths = [os.path.join(folder, line.split("\t")[0]) for line in lines]
    captions = [line.split("\t")[1] for line in lines]

    def load(path, caption, seed):
        image = data.decode_image(tf.io.read_file(path))
        return augment.train_transform(image, size, seed=seed), caption

    ds = tf.data.Dataset.from_tensor_slices((paths, captions)).shuffle(len(paths))
    seeds = tf.data.Dataset.random(seed=0).batch(2)
    ds = tf.data.Dataset.zip(ds, seeds).map(
        lambda pc, s: load(pc[0], pc[1], s), num_parallel_calls=tf.data.AUTOTUNE
    )
    ds = ds.batch(batch_size, drop_remainder=True)
    ds = ds.map(lambda x, c: {"images": x, "token_ids": tokenizer(c)},
                num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def time_passes(ds, repeats):
    """Pairs per wall second (median, min, max) and per CPU second (median).

    CPU time (all threads of this process) is steadier than wall time when
    other processes share the cores.
    """
    count = sum(int(b["images"].shape[0]) for b in ds)  # warm-up pass
    rates, cpu_rates = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        n = sum(int(b["images"].shape[0]) for b in ds)
        rates.append(n / (time.perf_counter() - start))
        cpu_rates.append(n / (time.process_time() - cpu_start))
    assert n == count
    return (statistics.median(rates), min(rates), max(rates),
            statistics.median(cpu_rates), n)


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if "model name" in l)
    except (OSError, StopIteration):
        pass
    load = ""
    if hasattr(os, "getloadavg"):
        load = ", 1-min load average %.1f at start" % os.getloadavg()[0]
    return (f"{cpu}, {os.cpu_count()} cores{load}, Python "
            f"{platform.python_version()}, TensorFlow {tf.__version__}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokenizer", choices=["clip", "hash"], default="clip",
                        help="keras_clip's CLIPTokenizer, or a cheap hashing stand-in")
    args = parser.parse_args()
    tf.get_logger().setLevel("ERROR")
    machine_line = machine()  # the load average before we add to it
    rng = np.random.default_rng(0)
    tokenizer, tokenizer_name = get_tokenizer(args.tokenizer)
    words = ["a", "photo", "of", "the", "red", "dog", "on", "grass", "near", "city"]
    captions = [" ".join(rng.choice(words, size=rng.integers(5, 15)))
                for _ in range(args.pairs)]
    images = make_images(args.pairs, rng)
    bs = args.batch_size
    common = dict(training=True, seed=0)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        write_sources(folder, images, captions)
        pixels = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")
                                      .resize((256, 256))) for b in images])
        cases = [
            ("bare tf.data, CSV files (no checks)", "JPEG ~240-520 px", 224,
             lambda: plain_pipeline(folder, tokenizer, bs, 224)),
            ("from_csv", "JPEG ~240-520 px", 224, lambda: data.from_csv(
                os.path.join(folder, "pairs.tsv"), tokenizer, bs, image_size=224,
                **common)),
            ("from_webdataset (4 tars)", "JPEG ~240-520 px", 224,
             lambda: data.from_webdataset(os.path.join(folder, "{00000..00003}.tar"),
                                          tokenizer, bs, image_size=224, **common)),
            ("from_tfrecord", "JPEG ~240-520 px", 224, lambda: data.from_tfrecord(
                os.path.join(folder, "pairs.tfrecord"), tokenizer, bs,
                image_size=224, **common)),
            ("from_arrays (uint8): whole batches augmented", "256x256 arrays", 224,
             lambda: data.from_arrays(pixels, captions, tokenizer, bs, image_size=224,
                                      **common)),
            ("same, image by image", "256x256 arrays", 224,
             lambda: image_by_image(pixels, captions, tokenizer, bs, 224, **common)),
        ]
        try:
            from keras_clip.data.datasets import emoji

            twemoji = emoji.load_twemoji(image_size=32, split="train")
            demo = dict(training=True, seed=0, crop_scale=(0.8, 1.0), rotation=10.0,
                        downscale=0.5)
            cases += [
                ("Twemoji (from_arrays, pretokenized), the demo's augmentation: "
                 "whole batches", "32x32 arrays", 32,
                 lambda: data.from_arrays(twemoji.images, twemoji.captions, tokenizer,
                                          128, image_size=32, **demo)),
                ("same, image by image", "32x32 arrays", 32,
                 lambda: image_by_image(twemoji.images, twemoji.captions, tokenizer,
                                        128, 32, **demo)),
            ]
        except ImportError:
            pass
        tokens_only = (
            tf.data.Dataset.from_tensor_slices(captions).batch(bs)
            .map(lambda c: {"images": tf.zeros([tf.shape(c)[0], 1]),
                            "token_ids": tokenizer(c)},
                 num_parallel_calls=tf.data.AUTOTUNE)
        )
        cases.insert(0, ("tokenizer alone (captions/s)", "captions", "-",
                         lambda: tokens_only))
        for name, inputs, size, build in cases:
            median, low, high, per_cpu, n = time_passes(build(), args.repeats)
            rows.append((name, inputs, size, n, median, low, high, per_cpu))
            print(f"  {name}: {median:.0f} pairs/s", flush=True)
    print(f"\nMachine: {machine_line}; tokenizer: {tokenizer_name}; batch {bs} "
          f"(Twemoji 128); train transform; median of {args.repeats} passes "
          "after one warm-up pass.\n")
    print("| pipeline | inputs | out px | pairs/pass | pairs/s (median) | min-max "
          "| pairs per CPU-s |")
    print("|---|---|---|---|---|---|---|")
    for name, inputs, size, n, median, low, high, per_cpu in rows:
        print(f"| {name} | {inputs} | {size} | {n} | {median:.0f} | "
              f"{low:.0f}-{high:.0f} | {per_cpu:.0f} |")


if __name__ == "__main__":
    main()
