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


def np_smoothed_cross_entropy(logits, labels, eps):
    # Cross-entropy against (1 - eps) one_hot + eps / M, written out.
    m = logits.shape[1]
    target = (1 - eps) * np.eye(m)[labels] + eps / m
    return -(target * np_log_softmax(logits.astype("float64"))).sum(1).mean()


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


@pytest.mark.parametrize(
    "n,chunk,eps", [(7, 3, 0.0), (8, 8, 0.0), (6, 1, 0.0), (5, 16, 0.0), (7, 3, 0.3), (6, 6, 0.3)]
)
def test_chunked_loss_value_and_gradients_equal_plain(n, chunk, eps):
    # The hand-written gradient (softmax - target, smoothed with eps) against
    # the backend's autodiff of the plain loss and, for the scale, against
    # its closed form; the value against NumPy.
    from keras_clip.losses import chunked_contrastive_loss, l2_normalize

    rng = np.random.default_rng(4)
    img = rng.standard_normal((n, 6)).astype("float32")
    txt = rng.standard_normal((n, 6)).astype("float32")
    scale = np.float32(9.0)

    def plain(i, t, s):
        i, t = l2_normalize(i), l2_normalize(t)
        logits = s * keras.ops.matmul(i, keras.ops.transpose(t))
        return contrastive_loss(logits, label_smoothing=eps)[0]

    def chunked(i, t, s):
        i, t = l2_normalize(i), l2_normalize(t)
        return chunked_contrastive_loss(i, t, s, chunk, label_smoothing=eps)[0]

    want, want_grads = _value_and_grads(plain, img, txt, scale)
    got, got_grads = _value_and_grads(chunked, img, txt, scale)
    assert got == pytest.approx(want, rel=1e-5)
    for g, w in zip(got_grads, want_grads):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)
    cos = (img / np.linalg.norm(img, axis=1, keepdims=True)) @ (
        txt / np.linalg.norm(txt, axis=1, keepdims=True)).T
    logits, labels = 9.0 * cos, np.arange(n)
    np_loss = 0.5 * (np_smoothed_cross_entropy(logits, labels, eps)
                     + np_smoothed_cross_entropy(logits.T, labels, eps))
    assert got == pytest.approx(np_loss, rel=1e-5)
    # d loss / d scale = sum((softmax - target) * cos) / (2n), both directions.
    target = (1 - eps) * np.eye(n) + eps / n
    d_scale = sum(((np.exp(np_log_softmax(z)) - target) * c).sum()
                  for z, c in ((logits, cos), (logits.T, cos.T))) / (2 * n)
    np.testing.assert_allclose(got_grads[2], d_scale, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("eps", [0.0, 0.25])
def test_chunked_loss_shard_rows_against_gathered_columns(eps):
    # One replica's 4 rows against 8 gathered columns with offset labels:
    # value, both accuracies and the gradients of rows, columns and scale
    # equal the sharded plain loss (with and without label smoothing, whose
    # uniform part spreads over the 8 gathered columns).
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
        return contrastive_loss(per_image, per_text, labels, label_smoothing=eps)[0]

    def chunked(i, t, s):
        ri, rt, ci, ct = inputs(i, t)
        return chunked_contrastive_loss(ri, rt, s, 3, labels, ci, ct, label_smoothing=eps)[0]

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


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5])
def test_label_smoothing_matches_numpy_and_keras(eps):
    rng = np.random.default_rng(6)
    img = rng.standard_normal((7, 6)).astype("float32")
    txt = (img + rng.standard_normal((7, 6))).astype("float32")
    logits = to_np(clip_logits(img, txt, math.log(1 / 0.07), math.log(100)))
    loss, acc_i, acc_t = contrastive_loss(logits, label_smoothing=eps)
    labels = np.arange(7)
    want = 0.5 * (np_smoothed_cross_entropy(logits, labels, eps)
                  + np_smoothed_cross_entropy(logits.T, labels, eps))
    assert float(to_np(loss)) == pytest.approx(want, rel=1e-5)
    # Keras's own smoothed categorical cross-entropy is the same target.
    cce = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=eps)
    one_hot = np.eye(7, dtype="float32")
    keras_loss = 0.5 * (float(to_np(cce(one_hot, logits))) + float(to_np(cce(one_hot, logits.T))))
    assert float(to_np(loss)) == pytest.approx(keras_loss, rel=1e-5)
    # Smoothing changes the loss, not the accuracies.
    assert float(to_np(acc_i)) == pytest.approx((logits.argmax(1) == labels).mean())
    assert float(to_np(acc_t)) == pytest.approx((logits.T.argmax(1) == labels).mean())


