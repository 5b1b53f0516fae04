"""Layers and towers against NumPy references, plus the standard battery."""

import keras
import numpy as np
import pytest

from keras_clip.models.layers import (
    MultiHeadSelfAttention,
    ResidualAttentionBlock,
    Transformer,
    get_activation,
    quick_gelu,
)
from keras_clip.models import layers as clip_layers
from keras_clip.models import modified_resnet
from keras_clip.models.modified_resnet import (
    AttentionPool2d,
    Bottleneck,
    GlobalBatchNormalization,
    ModifiedResNet,
)
from keras_clip.models.text_transformer import TextTransformer, end_of_text_positions
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


def test_residual_block_matches_numpy():
    x = np.random.default_rng(3).standard_normal((2, 5, 16)).astype("float32")
    block = ResidualAttentionBlock(16, 2, activation="gelu")
    block.build(x.shape)
    randomize(block)
    g1, b1 = [np.asarray(w) for w in block.ln_1.get_weights()]
    g2, b2 = [np.asarray(w) for w in block.ln_2.get_weights()]
    w_fc, b_fc = [np.asarray(w) for w in block.mlp_fc.get_weights()]
    w_pr, b_pr = [np.asarray(w) for w in block.mlp_proj.get_weights()]
    from math import erf

    gelu = np.vectorize(lambda v: 0.5 * v * (1 + erf(v / np.sqrt(2))))
    h = x + np_self_attention(block.attn, np_layer_norm(x, g1, b1))
    expected = h + gelu(np_layer_norm(h, g2, b2) @ w_fc + b_fc) @ w_pr + b_pr
    got = keras.ops.convert_to_numpy(block(x))
    np.testing.assert_allclose(got, expected, atol=1e-4)


def _block_grads(fn, block, x, dy):
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


@pytest.mark.parametrize(
    "causal,activation,dtype",
    [(False, "quick_gelu", "float32"), (True, "gelu", "float32"), (True, "quick_gelu", "mixed_bfloat16")],
)
def test_residual_block_call_equals_its_sublayers_with_gradients(causal, activation, dtype):
    # On torch a built block runs as direct torch.nn.functional calls
    # (`_torch_fused`); everywhere, its output and every gradient (input and
    # weights) must equal the composition of its sublayers, each called
    # through Keras (and each checked against NumPy above).
    rng = np.random.default_rng(11)
    block = ResidualAttentionBlock(16, 2, activation=activation, causal=causal, dtype=dtype)
    block.build((2, 5, 16))
    randomize(block)
    x = rng.standard_normal((2, 5, 16)).astype("float32")
    dy = rng.standard_normal((2, 5, 16)).astype("float32")
    if dtype == "mixed_bfloat16":
        x = x.astype(keras.backend.standardize_dtype("bfloat16"))
        tol = 3e-2
    else:
        tol = 1e-5
    act = get_activation(activation)

    def composed(x):
        h = x + block.attn(block.ln_1(x))
        return h + block.mlp_proj(act(block.mlp_fc(block.ln_2(h))))

    got = _block_grads(block, block, x, dy)
    expected = _block_grads(composed, block, x, dy)
    names = ["output", "input"] + [v.path for v in block.trainable_variables]
    assert len(got) == len(names) == 2 + 12
    for name, a, b in zip(names, got, expected):
        scale = max(1.0, float(np.abs(b).max()))
        np.testing.assert_allclose(a, b, atol=tol * scale, rtol=tol, err_msg=name)
    assert keras.backend.standardize_dtype(block(x).dtype) == block.compute_dtype


def test_attention_pool_matches_numpy():
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
    np.testing.assert_allclose(keras.ops.convert_to_numpy(pool(x)), expected, atol=1e-5)


