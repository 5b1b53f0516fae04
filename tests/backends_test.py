"""`keras_clip.backends`: the mechanism, the settings, and every speed path
equal to the plain Keras code, forward and gradients, float32 and
mixed_bfloat16.

Each test runs on every backend. It computes a layer, tower or model with
the paths on (the default) and with `fast_paths(False)`, and checks which
paths ran (`record_fast_paths`): on the backend that has a path, the two
runs are the two implementations; on the others nothing may change the plain
code (which tests/layers_test.py checks against NumPy on every backend).
"""

import gc
import inspect
import sys

import keras
import numpy as np
import pytest

import keras_clip
from keras_clip import backends
from keras_clip.backends import keras_internals
from keras_clip.models.layers import ResidualAttentionBlock, Transformer, get_activation
from keras_clip.models.modified_resnet import (
    AttentionPool2d,
    Bottleneck,
    GlobalBatchNormalization,
    ModifiedResNet,
    PointwiseConv2D,
)
from keras_clip.models.text_transformer import TextTransformer, end_of_text_positions
from keras_clip.models.vision_transformer import VisionTransformer
from tests.layers_test import block_grads, grads_and_state, np_transformer, randomize
from tests.model_test import synthetic_pairs
from tests.optimizers_test import ADAMW_KWARGS, adamw_four_steps

BACKEND = keras.backend.backend()
MIXED = "mixed_bfloat16"
TOL = {"float32": 1e-5, MIXED: 3e-2}
if BACKEND == "jax":
    import jax

    JAX_CPU = jax.default_backend() == "cpu"
else:
    JAX_CPU = False
BOUNDARIES = ["jax.gradient_boundaries"] if JAX_CPU else []
TORCH_TRANSFORMER = ["torch.Transformer", "torch.ResidualAttentionBlock"]
# Registered paths that no switch turns off: they read values (input checks).
UNSWITCHED = {f"{BACKEND}.value_range"}
REGISTERED = {
    "torch": {
        "torch.AttentionPool2d", "torch.Bottleneck", "torch.GlobalBatchNormalization",
        "torch.ModifiedResNet", "torch.ResidualAttentionBlock", "torch.TextTransformer",
        "torch.Transformer", "torch.VisionTransformer", "torch.encode_image",
        "torch.encode_text", "torch.end_of_text_positions", "torch.value_range",
    },
    "jax": {
        "jax.compiled_encode_image", "jax.compiled_encode_text",
        "jax.gradient_boundaries", "jax.pointwise_matmul", "jax.value_range",
    },
    "tensorflow": {
        "tensorflow.compiled_encode_image", "tensorflow.compiled_encode_text",
        "tensorflow.value_range",
    },
}


def to_np(x):
    return keras.ops.convert_to_numpy(x)


def paths(torch=(), jax=(), tensorflow=()):
    """The fast paths a test expects to run on the active backend."""
    return set({"torch": torch, "jax": jax, "tensorflow": tensorflow}.get(BACKEND, ()))


def as_input(x, dtype):
    """`x` in the compute dtype of a `dtype` policy (bfloat16 for mixed)."""
    return x.astype(keras.backend.standardize_dtype("bfloat16")) if dtype == MIXED else x


def assert_close(got, expected, names, tol):
    assert len(got) == len(expected) == len(names)
    for name, a, b in zip(names, got, expected):
        scale = max(1.0, float(np.abs(b).max()))
        np.testing.assert_allclose(a, b, atol=tol * scale, rtol=tol, err_msg=name)


def assert_as_accurate(got, expected, reference, names):
    """`got` about as far from the float32 `reference` as `expected` is
    (relative norm error, at most twice plus 0.1). For the ResNet's bfloat16
    gradients: a ReLU input near zero rounds to either side, which moves a
    small weight's gradient by several percent of its norm, and the
    attention pool's key gradients are small differences of large terms; the
    two paths' bfloat16 results differ about as much as each differs from
    float32. (The float32 tests catch small errors; these catch a path that
    mishandles bfloat16, whose errors are of the order of the values.)"""
    assert len(got) == len(expected) == len(reference) == len(names)
    for name, a, b, r in zip(names, got, expected, reference):
        norm = max(1.0, float(np.linalg.norm(r)))
        fast, plain = np.linalg.norm(a - r) / norm, np.linalg.norm(b - r) / norm
        assert fast <= 2 * plain + 0.1, (name, fast, plain)


def float32_twin(layer, make):
    """`make("float32")` holding `layer`'s weights."""
    twin = make("float32")
    twin.set_weights(layer.get_weights())
    return twin


def fast_against_plain(fn, layer, x, dy, tol, expected_paths, state=False, plain=None,
                       reference=None):
    """`fn`'s output and gradients (input and `layer`'s trainable weights;
    with `state`, `layer`'s non-trainable values after the call) with every
    path on and with every path off, compared; `expected_paths` must have
    run in the first, nothing in the second. `plain`: another `(fn, layer)`
    with the same weights for the second run. `reference`: the float32
    results, which the first run must be as close to as the second
    (`assert_as_accurate`), instead of within `tol` of the second. Returns
    the first run."""
    grads = grads_and_state if state else block_grads
    with backends.record_fast_paths() as ran:
        got = grads(fn, layer, x, dy)
    with backends.fast_paths(False), backends.record_fast_paths() as ran_plain:
        expected = grads(*(plain or (fn, layer)), x, dy)
    assert expected_paths <= set(ran), (expected_paths, dict(ran))
    assert not set(ran_plain) - UNSWITCHED, dict(ran_plain)
    names = ["output", "input"] + [v.path for v in layer.trainable_variables]
    if state:
        names += [v.path for v in layer.non_trainable_variables]
    if reference is None:
        assert_close(got, expected, names, tol)
    else:
        assert_as_accurate(got, expected, reference, names)
    return got


