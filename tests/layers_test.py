"""Layers and towers against NumPy references, plus the standard battery.

The references are checked with the backend speed paths on and off (`fast`):
on each backend both the plain Keras code and its fast paths must be the
textbook maths. Fast against plain, with gradients: tests/backends_test.py.
"""

from math import erf

import keras
import numpy as np
import pytest

from keras_clip import backends
from keras_clip.models.layers import (
    MultiHeadSelfAttention,
    ResidualAttentionBlock,
    Transformer,
    quick_gelu,
)
from keras_clip.models.modified_resnet import (
    AttentionPool2d,
    Bottleneck,
    GlobalBatchNormalization,
    PointwiseConv2D,
)
from keras_clip.models.text_transformer import TextTransformer
from keras_clip.models.vision_transformer import VisionTransformer
from tests.layer_checks import check_layer


def np_softmax(x, axis=-1):
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def np_attention(q, k, v, causal=False):
    # q: (B, T, H, D), k/v: (B, S, H, D) -> (B, T, H, D)
    scores = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(q.shape[-1])
    if causal:
        t, s = scores.shape[-2:]
        scores = np.where(np.tril(np.ones((t, s), bool)), scores, -np.inf)
    return np.einsum("bhts,bshd->bthd", np_softmax(scores), v)


def np_layer_norm(x, gamma, beta, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * gamma + beta


def np_self_attention(layer, x):
    w_qkv, b_qkv = [np.asarray(w) for w in layer.qkv.get_weights()]
    w_o, b_o = [np.asarray(w) for w in layer.out_proj.get_weights()]
    b, t, d = x.shape
    h = layer.num_heads
    qkv = (x @ w_qkv + b_qkv).reshape(b, t, 3, h, d // h)
    out = np_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], layer.causal)
    return out.reshape(b, t, d) @ w_o + b_o


def np_gelu(x, activation):
    if activation == "quick_gelu":
        return x / (1 + np.exp(-1.702 * x))
    return np.vectorize(lambda v: 0.5 * v * (1 + erf(v / np.sqrt(2))))(x)


def np_block(block, x):
    """`ResidualAttentionBlock` in NumPy, from its weights."""
    g1, b1 = [np.asarray(w) for w in block.ln_1.get_weights()]
    g2, b2 = [np.asarray(w) for w in block.ln_2.get_weights()]
    w_fc, b_fc = [np.asarray(w) for w in block.mlp_fc.get_weights()]
    w_pr, b_pr = [np.asarray(w) for w in block.mlp_proj.get_weights()]
    h = x + np_self_attention(block.attn, np_layer_norm(x, g1, b1))
    return h + np_gelu(np_layer_norm(h, g2, b2) @ w_fc + b_fc, block.activation) @ w_pr + b_pr


def np_transformer(stack, x):
    for block in stack.blocks:
        x = np_block(block, x)
    return x


def np_vision_transformer(tower, images):
    """`VisionTransformer` in NumPy: patches row by row, class token first."""
    b, p, g, d = images.shape[0], tower.patch_size, tower.grid_size, tower.width
    patches = images.reshape(b, g, p, g, p, 3).transpose(0, 1, 3, 2, 4, 5)
    kernel = np.asarray(tower.patch_embedding.kernel).reshape(p * p * 3, d)
    x = patches.reshape(b, g * g, p * p * 3) @ kernel  # (B, N, D)
    cls = np.broadcast_to(np.asarray(tower.class_embedding), (b, 1, d))
    x = np.concatenate([cls, x], 1) + np.asarray(tower.positional_embedding)
    x = np_layer_norm(x, *[np.asarray(w) for w in tower.ln_pre.get_weights()])
    x = np_transformer(tower.transformer, x)
    return np_layer_norm(x[:, 0], *[np.asarray(w) for w in tower.ln_post.get_weights()])


