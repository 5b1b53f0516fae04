"""Zero-shot classification with prompt ensembles (Radford et al. 2021, 3.1).

The core takes functions and arrays: `class_embeddings(encode_text_fn,
tokenize_fn, classnames, templates)` builds the classifier's weights, and the
metrics take logits and integer labels. `build_classifier` and `classify`
wire a `CLIPModel` into them.
"""

import collections

import keras
import numpy as np
from keras import ops

from keras_clip.evaluation import prompts


def _to_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def _l2_normalize(x, axis=-1):
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def class_embeddings(encode_text_fn, tokenize_fn, classnames, templates=None,
                     batch_size=10):
    """Zero-shot classifier weights: one unit vector per class.

    Per class, every template is filled with the class name and embedded;
    each embedding is L2-normalised, the class's embeddings are averaged and
    the mean is re-normalised (the paper's prompt ensembling, section 3.1.4).

    Args:
        encode_text_fn: `token_ids -> (B, E)` text embeddings.
        tokenize_fn: `list of str -> (B, L)` int token ids.
        classnames: list of class-name strings, in label order.
        templates: see `keras_clip.evaluation.prompts.get_templates`; defaults to
            "a photo of a {}.".
        batch_size: number of classes embedded per call of `encode_text_fn`
            (each call sees `batch_size * len(templates)` prompts).

    Returns:
        float32 NumPy array `(len(classnames), E)` of unit rows.

    Example:

    ```python
    weights = class_embeddings(model.encode_text, model.tokenizer,
                               ["cat", "dog"], prompts.IMAGENET_TEMPLATES)
    ```
    """
    classnames = [str(c) for c in classnames]
    if not classnames:
        raise ValueError("`classnames` must not be empty. Received: []")
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1. Received: {batch_size}")
    templates = prompts.get_templates(templates)
    n_templates = len(templates)
    out = []
    for start in range(0, len(classnames), batch_size):
        chunk = classnames[start : start + batch_size]
        texts = [prompts.fill_template(t, c) for c in chunk for t in templates]
        emb = _to_numpy(encode_text_fn(tokenize_fn(texts))).astype("float32")
        emb = _l2_normalize(emb).reshape(len(chunk), n_templates, -1)  # (C, T, E)
        out.append(_l2_normalize(emb.mean(axis=1)))  # (C, E)
    return np.concatenate(out, axis=0)


def encode_images(model, images, batch_size=64):
    """Unit image embeddings `(N, E)` as NumPy, computed in batches.

    Args:
        model: a `CLIPModel` (or anything with `encode_image` and, for
            uint8 inputs, `preprocess`).
        images: float model-ready images `(N, S, S, 3)`; uint8 arrays
            `(N, H, W, 3)` or a list of images of any size are first passed
            through `model.preprocess`.
        batch_size: images per call of `encode_image`.
    """
    images = as_model_inputs(model, images)
    out = [
        _to_numpy(model.encode_image(images[i : i + batch_size]))
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out, axis=0).astype("float32")


def encode_texts(model, token_ids, batch_size=256):
    """Unit text embeddings `(N, E)` as NumPy, computed in batches."""
    token_ids = np.asarray(token_ids)
    out = [
        _to_numpy(model.encode_text(token_ids[i : i + batch_size]))
        for i in range(0, len(token_ids), batch_size)
    ]
    return np.concatenate(out, axis=0).astype("float32")


def as_model_inputs(model, images):
    """`images` as float32 model inputs: floats pass, the rest is preprocessed."""
    if isinstance(images, np.ndarray) and images.dtype.kind == "f":
        return images.astype("float32", copy=False)
    return model.preprocess(images)


def model_templates(model, templates=None):
    """`templates` if given, else the templates `model` carries, else `None`.

    A `CLIPModel` may carry the prompt templates it was trained to read
    (`model.prompt_templates`, saved in its `.keras` file: the demo's model,
    trained on bare captions, carries `["{}"]`); evaluators use them when the
    caller passes none, and fall back to "a photo of a {}." otherwise.
    """
    if templates is not None:
        return templates
    carried = getattr(model, "prompt_templates", None)
    return list(carried) if carried else None


