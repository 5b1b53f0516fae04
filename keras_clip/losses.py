"""CLIP's contrastive objective as pure `keras.ops` functions.

Everything here runs in float32 whatever the model's compute dtype, so the
softmax over a large batch and the temperature keep full precision under
mixed precision.
"""

from keras import ops


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
    x = ops.cast(x, "float32")
    norm = ops.sqrt(ops.maximum(ops.sum(ops.square(x), axis=-1, keepdims=True), epsilon))
    return x / norm


def _cross_entropy(logits, labels):
    # Mean over rows of -log softmax(logits)[row, label].
    log_probs = ops.log_softmax(logits, axis=-1)
    picked = ops.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
    return -ops.mean(picked)


def _accuracy(logits, labels):
    hits = ops.equal(ops.argmax(logits, axis=-1), labels)
    return ops.mean(ops.cast(hits, "float32"))


def contrastive_loss(logits_per_image, logits_per_text=None, labels=None):
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

    Returns:
        A tuple `(loss, image_to_text_accuracy, text_to_image_accuracy)` of
        float32 scalars.
    """
    logits_per_image = ops.cast(logits_per_image, "float32")
    if logits_per_text is None:
        logits_per_text = ops.transpose(logits_per_image)
    logits_per_text = ops.cast(logits_per_text, "float32")
    if labels is None:
        labels = ops.arange(ops.shape(logits_per_image)[0], dtype="int32")
    labels = ops.cast(labels, "int32")
    loss = 0.5 * (
        _cross_entropy(logits_per_image, labels)
        + _cross_entropy(logits_per_text, labels)
    )
    return (
        loss,
        _accuracy(logits_per_image, labels),
        _accuracy(logits_per_text, labels),
    )


def chunked_contrastive_loss(image, text, scale, chunk_size, labels=None,
                             all_image=None, all_text=None):
    """`contrastive_loss` computed in blocks of rows, each recomputed for the gradient.

    Only one `(chunk_size, M)` block of logits is alive at a time, in the
    forward pass and (through `keras.remat`) in the backward pass, instead of
    the whole `(N, M)` matrix. Value and gradients equal the unchunked loss.

    Args:
        image: `(N, E)` unit image embeddings (this replica's rows).
        text: `(N, E)` unit text embeddings (this replica's rows).
        scale: scalar float32 logit scale (already clamped and exponentiated).
        chunk_size: int, rows per block; `N` need not be a multiple of it.
        labels: `(N,)` column of each row's positive; defaults to `arange(N)`.
        all_image, all_text: `(M, E)` columns (the gathered global batch);
            default to `image` / `text`.

    Returns:
        `(loss, image_to_text_accuracy, text_to_image_accuracy)` as in
        `contrastive_loss`.
    """
    import keras

    if not isinstance(chunk_size, int) or chunk_size < 1:
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

    def block(rows, columns, block_labels, scale):
        logits = scale * ops.matmul(rows, ops.transpose(columns))
        log_probs = ops.log_softmax(logits, axis=-1)
        picked = ops.take_along_axis(log_probs, block_labels[:, None], axis=-1)[:, 0]
        hits = ops.cast(ops.equal(ops.argmax(logits, axis=-1), block_labels), "float32")
        return -ops.sum(picked), ops.sum(hits)

    block = keras.remat(block)
    totals = []
    for rows, columns in ((image, all_text), (text, all_image)):
        loss_sum, hit_sum = 0.0, 0.0
        for start in range(0, n, chunk_size):
            stop = min(start + chunk_size, n)
            nll, hits = block(rows[start:stop], columns, labels[start:stop], scale)
            loss_sum = loss_sum + nll
            hit_sum = hit_sum + hits
        totals.append((loss_sum / n, hit_sum / n))
    (i2t_loss, i2t_acc), (t2i_loss, t2i_acc) = totals
    return 0.5 * (i2t_loss + t2i_loss), i2t_acc, t2i_acc
