"""Keras callbacks for `fit`: evaluation, and training to a time budget.

`ZeroShotEvaluation` and `RetrievalEvaluation` write their numbers into the
epoch's `logs`, so they appear in the progress bar, in `History.history` and
in any later callback (CSVLogger, TensorBoard, EarlyStopping on
`"zeroshot_top1"`, ...). Epochs that skip the evaluation (`every_n_epochs >
1`) have no such keys, so those History lists are shorter than the loss list.

`TimeBudgetCosineDecay` runs the warm-up + cosine schedule over wall-clock
time instead of steps, and stops `fit` when the time is spent.
"""

import math
import time

import keras
import numpy as np

from keras_clip.evaluation import prompts
from keras_clip.optimizers import cosine_decay
from keras_clip.evaluation.retrieval import retrieval_metrics
from keras_clip.evaluation.zero_shot import (
    accuracy,
    as_model_inputs,
    class_embeddings,
    encode_images,
    encode_texts,
    zero_shot_logits,
)


def _check_every(every_n_epochs):
    if int(every_n_epochs) < 1:
        raise ValueError(
            f"`every_n_epochs` must be >= 1. Received: {every_n_epochs}"
        )
    return int(every_n_epochs)


class _EvaluationCallback(keras.callbacks.Callback):
    def __init__(self, images, every_n_epochs, batch_size, name):
        super().__init__()
        self.images = images
        self.every_n_epochs = _check_every(every_n_epochs)
        self.batch_size = batch_size
        self.name = name
        self._inputs = None

    def on_train_begin(self, logs=None):
        # uint8 / listed images are preprocessed once, with the model's settings.
        self._inputs = as_model_inputs(self.model, self.images)

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_n_epochs or logs is None:
            return
        if self._inputs is None:
            self.on_train_begin()
        for key, value in self.evaluate().items():
            logs[f"{self.name}_{key}"] = value


class ZeroShotEvaluation(_EvaluationCallback):
    """Zero-shot top-1 / top-5 accuracy every N epochs (Radford et al. 2021).

    Args:
        images: model-ready float32 `(N, S, S, 3)`, or uint8 `(N, H, W, 3)` /
            a list of images of any size, preprocessed once with
            `model.preprocess` when training starts.
        labels: int `(N,)` indices into `classnames`.
        classnames: the class names, in label order.
        templates: `None` ("a photo of a {}."), `"imagenet"` or a list.
        every_n_epochs: evaluate after epochs N, 2N, ...
        tokenizer: defaults to the model's `tokenizer`.
        batch_size: items per encoder call.
        name: prefix of the logged keys.

    Logs `{name}_top1` and `{name}_top5` (top-min(5, C)), floats in [0, 1].

    Example:

    ```python
    cb = ZeroShotEvaluation(val_images, val_labels, ["cat", "dog", "car"])
    history = model.fit(ds, epochs=10, callbacks=[cb])
    history.history["zeroshot_top1"]
    ```
    """

    def __init__(self, images, labels, classnames, templates=None,
                 every_n_epochs=1, tokenizer=None, batch_size=64,
                 name="zeroshot"):
        super().__init__(images, every_n_epochs, batch_size, name)
        self.labels = np.asarray(labels).astype("int64")
        self.classnames = [str(c) for c in classnames]
        self.templates = prompts.get_templates(templates)
        self.tokenizer = tokenizer
        if len(self.labels) != len(images):
            raise ValueError(
                "`labels` must have one entry per image. Received: "
                f"{len(self.labels)} labels for {len(images)} images"
            )

    def evaluate(self):
        """The current `{"top1": ..., "top5": ...}` of `self.model`."""
        tokenizer = self.tokenizer
        if tokenizer is None:
            tokenizer = self.model.tokenizer
        if tokenizer is None:
            raise ValueError(
                "ZeroShotEvaluation needs a tokenizer. Expected "
                "`model.tokenizer` or a `tokenizer` argument. Received: None"
            )
        weights = class_embeddings(
            self.model.encode_text, lambda t: np.asarray(tokenizer(t)),
            self.classnames, self.templates,
        )
        image = encode_images(self.model, self._inputs, self.batch_size)
        logits = zero_shot_logits(image, weights, 1.0)
        k = min(5, len(self.classnames))
        return {
            "top1": accuracy(logits, self.labels, 1),
            "top5": accuracy(logits, self.labels, k),
        }


