"""CLIP's contrastive objective: pure `keras.ops` functions, and the
`ContrastiveLoss` object that `CLIPModel.compile` takes, which holds the
training options of the loss and runs it over the global batch.

Everything here runs in float32 whatever the model's compute dtype, so the
softmax over a large batch and the temperature keep full precision under
mixed precision.
"""

import functools

import keras
from keras import ops

from keras_clip import distributed
from keras_clip.distributed import _LazyAutogradFunction

_TORCH = keras.backend.backend() == "torch"


def clip_logits(image_embeddings, text_embeddings, log_scale, max_log_scale):
    """Scaled cosine similarities between every image and every text.

    Args:
        image_embeddings: `(N, E)` image embeddings (normalised or not).
        text_embeddings: `(M, E)` text embeddings (normalised or not).
        log_scale: scalar, the learnable log temperature.
        max_log_scale: the clamp; the logits are never scaled by more than
            `exp(max_log_scale)`, even between two optimiser updates.

    Returns:
        `(N, M)` float32 logits `exp(min(log_scale, max)) * cos(image, text)`.
    """
    image = l2_normalize(image_embeddings)
    text = l2_normalize(text_embeddings)
    scale = ops.exp(ops.minimum(ops.cast(log_scale, "float32"), max_log_scale))
    return scale * ops.matmul(image, ops.transpose(text))  # (N, M)


def l2_normalize(x, epsilon=1e-12):
    """Unit-length rows, computed in float32."""
    if _TORCH and not isinstance(x, keras.KerasTensor):
        # The same four ops as direct torch calls: Keras's eager dispatch
        # costs ~10 us an op, as much as the arithmetic at small sizes.
        import torch

        x = torch.as_tensor(x).float()
        return x / torch.sqrt(torch.clamp_min(x.square().sum(-1, keepdim=True), epsilon))
    x = ops.cast(x, "float32")
    norm = ops.sqrt(ops.maximum(ops.sum(ops.square(x), axis=-1, keepdims=True), epsilon))
    return x / norm


def _target_log_likelihood(log_probs, labels, label_smoothing):
    # Per row, sum_j target_j * log p_j for a target that puts 1 - eps on
    # the label and eps spread evenly over all M columns:
    # (1 - eps) * log p_label + eps * mean_j(log p_j).
    picked = ops.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
    if not label_smoothing:
        return picked
    uniform = ops.mean(log_probs, axis=-1)
    return (1.0 - label_smoothing) * picked + label_smoothing * uniform


def _cross_entropy(logits, labels, label_smoothing=0.0):
    # Mean over rows of the cross-entropy against the (smoothed) target.
    log_probs = ops.log_softmax(logits, axis=-1)
    return -ops.mean(_target_log_likelihood(log_probs, labels, label_smoothing))


def _check_label_smoothing(label_smoothing):
    """Returns `label_smoothing` as a float in [0, 1), or raises."""
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float)):
        raise ValueError(
            "Expected `label_smoothing` to be a float in [0, 1). "
            f"Received: {label_smoothing!r} of type {type(label_smoothing).__name__}"
        )
    if not 0.0 <= float(label_smoothing) < 1.0:
        raise ValueError(
            "Expected `label_smoothing` to be a float in [0, 1). "
            f"Received: {label_smoothing!r}"
        )
    return float(label_smoothing)


def _accuracy(logits, labels):
    hits = ops.equal(ops.argmax(logits, axis=-1), labels)
    return ops.mean(ops.cast(hits, "float32"))