def _tokenizer_of(model, tokenizer):
    tokenizer = tokenizer if tokenizer is not None else model.tokenizer
    if tokenizer is None:
        raise ValueError(
            "Zero-shot classification needs a tokenizer. Expected "
            "`model.tokenizer` or a `tokenizer` argument. Received: None"
        )
    return lambda texts: np.asarray(tokenizer(texts))


@keras.saving.register_keras_serializable(package="keras_clip")
class ZeroShotClassifier(keras.Model):
    """A CLIP model turned into an image classifier (Radford et al. 2021).

    Holds the CLIP model and a fixed, non-trainable class-embedding matrix;
    logits are `scale * image_embedding @ class_embeddings.T`. Saves to and
    loads from `.keras` with its class names.

    Args:
        clip_model: a `keras_clip.CLIPModel`.
        class_embeddings: `(num_classes, embed_dim)` unit rows, e.g. from
            `class_embeddings`; may be `None` with `num_classes` given (the
            weights are then loaded, as when reading a `.keras` file).
        classnames: optional list of class names, kept in the config.
        logit_scale: a fixed scale; `None` uses the CLIP model's learned
            `exp(logit_scale)`.
        num_classes: number of classes when `class_embeddings` is `None`.

    Call arguments:
        images: float32 `(B, S, S, 3)`, preprocessed as `clip_model.preprocess`
            does.

    Returns:
        float32 logits `(B, num_classes)`.

    Example:

    ```python
    clf = build_classifier(model, ["cat", "dog"], "imagenet")
    probs = keras.ops.softmax(clf(model.preprocess(uint8_images)))
    ```
    """

    def __init__(self, clip_model, class_embeddings=None, classnames=None,
                 logit_scale=None, num_classes=None, **kwargs):
        super().__init__(**kwargs)
        if class_embeddings is not None:
            class_embeddings = np.asarray(class_embeddings, dtype="float32")
            if class_embeddings.ndim != 2:
                raise ValueError(
                    "`class_embeddings` must be (num_classes, embed_dim). "
                    f"Received: shape={class_embeddings.shape}"
                )
            num_classes = class_embeddings.shape[0]
        if num_classes is None:
            raise ValueError(
                "Pass `class_embeddings` or `num_classes`. Received neither."
            )
        embed_dim = clip_model.config.embed_dim
        if class_embeddings is not None and class_embeddings.shape[1] != embed_dim:
            raise ValueError(
                f"`class_embeddings` must have {embed_dim} columns (the model's "
                f"embed_dim). Received: shape={class_embeddings.shape}"
            )
        if classnames is not None and len(classnames) != num_classes:
            raise ValueError(
                f"`classnames` must have one name per class ({num_classes}). "
                f"Received: {len(classnames)} names"
            )
        self.clip_model = clip_model
        self.classnames = None if classnames is None else [str(c) for c in classnames]
        self.logit_scale = None if logit_scale is None else float(logit_scale)
        self.num_classes = int(num_classes)
        self.class_embeddings = self.add_weight(
            shape=(self.num_classes, embed_dim),
            initializer="zeros",
            trainable=False,
            dtype="float32",
            name="class_embeddings",
        )
        if class_embeddings is not None:
            self.class_embeddings.assign(class_embeddings)
        self.built = True

    def call(self, images, training=False):
        image = self.clip_model.encode_image(images, training=training)  # (B, E)
        image = ops.cast(image, "float32")
        if self.logit_scale is None:
            scale = ops.exp(self.clip_model.logit_scale)
        else:
            scale = self.logit_scale
        return scale * ops.matmul(image, ops.transpose(self.class_embeddings))

    def get_config(self):
        config = super().get_config()
        config.update(
            clip_model=keras.saving.serialize_keras_object(self.clip_model),
            classnames=self.classnames,
            logit_scale=self.logit_scale,
            num_classes=self.num_classes,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["clip_model"] = keras.saving.deserialize_keras_object(
            config["clip_model"]
        )
        return cls(**config)


def build_classifier(model, classnames, templates=None, batch_size=10,
                     tokenizer=None, logit_scale=None):
    """A `ZeroShotClassifier` for `classnames` from a CLIP model.

    Args:
        model: a `keras_clip.CLIPModel`.
        classnames: list of class-name strings, in label order.
        templates: `None` (the model's `prompt_templates` if it carries
            any, else "a photo of a {}."), `"imagenet"` (OpenAI's 80), or a
            list of templates.
        batch_size: classes embedded per text-encoder call.
        tokenizer: defaults to `model.tokenizer`.
        logit_scale: fixed logit scale; `None` uses the model's.

    Returns:
        A `ZeroShotClassifier` mapping model-ready images to class logits.
    """
    weights = class_embeddings(
        model.encode_text, _tokenizer_of(model, tokenizer), classnames,
        model_templates(model, templates), batch_size=batch_size,
    )
    return ZeroShotClassifier(
        model, weights, classnames=list(classnames), logit_scale=logit_scale
    )


def zero_shot_logits(image_embeddings, class_weights, logit_scale=100.0):
    """`logit_scale * image_embeddings @ class_weights.T` in NumPy."""
    image_embeddings = np.asarray(image_embeddings, dtype="float32")
    return logit_scale * image_embeddings @ np.asarray(class_weights).T


def softmax(logits, axis=-1):
    """Numerically stable NumPy softmax."""
    z = np.asarray(logits, dtype="float64")
    z = np.exp(z - z.max(axis=axis, keepdims=True))
    return (z / z.sum(axis=axis, keepdims=True)).astype("float32")


def classify(model, images, labels, templates=None, batch_size=64, tokenizer=None):
    """Probabilities of each label for each image, zero-shot.

    Args:
        model: a `keras_clip.CLIPModel` (a loaded `.keras` one carries its
            tokenizer and preprocessing settings).
        images: uint8 RGB `(N, H, W, 3)` of any size, a list of images or
            paths; float arrays are taken as already model-ready.
        labels: any label strings.
        templates: `None` uses the templates the model carries
            (`model.prompt_templates`), else "a photo of a {}."; or
            `"imagenet"` or a list.
        batch_size: images per encoder call.
        tokenizer: defaults to `model.tokenizer`.

    Returns:
        float32 NumPy array `(N, len(labels))`, rows summing to 1.

    Example:

    ```python
    model = keras.saving.load_model("clip.keras")
    probs = classify(model, images, ["a cat", "a dog", "a rocket"])
    ```
    """
    weights = class_embeddings(
        model.encode_text, _tokenizer_of(model, tokenizer), labels,
        model_templates(model, templates),
    )
    image = encode_images(model, images, batch_size=batch_size)
    scale = float(np.exp(_to_numpy(model.logit_scale)))
    return softmax(zero_shot_logits(image, weights, scale))


Prediction = collections.namedtuple("Prediction", ["labels", "scores", "indices"])
Prediction.__doc__ = """Top-k zero-shot predictions for a batch of images.

Fields:
    labels: list (one entry per image) of lists of the `k` best label
        strings, best first.
    scores: float32 `(N, k)`: their probabilities among all labels.
    indices: int `(N, k)`: their positions in the `labels` given.
"""


def predict(model, images, labels, top_k=5, templates=None, batch_size=64,
            tokenizer=None):
    """The `top_k` most likely labels of each image, with their probabilities.

    `classify` as a result a person can read: for each image its best labels
    and their probabilities among all `labels`.

    Args:
        model: a `keras_clip.CLIPModel`.
        images: as for `classify` (uint8 or float arrays, a list, paths).
        labels: label strings.
        top_k: how many labels per image (at most `len(labels)`).
        templates: `None` uses the templates the model carries
            (`model.prompt_templates`), else "a photo of a {}."; or a set's
            name ("imagenet") or a list.
        batch_size: images per encoder call.
        tokenizer: defaults to `model.tokenizer`.

    Returns:
        A `Prediction(labels, scores, indices)`.

    Example:

    ```python
    result = zero_shot.predict(model, images, ["cat", "dog", "rocket"], top_k=2)
    for names, scores in zip(result.labels, result.scores):
        print(", ".join(f"{n} {s:.2f}" for n, s in zip(names, scores)))
    ```
    """
    labels = [str(label) for label in labels]
    if not isinstance(top_k, int) or not 1 <= top_k <= len(labels):
        raise ValueError(
            f"`top_k` must be an integer from 1 to len(labels)={len(labels)}. "
            f"Received: top_k={top_k!r}"
        )
    probs = classify(model, images, labels, templates=templates,
                     batch_size=batch_size, tokenizer=tokenizer)
    # Stable sort on the negated probabilities: ties keep label order.
    indices = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]
    scores = np.take_along_axis(probs, indices, axis=1)
    names = [[labels[j] for j in row] for row in indices]
    return Prediction(names, scores.astype("float32"), indices)