def test_label_smoothing_on_shard_rows_spreads_over_all_columns():
    # 3 rows against 8 columns with offset labels: eps / 8 on every column.
    rng = np.random.default_rng(7)
    per_image = rng.standard_normal((3, 8)).astype("float32") * 4
    per_text = rng.standard_normal((3, 8)).astype("float32") * 4
    labels = np.array([5, 6, 7])
    loss = contrastive_loss(per_image, per_text, labels, label_smoothing=0.2)[0]
    want = 0.5 * (np_smoothed_cross_entropy(per_image, labels, 0.2)
                  + np_smoothed_cross_entropy(per_text, labels, 0.2))
    assert float(to_np(loss)) == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, "0.1", True, None])
def test_label_smoothing_out_of_range_is_a_clear_error(bad):
    from keras_clip.losses import chunked_contrastive_loss

    logits = np.eye(3, dtype="float32")
    with pytest.raises(ValueError, match=r"label_smoothing.*\[0, 1\).*Received"):
        contrastive_loss(logits, label_smoothing=bad)
    with pytest.raises(ValueError, match=r"label_smoothing.*\[0, 1\).*Received"):
        chunked_contrastive_loss(logits, logits, 1.0, 2, label_smoothing=bad)


# ---- the loss object -------------------------------------------------------


def np_loss_object_reference(img, txt, scale, eps):
    """Value, accuracies and gradients of `ContrastiveLoss` on one device,
    written out in float64: normalise, smoothed cross-entropy both ways,
    then the chain rule back through the logits and the normalisation."""
    x, y = img.astype("float64"), txt.astype("float64")
    nx = np.linalg.norm(x, axis=1, keepdims=True)
    ny = np.linalg.norm(y, axis=1, keepdims=True)
    u, v = x / nx, y / ny
    n = len(u)
    cos = u @ v.T
    z = scale * cos
    labels = np.arange(n)
    target = (1 - eps) * np.eye(n) + eps / n
    loss = 0.5 * (np_smoothed_cross_entropy(z, labels, eps)
                  + np_smoothed_cross_entropy(z.T, labels, eps))
    # d loss / d z: (softmax - target) / n per direction, halved.
    dz = 0.5 * ((np.exp(np_log_softmax(z)) - target)
                + (np.exp(np_log_softmax(z.T)) - target).T) / n
    du, dv = scale * dz @ v, scale * dz.T @ u
    dx = (du - u * (u * du).sum(1, keepdims=True)) / nx
    dy = (dv - v * (v * dv).sum(1, keepdims=True)) / ny
    d_scale = (dz * cos).sum()
    accuracies = ((z.argmax(1) == labels).mean(), (z.T.argmax(1) == labels).mean())
    return loss, accuracies, [dx, dy, d_scale]


