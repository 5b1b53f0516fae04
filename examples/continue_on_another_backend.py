"""
Title: Save on one backend, continue training on another
Author: keras_clip contributors
Date created: 2026/12/06
Last modified: 2026/12/06
Description: Save a CLIP on one backend, resume its training on another.
Accelerator: None (CPU)
"""

"""
## Introduction

A `CLIPModel` is plain Keras 3, so a `.keras` file written under one backend
loads under any other: TensorFlow, JAX or PyTorch. With the file come the
configuration, the weights, the tokenizer's vocabulary and the optimizer's
state (step count, AdamW moments, learning-rate schedule), so training can
resume where it stopped, for example started on a TensorFlow machine and
continued on a JAX one.

A process picks its backend once, when Keras is first imported. This
example therefore runs in two processes:

1. this one trains for a while on the backend it was started with
   (`KERAS_BACKEND`) and saves the model, plus a copy of every weight and
   of the optimizer's state as NumPy arrays;
2. a child process, started with another `KERAS_BACKEND`, loads the file,
   checks that every weight and the optimizer's state arrived exactly,
   that the model computes the same embeddings, then trains on and saves
   again;
3. back in the first process, the file saved by the other backend is
   loaded and checked in turn.

The second backend is the next one in the cycle tensorflow -> jax -> torch
-> tensorflow; set `KERAS_CLIP_SECOND_BACKEND` to choose. With
`KERAS_CLIP_EXAMPLE_SMALL=1` (how CI runs it) each half trains on 512
Twemoji pairs for 3 epochs; without it, on all of them for 5 epochs.
"""

"""
## Setup

The same script is the child process: started with `--continue FOLDER`,
it runs only the second half (the `continue_training` function below).
"""

import json
import os
import subprocess
import sys
import tempfile

import keras
import numpy as np

import keras_clip
from keras_clip.data.datasets import load_twemoji

SMALL = os.environ.get("KERAS_CLIP_EXAMPLE_SMALL") == "1"
NUM_PAIRS = 512 if SMALL else None
EPOCHS = 3 if SMALL else 5
BATCH_SIZE = 64
BACKEND = keras.backend.backend()
NEXT_BACKEND = {"tensorflow": "jax", "jax": "torch", "torch": "tensorflow"}


def training_data():
    """Twemoji images preprocessed for the model, with their captions."""
    pairs = load_twemoji(32, split="train", seed=0)
    count = len(pairs) if NUM_PAIRS is None else NUM_PAIRS
    order = np.random.default_rng(0).permutation(len(pairs))[:count]
    return pairs.images[order], [pairs.captions[i] for i in order]


def model_inputs(model, images, captions):
    """The dict `fit` takes: normalised float images and token ids."""
    return {"images": model.preprocess(images), "token_ids": model.tokenizer(captions)}


def weights_as_numpy(model):
    """Every weight (optimizer state aside) by its path, as NumPy."""
    weights = {v.path: keras.ops.convert_to_numpy(v) for v in model.weights}
    assert len(weights) == len(model.weights), "Expected one path per weight."
    return weights


def optimizer_state(model):
    """The optimizer's variables (step count, AdamW moments) as NumPy, in order."""
    return [keras.ops.convert_to_numpy(v) for v in model.optimizer.variables]


def optimizer_steps(model):
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


"""
## The second half: load and continue under another backend

This function runs in the child process. `keras.saving.load_model` rebuilds
the model and its compiled optimizer (importing `keras_clip` registers the
classes the file names). The checks are strict: the weights must be equal
bit for bit, since a `.keras` file stores them as they are; the embeddings,
computed by another framework's kernels, must agree to float32 rounding.
Then `fit` goes on from the saved optimizer step.
"""


def continue_training(folder):
    backend = keras.backend.backend()
    print(f"[{backend}] loading {folder}/first.keras")
    model = keras.saving.load_model(os.path.join(folder, "first.keras"))
    saved = np.load(os.path.join(folder, "first_weights.npz"))
    loaded = weights_as_numpy(model)
    assert sorted(loaded) == sorted(saved.files), "The weights do not match by name."
    for name in saved.files:
        np.testing.assert_array_equal(loaded[name], saved[name], err_msg=name)
    print(f"[{backend}] all {len(saved.files)} weights equal the saved ones")

    with open(os.path.join(folder, "first.json")) as f:
        first = json.load(f)
    assert optimizer_steps(model) == first["steps"], (optimizer_steps(model), first)
    state = np.load(os.path.join(folder, "first_optimizer.npz"))
    assert len(optimizer_state(model)) == len(state.files), (
        "The optimizer state differs."
    )
    for i, value in enumerate(optimizer_state(model)):
        np.testing.assert_array_equal(value, state[f"arr_{i}"])
    print(
        f"[{backend}] the optimizer resumes at step {first['steps']}, "
        f"its {len(state.files)} variables equal the saved ones"
    )

    images, captions = training_data()
    inputs = model_inputs(model, images, captions)
    probe = keras.ops.convert_to_numpy(model.encode_image(inputs["images"][:16]))
    np.testing.assert_allclose(probe, np.asarray(first["probe"]), atol=1e-5)
    print(f"[{backend}] image embeddings agree with {first['backend']}'s")

    history = model.fit(inputs, batch_size=BATCH_SIZE, epochs=EPOCHS, verbose=2)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)), losses
    # Resumed, not restarted: the loss goes on from where the first half ended.
    assert losses[0] < first["losses"][0], (losses, first["losses"])
    model.save(os.path.join(folder, "second.keras"))
    np.savez(os.path.join(folder, "second_weights.npz"), **weights_as_numpy(model))
    with open(os.path.join(folder, "second.json"), "w") as f:
        json.dump(
            {"backend": backend, "steps": optimizer_steps(model), "losses": losses}, f
        )
    print(f"[{backend}] trained {EPOCHS} more epochs and saved second.keras")