# ---- metrics ------------------------------------------------------------


def _check_logits_labels(logits, labels):
    logits = np.asarray(logits)
    labels = np.asarray(labels).astype("int64")
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(
            "Expected logits (N, num_classes) and labels (N,). "
            f"Received: logits.shape={logits.shape}, labels.shape={labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= logits.shape[1]):
        raise ValueError(
            f"`labels` must be in [0, {logits.shape[1]}). "
            f"Received: min={labels.min()}, max={labels.max()}"
        )
    return logits, labels


def true_class_rank(logits, labels):
    """1-based rank of the true class per row; ties count against it."""
    logits, labels = _check_logits_labels(logits, labels)
    true = logits[np.arange(len(labels)), labels][:, None]
    return (logits >= true).sum(axis=1)  # The true class itself counts once.


def accuracy(logits, labels, k=1):
    """Top-`k` accuracy: the share of rows whose true class ranks <= k.

    A tie with the true class counts as ranking above it, so a constant
    classifier scores 0 rather than 1.

    Args:
        logits: `(N, num_classes)` scores.
        labels: `(N,)` integer labels.
        k: how many top classes count as a hit.

    Returns:
        A Python float in [0, 1].
    """
    return float(np.mean(true_class_rank(logits, labels) <= k))


def per_class_accuracy(logits, labels):
    """Top-1 accuracy of each class `(num_classes,)`; NaN for absent classes."""
    logits, labels = _check_logits_labels(logits, labels)
    hits = true_class_rank(logits, labels) == 1
    totals = np.bincount(labels, minlength=logits.shape[1])
    correct = np.bincount(labels, weights=hits, minlength=logits.shape[1])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, correct / np.maximum(totals, 1), np.nan)


