"""The contrastive loss against a plain NumPy implementation."""

import math

import keras
import numpy as np
import pytest

from keras_clip.losses import clip_logits, contrastive_loss


def np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def np_clip_loss(img, txt, log_scale, max_log_scale=math.log(100)):
    img = img / np.linalg.norm(img, axis=1, keepdims=True)
    txt = txt / np.linalg.norm(txt, axis=1, keepdims=True)
    scale = min(math.exp(log_scale), math.exp(max_log_scale))
    logits = scale * img @ txt.T
    n = len(img)
    i2t = -np_log_softmax(logits)[np.arange(n), np.arange(n)].mean()
    t2i = -np_log_softmax(logits.T)[np.arange(n), np.arange(n)].mean()
    acc_i = (logits.argmax(1) == np.arange(n)).mean()
    acc_t = (logits.T.argmax(1) == np.arange(n)).mean()
    return logits, (i2t + t2i) / 2, acc_i, acc_t


def to_np(x):
    return keras.ops.convert_to_numpy(x)


@pytest.mark.parametrize(
    "log_scale",
    [math.log(1 / 0.07), 0.0, math.log(100), 6.0],
    ids=["init", "scale1", "at_clamp", "clamp_active"],
)
def test_loss_matches_numpy(log_scale):
    rng = np.random.default_rng(0)
    img = rng.standard_normal((9, 6)).astype("float32")
    txt = (img + 0.8 * rng.standard_normal((9, 6))).astype("float32")
    logits = clip_logits(img, txt, log_scale, math.log(100))
    loss, acc_i, acc_t = contrastive_loss(logits)
    ref_logits, ref_loss, ref_i, ref_t = np_clip_loss(img, txt, log_scale)
    np.testing.assert_allclose(to_np(logits), ref_logits, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(float(to_np(loss)), ref_loss, rtol=1e-5)
    assert float(to_np(acc_i)) == pytest.approx(ref_i)
    assert float(to_np(acc_t)) == pytest.approx(ref_t)
    if log_scale > math.log(100):
        # The clamp is active: the loss equals the loss at scale 100 exactly.
        at_max = contrastive_loss(clip_logits(img, txt, math.log(100), math.log(100)))[0]
        np.testing.assert_allclose(float(to_np(loss)), float(to_np(at_max)), rtol=1e-6)
        assert np.abs(to_np(logits)).max() <= 100.0 + 1e-4


def test_asymmetric_accuracies_and_perfect_batch():
    # Images 0 and 1 both prefer text 0: image->text gets 2/3 right, while
    # text->image is perfect (each text's best image is its own).
    logits = np.array([[5.0, 1.0, 0.0], [4.0, 3.0, 0.0], [0.0, 0.0, 5.0]], "float32")
    _, acc_i, acc_t = contrastive_loss(logits)
    assert float(to_np(acc_i)) == pytest.approx(2 / 3)
    assert float(to_np(acc_t)) == pytest.approx(1.0)
    # Near one-hot logits give a loss near zero.
    loss, _, _ = contrastive_loss(100.0 * np.eye(4, dtype="float32"))
    assert float(to_np(loss)) < 1e-6


def test_random_embeddings_give_log_n():
    # With a tiny scale all similarities are equal: loss = ln(N).
    rng = np.random.default_rng(1)
    img = rng.standard_normal((16, 8)).astype("float32")
    txt = rng.standard_normal((16, 8)).astype("float32")
    loss, _, _ = contrastive_loss(clip_logits(img, txt, -20.0, math.log(100)))
    assert float(to_np(loss)) == pytest.approx(math.log(16), rel=1e-5)


def test_shard_rows_with_offset_labels_equal_full_batch():
    # One replica's rows against all columns, labels offset by its position,
    # averaged over replicas, equals the full-batch loss.
    rng = np.random.default_rng(2)
    img = rng.standard_normal((8, 5)).astype("float32")
    txt = rng.standard_normal((8, 5)).astype("float32")
    full = float(to_np(contrastive_loss(clip_logits(img, txt, 2.0, 4.6))[0]))
    parts = []
    for shard in range(2):
        rows = slice(4 * shard, 4 * shard + 4)
        per_image = clip_logits(img[rows], txt, 2.0, 4.6)
        per_text = clip_logits(txt[rows], img, 2.0, 4.6)
        labels = np.arange(4) + 4 * shard
        parts.append(float(to_np(contrastive_loss(per_image, per_text, labels)[0])))
    assert np.mean(parts) == pytest.approx(full, rel=1e-5)


def test_half_precision_inputs_give_float32_loss():
    rng = np.random.default_rng(3)
    img = rng.standard_normal((4, 8)).astype("float16")
    txt = rng.standard_normal((4, 8)).astype("float16")
    logits = clip_logits(img, txt, math.log(1 / 0.07), math.log(100))
    loss, acc_i, _ = contrastive_loss(keras.ops.cast(logits, "bfloat16"))
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    assert keras.backend.standardize_dtype(loss.dtype) == "float32"
    assert keras.backend.standardize_dtype(acc_i.dtype) == "float32"


def _value_and_grads(fn, *arrays):
    """`fn(*arrays)` (a scalar) and its gradients, with the backend's autodiff
    (compiled: `jax.jit` / `tf.function`, where the loop is a while loop)."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        value, grads = jax.jit(jax.value_and_grad(fn, argnums=tuple(range(len(arrays)))))(*arrays)
    elif backend == "tensorflow":
        import tensorflow as tf

        @tf.function
        def step(*xs):
            with tf.GradientTape() as tape:
                tape.watch(xs)
                value = fn(*xs)
            return value, tape.gradient(value, xs)

        value, grads = step(*[tf.constant(a) for a in arrays])
    else:
        # On the device Keras computes on (a GPU where there is one).
        xs = [keras.ops.convert_to_tensor(a).requires_grad_(True) for a in arrays]
        value = fn(*xs)
        value.backward()
        grads = [x.grad for x in xs]
    return float(to_np(value)), [to_np(g) for g in grads]


@pytest.mark.parametrize("n,chunk", [(7, 3), (8, 8), (6, 1), (5, 16)])
def test_chunked_loss_value_and_gradients_equal_plain(n, chunk):
    from keras_clip.losses import chunked_contrastive_loss, l2_normalize

    rng = np.random.default_rng(4)
    img = rng.standard_normal((n, 6)).astype("float32")
    txt = rng.standard_normal((n, 6)).astype("float32")
    scale = np.float32(9.0)

    def plain(i, t, s):
        i, t = l2_normalize(i), l2_normalize(t)
        return contrastive_loss(s * keras.ops.matmul(i, keras.ops.transpose(t)))[0]

    def chunked(i, t, s):
        i, t = l2_normalize(i), l2_normalize(t)
        return chunked_contrastive_loss(i, t, s, chunk)[0]

    want, want_grads = _value_and_grads(plain, img, txt, scale)
    got, got_grads = _value_and_grads(chunked, img, txt, scale)
    assert got == pytest.approx(want, rel=1e-5)
    # The value against NumPy too (the reference above is the backend's own
    # autodiff of the unchunked loss).
    _, np_loss, _, _ = np_clip_loss(img, txt, math.log(9.0))
    assert got == pytest.approx(np_loss, rel=1e-5)
    for g, w in zip(got_grads, want_grads):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)


def test_chunked_loss_shard_rows_against_gathered_columns():
    # One replica's 4 rows against 8 gathered columns with offset labels:
    # value, both accuracies and the gradients of rows, columns and scale
    # equal the sharded plain loss.
    from keras_clip.losses import chunked_contrastive_loss, l2_normalize

    rng = np.random.default_rng(5)
    img = rng.standard_normal((8, 5)).astype("float32")
    txt = rng.standard_normal((8, 5)).astype("float32")
    scale = np.float32(20.0)
    labels = np.arange(4, 8)

    def inputs(i, t):
        i, t = l2_normalize(i), l2_normalize(t)
        return i[4:], t[4:], i, t

    def plain(i, t, s):
        ri, rt, ci, ct = inputs(i, t)
        per_image = s * keras.ops.matmul(ri, keras.ops.transpose(ct))
        per_text = s * keras.ops.matmul(rt, keras.ops.transpose(ci))
        return contrastive_loss(per_image, per_text, labels)[0]

    def chunked(i, t, s):
        ri, rt, ci, ct = inputs(i, t)
        return chunked_contrastive_loss(ri, rt, s, 3, labels, ci, ct)[0]

    want, want_grads = _value_and_grads(plain, img, txt, scale)
    got, got_grads = _value_and_grads(chunked, img, txt, scale)
    assert got == pytest.approx(want, rel=1e-5)
    for g, w in zip(got_grads, want_grads):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)
    ri, rt, ci, ct = inputs(img, txt)
    _, acc_i, acc_t = chunked_contrastive_loss(ri, rt, scale, 3, labels, ci, ct)
    per_image = to_np(scale * keras.ops.matmul(ri, keras.ops.transpose(ct)))
    per_text = to_np(scale * keras.ops.matmul(rt, keras.ops.transpose(ci)))
    assert float(to_np(acc_i)) == pytest.approx((per_image.argmax(1) == labels).mean())
    assert float(to_np(acc_t)) == pytest.approx((per_text.argmax(1) == labels).mean())