def np_text_transformer(tower, ids):
    """`TextTransformer` in NumPy, pooled at the first end-of-text (else the
    last non-padding token)."""
    length = ids.shape[1]
    x = np.asarray(tower.token_embedding.embeddings)[ids]
    x = x + np.asarray(tower.positional_embedding)[:length]
    x = np_transformer(tower.transformer, x)
    pooled = []
    for row, tokens in zip(x, ids):
        eot = np.flatnonzero(tokens == tower.eot_token_id)
        pooled.append(row[eot[0] if len(eot) else np.flatnonzero(tokens)[-1]])
    return np_layer_norm(np.stack(pooled), *[np.asarray(w) for w in tower.ln_final.get_weights()])


def randomize(layer, seed=0):
    """Random non-trivial weights (gains, biases, BN statistics too)."""
    rng = np.random.default_rng(seed)
    for w in layer.weights:
        shape = tuple(w.shape)
        if "variance" in w.path:
            w.assign(rng.uniform(0.5, 1.5, shape).astype("float32"))
        else:
            w.assign((0.2 * rng.standard_normal(shape)).astype("float32"))


def test_quick_gelu_matches_formula():
    x = np.linspace(-6, 6, 101).astype("float32")
    expected = x / (1 + np.exp(-1.702 * x))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(quick_gelu(keras.ops.convert_to_tensor(x))), expected, atol=1e-6)


@pytest.mark.parametrize("causal", [False, True])
def test_self_attention_matches_numpy(causal):
    x = np.random.default_rng(1).standard_normal((2, 7, 16)).astype("float32")
    layer = MultiHeadSelfAttention(16, 4, causal=causal)
    layer.build(x.shape)
    randomize(layer)
    got = keras.ops.convert_to_numpy(layer(x))
    np.testing.assert_allclose(got, np_self_attention(layer, x), atol=1e-5)


def test_causal_attention_ignores_future_tokens():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 6, 8)).astype("float32")
    layer = MultiHeadSelfAttention(8, 2, causal=True)
    y1 = keras.ops.convert_to_numpy(layer(x))
    x2 = x.copy()
    x2[:, 4:] = rng.standard_normal((1, 2, 8))
    y2 = keras.ops.convert_to_numpy(layer(x2))
    np.testing.assert_allclose(y1[:, :4], y2[:, :4], atol=1e-6)
    assert not np.allclose(y1[:, 4:], y2[:, 4:])


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("activation", ["gelu", "quick_gelu"])
def test_residual_block_matches_numpy(fast, activation):
    x = np.random.default_rng(3).standard_normal((2, 5, 16)).astype("float32")
    block = ResidualAttentionBlock(16, 2, activation=activation)
    block.build(x.shape)
    randomize(block)
    with backends.fast_paths(fast):
        got = keras.ops.convert_to_numpy(block(x))
    np.testing.assert_allclose(got, np_block(block, x), atol=1e-4)


@pytest.mark.parametrize("fast", [True, False])
def test_transformer_matches_numpy(fast):
    x = np.random.default_rng(9).standard_normal((2, 5, 16)).astype("float32")
    stack = Transformer(16, 3, 2, causal=True)
    stack.build(x.shape)
    randomize(stack)
    with backends.fast_paths(fast):
        got = keras.ops.convert_to_numpy(stack(x))
    np.testing.assert_allclose(got, np_transformer(stack, x), atol=1e-4)


@pytest.mark.parametrize("fast", [True, False])
def test_vision_transformer_matches_numpy(fast):
    images = np.random.default_rng(10).standard_normal((2, 16, 16, 3)).astype("float32")
    tower = VisionTransformer(16, 4, 16, 2, 2)
    tower.build()
    randomize(tower)
    with backends.fast_paths(fast):
        got = keras.ops.convert_to_numpy(tower(images))
    np.testing.assert_allclose(got, np_vision_transformer(tower, images), atol=1e-4)


