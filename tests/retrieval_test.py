"""Retrieval recall@K and ranks against explicit loops and closed forms."""

import numpy as np
import pytest

from keras_clip.evaluation import retrieval


def loop_ranks(img, txt, text_to_image):
    """Brute force: sort every row, find the first correct item."""
    sim = img @ txt.T
    n_img, n_txt = sim.shape
    i2t = []
    for i in range(n_img):
        scores = sim[i]
        best = max(scores[j] for j in range(n_txt) if text_to_image[j] == i)
        rank = 1
        for j in range(n_txt):
            if text_to_image[j] != i and scores[j] >= best:
                rank += 1
        i2t.append(rank)
    t2i = []
    for j in range(n_txt):
        order = sorted(range(n_img), key=lambda i: -sim[i, j])
        t2i.append(order.index(text_to_image[j]) + 1)
    return np.array(i2t), np.array(t2i)


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_perfect_embeddings_score_one():
    emb = np.eye(6, dtype="float32")
    m = retrieval.retrieval_metrics(emb, emb)
    for key in ("i2t_r1", "i2t_r5", "t2i_r1", "t2i_r10"):
        assert m[key] == 1.0
    assert m["i2t_mean_rank"] == m["t2i_median_rank"] == 1.0


def test_known_permutation_ranks():
    # Image i matches text (i + 1) mod n best, then text i: rank 2 each way.
    n = 5
    img = np.eye(n)
    txt = np.eye(n) * 0.6 + np.roll(np.eye(n), 1, axis=0) * 0.8
    i2t, t2i = retrieval.retrieval_ranks(img, txt)
    np.testing.assert_array_equal(i2t, [2] * n)
    np.testing.assert_array_equal(t2i, [2] * n)
    m = retrieval.retrieval_metrics(img, txt)
    assert m["i2t_r1"] == 0.0 and m["i2t_r5"] == 1.0 and m["t2i_mean_rank"] == 2


@pytest.mark.parametrize("captions_per_image", [1, 3])
def test_matches_brute_force(captions_per_image):
    rng = np.random.default_rng(captions_per_image)
    n_img = 40
    img = unit(rng.standard_normal((n_img, 8)))
    t2i = np.repeat(np.arange(n_img), captions_per_image)
    rng.shuffle(t2i)
    txt = unit(img[t2i] + 0.9 * rng.standard_normal((len(t2i), 8)))
    i2t_ranks, t2i_ranks = retrieval.retrieval_ranks(img, txt, t2i)
    ref_i2t, ref_t2i = loop_ranks(img, txt, t2i)
    np.testing.assert_array_equal(i2t_ranks, ref_i2t)
    np.testing.assert_array_equal(t2i_ranks, ref_t2i)
    m = retrieval.retrieval_metrics(img, txt, t2i)
    for k in (1, 5, 10):
        assert m[f"i2t_r{k}"] == pytest.approx(np.mean(ref_i2t <= k))
        assert m[f"t2i_r{k}"] == pytest.approx(np.mean(ref_t2i <= k))
    assert m["i2t_median_rank"] == np.median(ref_i2t)
    assert m["t2i_mean_rank"] == pytest.approx(ref_t2i.mean())
    assert 0 < m["i2t_r1"] < m["i2t_r10"] <= 1


def test_any_caption_in_top_k_is_a_hit():
    # Image 0 has captions 0 (ranked 2nd) and 1 (ranked 1st): rank 1.
    img = np.array([[1.0, 0.0], [0.0, 1.0]])
    txt = np.array([[0.2, 0.9], [1.0, 0.0], [0.1, 1.0]])
    ranks, _ = retrieval.retrieval_ranks(img, txt, [0, 0, 1])
    assert ranks.tolist() == [1, 1]


def test_ties_count_against_the_correct_item():
    emb = np.ones((4, 3))
    m = retrieval.retrieval_metrics(emb, emb)
    assert m["i2t_r1"] == m["t2i_r1"] == 0.0
    assert m["t2i_median_rank"] == 4.0


def test_errors():
    with pytest.raises(ValueError, match="counts must match"):
        retrieval.retrieval_metrics(np.eye(3), np.eye(4, 3))
    with pytest.raises(ValueError, match="one entry per text"):
        retrieval.retrieval_metrics(np.eye(3), np.eye(3), [0, 1])
    with pytest.raises(ValueError, match=r"images \[2\]"):
        retrieval.retrieval_metrics(np.eye(3), np.eye(3), [0, 1, 1])
    with pytest.raises(ValueError, match="Received"):
        retrieval.retrieval_metrics(np.eye(3), np.eye(3, 2))


def test_agrees_with_clip_benchmark():
    torch = pytest.importorskip("torch")
    pytest.importorskip("tqdm")
    reference = pytest.importorskip("clip_benchmark.metrics.zeroshot_retrieval")
    rng = np.random.default_rng(7)
    n_img = 30
    img = unit(rng.standard_normal((n_img, 6)))
    t2i = np.repeat(np.arange(n_img), 2)
    txt = unit(img[t2i] + 1.0 * rng.standard_normal((len(t2i), 6)))
    scores = torch.from_numpy(txt @ img.T)  # (N_txt, N_img), as theirs.
    positive = torch.zeros_like(scores, dtype=torch.bool)
    positive[torch.arange(len(t2i)), torch.from_numpy(t2i)] = True
    ours = retrieval.retrieval_metrics(img, txt, t2i)
    for k in (1, 5, 10):
        # Their "image retrieval" is text->image, "text retrieval" image->text.
        t2i_ref = (reference.recall_at_k(scores, positive, k) > 0).float().mean()
        i2t_ref = (reference.recall_at_k(scores.T, positive.T, k) > 0).float().mean()
        assert ours[f"t2i_r{k}"] == pytest.approx(float(t2i_ref))
        assert ours[f"i2t_r{k}"] == pytest.approx(float(i2t_ref))
