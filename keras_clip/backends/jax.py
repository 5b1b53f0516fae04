"""The JAX backend's speed paths (imported only when Keras runs on JAX).

All of them act when a function is traced, so a switch in
`keras_clip.backends.settings` applies to programs traced after it changes.

- `Transformer`: on the CPU, gradient boundaries between blocks
  (`settings.jax_cpu_gradient_boundaries`);
- `PointwiseConv2D`: a 1x1 convolution as a matrix product
  (`settings.jax_pointwise_matmul`);
- `CLIPModel` encoders: one `jax.jit` program per tower for eager inference
  (`settings.compiled_encoders`).
"""

import functools
import math

import jax
import jax.numpy as jnp
import keras

from keras_clip.backends import plain_built, register, settings, value_range
from keras_clip.backends.keras_internals import in_stateless_scope
from keras_clip.models.clip_model import CLIPModel
from keras_clip.models.layers import Transformer
from keras_clip.models.modified_resnet import PointwiseConv2D


def _register(target, name=None):
    return register(target, "jax", name)


def _boundary_identity(g):
    """`g` unchanged, as an op XLA's CPU fusion cannot absorb: a dot of its
    last axis, split into groups of 16, with a 16x16 identity (full
    precision, exact: each output is one element times 1 plus zeros; the
    leading axes, and so a batch sharding, stay as they are)."""
    width = g.shape[-1]
    k = math.gcd(width, 16)
    split = g.reshape(g.shape[:-1] + (width // k, k))
    eye = jnp.eye(k, dtype=g.dtype)
    out = jax.lax.dot_general(
        split,
        eye,
        (((split.ndim - 1,), (0,)), ((), ())),
        precision=jax.lax.Precision.HIGHEST,
        preferred_element_type=g.dtype,
    )
    return out.reshape(g.shape)


@jax.custom_vjp
def gradient_boundary(x):
    """Identity whose gradient is materialised once.

    In a deep residual stack the gradient reaching block k is a sum of
    every later block's contributions. XLA's CPU fusion (which may
    duplicate elementwise work) never stores that sum: each of its
    consumers in each block re-adds the chain from the top, so the backward
    pass reads O(depth^2) activations. `jax.lax.optimization_barrier` does
    not stop it there (the CPU compiler expands barriers before fusing), so
    the gradient passes through a tiny identity matmul, which XLA does not
    fuse. Forward values and gradients are unchanged.
    """
    return x


def _boundary_forward(x):
    return x, None


def _boundary_backward(_, g):
    return (_boundary_identity(g),)


gradient_boundary.defvjp(_boundary_forward, _boundary_backward)


@_register(Transformer, "jax.gradient_boundaries")
def transformer(stack, x):
    """The blocks with a `gradient_boundary` after each, on JAX's CPU backend."""
    if not settings.jax_cpu_gradient_boundaries or jax.default_backend() != "cpu":
        return NotImplemented
    for block in stack.blocks:
        x = keras.remat(block)(x) if stack.remat else block(x)  # (B, T, D)
        x = gradient_boundary(x)
    return x


@_register(PointwiseConv2D, "jax.pointwise_matmul")
def pointwise_conv(conv, inputs):
    """`x @ kernel[0, 0]`: XLA's CPU backend runs a 1x1 convolution's forward
    and backward passes slower than the same contraction as a matrix product
    (docs/performance.md). The kernel is read through the layer's autocast
    scope, as `Conv2D.call` reads it."""
    if not (
        settings.jax_pointwise_matmul
        and plain_built(conv)
        and tuple(conv.kernel_size) == (1, 1)
        and tuple(conv.strides) == (1, 1)
        and tuple(conv.dilation_rate) == (1, 1)
        and conv.groups == 1
        and not conv.use_bias
        and conv.activation is keras.activations.linear
        and conv.data_format == "channels_last"
    ):
        return NotImplemented
    return keras.ops.matmul(inputs, conv.kernel[0, 0])


def _compiled(model, tower, inputs, normalize, training):
    """The jitted inference program for one tower, or None where it must not
    be used: training, `run_eagerly`, `jit_compile=False`, inside a trace or
    a stateless scope, an unbuilt model."""
    if (
        training
        or not settings.compiled_encoders
        or model.run_eagerly
        or not model.jit_compile
        or not model.built
        or isinstance(inputs, (jax.core.Tracer, keras.KerasTensor))
        or in_stateless_scope()
    ):
        return None
    # Keyed on the switch that changes the traced inference program too.
    key = (tower, bool(normalize), settings.jax_pointwise_matmul)
    cache = model.__dict__.setdefault("_keras_clip_compiled_encoders", {})
    if key not in cache:
        cache[key] = _make(model, tower, bool(normalize))
    return cache[key]


def _make(model, tower, normalize):
    if tower == "image":
        layers = [model.image_encoder, model.image_projection]
        encode = functools.partial(
            model._encode_image, normalize=normalize, training=False
        )
    else:
        layers = [model.text_encoder, model.text_projection]
        encode = functools.partial(
            model._encode_text, normalize=normalize, training=False
        )
    variables = [v for layer in layers if layer is not None for v in layer.variables]

    def stateless(values, x):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            return encode(x)

    jitted = jax.jit(stateless)
    return lambda x: jitted([v.value for v in variables], x)


@_register(CLIPModel._encode_image, "jax.compiled_encode_image")
def encode_image(model, images, normalize, training):
    """`encode_image` in eager inference as one `jax.jit` program, as
    `predict` runs, instead of op by op; retraced per input shape."""
    compiled = _compiled(model, "image", images, normalize, training)
    return NotImplemented if compiled is None else compiled(images)


@_register(CLIPModel._encode_text, "jax.compiled_encode_text")
def encode_text(model, token_ids, normalize, training):
    """As `encode_image`."""
    compiled = _compiled(model, "text", token_ids, normalize, training)
    return NotImplemented if compiled is None else compiled(token_ids)


@register(value_range, "jax", "jax.value_range")
def _concrete_value_range(x):
    """A concrete JAX array's range; tracers (inside `jax.jit`) stay unknown."""
    if not isinstance(x, jax.Array) or isinstance(x, jax.core.Tracer):
        return NotImplemented
    if x.size == 0:
        return None
    # On the host, as NumPy: a batch of token ids is small, and two
    # dispatched reductions cost more than its copy.
    values = jax.device_get(x)
    return values.min().item(), values.max().item()