class RetrievalEvaluation(_EvaluationCallback):
    """Image↔text recall@1/5/10 and median ranks every N epochs.

    Args:
        images: model-ready float32 `(N, S, S, 3)`, or uint8 / a list of
            images, preprocessed once with `model.preprocess`.
        token_ids: int `(N_texts, L)` tokenised captions.
        text_to_image: int `(N_texts,)` image index of each caption; `None`
            means caption i describes image i.
        every_n_epochs: evaluate after epochs N, 2N, ...
        batch_size: items per encoder call.
        name: prefix of the logged keys.

    Logs `{name}_i2t_r1`, `_r5`, `_r10`, the same for `t2i` (floats in
    [0, 1]), and `{name}_i2t_median_rank`, `{name}_t2i_median_rank`.

    Example:

    ```python
    cb = RetrievalEvaluation(val_images, val_token_ids, every_n_epochs=2)
    model.fit(ds, epochs=10, callbacks=[cb])
    ```
    """

    def __init__(self, images, token_ids, text_to_image=None, every_n_epochs=1,
                 batch_size=64, name="retrieval"):
        super().__init__(images, every_n_epochs, batch_size, name)
        self.token_ids = np.asarray(token_ids)
        self.text_to_image = text_to_image

    def evaluate(self):
        """The current retrieval metrics of `self.model`."""
        image = encode_images(self.model, self._inputs, self.batch_size)
        text = encode_texts(self.model, self.token_ids, self.batch_size)
        metrics = retrieval_metrics(image, text, self.text_to_image)
        return {
            k: v for k, v in metrics.items() if not k.endswith("_mean_rank")
        }


class TimeBudgetCosineDecay(keras.callbacks.Callback):
    """Warm-up, then a cosine decay over a wall-clock budget; then stop.

    `WarmupCosineDecay` needs the number of steps in advance; under a time
    budget that number depends on the machine, and a run cut short by the
    clock stops with its learning rate still high. This callback sets the
    optimiser's learning rate before every step instead: linear warm-up
    over the first `warmup_steps` steps (`learning_rate * (step + 1) /
    warmup_steps`, as `WarmupCosineDecay` does), then half a cosine from
    `learning_rate` to `end_learning_rate` over the time left, by the
    fraction of the budget spent when the step starts. `fit` stops after the
    first step that ends past the budget, so the schedule has reached its
    end whatever the machine's speed. Compilation and the work of other
    callbacks (evaluations) count against the budget, as they count against
    the user's wait. Runs are not reproducible step for step: the rate of
    a step depends on when it starts.

    The optimiser must have a plain (float) learning rate, not a schedule.
    On JAX, setting it syncs the trainer's state into the variables before
    every step (Keras does so whenever a callback reads `self.model`),
    which a small model does not notice.

    Args:
        seconds: the budget, from the start of `fit`.
        learning_rate: the peak rate.
        warmup_steps: steps of linear warm-up.
        end_learning_rate: the rate at the end of the budget.
        clock: a no-argument callable returning seconds; `time.monotonic`
            by default (tests pass a fake one).

    The rate of the last epoch's last step is logged as `learning_rate`.

    Example:

    ```python
    model.compile(optimizer=keras_clip.optimizers.AdamW(learning_rate=2e-3))
    model.fit(ds.repeat(), steps_per_epoch=steps, epochs=10_000,
              callbacks=[TimeBudgetCosineDecay(600, 2e-3, warmup_steps=50)])
    ```
    """

    def __init__(self, seconds, learning_rate, warmup_steps=0,
                 end_learning_rate=0.0, clock=None):
        super().__init__()
        if not seconds > 0 or not learning_rate > 0 or warmup_steps < 0:
            raise ValueError(
                "Expected seconds > 0, learning_rate > 0 and warmup_steps "
                f">= 0. Received: seconds={seconds}, learning_rate="
                f"{learning_rate}, warmup_steps={warmup_steps}"
            )
        self.seconds = float(seconds)
        self.learning_rate = float(learning_rate)
        self.warmup_steps = int(warmup_steps)
        self.end_learning_rate = float(end_learning_rate)
        self.clock = clock or time.monotonic
        self.step = 0
        self.current = None

    def rate(self, step, elapsed, warmup_end):
        """The rate of `step`, started `elapsed` s into the budget; the
        warm-up ended `warmup_end` s in (`None` while it runs)."""
        peak, end = self.learning_rate, self.end_learning_rate
        if step < self.warmup_steps:
            return peak * (step + 1) / self.warmup_steps
        left = max(self.seconds - warmup_end, 1e-9)
        progress = min(max((elapsed - warmup_end) / left, 0.0), 1.0)
        return cosine_decay(peak, end, progress, cos=math.cos)

    def on_train_begin(self, logs=None):
        optimizer = self.model.optimizer
        if isinstance(getattr(optimizer, "_learning_rate", None),
                      keras.optimizers.schedules.LearningRateSchedule):
            raise ValueError(
                "TimeBudgetCosineDecay sets the learning rate itself. "
                "Expected an optimizer with a float `learning_rate`. "
                f"Received: {type(optimizer._learning_rate).__name__}"
            )
        self.start = self.clock()
        self.step = 0
        self.warmup_end = None

    def on_train_batch_begin(self, batch, logs=None):
        elapsed = self.clock() - self.start
        if self.step == self.warmup_steps:
            self.warmup_end = elapsed
        self.current = self.rate(self.step, elapsed, self.warmup_end)
        # On JAX, `self.model` first syncs the trainer's state into the
        # variables, so the step that follows rereads the new rate.
        self.model.optimizer.learning_rate = self.current

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.clock() - self.start >= self.seconds:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self.current is not None:
            logs["learning_rate"] = self.current