@pytest.mark.parametrize("fast", [True, False])
def test_text_transformer_matches_numpy(fast):
    tower = TextTransformer(50, 8, 16, 2, 2, eot_token_id=49)
    tower.build()
    randomize(tower)
    ids = np.array(
        [[3, 7, 49, 0, 0, 0, 0, 0],
         [5, 49, 8, 49, 0, 0, 0, 0],  # two end-of-text ids: the first pools
         [4, 6, 2, 9, 11, 0, 0, 0]],  # truncated: no end-of-text
        dtype="int32",
    )
    with backends.fast_paths(fast):
        got = keras.ops.convert_to_numpy(tower(ids))
    np.testing.assert_allclose(got, np_text_transformer(tower, ids), atol=1e-4)


def block_grads(fn, block, x, dy):
    """`fn(x)` and the gradients of sum(fn(x) * dy) with respect to `x` and
    to every trainable weight of `block`, by the backend's own autodiff.
    `block`'s non-trainable variables (batch-norm moving statistics) are
    updated by the call on every backend, as on TF and torch."""
    backend = keras.backend.backend()
    variables = block.trainable_variables
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn(x)
            total = tf.reduce_sum(tf.cast(y, "float32") * dy)
        grads = tape.gradient(total, [x] + [v.value for v in variables])
        grads = [tf.convert_to_tensor(g) for g in grads]  # embeddings: IndexedSlices
        return [np.asarray(g, "float32") for g in [y] + grads]
    if backend == "jax":
        import jax

        state = block.non_trainable_variables

        def f(values, x):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))) as scope:
                y = fn(x)
                after = [scope.get_current_value(v) for v in state]
            return (y.astype("float32") * dy).sum(), (y, after)

        grad = jax.jit(jax.grad(f, argnums=(0, 1), has_aux=True))
        (gw, gx), (y, after) = grad([v.value for v in variables], x)
        for v, value in zip(state, after):
            if value is not None:
                v.assign(value)
        return [np.asarray(g, "float32") for g in [y, gx] + list(gw)]
    for v in variables:
        v.value.grad = None
    x = keras.ops.convert_to_tensor(x).requires_grad_(True)
    y = fn(x)
    (y.float() * keras.ops.convert_to_tensor(dy)).sum().backward()  # on Keras's device
    grads = [x.grad] + [v.value.grad for v in variables]
    return [keras.ops.convert_to_numpy(g.float()) for g in [y.detach()] + grads]


@pytest.mark.parametrize("fast", [True, False])
def test_attention_pool_matches_numpy(fast):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 2, 2, 16)).astype("float32")
    pool = AttentionPool2d(2, 16, 4, 8)
    pool.build(x.shape)
    randomize(pool)
    w = {layer.name: [np.asarray(v) for v in layer.get_weights()] for layer in (pool.q_proj, pool.k_proj, pool.v_proj, pool.c_proj)}
    pos = np.asarray(pool.positional_embedding)
    tokens = x.reshape(2, 4, 16)
    tokens = np.concatenate([tokens.mean(1, keepdims=True), tokens], 1) + pos
    q = (tokens[:, :1] @ w["q_proj"][0] + w["q_proj"][1]).reshape(2, 1, 4, 4)
    k = (tokens @ w["k_proj"][0] + w["k_proj"][1]).reshape(2, 5, 4, 4)
    v = (tokens @ w["v_proj"][0] + w["v_proj"][1]).reshape(2, 5, 4, 4)
    out = np_attention(q, k, v).reshape(2, 16)
    expected = out @ w["c_proj"][0] + w["c_proj"][1]
    with backends.fast_paths(fast):
        got = keras.ops.convert_to_numpy(pool(x))
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_text_transformer_pools_first_eot_and_is_causal():
    tower = TextTransformer(50, 8, 16, 1, 2, eot_token_id=3)
    ids = np.array([[1, 10, 3, 0, 0, 0, 0, 0]], dtype="int32")
    changed = np.array([[1, 10, 3, 42, 7, 3, 0, 0]], dtype="int32")
    a = keras.ops.convert_to_numpy(tower(ids))
    b = keras.ops.convert_to_numpy(tower(changed))
    # Tokens after the first end-of-text cannot reach it through the mask.
    np.testing.assert_allclose(a, b, atol=1e-5)
    different = np.array([[1, 11, 3, 0, 0, 0, 0, 0]], dtype="int32")
    assert not np.allclose(a, keras.ops.convert_to_numpy(tower(different)))