# ---- the mechanism and the settings -----------------------------------------


def test_settings_are_on_by_default_and_fast_paths_restores_them():
    on = dict.fromkeys(backends.Settings.FIELDS, True)
    assert backends.settings.as_dict() == on
    with backends.fast_paths(False, compiled_encoders=True) as settings:
        assert settings is backends.settings
        assert not settings.torch_fused_blocks and settings.compiled_encoders
        with backends.fast_paths(True):
            assert backends.settings.as_dict() == on
        assert not settings.jax_pointwise_matmul
    assert backends.settings.as_dict() == on
    with pytest.raises(ZeroDivisionError), backends.fast_paths(False):
        1 / 0
    assert backends.settings.as_dict() == on
    with pytest.raises(AttributeError, match="Unknown fast-path setting 'torch_fused'"):
        backends.settings.torch_fused = False
    with pytest.raises(TypeError, match="must be True or False. Received: 1"):
        backends.settings.torch_fused_blocks = 1
    with pytest.raises(AttributeError, match="Unknown"), backends.fast_paths(fused=False):
        pass
    assert backends.settings.as_dict() == on


def test_only_the_active_backends_module_is_loaded_with_its_paths():
    names = {n for n in backends.registered_fast_paths() if not n.startswith("test.")}
    assert names == REGISTERED.get(BACKEND, set())
    loaded = {b for b in REGISTERED if f"keras_clip.backends.{b}" in sys.modules}
    assert loaded == {BACKEND}
    base = keras_clip.optimizers.AdamW.__mro__[1]
    if BACKEND == "torch":
        assert base is sys.modules["keras_clip.backends.torch"].AdamW
    else:
        assert base is keras.optimizers.AdamW


def test_a_registered_path_runs_where_it_applies_else_the_plain_call():
    class Doubler(keras.layers.Layer):
        use_path = False

        @backends.fast_path
        def call(self, x, scale=1.0):
            return x * 2.0 * scale

    @backends.register(Doubler, BACKEND, "test.doubler")
    def doubler(layer, x, scale=1.0):
        if not layer.use_path:
            return NotImplemented
        return x * 2.0 * scale + 1.0  # tells the two apart

    layer = Doubler()
    x = np.ones((2,), "float32")
    assert list(inspect.signature(Doubler.call).parameters) == ["self", "x", "scale"]
    with backends.record_fast_paths() as ran:
        np.testing.assert_array_equal(to_np(layer(x)), [2.0, 2.0])
    assert not ran
    layer.use_path = True
    with backends.record_fast_paths() as outer:
        np.testing.assert_array_equal(to_np(layer(x, scale=3.0)), [7.0, 7.0])
        with backends.record_fast_paths() as inner:
            layer(x)
    assert inner == {"test.doubler": 1} and outer == {"test.doubler": 2}
    with pytest.raises(TypeError, match="decorated with `@fast_path`"):
        backends.register(keras.layers.Dense, BACKEND)

    class Tripler(Doubler):  # inherits Doubler's call: no path of its own
        pass

    with pytest.raises(TypeError, match="its own `call`"):
        backends.register(Tripler, BACKEND)


# ---- transformer blocks and stacks ---------------------------------------------


@pytest.mark.parametrize(
    "causal,activation,dtype",
    [(False, "quick_gelu", "float32"), (True, "gelu", "float32"), (True, "quick_gelu", MIXED)],
)
def test_residual_block_equals_its_sublayers_and_the_plain_path(causal, activation, dtype):
    # On torch a built block runs as direct torch.nn.functional calls; its
    # output and every gradient (input and weights) must equal the plain
    # path's and the composition of its sublayers, each called through Keras.
    rng = np.random.default_rng(11)
    block = ResidualAttentionBlock(16, 2, activation=activation, causal=causal, dtype=dtype)
    block.build((2, 5, 16))
    randomize(block)
    x = as_input(rng.standard_normal((2, 5, 16)).astype("float32"), dtype)
    dy = rng.standard_normal((2, 5, 16)).astype("float32")
    act = get_activation(activation)

    def composed(x):
        h = x + block.attn(block.ln_1(x))
        return h + block.mlp_proj(act(block.mlp_fc(block.ln_2(h))))

    got = fast_against_plain(block, block, x, dy, TOL[dtype],
                             paths(torch=["torch.ResidualAttentionBlock"]))
    expected = block_grads(composed, block, x, dy)
    names = ["output", "input"] + [v.path for v in block.trainable_variables]
    assert len(names) == 2 + 12
    assert_close(got, expected, names, TOL[dtype])
    assert keras.backend.standardize_dtype(block(x).dtype) == block.compute_dtype


