"""The main job: train a small CLIP on Twemoji, then test it zero-shot.

Trains on the Twemoji training split (captions are the emoji names), with a
BPE vocabulary learnt from the training captions only, for a fixed time
budget (warm-up, then a cosine decay over the budget's wall-clock time, so
a faster machine trains more epochs and a slower one still ends its
schedule); then classifies (a) the held-out concepts' images among the held-out
captions and (b) every emoji drawn in the unseen Noto style among all
captions, without any training image of either. Application code: the CLI
(`keras-clip demo`) turns flags into these arguments.
"""

import os
import time

import keras
import numpy as np

from keras_clip import data
from keras_clip.callbacks import StopOnNonFinite
from keras_clip.data.datasets import emoji
from keras_clip.evaluation import zero_shot
from keras_clip.evaluation.callbacks import TimeBudgetCosineDecay, ZeroShotEvaluation
from keras_clip.losses import ContrastiveLoss
from keras_clip.models.clip_model import CLIPModel
from keras_clip.optimizers import make_optimizer
from keras_clip_app import commands as app
from keras_clip_app import plots
from keras_clip_app import training

# The template the captions were trained with: the bare emoji name.
BARE = ["{}"]
# Bound of a run driven by the clock (Keras needs one; the clock stops first).
MAX_EPOCHS = 1000


class TimeBudget(keras.callbacks.Callback):
    """Stops `fit` at the end of the batch that passes `seconds`."""

    def __init__(self, seconds):
        super().__init__()
        self.seconds = seconds

    def on_train_begin(self, logs=None):
        self.start = time.time()

    def on_train_batch_end(self, batch, logs=None):
        if time.time() - self.start > self.seconds:
            self.model.stop_training = True


class ClockProgress(keras.callbacks.Callback):
    """One line per epoch for a run that the clock ends: the time spent
    against the budget instead of Keras's `Epoch k/1000` (its epoch bound
    is only a bound here), then the epoch's logs."""

    def __init__(self, seconds, print_fn=print):
        super().__init__()
        self.seconds = seconds
        self.print_fn = print_fn

    def on_train_begin(self, logs=None):
        self.start = time.time()

    def on_epoch_end(self, epoch, logs=None):
        def clock(seconds):
            return f"{int(seconds) // 60}:{int(seconds) % 60:02d}"

        logs = logs or {}
        names = {"loss": "loss", "i2t_accuracy": "i2t acc", "t2i_accuracy": "t2i acc",
                 "heldout_top1": "held-out top-1", "learning_rate": "lr"}
        parts = [f"epoch {epoch + 1:3d}",
                 f"{clock(time.time() - self.start)} / {clock(self.seconds)}"]
        for key, label in names.items():
            if key in logs:
                value = float(logs[key])
                parts.append(f"{label} {value:.2e}" if key == "learning_rate" else f"{label} {value:.3f}")
        self.print_fn(" - ".join(parts))


def build_model(tokenizer, image_size, preset, **overrides):
    """A small CLIP whose text tower fits `tokenizer` (it takes the
    tokenizer's vocabulary, end-of-text id and context length), carrying
    the bare-caption template it is trained and evaluated with."""
    return CLIPModel.from_preset(
        preset,
        tokenizer=tokenizer,
        image_size=image_size,
        prompt_templates=["{}"],
        **overrides,
    )


def training_captions(train, alias_probability):
    """What `data.from_arrays` trains on, the texts to learn a vocabulary
    from, and its caption-drawing option: the names alone, or (when
    `alias_probability` > 0) each name first, then its aliases."""
    if not alias_probability:
        return train.captions, train.captions, {}
    captions = [[c] + a for c, a in zip(train.captions, emoji.aliases(train))]
    texts = [c for row in captions for c in row]
    return captions, texts, {"first_caption_probability": 1.0 - alias_probability}


def zero_shot_scores(model, images, captions, concept_ids=None, return_probabilities=False):
    """Top-1 / top-5 of each image among `captions` (its own is the label).

    With `concept_ids`, also `concept_top1`: the share whose first guess is
    a caption of the right concept, in any skin tone (the skin-tone
    variants of an emoji are one concept).
    """
    probs = zero_shot.classify(model, images, captions, templates=BARE)
    labels = np.arange(len(captions))
    scores = {
        "top1": zero_shot.accuracy(probs, labels, k=1),
        "top5": zero_shot.accuracy(probs, labels, k=5),
        "classes": len(captions),
        "chance_top1": 1.0 / len(captions),
    }
    if concept_ids is not None:
        concept_ids = np.asarray(concept_ids)
        guess = np.argmax(probs, axis=-1)
        scores["concept_top1"] = float(np.mean(concept_ids[guess] == concept_ids))
    return (scores, probs) if return_probabilities else scores