def contrastive_loss(logits_per_image, logits_per_text=None, labels=None,
                     label_smoothing=0.0):
    """Symmetric cross-entropy of CLIP (Radford et al. 2021, Figure 3).

    The image at row `i` is paired with the text at column `labels[i]`
    (the diagonal by default); the loss is the mean of the image->text and
    text->image cross-entropies.

    Args:
        logits_per_image: `(N, M)` logits, images as rows.
        logits_per_text: `(M, N)` logits, texts as rows; the transpose of
            `logits_per_image` when omitted.
        labels: `(N,)` int column of each image's positive text; defaults to
            `arange(N)`. With `N != M` (one shard's rows against a gathered
            batch) pass the offset labels and the matching text rows.
        label_smoothing: float in [0, 1); each row's target puts
            `1 - label_smoothing` on its positive and spreads
            `label_smoothing` evenly over all of its columns (as
            `keras.losses.CategoricalCrossentropy(label_smoothing=...)`),
            on both sides. 0 is the paper's loss.

    Returns:
        A tuple `(loss, image_to_text_accuracy, text_to_image_accuracy)` of
        float32 scalars.
    """
    label_smoothing = _check_label_smoothing(label_smoothing)
    logits_per_image = ops.cast(logits_per_image, "float32")
    if logits_per_text is None:
        logits_per_text = ops.transpose(logits_per_image)
    logits_per_text = ops.cast(logits_per_text, "float32")
    if labels is None:
        labels = ops.arange(ops.shape(logits_per_image)[0], dtype="int32")
    labels = ops.cast(labels, "int32")
    loss = 0.5 * (
        _cross_entropy(logits_per_image, labels, label_smoothing)
        + _cross_entropy(logits_per_text, labels, label_smoothing)
    )
    return (
        loss,
        _accuracy(logits_per_image, labels),
        _accuracy(logits_per_text, labels),
    )


def chunked_contrastive_loss(image, text, scale, chunk_size, labels=None,
                             all_image=None, all_text=None, label_smoothing=0.0):
    """`contrastive_loss` computed in blocks of rows, with a blockwise gradient.

    Only one `(chunk_size, M)` block of logits is alive at a time, in the
    forward and in the backward pass, instead of the whole `(N, M)` matrix:
    the blocks run inside a loop primitive (`ops.fori_loop`: an XLA / TF
    while loop, a Python loop on torch) and the gradient is written by hand
    (`softmax - target` per block, recomputed), so no backend stores the
    blocks for the backward pass. Value and gradients equal the unchunked
    loss.

    Args:
        image: `(N, E)` unit image embeddings (this replica's rows).
        text: `(N, E)` unit text embeddings (this replica's rows).
        scale: scalar float32 logit scale (already clamped and exponentiated).
        chunk_size: int, rows per block; `N` need not be a multiple of it.
        labels: `(N,)` column of each row's positive; defaults to `arange(N)`.
        all_image, all_text: `(M, E)` columns (the gathered global batch);
            default to `image` / `text`.
        label_smoothing: float in [0, 1), as in `contrastive_loss`.

    Returns:
        `(loss, image_to_text_accuracy, text_to_image_accuracy)` as in
        `contrastive_loss`.
    """
    label_smoothing = _check_label_smoothing(label_smoothing)
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"Expected a positive int `chunk_size`. Received: {chunk_size!r}")
    image = ops.cast(image, "float32")
    text = ops.cast(text, "float32")
    all_image = image if all_image is None else ops.cast(all_image, "float32")
    all_text = text if all_text is None else ops.cast(all_text, "float32")
    n = image.shape[0]
    if n is None:
        raise ValueError(
            "Expected a static batch size for the chunked loss (batch the "
            "dataset with drop_remainder=True). Received: an unknown size"
        )
    if labels is None:
        labels = ops.arange(n, dtype="int32")
    labels = ops.cast(labels, "int32")
    scale = ops.cast(scale, "float32")
    i2t_nll, i2t_hits = _blocked_cross_entropy(
        image, all_text, scale, labels, chunk_size, label_smoothing)
    t2i_nll, t2i_hits = _blocked_cross_entropy(
        text, all_image, scale, labels, chunk_size, label_smoothing)
    return 0.5 * (i2t_nll + t2i_nll) / n, i2t_hits / n, t2i_hits / n


def _check_optional_positive_int(name, value):
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, int) or value < 1
    ):
        raise ValueError(
            f"Expected `{name}` to be a positive int or None. Received: {value!r}"
        )
    return value