def test_a_block_with_lora_takes_the_plain_path():
    # LoRA adds to a Dense's kernel in its `call`: the fused block, which
    # reads kernels directly, must decline and leave it to Keras.
    rng = np.random.default_rng(18)
    block = ResidualAttentionBlock(16, 2)
    block.build((2, 5, 16))
    block.mlp_fc.enable_lora(2)
    randomize(block)  # LoRA's factors too: a non-zero update
    x = rng.standard_normal((2, 5, 16)).astype("float32")
    dy = rng.standard_normal((2, 5, 16)).astype("float32")
    fast_against_plain(block, block, x, dy, 1e-5, set())
    with backends.record_fast_paths() as ran:
        block(x)
    assert "torch.ResidualAttentionBlock" not in ran


@pytest.mark.parametrize("dtype,remat", [("float32", False), (MIXED, False), ("float32", True)])
def test_transformer_paths_change_no_value_or_gradient(dtype, remat):
    # Torch calls each block's `call` directly; JAX's CPU path passes the
    # residual stream's gradient through an identity matmul between blocks.
    # Outputs and every gradient must equal plain autodiff's without them.
    # (Each run gets its own stack with the same weights: under JAX,
    # `keras.remat` leaks a tracer when one layer is differentiated twice.)
    rng = np.random.default_rng(17)

    def make():
        stack = Transformer(16, 3, 2, causal=True, dtype=dtype)
        stack.build((2, 5, 16))
        stack.remat = remat
        randomize(stack)
        return stack

    stack = make()
    x = rng.standard_normal((2, 5, 16)).astype("float32")
    dy = rng.standard_normal((2, 5, 16)).astype("float32")
    torch_paths = ["torch.ResidualAttentionBlock"] + ([] if remat else ["torch.Transformer"])
    plain = make()
    got = fast_against_plain(stack, stack, x, dy, TOL[dtype],
                             paths(torch=torch_paths, jax=BOUNDARIES), plain=(plain, plain))
    third = make()
    with backends.fast_paths(jax_cpu_gradient_boundaries=False):
        expected = block_grads(third, third, x, dy)
    names = ["output", "input"] + [v.path for v in stack.trainable_variables]
    assert len(names) == 2 + 3 * 12
    assert_close(got, expected, names, 1e-2 if dtype == MIXED else 1e-6)


def test_gradient_boundary_is_in_the_jax_cpu_program_only():
    x = np.arange(2 * 3 * 32, dtype="float32").reshape(2, 3, 32) / 100
    stack = Transformer(32, 2, 2)
    stack.build(x.shape)
    if BACKEND != "jax":
        # No such path here: the plain stack is the textbook one.
        assert "jax.gradient_boundaries" not in backends.registered_fast_paths()
        np.testing.assert_allclose(to_np(stack(x)), np_transformer(stack, x), atol=1e-4)
        return
    from keras_clip.backends.jax import gradient_boundary

    def dots(boundaries):
        def loss(values, x):
            mapping = list(zip(stack.trainable_variables, values))
            with keras.StatelessScope(state_mapping=mapping):
                return stack(x).sum()

        values = [v.value for v in stack.trainable_variables]
        with backends.fast_paths(jax_cpu_gradient_boundaries=boundaries):
            program = jax.jit(jax.grad(loss, argnums=1)).lower(values, x)
        return program.as_text().count("dot_general")

    # One identity matmul per block on the CPU; none on other devices.
    assert dots(True) - dots(False) == (2 if JAX_CPU else 0)
    # The identity itself is exact, its gradient too, in any dtype.
    for dtype in ("float32", "bfloat16"):
        value = jax.numpy.asarray(x, dtype)
        out, pullback = jax.vjp(gradient_boundary, value)
        np.testing.assert_array_equal(np.asarray(out, "float32"), np.asarray(value, "float32"))
        (grad,) = pullback(value * 3)
        assert grad.dtype == value.dtype
        np.testing.assert_array_equal(np.asarray(grad, "float32"), np.asarray(value * 3, "float32"))


# ---- the ResNet's layers ---------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", MIXED])
@pytest.mark.parametrize("training,shape", [(True, (4, 3, 5, 6)), (False, (4, 3, 5, 6)),
                                            (True, (1, 1, 1, 6))])
def test_batch_norm_path_equals_the_plain_path(training, shape, dtype):
    # Torch runs one fused batch-norm kernel (and, with one value per
    # channel, Keras's arithmetic); output, gradients and the moving
    # statistics must be the plain layer's.
    rng = np.random.default_rng(8)
    norm = GlobalBatchNormalization(momentum=0.9, epsilon=1e-5, dtype=dtype)
    norm.build(shape)
    randomize(norm)
    x = as_input((3 * rng.standard_normal(shape) + 1).astype("float32"), dtype)
    dy = rng.standard_normal(shape).astype("float32")
    got = fast_against_plain(lambda x: norm(x, training=training), norm, x, dy, TOL[dtype],
                             paths(torch=["torch.GlobalBatchNormalization"]), state=True)
    if training and shape[0] > 1:  # the moving statistics did move
        assert not np.allclose(got[-1], to_np(norm.moving_variance))