def figures(model, history, output_dir, heldout, heldout_probs, noto=None, noto_probs=None):
    """The demo's PNGs: training curves, a similarity matrix, prediction grids."""
    out = {"training_curves": plots.training_curves(
        history, os.path.join(output_dir, "training_curves.png"))}
    # Eight held-out concepts (one image each) against their captions.
    rng = np.random.default_rng(0)
    first = {}
    for i, concept in enumerate(heldout.concept_ids):
        first.setdefault(concept, i)
    pick = sorted(rng.choice(sorted(first.values()), size=min(8, len(first)), replace=False))
    images = [heldout.images[i] for i in pick]
    captions = [heldout.captions[i] for i in pick]
    out["similarity"] = app.similarity_figure(
        model, images, captions, os.path.join(output_dir, "similarity.png"),
        title="held-out concepts: cosine similarity of captions and images")
    grid = rng.choice(len(heldout), size=min(18, len(heldout)), replace=False)
    out["heldout_predictions"] = plots.prediction_grid(
        [heldout.images[i] for i in grid], heldout_probs[grid], heldout.captions,
        os.path.join(output_dir, "heldout_predictions.png"), true_labels=grid)
    if noto is not None:
        grid = rng.choice(len(noto), size=min(18, len(noto)), replace=False)
        out["noto_predictions"] = plots.prediction_grid(
            [noto.images[i] for i in grid], noto_probs[grid], noto.captions,
            os.path.join(output_dir, "noto_predictions.png"), true_labels=grid)
    return out


def run(
    output_dir="outputs/demo",
    minutes=9.5,
    epochs=None,
    batch_size=128,
    image_size=32,
    vocabulary_size=2000,
    learning_rate=2e-3,
    preset="demo-resnet",
    seed=0,
    weight_decay=0.1,
    label_smoothing=0.2,
    warmup_steps=50,
    crop_scale=(0.8, 1.0),
    rotation=10.0,
    color_jitter=0.0,
    grayscale=0.0,
    downscale=0.5,
    alias_probability=0.0,
    model_overrides=None,
    monitor_every=4,
    jit_compile="auto",
):
    """Trains, evaluates, saves; returns the metrics dict.

    Its `status` is "complete", or "failed" when a loss was NaN or
    infinite: then training stops at that step, nothing is evaluated,
    `clip.keras` is not written and `metrics.json` records the step and the
    value under `non_finite`.

    `epochs=None` trains for `minutes` with the learning rate's cosine
    decay spread over that time (`TimeBudgetCosineDecay`); an int fixes the
    schedule to that many epochs (reproducible from run to run, as the
    time-driven rate is not), still stopped after `minutes`.

    `alias_probability`: how often a training image with other names (the
    `emoji` package's short codes, `emoji.aliases`) is paired with one of
    them instead of its Unicode name; 0 (the default) trains on the names
    only. The BPE vocabulary is learnt from the captions trained on. In the
    README's tries, 0.25 moved neither zero-shot test beyond one run's
    spread.
    """
    # Every setting of the run, saved beside its numbers in metrics.json.
    recipe = {
        "preset": preset, "image_size": image_size, "epochs": epochs,
        "minutes": minutes, "batch_size": batch_size, "seed": seed,
        "vocabulary_size": vocabulary_size, "learning_rate": learning_rate,
        "weight_decay": weight_decay, "warmup_steps": warmup_steps,
        "label_smoothing": label_smoothing, "crop_scale": list(crop_scale),
        "rotation": rotation, "color_jitter": color_jitter,
        "grayscale": grayscale, "downscale": downscale,
        "alias_probability": alias_probability,
        "model_overrides": dict(model_overrides or {}),
        "jit_compile": jit_compile,
    }
    if not 0.0 <= alias_probability <= 1.0:
        raise ValueError(f"Expected `alias_probability` in [0, 1]. Received: {alias_probability}")
    keras.utils.set_random_seed(seed)
    train = emoji.load_twemoji(image_size=image_size, split="train", seed=seed)
    heldout = emoji.load_twemoji(image_size=image_size, split="heldout", seed=seed)
    captions, texts, draw = training_captions(train, alias_probability)
    longest = max(len(c.split()) for c in texts)
    tokenizer = app.train_tokenizer(texts, vocabulary_size, max(16, 2 * longest + 4))
    model = build_model(tokenizer, image_size, preset, **(model_overrides or {}))
    steps = len(train) // batch_size
    warmup_steps = min(warmup_steps, steps)
    if epochs is None:
        # The rate follows the clock; fit runs until the budget is spent.
        total_steps, max_epochs = None, MAX_EPOCHS
        schedule = TimeBudgetCosineDecay(
            60 * minutes, learning_rate, warmup_steps=warmup_steps)
    else:
        total_steps, max_epochs = epochs * steps, epochs
        schedule = TimeBudget(60 * minutes)
    model.compile(
        optimizer=make_optimizer(
            model,
            total_steps=total_steps,
            learning_rate=learning_rate,
            warmup_steps=warmup_steps,
            weight_decay=weight_decay,
        ),
        loss=ContrastiveLoss(label_smoothing=label_smoothing),
        jit_compile=jit_compile,
    )
    ds = data.from_arrays(
        train.images,
        captions,
        tokenizer,
        batch_size,
        **draw,
        shuffle_buffer=len(train),
        image_size=image_size,
        training=True,
        crop_scale=crop_scale,
        rotation=rotation,
        color_jitter=color_jitter,
        grayscale=grayscale,
        downscale=downscale,
        seed=seed,
        # Batches cut after their longest caption (16 or 24 of the 26
        # columns): the same text features, a quarter less text-tower work.
        token_multiple=8,
    )
    print(
        f"Training {preset} ({model.count_params():,} parameters, "
        f"{keras.backend.backend()}) on {len(train):,} Twemoji pairs"
        + (f" (and {len(texts) - len(train):,} aliases), " if alias_probability else ", ")
        + f"vocabulary {tokenizer.vocabulary_size:,}, "
        + (f"for {minutes:g} min" if epochs is None else f"{epochs} epochs, at most {minutes:g} min")
    )
    start = time.time()
    guard = StopOnNonFinite()
    history = model.fit(
        # Repeated with a known epoch length: the pipeline's filter for bad
        # samples hides its length, and Keras would warn after epoch 1.
        ds.repeat(),
        steps_per_epoch=steps,
        shuffle=False,  # the pipeline shuffles; Keras's flag would only warn
        epochs=max_epochs,
        # Keras's own line per epoch for a fixed schedule; under the clock
        # `ClockProgress` (last: it prints the evaluation's numbers too).
        verbose=2 if epochs else 0,
        callbacks=[
            guard,  # first: a non-finite loss stops the run before anything else runs
            schedule,
            training.UnlessFailed(ZeroShotEvaluation(
                heldout.images,
                np.arange(len(heldout)),
                heldout.captions,
                templates=BARE,
                every_n_epochs=monitor_every,
                name="heldout",
            ), guard),
        ] + ([] if epochs else [ClockProgress(60 * minutes)]),
    )
    seconds = time.time() - start
    os.makedirs(output_dir, exist_ok=True)
    if guard.failed:
        return _failed(guard, recipe, seconds, history.history, output_dir)
    heldout_scores, heldout_probs = zero_shot_scores(
        model, heldout.images, heldout.captions, heldout.concept_ids,
        return_probabilities=True)
    metrics = {
        "status": "complete",
        "backend": keras.backend.backend(),
        "preset": preset,
        "image_size": image_size,
        "label_smoothing": label_smoothing,
        "recipe": recipe,
        "train_seconds": seconds,
        "train_pairs": len(train),
        "epochs": len(history.history["loss"]),
        "heldout": heldout_scores,
    }
    noto = noto_probs = None
    try:
        noto = emoji.load_noto_emoji(image_size=image_size, split="all", seed=seed)
        metrics["noto"], noto_probs = zero_shot_scores(
            model, noto.images, noto.captions, noto.concept_ids,
            return_probabilities=True)
    except FileNotFoundError as error:
        noto = None
        metrics["noto"] = None
        print(f"Skipping the unseen-style test: {error}")
    path = training.save_atomically(model, os.path.join(output_dir, "clip.keras"))
    outputs = {"model": path, "metrics": os.path.join(output_dir, "metrics.json")}
    outputs.update(figures(model, history.history, output_dir, heldout, heldout_probs,
                           noto, noto_probs))
    metrics["outputs"] = outputs
    app.write_json(outputs["metrics"], {**metrics, "history": history.history})
    report(metrics, path)
    return metrics