def confusion_matrix(logits, labels):
    """Counts `(num_classes, num_classes)`: row = true class, column = argmax."""
    logits, labels = _check_logits_labels(logits, labels)
    n = logits.shape[1]
    predicted = logits.argmax(axis=1)
    return np.bincount(labels * n + predicted, minlength=n * n).reshape(n, n)


def most_confused(logits, labels, classnames=None, top=10):
    """The most frequent off-diagonal (true, predicted) pairs.

    Returns:
        A list of up to `top` tuples `(true, predicted, count)`, most
        frequent first, with class names when `classnames` is given.
    """
    matrix = confusion_matrix(logits, labels)
    np.fill_diagonal(matrix, 0)
    flat = np.argsort(-matrix, axis=None, kind="stable")[:top]
    name = (lambda i: classnames[i]) if classnames is not None else int
    n = matrix.shape[1]
    return [
        (name(i // n), name(i % n), int(matrix.flat[i]))
        for i in flat
        if matrix.flat[i] > 0
    ]


def evaluate_logits(logits, labels, classnames=None, top_confused=10):
    """Summary of a zero-shot run: top-1 / top-5, per-class, confusions.

    Returns:
        dict with `"top1"`, `"top5"` (top-min(5, C)), `"mean_per_class"`
        (mean of per-class top-1 over present classes), `"per_class"` (a
        NumPy array) and `"most_confused"`.
    """
    logits, labels = _check_logits_labels(logits, labels)
    per_class = per_class_accuracy(logits, labels)
    return {
        "top1": accuracy(logits, labels, 1),
        "top5": accuracy(logits, labels, min(5, logits.shape[1])),
        "mean_per_class": float(np.nanmean(per_class)),
        "per_class": per_class,
        "most_confused": most_confused(logits, labels, classnames, top_confused),
    }