@pytest.mark.parametrize("fused", [True, False])
def test_end_of_text_positions_uses_explicit_id(monkeypatch, fused):
    # On torch, `fused` picks its direct torch calls or the Keras ops.
    monkeypatch.setattr(clip_layers, "TORCH_FUSED_BLOCKS", fused)
    # eot id 5 is *not* the largest id: argmax(token_ids) would pick 9.
    ids = np.array(
        [
            [4, 9, 5, 0, 0],  # first eot at 2
            [4, 5, 9, 5, 0],  # first of two eots
            [4, 9, 9, 9, 9],  # truncated, no eot: last non-pad token
            [4, 7, 0, 0, 0],  # no eot: last non-pad token
        ],
        dtype="int32",
    )
    got = keras.ops.convert_to_numpy(end_of_text_positions(ids, 5))
    np.testing.assert_array_equal(got, [2, 1, 4, 1])


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


def _grads_and_state(fn, layer, x, dy):
    """`_block_grads` plus `layer`'s non-trainable values (batch-norm moving
    statistics) after the call; the variables are restored afterwards."""
    state = layer.non_trainable_variables
    before = [np.array(keras.ops.convert_to_numpy(v)) for v in state]
    out = _block_grads(fn, layer, x, dy)
    after = [np.array(keras.ops.convert_to_numpy(v)) for v in state]
    for v, value in zip(state, before):
        v.assign(value)
    return out + after


