"""Figures a user would rather look at than read (PNG, via Matplotlib).

- `training_curves`: loss, retrieval accuracies and logit scale per epoch.
- `similarity_matrix`: cosine similarities of a few images against their
  captions, images along the top, as in the CLIP blog's figure.
- `prediction_grid`: images with their top-3 zero-shot labels.

Each function takes NumPy data, writes one PNG and returns its path. The
non-interactive "Agg" backend is used, so no display is needed.
"""

import os

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path):
    plt = _pyplot()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _as_display_images(images):
    """uint8 `(N, H, W, 3)` for display; floats are taken as `[0, 1]` or `[0, 255]`."""
    images = [np.asarray(image) for image in images]
    out = []
    for image in images:
        if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
            raise ValueError(
                "Expected images of shape (H, W, 1|3|4). "
                f"Received: an image of shape {image.shape}"
            )
        if image.dtype.kind == "f":
            scale = 255.0 if image.max() <= 1.0 else 1.0
            image = np.clip(image * scale, 0, 255).astype("uint8")
        out.append(image[..., :3] if image.shape[-1] != 1 else np.repeat(image, 3, -1))
    return out


def _curve_panels(history):
    """Groups history keys into (title, [keys]) panels that exist."""
    panels = [
        ("contrastive loss", ["loss", "val_loss"]),
        (
            "in-batch retrieval accuracy",
            ["i2t_accuracy", "t2i_accuracy", "val_i2t_accuracy", "val_t2i_accuracy"],
        ),
        ("logit scale (1 / temperature)", ["logit_scale"]),
        # Logged by Keras's LearningRateScheduler, TimeBudgetCosineDecay and
        # the training driver.
        ("learning rate (last step of the epoch)", ["learning_rate"]),
        # Logged by the data pipeline's SkipCountLogger.
        ("skipped samples (per epoch)", ["skipped_samples"]),
    ]
    used = {key for _, keys in panels for key in keys}
    # Evaluation callbacks' numbers (zero-shot, retrieval) get a panel too.
    extra = sorted(
        key for key in history if key not in used and key != "epoch"
    )
    if extra:
        panels.append(("evaluation", extra))
    return [
        (title, [key for key in keys if key in history and len(history[key])])
        for title, keys in panels
        if any(key in history and len(history[key]) for key in keys)
    ]


# Logged at every epoch, so a NaN in them is a value, not a gap.
EVERY_EPOCH = ("loss", "i2t_accuracy", "t2i_accuracy", "logit_scale")


def non_finite_epochs(history):
    """The 1-based epochs where a metric logged every epoch was NaN or infinite."""
    epochs = set()
    for key in EVERY_EPOCH:
        values = np.asarray(history.get(key, []), dtype="float64")
        epochs.update(int(i) + 1 for i in np.flatnonzero(~np.isfinite(values)))
    return sorted(epochs)