@pytest.mark.parametrize("fast", [True, False])
def test_pointwise_conv_matches_numpy(fast):
    x = np.random.default_rng(6).standard_normal((2, 3, 4, 8)).astype("float32")
    conv = PointwiseConv2D(5)
    conv.build(x.shape)
    randomize(conv)
    with backends.fast_paths(fast):
        got = keras.ops.convert_to_numpy(conv(x))
    np.testing.assert_allclose(got, x @ np.asarray(conv.kernel)[0, 0], atol=1e-5)
    assert isinstance(conv, keras.layers.Conv2D) and conv.kernel.shape == (1, 1, 8, 5)


def test_bottleneck_downsample_is_anti_aliased():
    # Stride 2 is done by average pooling: a pattern with period 2 that
    # averages to a constant must give the same output as that constant.
    block = Bottleneck(8, 4, stride=2)
    block.build((1, 4, 4, 8))
    randomize(block)
    checker = np.indices((4, 4)).sum(0) % 2  # 0/1 checkerboard
    x = np.repeat(checker[None, :, :, None], 8, -1).astype("float32")
    # Only the identity path sees the raw input through avgpool; the main
    # path sees it after convolutions, so compare the identity path alone.
    pooled = keras.ops.convert_to_numpy(block.downsample_pool(x))
    np.testing.assert_allclose(pooled, 0.5 * np.ones((1, 2, 2, 8)), atol=1e-6)
    assert tuple(block(x).shape) == (1, 2, 2, 16)


def grads_and_state(fn, layer, x, dy):
    """`block_grads` plus `layer`'s non-trainable values (batch-norm moving
    statistics) after the call; the variables are restored afterwards."""
    state = layer.non_trainable_variables
    before = [np.array(keras.ops.convert_to_numpy(v)) for v in state]
    out = block_grads(fn, layer, x, dy)
    after = [np.array(keras.ops.convert_to_numpy(v)) for v in state]
    for v, value in zip(state, before):
        v.assign(value)
    return out + after


