"""Keras callbacks that run zero-shot and retrieval evaluation during `fit`.

The numbers are written into the epoch's `logs`, so they appear in the
progress bar, in `History.history` and in any later callback (CSVLogger,
TensorBoard, EarlyStopping on `"zeroshot_top1"`, ...). Epochs that skip the
evaluation (`every_n_epochs > 1`) have no such keys, so those History lists
are shorter than the loss list.
"""

import keras
import numpy as np

from keras_clip import prompts
from keras_clip.retrieval import retrieval_metrics
from keras_clip.zero_shot import (
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