@pytest.mark.parametrize("dtype", ["float32", MIXED])
def test_pointwise_conv_path_equals_the_plain_path(dtype):
    # On JAX a 1x1 convolution runs as a matrix product.
    rng = np.random.default_rng(19)
    conv = PointwiseConv2D(5, dtype=dtype)
    conv.build((2, 3, 4, 8))
    randomize(conv)
    x = as_input(rng.standard_normal((2, 3, 4, 8)).astype("float32"), dtype)
    dy = rng.standard_normal((2, 3, 4, 5)).astype("float32")
    got = fast_against_plain(conv, conv, x, dy, TOL[dtype], paths(jax=["jax.pointwise_matmul"]))
    stock = keras.layers.Conv2D(5, 1, use_bias=False, dtype=dtype)
    stock.build((2, 3, 4, 8))
    stock.kernel.assign(to_np(conv.kernel))
    assert_close(got[:2], block_grads(stock, stock, x, dy)[:2], ["output", "input"], TOL[dtype])


@pytest.mark.parametrize("stride,training,dtype",
                         [(2, True, "float32"), (1, True, "float32"), (2, False, "float32"),
                          (2, False, MIXED)])
def test_bottleneck_equals_its_sublayers_and_the_plain_path(stride, training, dtype):
    # On torch a built bottleneck runs as direct F.conv2d / F.batch_norm /
    # F.avg_pool2d calls on the NCHW view, on JAX its 1x1 convolutions run
    # as matrix products; its output, gradients (input and all weights) and
    # moving statistics must equal the plain path's and (float32) its
    # sublayers composed through Keras.
    rng = np.random.default_rng(12)

    def make(dtype):
        block = Bottleneck(6, 4, stride=stride, dtype=dtype)  # 6 -> 16 channels: a projection shortcut
        block.build((2, 6, 6, 6))
        return block

    block = make(dtype)
    randomize(block)
    x32 = rng.standard_normal((2, 6, 6, 6)).astype("float32")
    x = as_input(x32, dtype)
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

    reference = None
    if dtype == MIXED:
        twin = float32_twin(block, make)
        with backends.fast_paths(False):
            reference = grads_and_state(lambda x: twin(x, training=training), twin, x32, dy)
    got = fast_against_plain(lambda x: block(x, training=training), block, x, dy, TOL[dtype],
                             paths(torch=["torch.Bottleneck"], jax=["jax.pointwise_matmul"]),
                             state=True, reference=reference)
    names = (["output", "input"] + [v.path for v in block.trainable_variables]
             + [v.path for v in block.non_trainable_variables])
    assert len(names) == 2 + 3 * 4 + 2 * 4
    if dtype == "float32":
        with backends.fast_paths(False):
            expected = grads_and_state(composed, block, x, dy)
        assert_close(got, expected, names, 1e-5)
    if training:  # the moving statistics did move
        assert not np.allclose(got[-1], to_np(block.downsample_bn.moving_variance))


@pytest.mark.parametrize("training,dtype,remat",
                         [(True, "float32", False), (False, "float32", False),
                          (False, MIXED, False), (False, "float32", True)])
def test_resnet_tower_equals_the_plain_path(training, dtype, remat):
    # The whole tower (stem included) with torch's fused path / JAX's
    # matmul 1x1 convolutions, against the same weights through Keras's
    # layers (the path TF takes). (bfloat16 in inference: in training the
    # batch statistics of a few images amplify rounding, the two paths'
    # gradients then differ as much as each from float32. Remat in inference,
    # and a tower per run: under JAX, `keras.remat` cannot carry batch norm's
    # updates, and leaks a tracer when one layer is differentiated twice.)
    rng = np.random.default_rng(13)

    def make(dtype):
        tower = ModifiedResNet(32, (1, 1, 1, 1), 8, 2, 16, dtype=dtype)
        tower.build()
        tower.remat = remat
        return tower

    tower = make(dtype)
    randomize(tower)
    plain = make(dtype)
    plain.set_weights(tower.get_weights())
    x32 = rng.standard_normal((3, 32, 32, 3)).astype("float32")
    x = as_input(x32, dtype)
    dy = rng.standard_normal((3, 16)).astype("float32")
    reference = None
    if dtype == MIXED:
        twin = float32_twin(tower, make)
        with backends.fast_paths(False):
            reference = grads_and_state(lambda x: twin(x, training=training), twin, x32, dy)
    torch_paths = ["torch.ModifiedResNet", "torch.Bottleneck", "torch.AttentionPool2d"]
    fast_against_plain(lambda x: tower(x, training=training), tower, x, dy, 1e-4,
                       paths(torch=torch_paths, jax=["jax.pointwise_matmul"]), state=True,
                       plain=(lambda x: plain(x, training=training), plain),
                       reference=reference)


@pytest.mark.parametrize("dtype", ["float32", MIXED])
def test_attention_pool_equals_the_plain_path(dtype):
    rng = np.random.default_rng(16)
    pool = AttentionPool2d(3, 8, 2, 6, dtype=dtype)
    pool.build()
    randomize(pool)
    x = as_input(rng.standard_normal((2, 3, 3, 8)).astype("float32"), dtype)
    dy = rng.standard_normal((2, 6)).astype("float32")
    fast_against_plain(pool, pool, x, dy, TOL[dtype], paths(torch=["torch.AttentionPool2d"]))