@pytest.mark.parametrize("stride,training", [(2, True), (1, True), (2, False)])
def test_bottleneck_call_equals_its_sublayers_with_gradients(stride, training):
    # On torch a built bottleneck runs as direct F.conv2d / F.batch_norm /
    # F.avg_pool2d calls on the NCHW view (`_torch_fused`), on JAX its 1x1
    # convolutions run as matrix products (`_pointwise`); everywhere its
    # output, its gradients (input and all weights) and its moving
    # statistics must equal its sublayers composed through Keras.
    rng = np.random.default_rng(12)
    block = Bottleneck(6, 4, stride=stride)  # 6 -> 16 channels: a projection shortcut
    block.build((2, 6, 6, 6))
    randomize(block)
    x = rng.standard_normal((2, 6, 6, 6)).astype("float32")
    dy = rng.standard_normal((2, 6 // stride, 6 // stride, 16)).astype("float32")
    relu = keras.ops.relu

    def composed(x):
        out = relu(block.bn1(block.conv1(x), training=training))
        out = relu(block.bn2(block.conv2(block.pad2(out)), training=training))
        if block.pool is not None:
            out = block.pool(out)
        out = block.bn3(block.conv3(out), training=training)
        identity = x
        if block.downsample_pool is not None:
            identity = block.downsample_pool(identity)
        identity = block.downsample_bn(block.downsample_conv(identity), training=training)
        return relu(out + identity)

    got = _grads_and_state(lambda x: block(x, training=training), block, x, dy)
    expected = _grads_and_state(composed, block, x, dy)
    names = (["output", "input"] + [v.path for v in block.trainable_variables]
             + [v.path for v in block.non_trainable_variables])
    assert len(got) == len(names) == 2 + 3 * 4 + 2 * 4
    for name, a, b in zip(names, got, expected):
        scale = max(1.0, float(np.abs(b).max()))
        np.testing.assert_allclose(a, b, atol=1e-5 * scale, rtol=1e-5, err_msg=name)
    if training:  # the moving statistics did move
        assert not np.allclose(got[-1], keras.ops.convert_to_numpy(block.downsample_bn.moving_variance))


@pytest.mark.parametrize("training", [True, False])
def test_resnet_tower_equals_keras_ops_path_with_gradients(monkeypatch, training):
    # The whole tower (stem included) with the torch fused path / JAX's
    # matmul 1x1 convolutions, against the same weights run through Keras's
    # layers (the path TF takes).
    rng = np.random.default_rng(13)
    tower = ModifiedResNet(32, (1, 1, 1, 1), 8, 2, 16)
    tower.build()
    randomize(tower)
    x = rng.standard_normal((3, 32, 32, 3)).astype("float32")
    dy = rng.standard_normal((3, 16)).astype("float32")
    got = _grads_and_state(lambda x: tower(x, training=training), tower, x, dy)
    monkeypatch.setattr(clip_layers, "TORCH_FUSED_BLOCKS", False)
    monkeypatch.setattr(modified_resnet, "JAX_POINTWISE_MATMUL", False)
    expected = _grads_and_state(lambda x: tower(x, training=training), tower, x, dy)
    names = (["output", "input"] + [v.path for v in tower.trainable_variables]
             + [v.path for v in tower.non_trainable_variables])
    for name, a, b in zip(names, got, expected):
        scale = max(1.0, float(np.abs(b).max()))
        np.testing.assert_allclose(a, b, atol=1e-4 * scale, rtol=1e-4, err_msg=name)


def _fused_against_keras_ops(monkeypatch, fn, layer, x, dy, tol):
    """`fn` run with the torch fused paths (the default) and with every one
    switched off, outputs and all gradients compared. On TF and JAX both
    runs take the Keras-ops path (the comparison then checks nothing new);
    on torch they are the two implementations."""
    got = _block_grads(fn, layer, x, dy)
    monkeypatch.setattr(clip_layers, "TORCH_FUSED_BLOCKS", False)
    expected = _block_grads(fn, layer, x, dy)
    monkeypatch.setattr(clip_layers, "TORCH_FUSED_BLOCKS", True)
    names = ["output", "input"] + [v.path for v in layer.trainable_variables]
    assert len(got) == len(names)
    for name, a, b in zip(names, got, expected):
        scale = max(1.0, float(np.abs(b).max()))
        np.testing.assert_allclose(a, b, atol=tol * scale, rtol=tol, err_msg=name)


@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
def test_vit_tower_equals_keras_ops_path_with_gradients(monkeypatch, dtype):
    # On torch the tower's own ops (patch convolution, class token,
    # positions, ln_pre / ln_post) run as direct torch calls.
    rng = np.random.default_rng(14)
    tower = VisionTransformer(16, 4, 16, 2, 2, dtype=dtype)
    tower.build()
    randomize(tower)
    x = rng.standard_normal((3, 16, 16, 3)).astype("float32")
    dy = rng.standard_normal((3, 16)).astype("float32")
    tol = 3e-2 if dtype == "mixed_bfloat16" else 1e-5
    _fused_against_keras_ops(monkeypatch, tower, tower, x, dy, tol)
    assert keras.backend.standardize_dtype(tower(x).dtype) == tower.compute_dtype


@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
def test_text_tower_equals_keras_ops_path_with_gradients(monkeypatch, dtype):
    # On torch the token lookup, positions, end-of-text pooling (first
    # end-of-text, else the last non-padding token) and ln_final run as
    # direct torch calls. Token ids have no gradient, so the tower's output
    # is scaled by a float input `s` of ones to reuse `_block_grads`.
    rng = np.random.default_rng(15)
    tower = TextTransformer(50, 8, 16, 2, 2, eot_token_id=49, dtype=dtype)
    tower.build()
    randomize(tower)
    ids = np.array(
        [[3, 7, 49, 0, 0, 0, 0, 0],
         [5, 49, 8, 49, 0, 0, 0, 0],  # two end-of-text ids: the first pools
         [4, 6, 2, 9, 11, 0, 0, 0],  # truncated: no end-of-text
         [1, 2, 3, 4, 5, 6, 7, 49]],
        dtype="int32",
    )
    s = np.ones((4, 1), "float32")
    dy = rng.standard_normal((4, 16)).astype("float32")
    tol = 3e-2 if dtype == "mixed_bfloat16" else 1e-5

    def fn(s):
        y = tower(ids)
        return y * keras.ops.cast(s, y.dtype)

    _fused_against_keras_ops(monkeypatch, fn, tower, s, dy, tol)
    assert keras.backend.standardize_dtype(tower(ids).dtype) == tower.compute_dtype


@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
def test_transformer_gradient_boundaries_change_no_value_or_gradient(monkeypatch, dtype):
    # JAX's CPU path passes the residual stream's gradient through an
    # identity matmul between blocks (`gradient_boundary`); outputs and
    # every gradient must equal plain autodiff's without it.
    rng = np.random.default_rng(17)
    stack = Transformer(16, 3, 2, causal=True, dtype=dtype)
    stack.build((2, 5, 16))
    randomize(stack)
    x = rng.standard_normal((2, 5, 16)).astype("float32")
    dy = rng.standard_normal((2, 5, 16)).astype("float32")
    got = _block_grads(stack, stack, x, dy)
    monkeypatch.setattr(clip_layers, "JAX_CPU_GRADIENT_BOUNDARIES", False)
    expected = _block_grads(stack, stack, x, dy)
    names = ["output", "input"] + [v.path for v in stack.trainable_variables]
    assert len(got) == len(names) == 2 + 3 * 12
    tol = 1e-2 if dtype == "mixed_bfloat16" else 1e-6
    for name, a, b in zip(names, got, expected):
        scale = max(1.0, float(np.abs(b).max()))
        np.testing.assert_allclose(a, b, atol=tol * scale, rtol=tol, err_msg=name)


def test_gradient_boundary_is_in_the_jax_cpu_program_only(monkeypatch):
    x = np.arange(2 * 3 * 32, dtype="float32").reshape(2, 3, 32)
    if keras.backend.backend() != "jax":
        assert clip_layers.gradient_boundary(x) is x
        return
    import jax

    stack = Transformer(32, 2, 2)
    stack.build(x.shape)

    def dots(boundaries):
        monkeypatch.setattr(clip_layers, "JAX_CPU_GRADIENT_BOUNDARIES", boundaries)

        def loss(values, x):
            mapping = list(zip(stack.trainable_variables, values))
            with keras.StatelessScope(state_mapping=mapping):
                return stack(x).sum()

        values = [v.value for v in stack.trainable_variables]
        return jax.jit(jax.grad(loss, argnums=1)).lower(values, x).as_text().count("dot_general")

    added = dots(True) - dots(False)
    monkeypatch.setattr(clip_layers, "JAX_CPU_GRADIENT_BOUNDARIES", True)
    # One identity matmul per block on the CPU; none on other devices.
    assert added == (2 if jax.default_backend() == "cpu" else 0)
    # The identity itself is exact, its gradient too, in any dtype.
    for dtype in ("float32", "bfloat16"):
        value = jax.numpy.asarray(x, dtype)
        out, pullback = jax.vjp(clip_layers.gradient_boundary, value)
        np.testing.assert_array_equal(np.asarray(out, "float32"), np.asarray(value, "float32"))
        (grad,) = pullback(value * 3)
        assert grad.dtype == value.dtype
        np.testing.assert_array_equal(np.asarray(grad, "float32"), np.asarray(value * 3, "float32"))


def test_attention_pool_equals_keras_ops_path_with_gradients(monkeypatch):
    rng = np.random.default_rng(16)
    pool = AttentionPool2d(3, 8, 2, 6)
    pool.build()
    randomize(pool)
    x = rng.standard_normal((2, 3, 3, 8)).astype("float32")
    dy = rng.standard_normal((2, 6)).astype("float32")
    _fused_against_keras_ops(monkeypatch, pool, pool, x, dy, 1e-5)


def test_conv_kernel_cache_follows_every_weight_update(monkeypatch):
    # On torch, inference (no gradient into the kernels) runs each fused
    # convolution on a cached contiguous (out, in, kh, kw) copy of its Keras
    # kernel (`layers.torch_conv_kernel`). After every way the weights can
    # change (assign, set_weights, an optimizer step) the tower must give
    # what Keras's layers give with the same weights. On TF and JAX both
    # runs are the Keras path (nothing cached to go stale).
    from keras_clip.optimizers import AdamW

    torch_backend = keras.backend.backend() == "torch"
    rng = np.random.default_rng(17)
    tower = ModifiedResNet(32, (1, 1, 1, 1), 8, 2, 16)
    tower.build()
    randomize(tower)
    x = rng.standard_normal((2, 32, 32, 3)).astype("float32")

    def infer(tower, fused=True):
        monkeypatch.setattr(clip_layers, "TORCH_FUSED_BLOCKS", fused)
        if torch_backend:
            import torch

            with torch.no_grad():
                return keras.ops.convert_to_numpy(tower(x, training=False))
        return keras.ops.convert_to_numpy(tower(x, training=False))

    def check(tower):
        got = infer(tower)  # fused: fills or reuses the cache
        np.testing.assert_allclose(got, infer(tower, fused=False), atol=1e-4 * np.abs(got).max())
        np.testing.assert_array_equal(infer(tower), got)  # the cached copies again
        return got

    first = check(tower)
    conv = tower.blocks[0].conv2
    conv.kernel.assign(rng.standard_normal(tuple(conv.kernel.shape)).astype("float32"))
    second = check(tower)
    assert np.abs(second - first).max() > 1e-3
    randomize(tower, seed=1)
    third = check(tower)
    assert np.abs(third - second).max() > 1e-3
    optimizer = AdamW(learning_rate=0.05)
    grads = [rng.standard_normal(tuple(v.shape)).astype("float32") for v in tower.trainable_variables]
    optimizer.apply([keras.ops.convert_to_tensor(g) for g in grads], tower.trainable_variables)
    assert np.abs(check(tower) - third).max() > 1e-3
    if not torch_backend:
        return
    import gc

    import torch

    images = keras.ops.convert_to_tensor(x).movedim(-1, 1)
    with torch.no_grad():
        cached = clip_layers.torch_conv_kernel(conv, images)
        assert cached.is_contiguous() and cached.shape == (8, 8, 3, 3)
        assert clip_layers.torch_conv_kernel(conv, images) is cached
    np.testing.assert_array_equal(
        cached.numpy(), keras.ops.convert_to_numpy(conv.kernel).transpose(3, 2, 0, 1))
    # With a gradient into the kernel: a view of the variable, never the copy.
    view = clip_layers.torch_conv_kernel(conv, images)
    assert view is not cached and view.requires_grad
    # A frozen tower cached under inference_mode still backpropagates to its
    # input (the copies are normal tensors, which autograd may save).
    tower.trainable = False
    with torch.inference_mode():
        tower(x, training=False)
    grads = []
    for fused in (True, False):
        monkeypatch.setattr(clip_layers, "TORCH_FUSED_BLOCKS", fused)
        xt = torch.tensor(x, requires_grad=True)
        tower(xt, training=False).sum().backward()
        grads.append(xt.grad.numpy())
    np.testing.assert_allclose(grads[0], grads[1], atol=1e-4 * np.abs(grads[1]).max())
    # The ViT's patch convolution reads its kernel the same way.
    vit = VisionTransformer(16, 4, 16, 2, 2)
    vit.build()
    randomize(vit)
    patches = rng.standard_normal((2, 16, 16, 3)).astype("float32")
    for _ in range(2):  # fill the cache, then change the kernel it holds
        outputs = []
        for fused in (True, False, True):
            monkeypatch.setattr(clip_layers, "TORCH_FUSED_BLOCKS", fused)
            with torch.no_grad():
                outputs.append(keras.ops.convert_to_numpy(vit(patches)))
        np.testing.assert_allclose(outputs[0], outputs[1], atol=1e-5)
        np.testing.assert_array_equal(outputs[0], outputs[2])
        vit.patch_embedding.kernel.assign(
            rng.standard_normal(tuple(vit.patch_embedding.kernel.shape)).astype("float32"))
    # Entries go with their variables.
    before = len(clip_layers._conv_kernels)
    assert before >= 4
    del tower, conv, cached, view, optimizer, vit
    gc.collect()
    assert len(clip_layers._conv_kernels) < before
    # Even for a kernel whose (out, in, kh, kw) view is already contiguous
    # (1x1, one channel), where a view of the weight would keep it alive.
    single = keras.layers.Conv2D(1, 1, use_bias=False)
    single.build((None, 4, 4, 1))
    with torch.no_grad():
        kernel = clip_layers.torch_conv_kernel(single, images)
    assert kernel._base is None
    key = id(single.kernel.value)
    assert key in clip_layers._conv_kernels
    del single, kernel
    gc.collect()
    assert key not in clip_layers._conv_kernels


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


@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
def test_batch_norm_matches_numpy_in_training_and_inference(dtype):
    # GlobalBatchNormalization runs one fused kernel on torch and Keras's
    # arithmetic elsewhere; both must be the textbook batch norm: biased batch
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
