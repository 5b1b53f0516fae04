"""
Title: Train CLIP on your own images and captions from a CSV file
Author: keras_clip contributors
Date created: 2026/12/06
Last modified: 2026/12/06
Description: Train a CLIP on images and captions listed in a CSV file.
Accelerator: None (CPU)
"""

"""
## Introduction

The simplest way to bring your own data to `keras_clip` is a CSV (or TSV)
file with one row per image: a path and a caption. That is open_clip's
layout (`--csv-img-key filepath --csv-caption-key title`), so a file made
for open_clip works unchanged.

To be self-contained, this example first draws its own small data set with
Pillow: coloured shapes on a white background, captioned "a big red circle
at the top left", "a small blue square at the bottom right", and so on. It
then:

1. writes the PNG files and a CSV listing them (plus one row whose image is
   missing, as happens in real data);
2. learns a tokenizer from the captions;
3. builds the input pipeline with `keras_clip.data.from_csv`;
4. trains a tiny CLIP with `model.fit`, saves it to one `.keras` file and
   loads it back;
5. checks that the model tells colours and shapes apart on newly drawn
   images, by zero-shot classification with a prompt ensemble.

It runs on every Keras backend (`KERAS_BACKEND=tensorflow`, `jax` or
`torch`); the pipeline is `tf.data` on all of them. With
`KERAS_CLIP_EXAMPLE_SMALL=1` (how CI runs it) it uses 256 images and 10
epochs; without it 480 images and 30 epochs.
"""

"""
## Setup
"""

import csv
import os
import tempfile

import keras
import numpy as np
from PIL import Image
from PIL import ImageDraw

import keras_clip
from keras_clip.evaluation import zero_shot

SMALL = os.environ.get("KERAS_CLIP_EXAMPLE_SMALL") == "1"
NUM_IMAGES = 256 if SMALL else 480
EPOCHS = 10 if SMALL else 30
BATCH_SIZE = 32
IMAGE_SIZE = 32

keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)
print(f"Keras {keras.__version__}, backend {keras.backend.backend()}")

"""
## A small data set of drawn shapes

Each image is a white square of a random size (the pipeline resizes every
image to the model's size, so the files need not match it) with one shape:
one of 4 colours, 3 shapes, 2 sizes, in one of 4 corners. The caption says
all four, "a small blue triangle at the top right", so two images of a batch
rarely share a caption: the contrastive loss treats every other caption of
the batch as a wrong answer, and identical captions would be wrong answers
that no model can tell apart.
"""

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 160, 60),
    "blue": (30, 60, 220),
    "yellow": (235, 200, 20),
}
SHAPES = ("circle", "square", "triangle")
SIZES = ("big", "small")
CORNERS = ("top left", "top right", "bottom left", "bottom right")


def draw(colour, shape, size, corner, rng):
    """One RGB image of a shape in a corner, on white, as a PIL image."""
    canvas = int(rng.integers(48, 97))
    image = Image.new("RGB", (canvas, canvas), "white")
    half = canvas / 2
    side = half * (0.9 if size == "big" else 0.5)
    left = rng.uniform(0, half - side) + (half if "right" in corner else 0)
    top = rng.uniform(0, half - side) + (half if "bottom" in corner else 0)
    box = (left, top, left + side, top + side)
    pen = ImageDraw.Draw(image)
    if shape == "circle":
        pen.ellipse(box, fill=COLOURS[colour])
    elif shape == "square":
        pen.rectangle(box, fill=COLOURS[colour])
    else:
        pen.polygon(
            [(left + side / 2, top), (left, top + side), (left + side, top + side)],
            fill=COLOURS[colour],
        )
    return image


def random_drawing(rng):
    """A drawn image with its caption."""
    colour = str(rng.choice(list(COLOURS)))
    shape, size, corner = (str(rng.choice(v)) for v in (SHAPES, SIZES, CORNERS))
    return draw(
        colour, shape, size, corner, rng
    ), f"a {size} {colour} {shape} at the {corner}"


folder = tempfile.mkdtemp()
os.makedirs(os.path.join(folder, "images"))
rows = []
for i in range(NUM_IMAGES):
    image, caption = random_drawing(rng)
    filename = os.path.join("images", f"{i:04d}.png")
    image.save(os.path.join(folder, filename))
    rows.append((filename, caption))

"""
## The CSV file

One header row names the columns; paths are relative to the CSV's folder
(or to `image_root=`). We add a row whose file does not exist: the pipeline
skips such samples and counts them instead of stopping the epoch.
"""

