"""
Title: Evaluating CLIP embeddings: retrieval recall@K and a linear probe
Author: keras_clip contributors
Date created: 2026/12/06
Last modified: 2026/12/06
Description: Retrieval recall@K and a linear probe on CLIP's frozen embeddings.
Accelerator: None (CPU)
"""

"""
## Introduction

Besides zero-shot classification, the CLIP paper judges a model's
embeddings in two more ways (Radford et al. 2021, sections 3.2 and
appendix A.3):

- **retrieval**: given an image, is its caption among the K captions
  closest to it (image -> text recall@K)? And given a caption, is its
  image among the K closest images (text -> image)?
- **linear probe**: the image tower is frozen, and a multinomial logistic
  regression is fit on its embeddings for a labelled task; its test
  accuracy measures how much of the task the embeddings make linear.

`keras_clip.retrieval` and `keras_clip.linear_probe` take arrays of
embeddings (the model only computes them), so both work the same for a
model trained here, a loaded `.keras` file or a converted checkpoint.

This example trains a tiny CLIP on Twemoji for a few epochs, then measures
retrieval on emoji of concepts held out from training, and fits a linear
probe that reads the skin tone (5 classes) of person emoji from their image
embeddings, tested on held-out concepts too. It compares both with an
untrained model of the same shape.

It runs on every Keras backend (`KERAS_BACKEND`). With
`KERAS_CLIP_EXAMPLE_SMALL=1` (how CI runs it) it trains for 3 epochs;
without it, for 20.
"""

"""
## Setup
"""

import os
import re

import keras
import numpy as np

import keras_clip
from keras_clip.data.datasets import load_twemoji
from keras_clip.evaluation import zero_shot

SMALL = os.environ.get("KERAS_CLIP_EXAMPLE_SMALL") == "1"
EPOCHS = 3 if SMALL else 20
BATCH_SIZE = 64

keras.utils.set_random_seed(0)
print(f"Keras {keras.__version__}, backend {keras.backend.backend()}")

"""
## Data and a briefly trained model

The Twemoji pairs, with about 10% of the concepts (and all their skin-tone
variants) held out. The model trains on NumPy arrays: `model.preprocess`
normalises the images, the tokenizer turns captions into ids, and `fit`
batches and shuffles them.
"""

train = load_twemoji(32, split="train", seed=0)
heldout = load_twemoji(32, split="heldout", seed=0)
tokenizer = keras_clip.CLIPTokenizer.train(
    train.captions, vocabulary_size=1024, context_length=16
)


def new_model():
    return keras_clip.CLIPModel.from_preset(
        "tiny-vit", tokenizer=tokenizer, vocabulary_size=tokenizer.vocabulary_size
    )