def training_curves(history, path):
    """Loss, accuracies, logit scale (and learning rate) against the epoch.

    Args:
        history: dict of metric name -> list of per-epoch values (a Keras
            `History.history`); an `"epoch"` list, if present, is the x axis.
            A shorter list (a metric logged every N epochs) is drawn at
            epochs N, 2N, ...; NaN entries are left out, and an epoch whose
            loss, accuracies or logit scale was not finite (a failed run)
            is marked with a red dashed line in every panel.
        path: output PNG path.

    Returns:
        `path`.
    """
    panels = _curve_panels(history)
    if not panels:
        raise ValueError(
            "Expected a history with at least one non-empty metric (e.g. "
            f"'loss'). Received: {dict(history)}"
        )
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    axes = np.atleast_1d(axes)
    epochs = max(len(v) for v in history.values())
    failed = non_finite_epochs(history)
    for ax, (title, keys) in zip(axes, panels):
        for epoch in failed:
            ax.axvline(epoch, color="red", ls="--", lw=1, label="not finite")
        for key in keys:
            values = np.asarray(history[key], dtype="float64")
            if len(values) == epochs:
                x = np.asarray(history.get("epoch", np.arange(epochs)), "float64") + 1
            else:
                # A callback that logs every N epochs leaves a shorter list
                # (Keras's History keeps no epoch numbers): epochs N, 2N, ...
                stride = epochs // len(values)
                x = stride * (np.arange(len(values)) + 1.0)
            keep = np.isfinite(values)
            ax.plot(x[keep], values[keep], marker="o" if len(values) < 30 else None, ms=3, label=key)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def similarity_matrix(images, captions, similarity, path, title=None):
    """Cosine similarity of images (columns) and captions (rows), annotated.

    Args:
        images: `N` images (uint8 or float arrays `(H, W, 3)`).
        captions: `M` strings.
        similarity: array `(M, N)` of cosine similarities (text x image).
        path: output PNG path.
        title: optional figure title.

    Returns:
        `path`.
    """
    similarity = np.asarray(similarity, dtype="float64")
    images = _as_display_images(images)
    if similarity.shape != (len(captions), len(images)):
        raise ValueError(
            f"Expected `similarity` of shape (len(captions), len(images)) = "
            f"({len(captions)}, {len(images)}). Received: {similarity.shape}"
        )
    plt = _pyplot()
    n, m = len(images), len(captions)
    fig = plt.figure(figsize=(1.0 + 0.75 * n + 2.8, 0.75 * (m + 1.4)))
    # Axes in figure fractions: a label column on the left, images on top.
    left = 2.8 / (1.0 + 0.75 * n + 2.8)
    width = 0.75 * n / (1.0 + 0.75 * n + 2.8)
    top_band = 1.0 / (m + 1.4)
    ax = fig.add_axes([left, 0.02, width, 1 - top_band - 0.04])
    ax.imshow(similarity, cmap="viridis", aspect="auto")
    for i in range(m):
        for j in range(n):
            value = similarity[i, j]
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if value < similarity.mean() else "black")
    ax.set_xticks([])
    ax.set_yticks(range(m))
    ax.set_yticklabels([c if len(c) <= 40 else c[:37] + "..." for c in captions], fontsize=8)
    for j, image in enumerate(images):
        iax = fig.add_axes([left + width * j / n, 1 - top_band - 0.01, width / n, top_band * 0.95])
        iax.imshow(image)
        iax.axis("off")
    if title:
        fig.suptitle(title, y=1.0 + 0.3 / (m + 1.4))
    return _save(fig, path)


def prediction_grid(images, probabilities, labels, path, true_labels=None, columns=6, top=3):
    """Images with their `top` most probable labels, the true one marked.

    Args:
        images: `N` images (uint8 or float arrays `(H, W, 3)`).
        probabilities: array `(N, C)` of class probabilities.
        labels: `C` class names.
        path: output PNG path.
        true_labels: optional `N` integer class indices; correct predictions
            are drawn green, wrong ones red.
        columns: images per row.
        top: labels shown per image.

    Returns:
        `path`.
    """
    probabilities = np.asarray(probabilities, dtype="float64")
    images = _as_display_images(images)
    if probabilities.shape != (len(images), len(labels)):
        raise ValueError(
            f"Expected `probabilities` of shape (len(images), len(labels)) = "
            f"({len(images)}, {len(labels)}). Received: {probabilities.shape}"
        )
    plt = _pyplot()
    n = len(images)
    rows = max(1, -(-n // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 3.4 * rows))
    axes = np.atleast_1d(axes).reshape(-1)
    for k, ax in enumerate(axes):
        ax.axis("off")
        if k >= n:
            continue
        ax.imshow(images[k])
        order = np.argsort(-probabilities[k])[:top]
        lines = []
        for rank, c in enumerate(order):
            name = labels[c] if len(labels[c]) <= 26 else labels[c][:23] + "..."
            lines.append(f"{rank + 1}. {name} {probabilities[k, c]:.0%}")
        color = "black"
        if true_labels is not None:
            truth = int(true_labels[k])
            color = "green" if order[0] == truth else "red"
            if truth not in order:
                name = labels[truth] if len(labels[truth]) <= 22 else labels[truth][:19] + "..."
                lines.append(f"true: {name}")
        ax.set_title("\n".join(lines), fontsize=7, loc="left", color=color)
    fig.tight_layout()
    return _save(fig, path)