@keras.saving.register_keras_serializable(package="keras_clip")
class ContrastiveLoss:
    """CLIP's symmetric contrastive loss over the global batch (Radford et al. 2021).

    The loss that `CLIPModel.fit` trains with: every image of the global
    batch against every caption of it, softmax cross-entropy in both
    directions (`contrastive_loss`). The object holds the training options
    of the loss path and runs the whole of it, from one replica's
    embeddings to the value to differentiate:

    1. the embeddings are L2-normalised in float32 and gathered from every
       replica with a gradient (`keras_clip.distributed.global_batch`:
       `tf.distribute` all-gather, `torch.distributed` differentiable
       gather; JAX's global arrays already hold the whole batch);
    2. this replica's rows meet every column, whole or in blocks of
       `chunk_size` rows (`chunked_contrastive_loss`);
    3. the value is made ready for the replicas' gradient reduction and the
       accuracies are averaged over them (`keras_clip.distributed.replica_loss`).

    Pass it to `CLIPModel.compile(loss=...)`, which saves it in the model's
    compile config. An option of the loss path is an argument here, saved by
    `get_config`; a loss with other maths (e.g. SigLIP's sigmoid loss, whose
    learnable bias the model would pass as `bias`) replaces `local_loss`.

    Args:
        label_smoothing: float in [0, 1); both cross-entropies aim at
            `1 - label_smoothing` on the positive plus `label_smoothing`
            spread over all of the global batch's columns (as
            `keras.losses.CategoricalCrossentropy(label_smoothing=...)`).
            0, the paper's loss, by default.
        chunk_size: int or `None`; computes the loss in blocks of this many
            rows, each recomputed in the backward pass, so at most
            `(chunk_size, global batch)` logits are alive at a time. Same
            value and gradients; for very large batches (docs/scaling.md).
        micro_batches: int or `None`; negative-preserving gradient
            accumulation, the towers' side of the loss path: `CLIPModel`
            runs each training batch through the towers in this many
            slices whose activations are recomputed in the backward pass,
            and the loss sees all of the batch's negatives. Same loss and
            gradients as the whole batch at once, with the activation
            memory of one slice. (Keras's optimizer-level
            `gradient_accumulation_steps` instead averages the gradients of
            separate small batches: fewer negatives, a different loss.)

    Call arguments:
        image_embeddings: `(b, E)` this replica's image embeddings (any
            length; normalised here).
        text_embeddings: `(b, E)` this replica's text embeddings.
        scale: float32 scalar, the logit scale `exp(logit_scale)` as the
            model clamps it.
        bias: a learnable logit bias, for losses that have one; must be
            `None` here (no shift common to a row changes its softmax).

    Returns:
        `(loss, metrics)`: `loss`, the float32 scalar to differentiate on
        this replica (the global batch's loss; divided by the replica count
        under `tf.distribute`, as Keras expects), and `metrics`, the dict
        `{"i2t_accuracy": ..., "t2i_accuracy": ...}` of float32 scalars.

    Example:

    ```python
    model = keras_clip.CLIPModel.from_preset("tiny-vit")
    model.compile(
        optimizer=keras_clip.make_optimizer(model, total_steps=1000),
        loss=keras_clip.ContrastiveLoss(label_smoothing=0.1, chunk_size=256),
    )
    ```
    """

    def __init__(self, label_smoothing=0.0, chunk_size=None, micro_batches=None):
        self.label_smoothing = _check_label_smoothing(label_smoothing)
        self.chunk_size = _check_optional_positive_int("chunk_size", chunk_size)
        self.micro_batches = _check_optional_positive_int("micro_batches", micro_batches)

    def __call__(self, image_embeddings, text_embeddings, scale, bias=None):
        if bias is not None:
            raise ValueError(
                "ContrastiveLoss takes no logit bias: a shift common to a "
                "row of logits leaves its softmax unchanged. "
                f"Received: bias={bias!r}"
            )
        context = distributed.replica_context()
        image = l2_normalize(image_embeddings)
        text = l2_normalize(text_embeddings)
        all_image, all_text, labels = distributed.global_batch(image, text, context)
        global_size = all_image.shape[0]
        if global_size is not None and global_size < 2:
            # Known when the batch's shape is (eager, JAX, torch; not in a TF
            # graph with an unknown batch): a lone pair has no negatives,
            # its loss is 0 whatever the weights.
            raise ValueError(
                "Expected a global batch of at least 2 pairs: a contrastive "
                "batch of one has no negatives and learns nothing. Received: "
                f"{global_size} pair. Use a batch size of 2 or more, and drop "
                "a last batch of one (the keras_clip.data sources do)."
            )
        loss, i2t, t2i = self.local_loss(
            image, text, all_image, all_text, labels, ops.cast(scale, "float32")
        )
        metrics = {"i2t_accuracy": i2t, "t2i_accuracy": t2i}
        return distributed.replica_loss(loss, metrics, context)

    def local_loss(self, image, text, all_image, all_text, labels, scale):
        """The loss and accuracies of this replica's rows against all columns.

        Args:
            image, text: `(b, E)` this replica's unit embeddings.
            all_image, all_text: `(B, E)` the global batch's.
            labels: `(b,)` int32 positions of this replica's rows in it.
            scale: float32 scalar logit scale.

        Returns:
            `(loss, image_to_text_accuracy, text_to_image_accuracy)`.
        """
        if self.chunk_size:
            return chunked_contrastive_loss(
                image, text, scale, self.chunk_size, labels, all_image, all_text,
                label_smoothing=self.label_smoothing,
            )
        logits_per_image, logits_per_text = distributed.sharded_logits(
            image, text, all_image, all_text, scale
        )  # (b, B) each
        return contrastive_loss(
            logits_per_image, logits_per_text, labels,
            label_smoothing=self.label_smoothing,
        )

    def get_config(self):
        return {
            "label_smoothing": self.label_smoothing,
            "chunk_size": self.chunk_size,
            "micro_batches": self.micro_batches,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        options = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({options})"


# The blockwise cross-entropy: sums over rows of -log softmax(scale * R C^T)
# against each row's (smoothed) target, and of argmax hits. `_blocks_forward` /
# `_blocks_backward` are plain `keras.ops` loops shared by the three
# backends; `_blocked_cross_entropy` attaches the backward to the forward
# with each backend's own custom-gradient mechanism.


def _padded_rows(rows, labels, chunk):
    # Pads N rows up to a multiple of `chunk`; padded rows get weight 0.
    n = rows.shape[0]
    blocks = -(-n // chunk)
    pad = blocks * chunk - n
    weights = ops.ones((n,), "float32")
    if pad:
        rows = ops.pad(rows, [[0, pad], [0, 0]])
        labels = ops.pad(labels, [[0, pad]])
        weights = ops.pad(weights, [[0, pad]])
    return rows, labels, weights, blocks


def _block(rows, labels, weights, i, chunk):
    start = i * chunk
    width = rows.shape[1]
    return (
        ops.slice(rows, [start, 0], [chunk, width]),
        ops.slice(labels, [start], [chunk]),
        ops.slice(weights, [start], [chunk]),
    )


def _blocks_forward(rows, columns, scale, labels, chunk, smoothing):
    rows, labels, weights, blocks = _padded_rows(rows, labels, chunk)

    def body(i, totals):
        nll, hits = totals
        r, y, w = _block(rows, labels, weights, i, chunk)
        logits = scale * ops.matmul(r, ops.transpose(columns))
        log_probs = ops.log_softmax(logits, axis=-1)
        picked = _target_log_likelihood(log_probs, y, smoothing)
        hit = ops.cast(ops.equal(ops.argmax(logits, axis=-1), y), "float32")
        return nll - ops.sum(w * picked), hits + ops.sum(w * hit)

    zero = ops.zeros((), "float32")
    return ops.fori_loop(0, blocks, body, (zero, zero))


def _blocks_backward(rows, columns, scale, labels, chunk, smoothing, upstream):
    n = rows.shape[0]
    rows, labels, weights, blocks = _padded_rows(rows, labels, chunk)
    m = ops.shape(columns)[0]  # dynamic under a TF replica all-gather

    def body(i, grads):
        d_rows, d_columns, d_scale = grads
        r, y, w = _block(rows, labels, weights, i, chunk)
        cosines = ops.matmul(r, ops.transpose(columns))
        probs = ops.softmax(scale * cosines, axis=-1)
        # d(cross-entropy) / d logits = softmax - target, per weighted row;
        # the target is (1 - eps) one_hot + eps / M.
        target = ops.one_hot(y, m, dtype="float32")
        if smoothing:
            target = (1.0 - smoothing) * target + smoothing / ops.cast(m, "float32")
        g = (probs - target) * (upstream * w)[:, None]
        d_rows = ops.slice_update(
            d_rows, [i * chunk, 0], scale * ops.matmul(g, columns)
        )
        d_columns = d_columns + scale * ops.matmul(ops.transpose(g), r)
        d_scale = d_scale + ops.sum(g * cosines)
        return d_rows, d_columns, d_scale

    init = (ops.zeros_like(rows), ops.zeros_like(columns), ops.zeros((), "float32"))
    d_rows, d_columns, d_scale = ops.fori_loop(0, blocks, body, init)
    return d_rows[:n], d_columns, d_scale


def _blocked_cross_entropy(rows, columns, scale, labels, chunk, smoothing):
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        return _jax_blocked(chunk, smoothing)(rows, columns, scale, labels)
    if backend == "torch":
        return _TorchBlocked.apply(rows, columns, scale, labels, chunk, smoothing)
    if backend == "tensorflow":
        return _tf_blocked(rows, columns, scale, labels, chunk, smoothing)
    # Other backends: autodiff through the loop (correct, not memory-bounded).
    return _blocks_forward(rows, columns, scale, labels, chunk, smoothing)


def _tf_blocked(rows, columns, scale, labels, chunk, smoothing):
    import tensorflow as tf

    @tf.custom_gradient
    def blocked(rows, columns, scale):
        nll, hits = _blocks_forward(rows, columns, scale, labels, chunk, smoothing)

        def grad(d_nll, d_hits):
            del d_hits  # Accuracy has no gradient.
            return _blocks_backward(
                rows, columns, scale, labels, chunk, smoothing, d_nll)

        return (nll, tf.stop_gradient(hits)), grad

    return blocked(rows, columns, scale)


@functools.lru_cache(maxsize=None)
def _jax_blocked(chunk, smoothing):
    """The blockwise cross-entropy with its VJP, one per (chunk, smoothing)."""
    import jax
    import numpy as np

    @jax.custom_vjp
    def blocked(rows, columns, scale, labels):
        return _blocks_forward(rows, columns, scale, labels, chunk, smoothing)

    def forward(rows, columns, scale, labels):
        return blocked(rows, columns, scale, labels), (rows, columns, scale, labels)

    def backward(saved, cotangents):
        rows, columns, scale, labels = saved
        d_rows, d_columns, d_scale = _blocks_backward(
            rows, columns, scale, labels, chunk, smoothing, cotangents[0]
        )
        # Integer labels take a float0 (no-gradient) cotangent.
        return d_rows, d_columns, d_scale, np.zeros(labels.shape, jax.dtypes.float0)

    blocked.defvjp(forward, backward)
    return blocked


def _torch_blocked_function():
    import torch

    class Blocked(torch.autograd.Function):
        @staticmethod
        def forward(ctx, rows, columns, scale, labels, chunk, smoothing):
            ctx.save_for_backward(rows, columns, scale, labels)
            ctx.chunk = chunk
            ctx.smoothing = smoothing
            nll, hits = _blocks_forward(rows, columns, scale, labels, chunk, smoothing)
            ctx.mark_non_differentiable(hits)
            return nll, hits

        @staticmethod
        def backward(ctx, d_nll, d_hits):
            rows, columns, scale, labels = ctx.saved_tensors
            with torch.no_grad():
                grads = _blocks_backward(
                    rows, columns, scale, labels, ctx.chunk, ctx.smoothing, d_nll)
            return (*grads, None, None, None)

    return Blocked


_TorchBlocked = _LazyAutogradFunction(_torch_blocked_function)
