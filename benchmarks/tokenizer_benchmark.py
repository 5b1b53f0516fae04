"""Tokenizer throughput: keras_clip vs open_clip vs keras-hub (texts/s).

Prints a Markdown table: eager (Python lists in, arrays out) and inside a
`tf.data` map (batched string tensors), median of several timed runs after
a warm-up run, with the machine and thread settings. Every side gets the
same captions and the same thread limits. One more keras_clip row runs the
map on captions of which a share (`--mojibake`) went through the wrong
codec: the rows that keras_clip cleans in Python inside the graph.

    python benchmarks/tokenizer_benchmark.py [--texts 4000] [--repeats 5]
"""

import argparse
import os
import platform
import random
import statistics
import sys
import time
import types

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# PyPI's CUDA torchvision beside CPU torch (docs/testing.md).
sys.modules.setdefault(
    "torchvision._meta_registrations",
    types.ModuleType("torchvision._meta_registrations"),
)


def make_captions(count, seed=0):
    rng = random.Random(seed)
    adjectives = ["red", "small", "happy", "fluffy", "old", "shiny", "tiny",
                  "wooden", "neon", "vintage", "smiling", "wet"]
    nouns = ["cat", "dog", "car", "bicycle", "mountain", "pizza", "robot",
             "teapot", "guitar", "owl", "sandwich", "skyscraper"]
    places = ["beach", "kitchen", "forest", "city at night", "snow", "desert"]
    extras = ["", "", " in 2024", " (photo #12)", " &amp; friends",
              " — “quoted”", " 😀", " at 3.5km/h", " Straße", " 東京"]
    return [
        f"A photo of a {rng.choice(adjectives)} {rng.choice(nouns)} on the "
        f"{rng.choice(places)}{rng.choice(extras)}"
        for _ in range(count)
    ]


def with_mojibake(captions, share):
    """Every `1 / share`-th caption as UTF-8 read as Windows-1252."""
    step = max(1, round(1 / share)) if share > 0 else len(captions) + 1
    return [
        (c + " café “quoted”").encode("utf-8").decode("cp1252", "replace")
        if i % step == 0 else c
        for i, c in enumerate(captions)
    ]


def median_rate(fn, count, repeats):
    fn()  # warm-up: tracing, caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return count / statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--texts", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--mojibake", type=float, default=0.05,
                        help="share of mojibake captions in the last row")
    args = parser.parse_args()

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    import keras_hub
    import open_clip

    from keras_clip.text.tokenizer import CLIPTokenizer

    captions = make_captions(args.texts)
    mojibake = with_mojibake(captions, args.mojibake)
    ours = CLIPTokenizer.from_openai_vocab()
    reference = open_clip.get_tokenizer("ViT-B-32")
    vocab = {t: i for i, t in enumerate(ours.vocabulary)}
    # keras-hub spells the special tokens the OpenAI way.
    vocab["<|startoftext|>"] = vocab.pop("<start_of_text>")
    vocab["<|endoftext|>"] = vocab.pop("<end_of_text>")
    hub = keras_hub.tokenizers.CLIPTokenizer(
        vocabulary=vocab, merges=ours.merges
    )

    def hub_eager():
        return hub.tokenize(captions)

    steps = -(-len(captions) // args.batch_size)

    def pipeline(fn, texts=captions):
        # One long-lived iterator (as with `repeat()` + `steps_per_epoch`):
        # a new iterator re-instantiates the map function (see latency).
        ds = tf.data.Dataset.from_tensor_slices(texts).repeat()
        ds = ds.batch(args.batch_size).map(
            fn, num_parallel_calls=args.threads
        ).prefetch(1)
        iterator = iter(ds)
        return lambda: [next(iterator) for _ in range(steps)]

    def first_batch_latency(fn):
        ds = tf.data.Dataset.from_tensor_slices(captions)
        ds = ds.batch(args.batch_size).map(fn)
        next(iter(ds))  # trace
        start = time.perf_counter()
        next(iter(ds))
        return time.perf_counter() - start

    def hub_graph(texts):
        ids = hub(texts)[:, : 77 - 2]  # ragged; frame + pad like CLIP
        ids = tf.concat(
            [tf.fill([tf.shape(texts)[0], 1], 49406), ids,
             tf.fill([tf.shape(texts)[0], 1], 49407)], axis=1,
        )
        return ids.to_tensor(0, shape=[None, 77])

    rows = [
        ("keras_clip CLIPTokenizer", "eager (list -> NumPy)",
         lambda: ours(captions)),
        ("open_clip SimpleTokenizer", "eager (list -> torch)",
         lambda: reference(captions)),
        ("keras-hub CLIPTokenizer", "eager (list -> ragged)", hub_eager),
        ("keras_clip CLIPTokenizer", "tf.data map, batch "
         f"{args.batch_size}", pipeline(ours)),
        ("keras-hub CLIPTokenizer", "tf.data map, batch "
         f"{args.batch_size}", pipeline(hub_graph)),
        ("keras_clip CLIPTokenizer", "tf.data map, batch "
         f"{args.batch_size}, {args.mojibake:.0%} mojibake",
         pipeline(ours, mojibake)),
    ]
    ours_ids = ours(captions)
    assert (ours_ids == reference(captions).numpy()).all()
    graph_ids = ours(tf.constant(mojibake)).numpy()
    assert (graph_ids == reference(mojibake).numpy()).all()

    print(f"Machine: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, Python {platform.python_version()}, "
          f"TF {tf.__version__}, torch {torch.__version__}, "
          f"keras-hub {keras_hub.__version__}, "
          f"open_clip {open_clip.__version__}; {args.threads} thread(s) "
          f"each; {args.texts} captions; median of {args.repeats} runs "
          "after one warm-up.\n")
    print("| tokenizer | mode | texts/s |")
    print("|---|---|---:|")
    for name, mode, fn in rows:
        rate = median_rate(fn, len(captions), args.repeats)
        print(f"| {name} | {mode} | {rate:,.0f} |", flush=True)
    print("\nFirst batch from a new iterator over an already-traced map "
          "(function instantiation): "
          f"keras_clip {first_batch_latency(ours):.2f} s, "
          f"keras-hub {first_batch_latency(hub_graph):.2f} s.")


if __name__ == "__main__":
    main()