@pytest.mark.parametrize("eps", [0.0, 0.2])
@pytest.mark.parametrize("chunk_size", [None, 3])
def test_loss_object_matches_numpy_values_accuracies_and_gradients(eps, chunk_size):
    from keras_clip.losses import ContrastiveLoss

    rng = np.random.default_rng(8)
    img = (2.0 * rng.standard_normal((7, 6))).astype("float32")  # not unit length
    txt = (img + 1.5 * rng.standard_normal((7, 6))).astype("float32")
    scale = np.float32(8.0)
    loss_fn = ContrastiveLoss(label_smoothing=eps, chunk_size=chunk_size)
    want, (want_i2t, want_t2i), want_grads = np_loss_object_reference(img, txt, 8.0, eps)

    loss, metrics = loss_fn(img, txt, scale)
    assert float(to_np(loss)) == pytest.approx(want, rel=1e-5)
    assert sorted(metrics) == ["i2t_accuracy", "t2i_accuracy"]
    assert float(to_np(metrics["i2t_accuracy"])) == pytest.approx(want_i2t)
    assert float(to_np(metrics["t2i_accuracy"])) == pytest.approx(want_t2i)
    assert 0.0 < want_i2t < 1.0  # the accuracies are not trivially 0 or 1

    got, got_grads = _value_and_grads(lambda i, t, s: loss_fn(i, t, s)[0], img, txt, scale)
    assert got == pytest.approx(want, rel=1e-5)
    for g, w in zip(got_grads, want_grads):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)


def test_loss_object_config_round_trip():
    from keras_clip.losses import ContrastiveLoss

    loss = ContrastiveLoss(label_smoothing=0.25, chunk_size=64, micro_batches=4)
    config = loss.get_config()
    assert config == {"label_smoothing": 0.25, "chunk_size": 64, "micro_batches": 4}
    clone = ContrastiveLoss.from_config(config)
    assert (clone.label_smoothing, clone.chunk_size, clone.micro_batches) == (0.25, 64, 4)
    # Through Keras's serialisation, as the compile config stores it.
    serialized = keras.saving.serialize_keras_object(loss)
    assert serialized["registered_name"] == "keras_clip>ContrastiveLoss"
    restored = keras.saving.deserialize_keras_object(serialized)
    assert isinstance(restored, ContrastiveLoss)
    assert restored.get_config() == config
    assert ContrastiveLoss().get_config() == {
        "label_smoothing": 0.0, "chunk_size": None, "micro_batches": None}
    assert repr(loss) == "ContrastiveLoss(label_smoothing=0.25, chunk_size=64, micro_batches=4)"


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"label_smoothing": 1.0}, r"label_smoothing.*\[0, 1\).*Received: 1\.0"),
        ({"chunk_size": 0}, r"`chunk_size` to be a positive int or None.*Received: 0"),
        ({"chunk_size": 2.0}, r"`chunk_size` to be a positive int or None.*Received: 2\.0"),
        ({"micro_batches": True}, r"`micro_batches` to be a positive int or None.*Received: True"),
    ],
)
def test_loss_object_bad_options_are_clear_errors(kwargs, match):
    from keras_clip.losses import ContrastiveLoss

    with pytest.raises(ValueError, match=match):
        ContrastiveLoss(**kwargs)


def test_loss_object_takes_no_bias():
    from keras_clip.losses import ContrastiveLoss

    x = np.eye(3, dtype="float32")
    with pytest.raises(ValueError, match=r"no logit bias.*Received: bias=-10\.0"):
        ContrastiveLoss()(x, x, 1.0, bias=-10.0)


def test_loss_object_refuses_a_batch_of_one():
    # One pair: its own softmax over one column is 1, so the loss is 0 and
    # carries no gradient whatever the embeddings (checked here in NumPy
    # terms: log-softmax of a single logit is 0), so it is refused.
    from keras_clip.losses import ContrastiveLoss

    one = np.ones((1, 4), "float32")
    assert np.log(np.exp(3.0) / np.exp(3.0)) == 0.0
    with pytest.raises(ValueError, match="at least 2 pairs.*Received: 1 pair"):
        ContrastiveLoss()(one, one, 10.0)
    loss, _ = ContrastiveLoss()(np.eye(2, 4, dtype="float32"), np.eye(2, 4, dtype="float32"), 10.0)
    assert float(keras.ops.convert_to_numpy(loss)) > 0.0