# ---- the transformer towers -------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", MIXED])
def test_vit_tower_equals_the_plain_path(dtype):
    # On torch the tower's own ops (patch convolution, class token,
    # positions, ln_pre / ln_post) run as direct torch calls.
    rng = np.random.default_rng(14)
    tower = VisionTransformer(16, 4, 16, 2, 2, dtype=dtype)
    tower.build()
    randomize(tower)
    x = rng.standard_normal((3, 16, 16, 3)).astype("float32")
    dy = rng.standard_normal((3, 16)).astype("float32")
    fast_against_plain(tower, tower, x, dy, TOL[dtype],
                       paths(torch=["torch.VisionTransformer"] + TORCH_TRANSFORMER, jax=BOUNDARIES))
    assert keras.backend.standardize_dtype(tower(x).dtype) == tower.compute_dtype


@pytest.mark.parametrize("dtype", ["float32", MIXED])
def test_text_tower_equals_the_plain_path(dtype):
    # On torch the token lookup, positions, end-of-text pooling (first
    # end-of-text, else the last non-padding token) and ln_final run as
    # direct torch calls. Token ids have no gradient, so the tower's output
    # is scaled by a float input `s` of ones to reuse `block_grads`.
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

    def fn(s):
        y = tower(ids)
        return y * keras.ops.cast(s, y.dtype)

    fast_against_plain(fn, tower, s, dy, TOL[dtype],
                       paths(torch=["torch.TextTransformer"] + TORCH_TRANSFORMER, jax=BOUNDARIES))
    assert keras.backend.standardize_dtype(tower(ids).dtype) == tower.compute_dtype


@pytest.mark.parametrize("fast", [True, False])
def test_end_of_text_positions_uses_explicit_id(fast):
    # On torch, `fast` picks its direct torch calls or the Keras ops.
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
    with backends.fast_paths(fast), backends.record_fast_paths() as ran:
        got = to_np(end_of_text_positions(ids, 5))
    np.testing.assert_array_equal(got, [2, 1, 4, 1])
    assert set(ran) == (paths(torch=["torch.end_of_text_positions"]) if fast else set())


# ---- torch's convolution-kernel cache ------------------------------------------------


def test_conv_kernel_cache_follows_every_weight_update():
    # On torch, inference (no gradient into the kernels) runs each fused
    # convolution on a cached contiguous (out, in, kh, kw) copy of its Keras
    # kernel. After every way the weights can change (assign, set_weights,
    # an optimizer step) the tower must give what Keras's layers give with
    # the same weights. On TF and JAX there is no cache: the same updates
    # must reach the outputs of both paths.
    from keras_clip.optimizers import AdamW

    torch_backend = BACKEND == "torch"
    rng = np.random.default_rng(17)
    tower = ModifiedResNet(32, (1, 1, 1, 1), 8, 2, 16)
    tower.build()
    randomize(tower)
    x = rng.standard_normal((2, 32, 32, 3)).astype("float32")

    def infer(tower, **switches):
        with backends.fast_paths(**switches):
            if torch_backend:
                import torch

                with torch.no_grad():
                    return to_np(tower(x, training=False))
            return to_np(tower(x, training=False))

    def check(tower):
        got = infer(tower)  # fused: fills or reuses the cache
        plain = infer(tower, torch_fused_blocks=False)
        np.testing.assert_allclose(got, plain, atol=1e-4 * np.abs(got).max())
        with backends.record_fast_paths() as ran:
            np.testing.assert_array_equal(infer(tower), got)  # the cached copies again
        assert bool(ran["torch.conv_kernel_cache_hit"]) == torch_backend
        uncached = infer(tower, torch_conv_kernel_cache=False)
        np.testing.assert_allclose(uncached, got, atol=1e-6 * np.abs(got).max())
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
    import torch

    from keras_clip.backends.torch import conv_kernel_cache_size
    from keras_clip.backends.torch.functional import conv_kernel

    images = keras.ops.convert_to_tensor(x).movedim(-1, 1)
    with torch.no_grad():
        cached = conv_kernel(conv, images)
        assert cached.is_contiguous() and cached.shape == (8, 8, 3, 3)
        assert conv_kernel(conv, images) is cached
    np.testing.assert_array_equal(cached.numpy(), to_np(conv.kernel).transpose(3, 2, 0, 1))
    # With a gradient into the kernel: a view of the variable, never the copy.
    view = conv_kernel(conv, images)
    assert view is not cached and view.requires_grad
    # A frozen tower cached under inference_mode still backpropagates to its
    # input (the copies are normal tensors, which autograd may save).
    tower.trainable = False
    with torch.inference_mode():
        tower(x, training=False)
    grads = []
    for fused in (True, False):
        with backends.fast_paths(torch_fused_blocks=fused):
            xt = torch.tensor(x, requires_grad=True)
            tower(xt, training=False).sum().backward()
        grads.append(xt.grad.numpy())
    np.testing.assert_allclose(grads[0], grads[1], atol=1e-4 * np.abs(grads[1]).max())
    # The ViT's patch convolution reads its kernel the same way, also in
    # bfloat16 (a cached copy per dtype).
    for dtype, tol in (("float32", 1e-5), (MIXED, 3e-2)):
        vit = VisionTransformer(16, 4, 16, 2, 2, dtype=dtype)
        vit.build()
        randomize(vit)
        patches = rng.standard_normal((2, 16, 16, 3)).astype("float32")
        for _ in range(2):  # fill the cache, then change the kernel it holds
            outputs = []
            for fused in (True, False, True):
                with backends.fast_paths(torch_fused_blocks=fused), torch.no_grad():
                    outputs.append(to_np(keras.ops.cast(vit(patches), "float32")))
            np.testing.assert_allclose(outputs[0], outputs[1], atol=tol)
            np.testing.assert_array_equal(outputs[0], outputs[2])
            vit.patch_embedding.kernel.assign(
                rng.standard_normal(tuple(vit.patch_embedding.kernel.shape)).astype("float32"))
    # Entries go with their variables.
    gc.collect()
    before = conv_kernel_cache_size()
    assert before >= 4
    del tower, conv, cached, view, optimizer, vit
    gc.collect()
    assert conv_kernel_cache_size() < before
    # Even for a kernel whose (out, in, kh, kw) view is already contiguous
    # (1x1, one channel), where a view of the weight would keep it alive.
    single = keras.layers.Conv2D(1, 1, use_bias=False)
    single.build((None, 4, 4, 1))
    before = conv_kernel_cache_size()
    with torch.no_grad():
        kernel = conv_kernel(single, images)
    assert kernel._base is None
    assert conv_kernel_cache_size() == before + 1
    del single, kernel
    gc.collect()
    assert conv_kernel_cache_size() == before


