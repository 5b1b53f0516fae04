"""The demo against a conv net + bag-of-words baseline, same split, same budget.

Trains, in one run on this machine:

1. the baseline the demo must beat (docs/demo.md, "The baseline"): a plain conv net
   image tower and a bag-of-words text tower (mean of word embeddings, word
   vocabulary from the training captions), the same contrastive loss and
   learnable temperature, AdamW 2e-3, wd 0.1, warm-up + cosine, batch 128,
   random-resized crop + rotation, for `--minutes` of training; on the
   demo's captions (the names, and the aliases as often as the demo draws
   them: `--alias-probability`);
2. the demo itself (`keras_clip_app.demo.run` with its defaults), for the same
   time.

Both spread their cosine decay over the time budget by default
(`TimeBudgetCosineDecay`), so each trains as many epochs as the machine
allows and ends its schedule. The script then prints one Markdown row per
model: zero-shot top-1 / top-5 on the
held-out Twemoji concepts and on the unseen Noto style (when the font is
installed), with the training time.

    KERAS_BACKEND=tensorflow python benchmarks/demo_baseline_benchmark.py [--minutes 9.5] [--seed 0]
"""

import argparse
import json
import math
import os
import platform
import re
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_THREEFRY_PARTITIONABLE", "false")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers, ops  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from keras_clip.data import augment
from keras_clip import data
from keras_clip_app import demo
from keras_clip.evaluation import zero_shot  # noqa: E402
from keras_clip.evaluation.callbacks import TimeBudgetCosineDecay  # noqa: E402

# As the demo does before any JAX computation (nothing is set at import).
__import__("keras_clip").backends.tune_xla_cpu()
from keras_clip.data.datasets import emoji  # noqa: E402
from keras_clip.losses import clip_logits, contrastive_loss  # noqa: E402
from keras_clip.optimizers import WarmupCosineDecay  # noqa: E402

WORD = re.compile(r"[a-z0-9]+")


class WordVocabulary:
    """Lower-cased words of the training captions; 0 = padding, 1 = unknown."""

    def __init__(self, captions, length=16):
        words = sorted({w for c in captions for w in WORD.findall(c.lower())})
        self.index = {w: i + 2 for i, w in enumerate(words)}
        self.length = length

    @property
    def size(self):
        return len(self.index) + 2

    def __call__(self, captions):
        out = np.zeros((len(captions), self.length), np.int32)
        for row, caption in enumerate(captions):
            ids = [self.index.get(w, 1) for w in WORD.findall(caption.lower())][: self.length]
            out[row, : len(ids)] = ids
        return out


class BagOfWordsCLIP(keras.Model):
    """Conv image tower + mean-of-word-embeddings text tower, CLIP loss."""

    def __init__(self, vocabulary_size, embed_dim=128, widths=(32, 64, 128, 256), **kwargs):
        super().__init__(**kwargs)
        blocks = []
        for width in widths:
            blocks += [
                layers.Conv2D(width, 3, padding="same", use_bias=False),
                layers.BatchNormalization(),
                layers.ReLU(),
                layers.Conv2D(width, 3, padding="same", use_bias=False),
                layers.BatchNormalization(),
                layers.ReLU(),
                layers.MaxPooling2D(),
            ]
        self.image_tower = keras.Sequential(
            blocks + [layers.GlobalAveragePooling2D(), layers.Dense(embed_dim, use_bias=False)]
        )
        self.embedding = layers.Embedding(vocabulary_size, 256)
        self.text_projection = layers.Dense(embed_dim, use_bias=False)
        self.logit_scale = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(math.log(1 / 0.07)), name="logit_scale"
        )
        self.i2t = keras.metrics.Mean(name="i2t_accuracy")

    def encode_image(self, images, training=False):
        return self.image_tower(images, training=training)

    def encode_text(self, ids):
        mask = ops.cast(ops.not_equal(ids, 0) & ops.not_equal(ids, 1), "float32")[..., None]
        summed = ops.sum(self.embedding(ids) * mask, axis=1)
        return self.text_projection(summed / ops.maximum(ops.sum(mask, axis=1), 1.0))

    def call(self, inputs, training=False):
        return clip_logits(
            self.encode_image(inputs["images"], training), self.encode_text(inputs["token_ids"]),
            self.logit_scale, math.log(100.0),
        )

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss, i2t, _ = contrastive_loss(y_pred)
        self.i2t.update_state(i2t)
        return loss


def embed_images(model, images, size, batch_size=256):
    out = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        x = np.stack([augment.eval_transform(image, size).numpy() for image in chunk])
        out.append(ops.convert_to_numpy(model.encode_image(x)))
    emb = np.concatenate(out).astype("float32")
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def scores(model, vocab, pairs, size):
    img = embed_images(model, pairs.images, size)
    txt = ops.convert_to_numpy(model.encode_text(vocab(pairs.captions))).astype("float32")
    txt = txt / np.maximum(np.linalg.norm(txt, axis=1, keepdims=True), 1e-12)
    logits = zero_shot.zero_shot_logits(img, txt, 1.0)
    labels = np.arange(len(pairs.captions))
    return {
        "top1": zero_shot.accuracy(logits, labels, 1),
        "top5": zero_shot.accuracy(logits, labels, 5),
        "classes": len(pairs.captions),
    }


