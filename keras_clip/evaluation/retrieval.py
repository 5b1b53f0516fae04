"""Image-text retrieval metrics: recall@K, mean and median rank.

As used for CLIP's zero-shot Flickr30k / MSCOCO results (Radford et al. 2021,
table 13). Inputs are embedding arrays; `evaluate_retrieval` wires a model in.
Several captions per image are described by `text_to_image`, the index of
each caption's image.
"""

import numpy as np

from keras_clip.evaluation.zero_shot import encode_images, encode_texts


def _check(image_embeddings, text_embeddings, text_to_image):
    image_embeddings = np.asarray(image_embeddings, dtype="float32")
    text_embeddings = np.asarray(text_embeddings, dtype="float32")
    if image_embeddings.ndim != 2 or text_embeddings.ndim != 2 or (
        image_embeddings.shape[1] != text_embeddings.shape[1]
    ):
        raise ValueError(
            "Expected image embeddings (N_images, E) and text embeddings "
            "(N_texts, E). Received: "
            f"{image_embeddings.shape} and {text_embeddings.shape}"
        )
    n_img, n_txt = len(image_embeddings), len(text_embeddings)
    if text_to_image is None:
        if n_img != n_txt:
            raise ValueError(
                "Without `text_to_image`, caption i must belong to image i, so "
                "the counts must match. Received: "
                f"{n_img} images and {n_txt} texts"
            )
        text_to_image = np.arange(n_txt)
    text_to_image = np.asarray(text_to_image).astype("int64")
    if text_to_image.shape != (n_txt,):
        raise ValueError(
            f"`text_to_image` must have one entry per text, shape ({n_txt},). "
            f"Received: shape={text_to_image.shape}"
        )
    if n_txt and (text_to_image.min() < 0 or text_to_image.max() >= n_img):
        raise ValueError(
            f"`text_to_image` must index images in [0, {n_img}). Received: "
            f"min={text_to_image.min()}, max={text_to_image.max()}"
        )
    missing = np.setdiff1d(np.arange(n_img), text_to_image)
    if missing.size:
        raise ValueError(
            "Every image needs at least one caption. Received none for "
            f"images {missing[:10].tolist()}"
        )
    return image_embeddings, text_embeddings, text_to_image


def retrieval_ranks(image_embeddings, text_embeddings, text_to_image=None):
    """1-based ranks of the correct items in both directions.

    Similarity is the dot product (cosine for unit embeddings). Image→text:
    the rank of the image's best-ranked caption among all captions.
    Text→image: the rank of the caption's image among all images. An
    incorrect item scoring equal to the correct one counts as ranked above
    it, so a collapsed model (all scores equal) gets the worst ranks.

    Args:
        image_embeddings: `(N_images, E)`.
        text_embeddings: `(N_texts, E)`.
        text_to_image: int `(N_texts,)`, the image index of each caption;
            `None` means caption i describes image i.

    Returns:
        `(i2t_ranks (N_images,), t2i_ranks (N_texts,))`, int arrays.
    """
    img, txt, t2i = _check(image_embeddings, text_embeddings, text_to_image)
    sim = img @ txt.T  # (N_img, N_txt)
    correct = t2i[None, :] == np.arange(len(img))[:, None]  # (N_img, N_txt)
    best = np.where(correct, sim, -np.inf).max(axis=1)  # (N_img,)
    i2t = 1 + np.sum(~correct & (sim >= best[:, None]), axis=1)
    true_score = sim[t2i, np.arange(len(txt))]  # (N_txt,)
    t2i_ranks = 1 + np.sum(~correct & (sim >= true_score[None, :]), axis=0)
    return i2t.astype("int64"), t2i_ranks.astype("int64")


def retrieval_metrics(image_embeddings, text_embeddings, text_to_image=None,
                      ks=(1, 5, 10)):
    """Recall@K and mean / median rank for image→text and text→image.

    Args:
        image_embeddings: `(N_images, E)` NumPy array.
        text_embeddings: `(N_texts, E)` NumPy array.
        text_to_image: int `(N_texts,)` image index of each caption (several
            captions may share an image); `None` means caption i ↔ image i.
        ks: the K of recall@K.

    Returns:
        dict of floats: `i2t_r{k}` / `t2i_r{k}` in [0, 1] (image→text counts
        a hit when any of the image's captions is in the top K),
        `i2t_mean_rank`, `i2t_median_rank`, `t2i_mean_rank`,
        `t2i_median_rank` (1-based).

    Example:

    ```python
    m = retrieval_metrics(img_emb, txt_emb, text_to_image=np.repeat(
        np.arange(len(img_emb)), 5))  # five captions per image
    m["i2t_r1"], m["t2i_r5"]
    ```
    """
    i2t, t2i = retrieval_ranks(image_embeddings, text_embeddings, text_to_image)
    out = {}
    for direction, ranks in (("i2t", i2t), ("t2i", t2i)):
        for k in ks:
            out[f"{direction}_r{k}"] = float(np.mean(ranks <= k))
        out[f"{direction}_mean_rank"] = float(np.mean(ranks))
        out[f"{direction}_median_rank"] = float(np.median(ranks))
    return out


def evaluate_retrieval(model, images, token_ids, text_to_image=None,
                       ks=(1, 5, 10), batch_size=64):
    """`retrieval_metrics` of a CLIP model on images and tokenised captions.

    Args:
        model: a `keras_clip.CLIPModel`.
        images: float model-ready `(N, S, S, 3)`, or uint8 / a list of images
            of any size (then passed through `model.preprocess`).
        token_ids: int `(N_texts, L)`.
        text_to_image: see `retrieval_metrics`.
        ks: the K of recall@K.
        batch_size: items per encoder call.

    Returns:
        The dict of `retrieval_metrics`.
    """
    img = encode_images(model, images, batch_size=batch_size)
    txt = encode_texts(model, token_ids, batch_size=batch_size)
    return retrieval_metrics(img, txt, text_to_image, ks)