def _bn_output_and_input_grad(layer, x, weights):
    """`layer(x, training=True)` and d sum(y * weights) / dx by the backend's
    own autodiff (stateless on JAX, where the moving statistics come back)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            total = tf.reduce_sum(tf.cast(y, "float32") * weights)
        return y.numpy(), tape.gradient(total, x).numpy()
    if backend == "jax":
        import jax

        trainable = [v.value for v in layer.trainable_variables]
        frozen = [v.value for v in layer.non_trainable_variables]

        def f(x):
            y, new_frozen = layer.stateless_call(trainable, frozen, x, training=True)
            return (y.astype("float32") * weights).sum(), (y, new_frozen)

        grad, (y, new_frozen) = jax.grad(f, has_aux=True)(x)
        for variable, value in zip(layer.non_trainable_variables, new_frozen):
            variable.assign(value)
        return np.asarray(y), np.asarray(grad)
    x = keras.ops.convert_to_tensor(x).requires_grad_(True)
    y = layer(x, training=True)
    (y.float() * keras.ops.convert_to_tensor(weights)).sum().backward()
    return keras.ops.convert_to_numpy(y), keras.ops.convert_to_numpy(x.grad)


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
def test_batch_norm_matches_numpy_in_training_and_inference(dtype, fast):
    # GlobalBatchNormalization runs one fused kernel on torch (`fast`) and
    # Keras's arithmetic otherwise; both must be the textbook batch norm: biased batch
    # statistics, the moving update with momentum 0.9, and its gradient
    # dx = g / sqrt(var + eps) * (dy - mean(dy) - xhat * mean(dy * xhat)).
    rng = np.random.default_rng(8)
    x = (3 * rng.standard_normal((4, 3, 5, 6)) + 1).astype("float32")
    dy = rng.standard_normal(x.shape).astype("float32")
    layer = GlobalBatchNormalization(momentum=0.9, epsilon=1e-5, dtype=dtype)
    layer.build(x.shape)
    gamma = rng.uniform(0.5, 1.5, 6).astype("float32")
    beta = rng.standard_normal(6).astype("float32")
    old_mean = rng.standard_normal(6).astype("float32")
    old_var = rng.uniform(0.5, 2.0, 6).astype("float32")
    for variable, value in zip(
        (layer.gamma, layer.beta, layer.moving_mean, layer.moving_variance),
        (gamma, beta, old_mean, old_var),
    ):
        variable.assign(value)
    if dtype == "mixed_bfloat16":
        x = x.astype(keras.backend.standardize_dtype("bfloat16"))  # ml_dtypes via Keras
        x32, tol = x.astype("float32"), 3e-2
    else:
        x32, tol = x, 1e-4
    mean, var = x32.mean((0, 1, 2)), x32.var((0, 1, 2))
    xhat = (x32 - mean) / np.sqrt(var + 1e-5)

    with backends.fast_paths(fast):
        y, dx = _bn_output_and_input_grad(layer, x, dy)
    np.testing.assert_allclose(np.asarray(y, "float32"), xhat * gamma + beta, atol=tol, rtol=tol)
    dx_ref = gamma / np.sqrt(var + 1e-5) * (
        dy - dy.mean((0, 1, 2)) - xhat * (dy * xhat).mean((0, 1, 2)))
    np.testing.assert_allclose(np.asarray(dx, "float32"), dx_ref, atol=tol, rtol=tol)
    new_mean = 0.9 * old_mean + 0.1 * mean
    new_var = 0.9 * old_var + 0.1 * var
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.moving_mean), new_mean, atol=1e-3 if tol > 1e-3 else 1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.moving_variance), new_var, rtol=1e-2 if tol > 1e-3 else 1e-5)

    # Inference normalises with the (updated) moving statistics.
    with backends.fast_paths(fast):
        inferred = np.asarray(keras.ops.convert_to_numpy(layer(x, training=False)), "float32")
    expected = (x32 - new_mean) / np.sqrt(new_var + 1e-5) * gamma + beta
    np.testing.assert_allclose(inferred, expected, atol=5 * tol, rtol=tol)
    assert keras.backend.standardize_dtype(layer(x, training=False).dtype) == layer.compute_dtype


LAYER_CASES = [
    (MultiHeadSelfAttention, dict(width=16, num_heads=2), (2, 5, 16), "float32"),
    (ResidualAttentionBlock, dict(width=16, num_heads=2), (2, 5, 16), "float32"),
    (Transformer, dict(width=16, num_layers=2, num_heads=2, causal=True), (2, 5, 16), "float32"),
    (VisionTransformer, dict(image_size=16, patch_size=8, width=16, num_layers=1, num_heads=2), (2, 16, 16, 3), "float32"),
    (Bottleneck, dict(in_channels=8, filters=4, stride=2), (2, 8, 8, 8), "float32"),
    (PointwiseConv2D, dict(filters=4), (2, 3, 3, 8), "float32"),
    (AttentionPool2d, dict(spatial_size=2, width=16, num_heads=2, output_dim=8), (2, 2, 2, 16), "float32"),
    (TextTransformer, dict(vocabulary_size=20, context_length=6, width=16, num_layers=1, num_heads=2, eot_token_id=19), (2, 6), "int32"),
]


@pytest.mark.parametrize("layer_cls,kwargs,shape,dtype", LAYER_CASES, ids=[c[0].__name__ for c in LAYER_CASES])
def test_layer_battery(layer_cls, kwargs, shape, dtype):
    rng = np.random.default_rng(5)
    if dtype == "int32":
        inputs = rng.integers(1, 19, shape).astype("int32")
        inputs[:, -1] = 19
    else:
        inputs = rng.standard_normal(shape).astype("float32")
    check_layer(layer_cls, kwargs, inputs)