def _failed(guard, recipe, seconds, history, output_dir):
    """The metrics of a run stopped by a non-finite loss; no model is saved."""
    path = os.path.join(output_dir, "metrics.json")
    metrics = {
        "status": "failed",
        "backend": keras.backend.backend(),
        "recipe": recipe,
        "train_seconds": seconds,
        "epochs": len(history.get("loss", [])),
        "non_finite": guard.as_dict(),
        "outputs": {"metrics": path},
    }
    app.write_json(path, {**metrics, "history": history})
    print(
        f"Nothing evaluated and no clip.keras written; the run's numbers are in {path}. "
        "Look for NaN or infinite values in the images, or lower --learning-rate."
    )
    return metrics


def report(metrics, path):
    def row(name, m):
        if m is None:
            return f"| {name} | not run | | | |"
        concept = m.get("concept_top1")
        return (
            f"| {name} | {m['classes']:,} | {m['top1']:.3f} / {m['top5']:.3f} "
            f"| {'' if concept is None else f'{concept:.3f}'} | {m['chance_top1']:.4f} |"
        )

    print()
    print(
        f"Trained {metrics['epochs']} epochs in {metrics['train_seconds'] / 60:.1f} min "
        f"on {metrics['backend']}."
    )
    print("| zero-shot test | classes | top-1 / top-5 | top-1, any skin tone | chance top-1 |")
    print("|---|---:|---:|---:|---:|")
    print(row("held-out concepts (Twemoji)", metrics["heldout"]))
    print(row("unseen style (Noto, all concepts)", metrics["noto"]))
    print()
    for name, where in metrics.get("outputs", {"model": path}).items():
        print(f"{name:>20}: {where}")
    print(
        "\nClassify new images: model = keras.saving.load_model(path); "
        "keras_clip.zero_shot.classify(model, uint8_images, labels) (the model carries its template)"
    )