if len(sys.argv) == 3 and sys.argv[1] == "--continue":
    continue_training(sys.argv[2])
    sys.exit(0)

"""
## The first half: train and save

A tiny CLIP with a tokenizer learnt from the training captions. This time
the data is plain NumPy: `model.preprocess` resizes and normalises the
uint8 images, the tokenizer (called on Python strings) returns token ids,
and `fit` batches and shuffles the arrays itself.
"""

keras.utils.set_random_seed(0)
images, captions = training_data()
tokenizer = keras_clip.CLIPTokenizer.train(
    captions, vocabulary_size=1024, context_length=16
)
model = keras_clip.CLIPModel.from_preset(
    "tiny-vit", tokenizer=tokenizer, vocabulary_size=tokenizer.vocabulary_size
)
steps_per_epoch = -(-len(images) // BATCH_SIZE)
model.compile(
    optimizer=keras_clip.make_optimizer(
        model,
        total_steps=2 * EPOCHS * steps_per_epoch,  # both halves
        learning_rate=2e-3,
        warmup_steps=steps_per_epoch,
        weight_decay=0.1,
    )
)
inputs = model_inputs(model, images, captions)
print(f"[{BACKEND}] training on {len(images)} pairs for {EPOCHS} epochs")
history = model.fit(inputs, batch_size=BATCH_SIZE, epochs=EPOCHS, verbose=2)
first_losses = history.history["loss"]
assert np.all(np.isfinite(first_losses)), first_losses

folder = tempfile.mkdtemp()
model.save(os.path.join(folder, "first.keras"))
np.savez(os.path.join(folder, "first_weights.npz"), **weights_as_numpy(model))
np.savez(os.path.join(folder, "first_optimizer.npz"), *optimizer_state(model))
with open(os.path.join(folder, "first.json"), "w") as f:
    json.dump(
        {
            "backend": BACKEND,
            "steps": optimizer_steps(model),
            "losses": first_losses,
            "probe": keras.ops.convert_to_numpy(
                model.encode_image(inputs["images"][:16])
            ).tolist(),
        },
        f,
    )
print(f"[{BACKEND}] saved {folder}/first.keras after {optimizer_steps(model)} steps")

"""
## Hand over to the other backend

The child is this same script with `--continue`, under another
`KERAS_BACKEND`. Its output is printed here; a failed check in it makes the
whole example fail.
"""

second_backend = os.environ.get("KERAS_CLIP_SECOND_BACKEND", NEXT_BACKEND[BACKEND])
child = subprocess.run(
    [sys.executable, os.path.abspath(__file__), "--continue", folder],
    env=dict(os.environ, KERAS_BACKEND=second_backend),
    capture_output=True,
    text=True,
)
print(child.stdout)
if child.returncode != 0:
    print(child.stderr[-5000:], file=sys.stderr)
    raise SystemExit(
        f"The {second_backend} half failed (exit code {child.returncode})."
    )

"""
## Back on the first backend

The file the other backend saved loads here too: the round trip is
complete, and the optimizer counts the steps of both halves.
"""

final = keras.saving.load_model(os.path.join(folder, "second.keras"))
saved = np.load(os.path.join(folder, "second_weights.npz"))
for name, value in weights_as_numpy(final).items():
    np.testing.assert_array_equal(value, saved[name], err_msg=name)
with open(os.path.join(folder, "second.json")) as f:
    second = json.load(f)
assert optimizer_steps(final) == 2 * optimizer_steps(model), optimizer_steps(final)
print(
    f"[{BACKEND}] loaded the model continued on {second['backend']}: "
    f"{optimizer_steps(final)} optimizer steps, loss "
    f"{first_losses[0]:.3f} -> {first_losses[-1]:.3f} ({BACKEND}) -> "
    f"{second['losses'][-1]:.3f} ({second['backend']})"
)

"""
## Conclusion

The `.keras` file is the hand-over point between backends: save with
`model.save`, load with `keras.saving.load_model`, and keep calling `fit`.
Nothing in it is specific to the framework that wrote it.
"""