csv_path = os.path.join(folder, "train.csv")
with open(csv_path, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(["filepath", "title"])
    writer.writerows(rows)
    writer.writerow(
        [os.path.join("images", "missing.png"), "a big purple star at the top left"]
    )
print(f"Wrote {csv_path} with {len(rows) + 1} rows, for example:")
print(open(csv_path, encoding="utf-8").read().splitlines()[:4])

"""
## The tokenizer

`CLIPTokenizer.train` learns a byte-pair encoding in CLIP's format from your
captions. With so few distinct words it runs out of pairs to merge before
the asked size and says so; the vocabulary it ends with is what the model
is built for.
"""

captions = [caption for _, caption in rows]
tokenizer = keras_clip.CLIPTokenizer.train(
    captions, vocabulary_size=600, context_length=12
)
print(
    f"Tokenizer: {tokenizer.vocabulary_size} tokens, context {tokenizer.context_length}"
)
print(
    "'a big red circle at the top left' ->",
    tokenizer(["a big red circle at the top left"])[0],
)

"""
## The input pipeline

`from_csv` reads the file, shuffles the rows, decodes each image, applies a
random-resized crop (`training=True`), normalises it with CLIP's mean and
standard deviation, tokenizes the captions and batches. Batches are dicts of
`"images"` `(B, 32, 32, 3)` and `"token_ids"` `(B, 12)`.

The tokenizer can run inside the pipeline as it is; when the captions are
known up front, `pretokenized` tokenizes each distinct caption once and the
pipeline only looks the ids up, which saves the byte-pair merges every
epoch.
"""

dataset = keras_clip.data.from_csv(
    csv_path,
    keras_clip.data.pretokenized(tokenizer, captions),
    BATCH_SIZE,
    image_column="filepath",
    caption_column="title",
    image_size=IMAGE_SIZE,
    training=True,
    crop_scale=(0.8, 1.0),
    seed=0,
)
for batch in dataset.take(1):
    print({name: tuple(value.shape) for name, value in batch.items()})

"""
## The model and training

A `"tiny-vit"` CLIP whose text tower is sized for this tokenizer. The model
computes its own contrastive loss, so `compile` takes only the optimizer.
`SkipCountLogger` reports how many samples each epoch skipped, and why.
"""

model = keras_clip.CLIPModel.from_preset(
    "tiny-vit",
    tokenizer=tokenizer,
    vocabulary_size=tokenizer.vocabulary_size,
    context_length=tokenizer.context_length,
)
steps_per_epoch = NUM_IMAGES // BATCH_SIZE
model.compile(
    optimizer=keras_clip.make_optimizer(
        model,
        total_steps=EPOCHS * steps_per_epoch,
        learning_rate=2e-3,
        warmup_steps=steps_per_epoch,
        weight_decay=0.1,
    )
)
history = model.fit(
    dataset,
    epochs=EPOCHS,
    verbose=2,
    callbacks=[keras_clip.data.SkipCountLogger(dataset.skip_counter)],
)
losses = history.history["loss"]
assert np.all(np.isfinite(losses)), f"The loss is not finite: {losses}"
assert losses[-1] < losses[0], f"Training did not lower the loss: {losses}"
print(dataset.skip_counter.summary())
assert dataset.skip_counter.last_pass()["missing_image"] == 1

"""
## Save, load, reuse

The `.keras` file holds the weights, the configuration, the optimizer state
and the tokenizer, so the loaded model can tokenize and preprocess on its
own: `model.preprocess` resizes, crops and normalises images of any size as
the evaluation pipeline does.
"""

model_path = os.path.join(folder, "shapes_clip.keras")
model.save(model_path)
loaded = keras.saving.load_model(model_path)
print(f"Saved and loaded {model_path}")

"""
## Does it tell colours and shapes apart?

We draw new images and classify each among the twelve colour-and-shape
labels ("red circle", ...), whatever their size and corner. A label alone
is not a caption the model was trained on, so it goes into prompt
templates, one per size and corner ("a big {} at the top left", ...), and
`zero_shot.classify` averages each label's eight prompt embeddings: a
prompt ensemble over what the labels leave out. Chance is 1/12 for the
label, 1/4 for the colour and 1/3 for the shape.
"""

labels = [f"{colour} {shape}" for shape in SHAPES for colour in COLOURS]
templates = [f"a {size} {{}} at the {corner}" for size in SIZES for corner in CORNERS]
test_rng = np.random.default_rng(1)
test_images, targets = [], []
for _ in range(48):
    image, caption = random_drawing(test_rng)
    test_images.append(np.asarray(image))
    targets.append(labels.index(" ".join(caption.split()[2:4])))
targets = np.asarray(targets)

probabilities = zero_shot.classify(loaded, test_images, labels, templates=templates)
predicted = probabilities.argmax(axis=1)
for i in range(5):
    print(
        f"drawn: {labels[targets[i]]:16} predicted: {labels[predicted[i]]:16} "
        f"({probabilities[i, predicted[i]]:.2f})"
    )


def share_right(part):
    """How often the predicted label's colour (0) or shape (1) is right."""
    return float(
        np.mean(
            [
                labels[p].split()[part] == labels[t].split()[part]
                for p, t in zip(predicted, targets)
            ]
        )
    )


accuracy = float(np.mean(predicted == targets))
print(
    f"Label right {accuracy:.2f} (chance {1 / len(labels):.2f}), "
    f"colour right {share_right(0):.2f} (chance {1 / len(COLOURS):.2f}), "
    f"shape right {share_right(1):.2f} (chance {1 / len(SHAPES):.2f})"
)
assert share_right(0) > 1 / len(COLOURS), "The model did not learn the colours."
if not SMALL:
    assert accuracy > 1 / len(labels), "The model should beat chance on the labels."

"""
## Conclusion

Any folder of images with captions becomes a training set with one CSV file
and one call to `keras_clip.data.from_csv`. For larger sets, the same
pipeline options apply to `from_webdataset` (tar shards) and
`from_tfrecord`; with several workers, pass `num_shards` and `shard_index`
so that each reads its own part.
"""