untrained = new_model()
model = new_model()
model.compile(
    optimizer=keras_clip.make_optimizer(
        model,
        total_steps=EPOCHS * (len(train) // BATCH_SIZE + 1),
        learning_rate=2e-3,
        warmup_steps=len(train) // BATCH_SIZE,
        weight_decay=0.1,
    )
)
history = model.fit(
    {"images": model.preprocess(train.images), "token_ids": tokenizer(train.captions)},
    batch_size=BATCH_SIZE,
    epochs=EPOCHS,
    verbose=2,
)
assert np.all(np.isfinite(history.history["loss"])), history.history["loss"]

"""
## A labelled set: skin tones

About 1,650 emoji are people or body parts in one of five skin tones, named
in the caption ("waving hand medium-dark skin tone"). The tone is the label.
The probe trains on the training split's images and is tested on the
held-out concepts: a gesture or job it never saw, in a tone it knows.
"""

TONES = ("light", "medium-light", "medium", "medium-dark", "dark")
TONE = re.compile(r"\b(medium-light|medium-dark|light|medium|dark) skin tone\b")


def with_one_tone(pairs):
    """Indices of the captions naming exactly one skin tone, and the tones."""
    index, labels = [], []
    for i, caption in enumerate(pairs.captions):
        found = TONE.findall(caption)
        if len(found) == 1:
            index.append(i)
            labels.append(TONES.index(found[0]))
    return np.asarray(index), np.asarray(labels)


probe_train_index, probe_train_labels = with_one_tone(train)
probe_test_index, probe_test_labels = with_one_tone(heldout)
print(
    f"Skin-tone set: {len(probe_train_labels)} training and "
    f"{len(probe_test_labels)} test images, {len(TONES)} classes"
)

"""
## Embeddings

Both evaluations take embeddings, not models: `encode_images` and
`encode_texts` return unit vectors as NumPy arrays, computed in batches.
Each model embeds the held-out images and captions (for retrieval; the
probe's test images are among them) and the probe's training images, in
one call per tower.
"""

heldout_ids = tokenizer(heldout.captions)
all_images = np.concatenate([heldout.images, train.images[probe_train_index]])
embeddings = {}
for name, m in (("untrained", untrained), ("trained", model)):
    images = zero_shot.encode_images(m, all_images, batch_size=len(all_images))
    texts = zero_shot.encode_texts(m, heldout_ids, batch_size=len(heldout_ids))
    embeddings[name] = (images[: len(heldout)], texts, images[len(heldout) :])
    print(f"{name}: image embeddings {images.shape}, text embeddings {texts.shape}")

"""
## Retrieval

`retrieval_metrics` ranks all captions for each image and all images for
each caption by cosine similarity, and reports recall@K in both directions
with the mean and median rank of the right answer. With N pairs, chance
recall@K is K / N. Here caption i describes image i; when images have
several captions (five each in MSCOCO), `text_to_image` gives each
caption's image. (`evaluate_retrieval` does the embedding and the ranking
in one call.)
"""

ks = (1, 5, 10)
n = len(heldout)
results = {
    name: keras_clip.retrieval.retrieval_metrics(images, texts, ks=ks)
    for name, (images, texts, _) in embeddings.items()
}
print(f"Retrieval among {n} held-out pairs (chance R@K = K/{n}):")
print(
    f"{'model':10} "
    + " ".join(f"{d}_R@{k:<3}" for d in ("i2t", "t2i") for k in ks)
    + "  median ranks"
)
for name, metrics in results.items():
    recalls = " ".join(
        f"{metrics[f'{d}_r{k}']:8.3f}" for d in ("i2t", "t2i") for k in ks
    )
    print(
        f"{name:10} {recalls}  {metrics['i2t_median_rank']:.0f} / "
        f"{metrics['t2i_median_rank']:.0f}"
    )
print(f"{'chance':10} " + " ".join(f"{k / n:8.3f}" for _ in range(2) for k in ks))

for k in ks:
    for direction in ("i2t", "t2i"):
        assert results["trained"][f"{direction}_r{k}"] > k / n, (
            f"{direction} recall@{k} of the trained model is not above chance"
        )

"""
## The linear probe

`linear_probe` follows the paper's protocol: it splits a validation set off
the training features, sweeps the L2 penalty of the logistic regression
over a log scale, refits the best one on all training features, and scores
the test features. The small setting sweeps 4 penalties instead of 13 and
stops each fit after 200 L-BFGS iterations instead of 1,000 (the weakest
penalties converge slowly).
"""

l2_values = (1e-6, 1e-4, 1e-2, 1.0) if SMALL else None
max_iter = 200 if SMALL else 1000
chance = 1 / len(TONES)
accuracies = {}
for name, (heldout_images, _, probe_train_features) in embeddings.items():
    probe = keras_clip.linear_probe.linear_probe(
        probe_train_features,
        probe_train_labels,
        heldout_images[probe_test_index],
        probe_test_labels,
        l2_values=l2_values,
        max_iter=max_iter,
        seed=0,
    )
    accuracies[name] = probe["test_accuracy"]
    print(
        f"{name:10} linear-probe test accuracy {probe['test_accuracy']:.3f} "
        f"(L2 {probe['l2']:.0e}; chance {chance:.2f})"
    )
assert accuracies["trained"] > chance, "The linear probe is not above chance."

"""
## Conclusion

Retrieval and linear probes need only embeddings: compute them once with
`encode_images` / `encode_texts` (or let `evaluate_retrieval` do it) and the
metrics are plain NumPy. During training, `keras_clip.RetrievalEvaluation`
and `keras_clip.ZeroShotEvaluation` run the same measurements as `fit`
callbacks.
"""