def run_baseline(minutes, image_size, epochs, seed=0, batch_size=128, alias_probability=0.0):
    keras.utils.set_random_seed(seed)
    train = emoji.load_twemoji(image_size=image_size, split="train", seed=seed)
    heldout = emoji.load_twemoji(image_size=image_size, split="heldout", seed=seed)
    # The demo's captions: the names, or each name and its aliases.
    captions, texts, draw = demo.training_captions(train, alias_probability)
    vocab = WordVocabulary(texts)
    steps = len(train) // batch_size
    model = BagOfWordsCLIP(vocab.size)
    if epochs is None:  # as the demo: the cosine spread over the time budget
        rate, max_epochs = 2e-3, demo.MAX_EPOCHS
        schedule = TimeBudgetCosineDecay(60 * minutes, 2e-3, warmup_steps=50)
    else:
        rate, max_epochs = WarmupCosineDecay(2e-3, total_steps=epochs * steps, warmup_steps=50), epochs
        schedule = demo.TimeBudget(60 * minutes)
    optimizer = keras.optimizers.AdamW(rate, weight_decay=0.1)
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta", "logit_scale"])
    model.compile(optimizer=optimizer)
    # The demo's own pipeline (same augmentation), with word ids as tokens.
    ds = data.from_arrays(
        train.images, captions, lambda t: _word_ids(vocab, t), batch_size,
        image_size=image_size, training=True, crop_scale=(0.8, 1.0), rotation=10.0, seed=seed,
        **draw,
    )
    start = time.time()
    history = model.fit(ds.repeat(), steps_per_epoch=steps, shuffle=False, epochs=max_epochs,
                        verbose=2, callbacks=[schedule])
    seconds = time.time() - start
    out = {"train_seconds": seconds, "epochs": len(history.history["loss"]),
           "heldout": scores(model, vocab, heldout, image_size)}
    try:
        noto = emoji.load_noto_emoji(image_size=image_size, split="all", seed=seed)
        out["noto"] = scores(model, vocab, noto, image_size)
    except FileNotFoundError:
        out["noto"] = None
    return out


def _word_ids(vocab, captions):
    import tensorflow as tf

    ids = tf.numpy_function(lambda c: vocab([s.decode() for s in c]), [captions], tf.int32)
    return tf.ensure_shape(ids, [None, vocab.length])


def row(name, m):
    def cell(x):
        return "not run" if x is None else f"{x['top1']:.3f} / {x['top5']:.3f} ({x['classes']:,}-way)"

    return (f"| {name} | {m['epochs']} | {m['train_seconds'] / 60:.1f} | {cell(m['heldout'])} "
            f"| {cell(m['noto'])} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=9.5,
                        help="training time of each model (default: the demo's 9.5)")
    parser.add_argument("--baseline-epochs", type=int, default=None,
                        help="a fixed schedule of this many epochs (17 fit 8 min on 2 cores, TF); "
                        "default: the cosine over the time budget, as the demo")
    parser.add_argument("--baseline-image-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of both runs, and of the concept hold-out (so of the held-out set)")
    parser.add_argument("--alias-probability", type=float, default=0.0,
                        help="both models: how often a training emoji with aliases is paired with "
                        "one instead of its name (default: the demo's 0, names only)")
    parser.add_argument("--skip-demo", action="store_true")
    args = parser.parse_args()
    base = run_baseline(args.minutes, args.baseline_image_size, args.baseline_epochs, seed=args.seed,
                        alias_probability=args.alias_probability)
    rows = [("conv + bag-of-words baseline", base)]
    if not args.skip_demo:
        m = demo.run(output_dir="outputs/benchmark_demo", minutes=args.minutes, seed=args.seed,
                     alias_probability=args.alias_probability)
        rows.append((f"keras_clip demo ({m.get('preset', 'demo')})", m))
    print()
    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"backend {keras.backend.backend()}; seed {args.seed}; training cap {args.minutes:g} min each; "
          f"alias probability {args.alias_probability:g} for both; "
          "held-out = Twemoji concepts never trained on, Noto = every concept in the unseen style.")
    print()
    print("| model | epochs | train min | held-out top-1 / top-5 | Noto top-1 / top-5 |")
    print("|---|---:|---:|---:|---:|")
    for name, m in rows:
        print(row(name, m))
    os.makedirs("outputs", exist_ok=True)
    with open("outputs/demo_baseline_benchmark.json", "w") as f:
        json.dump({name: m for name, m in rows}, f, indent=2, default=float)


if __name__ == "__main__":
    main()