# ---- CLIPModel's encoders: torch's tower skip, the compiled TF / JAX programs ------


@pytest.mark.parametrize("dtype", ["float32", MIXED])
@pytest.mark.parametrize("name", ["tiny-vit", "tiny-resnet"])
def test_encoders_equal_tower_call_and_numpy_projection(monkeypatch, name, dtype):
    # On torch, inference runs each tower's `call` without its
    # `Layer.__call__` (the input cast and, for a mixed policy, the
    # autocast scope done by hand). The embeddings must equal the tower's
    # `__call__` output, projected and normalised in NumPy, for NumPy and
    # tensor inputs alike; the skip must happen where it should and not
    # where it would change something (training, forward hooks, an outer
    # autocast scope).
    model = keras_clip.CLIPModel.from_preset(name, dtype=dtype)
    images, ids = synthetic_pairs(model.config, 3)
    model.image_encoder(images, training=True)  # ResNet: move the BN statistics
    image_features = to_np(keras.ops.cast(model.image_encoder(images, training=False), "float32"))
    text_features = to_np(keras.ops.cast(model.text_encoder(ids), "float32"))
    tol = TOL[dtype]

    def reference(features, projection):
        # The ResNet's attention pool projects itself (no image projection).
        y = features if projection is None else features @ to_np(projection.kernel)
        return y / np.linalg.norm(y, axis=1, keepdims=True)

    calls = []
    towers = [model.image_encoder, model.text_encoder]
    original_call = keras.layers.Layer.__call__

    def counting_call(layer, *args, **kwargs):
        if any(layer is tower for tower in towers):
            calls.append(layer.name)
        return original_call(layer, *args, **kwargs)

    monkeypatch.setattr(keras.layers.Layer, "__call__", counting_call)
    inputs = [(images, ids), (keras.ops.convert_to_tensor(images), keras.ops.convert_to_tensor(ids)),
              (images.astype("float64"), ids.astype("int64"))]
    # The fused paths on and off (the tower skip on), then the tower skip
    # off, then every path off.
    for switches in (dict(), dict(torch_fused_blocks=False),
                     dict(torch_skip_tower_call=False), dict(enabled=False)):
        for x, y in inputs:
            with backends.fast_paths(**switches), backends.record_fast_paths() as ran:
                skipped = BACKEND == "torch" and backends.settings.torch_skip_tower_call
                image, text = model.encode_image(x), model.encode_text(y)
            assert [keras.backend.standardize_dtype(o.dtype) for o in (image, text)] == ["float32"] * 2
            np.testing.assert_allclose(
                to_np(image), reference(image_features, model.image_projection), atol=tol)
            np.testing.assert_allclose(
                to_np(text), reference(text_features, model.text_projection), atol=tol)
            with backends.fast_paths(**switches):
                # Unnormalised, the features keep the compute dtype, as `__call__` gives them.
                raw = model.encode_image(x, normalize=False), model.encode_text(y, normalize=False)
            assert [keras.backend.standardize_dtype(o.dtype) for o in raw] == [model.compute_dtype] * 2
            assert ran["torch.tower_call"] == (2 if skipped else 0)
        if BACKEND == "torch":  # both towers skipped `__call__`, or went through it
            assert calls == ([] if skipped else [t.name for t in towers] * 2 * len(inputs))
        del calls[:]
    if BACKEND != "torch":
        return
    fired = []
    handle = model.image_encoder.register_forward_hook(lambda *a: fired.append(1))
    model.encode_image(images)
    handle.remove()
    assert fired == [1] and calls == [model.image_encoder.name]
    del calls[:]
    model.encode_image(images, training=True)
    assert calls == [model.image_encoder.name]
    del calls[:]
    with keras_internals.AutocastScope("float16"):
        model.encode_text(ids)
    assert calls == [model.text_encoder.name]


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-resnet"])
def test_symbolic_encoders_decline_the_paths_and_build_functional_models(name):
    # On `keras.Input`s every path declines (no compiled program, no torch
    # tower skip); the functional models built from the encoders compute
    # what the encoders do.
    model = keras_clip.CLIPModel.from_preset(name)
    c = model.config
    images, ids = synthetic_pairs(c, 2)
    image_in = keras.Input((c.image_size, c.image_size, 3))
    ids_in = keras.Input((c.context_length,), dtype="int32")
    with backends.record_fast_paths() as ran:
        image_model = keras.Model(image_in, model.encode_image(image_in))
        text_model = keras.Model(ids_in, model.encode_text(ids_in))
    assert not any("encode" in path or "tower_call" in path for path in ran), dict(ran)
    np.testing.assert_allclose(to_np(image_model(images)), to_np(model.encode_image(images)),
                               atol=1e-5)
    np.testing.assert_allclose(to_np(text_model(ids)), to_np(model.encode_text(ids)), atol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", MIXED])
@pytest.mark.parametrize("name", ["tiny-vit", "tiny-resnet"])
def test_encoders_equal_the_plain_path_with_gradients(name, dtype):
    # Inference outside `no_grad` still differentiates: through torch's
    # skipped `__call__` and fused towers, TF's compiled program (JAX's
    # differentiation traces, where the plain code runs).
    model = keras_clip.CLIPModel.from_preset(name, dtype=dtype)
    images, ids = synthetic_pairs(model.config, 3)
    rng = np.random.default_rng(20)
    dy = rng.standard_normal((3, model.config.embed_dim)).astype("float32")
    image_paths = paths(torch=["torch.encode_image", "torch.tower_call"],
                        tensorflow=["tensorflow.compiled_encode_image"])
    reference = None
    if dtype == MIXED:  # bfloat16 ReLUs flip: both paths against float32
        twin = float32_twin(model, lambda dtype: keras_clip.CLIPModel.from_preset(name))
        with backends.fast_paths(False):
            reference = block_grads(twin.encode_image, twin.image_encoder, images, dy)
    fast_against_plain(model.encode_image, model.image_encoder, images, dy, TOL[dtype],
                       image_paths, reference=reference)

    def text(s):
        y = model.encode_text(ids)
        return y * keras.ops.cast(s, y.dtype)

    text_paths = paths(torch=["torch.encode_text", "torch.tower_call", "torch.TextTransformer"],
                       tensorflow=["tensorflow.compiled_encode_text"])
    fast_against_plain(text, model.text_encoder, np.ones((3, 1), "float32"), dy, TOL[dtype],
                       text_paths)


@pytest.mark.parametrize("dtype", ["float32", MIXED])
@pytest.mark.parametrize("name", ["tiny-vit", "tiny-resnet"])
def test_compiled_encoders_follow_the_weights_and_match_eager(name, dtype):
    # encode_image / encode_text run compiled on TF and JAX (tf.function /
    # jax.jit); after training changes the weights (and the ResNet's batch
    # norm statistics) they must give what the eager layers give.
    model = keras_clip.CLIPModel.from_preset(name, dtype=dtype)
    images, ids = synthetic_pairs(model.config, 4)
    before = to_np(model.encode_image(images))
    model.compile(optimizer=keras.optimizers.SGD(0.05))
    model.fit({"images": images, "token_ids": ids}, batch_size=4, epochs=1, verbose=0)
    with backends.record_fast_paths() as ran:
        image, text = to_np(model.encode_image(images)), to_np(model.encode_text(ids))
        raw = to_np(keras.ops.cast(model.encode_image(images, normalize=False), "float32"))
    assert np.isfinite(image).all() and np.isfinite(text).all()
    compiled = paths(jax=["jax.compiled_encode_image", "jax.compiled_encode_text"],
                     tensorflow=["tensorflow.compiled_encode_image",
                                 "tensorflow.compiled_encode_text"])
    assert compiled <= set(ran)
    tol = 1e-5 if dtype == "float32" else 1e-2
    for eager in (dict(run_eagerly=True), dict(compiled_encoders=False)):
        model.run_eagerly = eager.pop("run_eagerly", False)
        with backends.fast_paths(**eager), backends.record_fast_paths() as ran:
            np.testing.assert_allclose(image, to_np(model.encode_image(images)), atol=tol)
            np.testing.assert_allclose(text, to_np(model.encode_text(ids)), atol=tol)
            # Unnormalised features can be large: compare relative to their scale.
            eager_raw = model.encode_image(images, normalize=False)
            np.testing.assert_allclose(raw, to_np(keras.ops.cast(eager_raw, "float32")),
                                       atol=tol * np.abs(raw).max())
        assert not any("compiled" in path for path in ran)
    assert np.abs(image - before).max() > 1e-3


def test_tf_encoders_use_xla_unless_jit_compile_false_is_asked_for():
    # Keras's "auto" resolves to False on CPU-only TF; the encoders still
    # use XLA then, and stop only when jit_compile=False is asked for, by
    # compile() or by setting the attribute (even where the value it
    # replaces is already False).
    model = keras_clip.CLIPModel.from_preset("tiny-vit")
    images, ids = synthetic_pairs(model.config, 3)
    use_xla = backends.compiled_encoders_use_xla
    assert use_xla(model)
    model.compile(optimizer="sgd")
    assert use_xla(model)
    assert model.get_compile_config()["jit_compile"] == "auto"
    with backends.record_fast_paths() as xla_ran:
        xla_image, xla_text = to_np(model.encode_image(images)), to_np(model.encode_text(ids))
    model.jit_compile = False
    assert not use_xla(model) and not model.jit_compile
    with backends.record_fast_paths() as plain_ran:
        plain_image, plain_text = to_np(model.encode_image(images)), to_np(model.encode_text(ids))
    model.compile(optimizer="sgd", jit_compile=True)
    assert use_xla(model)
    model.compile(optimizer="sgd", jit_compile=False)
    assert not use_xla(model)
    assert model.get_compile_config()["jit_compile"] is False
    if BACKEND == "tensorflow":
        assert xla_ran["tensorflow.compiled_encoder_xla"] == 2
        assert plain_ran["tensorflow.compiled_encode_image"] == 1
        assert plain_ran["tensorflow.compiled_encoder_xla"] == 0
    # Both programs against the eager layers.
    model.run_eagerly = True
    eager_image, eager_text = to_np(model.encode_image(images)), to_np(model.encode_text(ids))
    for got in (xla_image, plain_image):
        np.testing.assert_allclose(got, eager_image, atol=1e-5)
    for got in (xla_text, plain_text):
        np.testing.assert_allclose(got, eager_text, atol=1e-5)


# ---- training: torch's AdamW update, and a whole step ----------------------------


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("amsgrad", [False, True])
def test_adamw_fused_and_in_place_updates_equal_numpy(fused, amsgrad):
    # Torch's fused CPU kernel and its in-place multi-tensor update (what
    # other devices run) against the textbook update; elsewhere the
    # setting must change nothing.
    from keras_clip.optimizers import AdamW

    run, reference = adamw_four_steps(amsgrad)
    with backends.fast_paths(torch_fused_adamw=fused), backends.record_fast_paths() as ran:
        got = run(AdamW(**ADAMW_KWARGS, amsgrad=amsgrad))
    for a, ref in zip(got, reference):
        np.testing.assert_allclose(a, ref, rtol=1e-5, atol=1e-6)
    assert bool(ran["torch.fused_adamw"]) == (fused and BACKEND == "torch")


@pytest.mark.parametrize("fused", [True, False])
def test_adamw_torch_update_advances_weight_versions(fused):
    # Every in-place torch write advances the tensor's version counter,
    # which autograd and the convolution-kernel cache rely on to see a
    # weight change. ATen's fused AdamW kernel does not advance it by
    # itself; our update must, as Keras's own optimizers' in-place ops do.
    # (Both torch paths: the fused CPU kernel, and the multi-tensor one used
    # on other devices.)
    if BACKEND != "torch":
        pytest.skip("torch version counters: the in-place AdamW update exists on torch only")
    from keras_clip.optimizers import AdamW

    optimizer = AdamW(learning_rate=0.1, weight_decay=0.1)
    for stock in (keras.optimizers.AdamW(learning_rate=0.1), optimizer):
        variables = [keras.Variable(np.ones((3, 3), "float32"), name="kernel"),
                     keras.Variable(np.ones((3,), "float32"), name="bias")]
        before = [v.value._version for v in variables]
        grads = [keras.ops.ones(v.shape) for v in variables]
        with backends.fast_paths(torch_fused_adamw=fused):
            stock.apply(grads, variables)
        after = [v.value._version for v in variables]
        assert all(b > a for a, b in zip(before, after)), (type(stock), before, after)


@pytest.mark.parametrize("dtype", ["float32", MIXED])
@pytest.mark.parametrize("name", ["tiny-vit", "tiny-resnet"])
def test_train_step_equals_the_plain_path(name, dtype):
    # One `fit` step of the whole model with keras_clip's AdamW, every path
    # on against every path off (each model's step traced under its setting):
    # the same loss, and weights within Adam's first step of each other.
    images, ids = synthetic_pairs(keras_clip.get_preset(name), 8)
    lr = 1e-3
    results = []
    for enabled in (True, False):
        keras.utils.set_random_seed(0)
        model = keras_clip.CLIPModel.from_preset(name, dtype=dtype)
        model.compile(optimizer=keras_clip.make_optimizer(
            model, total_steps=10, warmup_steps=0, learning_rate=lr))
        with backends.fast_paths(enabled):
            logs = model.train_on_batch({"images": images, "token_ids": ids}, return_dict=True)
        results.append((logs, [[to_np(w) for w in weights] for weights in
                               (model.trainable_weights, model.non_trainable_weights)]))
    (fast_logs, (fast_trained, fast_state)), (plain_logs, (plain_trained, plain_state)) = results
    tol = 1e-4 if dtype == "float32" else 2e-2
    np.testing.assert_allclose(fast_logs["loss"], plain_logs["loss"], rtol=tol, atol=tol)
    for a, b in zip(fast_state, plain_state):  # batch-norm statistics
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
    # Adam's first step moves each weight by about lr * sign(gradient): the
    # two agree where the gradients' signs do, everywhere but a few
    # near-zero gradients.
    differ = np.concatenate([np.abs(a - b).ravel() for a, b in zip(fast_trained, plain_trained)])
    assert differ.max() < 2.5 * lr
    assert (differ > 0.1 * lr).mean() < (0.01 if dtype == "float32" else 0.1)
