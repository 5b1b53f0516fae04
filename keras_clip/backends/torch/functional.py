"""Keras layers' maths as direct ATen calls, for the torch fast paths.

Each function takes a built Keras layer (or variable) and torch tensors, and
computes what the layer's `call` computes, in the activation's dtype, through
`torch.nn.functional`: no Keras op dispatch, no `Layer.__call__`.
"""

import weakref

import keras
import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.modules import module as torch_module

from keras_clip import backends
from keras_clip import distributed
from keras_clip.backends.keras_internals import (
    AutocastScope,
    get_autocast_scope,
    in_stateless_scope,
)


def value(variable, like):
    """The torch tensor of a Keras variable.

    Keras's `variable.value` checks the stateless scope, the autocast scope
    and whether the current device is `meta` on every read; a fused block
    reads a dozen weights, so those checks would cost more than a small
    block's arithmetic. The fused paths cast each weight to the activation's
    dtype themselves, so they need only the stored tensor (same object, same
    autograd leaf). Falls back to `.value` where Keras substitutes another
    tensor: inside a stateless scope, for an uninitialised variable, and in a
    symbolic call on the `meta` device (`like` is the activation the weight
    meets).
    """
    stored = getattr(variable, "_value", None)
    if stored is None or like.device.type == "meta" or in_stateless_scope():
        return variable.value
    return stored


def linear(x, layer):
    """A plain Keras `Dense` as one `F.linear` (`addmm` with the bias fused),
    its `(in, out)` kernel read transposed as a view."""
    kernel = value(layer.kernel, x).to(x.dtype)
    bias = value(layer.bias, x).to(x.dtype) if layer.use_bias else None
    return F.linear(x, kernel.t(), bias)


def layer_norm(x, layer):
    """Keras `LayerNormalization` over the last axis as one `F.layer_norm`,
    in float32 as Keras computes it, back in `x`'s dtype."""
    out = F.layer_norm(
        x.float(),
        (x.shape[-1],),
        value(layer.gamma, x).float() if layer.scale else None,
        value(layer.beta, x).float() if layer.center else None,
        layer.epsilon,
    )
    return out.to(x.dtype)


# id(stored kernel tensor) -> (weak reference to it, its version counter,
# dtype, device, OIHW copy). An entry goes when its tensor does. (Not a
# WeakKeyDictionary: that compares keys with `==`, elementwise on tensors.)
_conv_kernels = {}


def conv_kernel_cache_size():
    """How many convolution kernels' copies the cache holds now."""
    return len(_conv_kernels)


def conv_kernel(conv, like):
    """A Keras `Conv2D`'s kernel as torch's `(out, in, kh, kw)`, in `like`'s
    dtype, for `F.conv2d`.

    Keras stores the kernel `(kh, kw, in, out)`. A permuted view of it costs
    nothing to make, but ATen's CPU convolution first copies a non-contiguous
    weight into its own layout on every call, and that copy costs more than a
    small batch's convolution. So where no gradient flows into the kernel
    (`torch.no_grad()` / `inference_mode`, or a frozen kernel) and
    `settings.torch_conv_kernel_cache` is on, the contiguous copy is made once
    and reused until the kernel's tensor changes: the entry is keyed on the
    stored tensor and checked against its version counter, which every
    in-place update (optimizer step, `assign`, `load_weights`) advances.
    With a gradient the permuted view is passed (autograd needs the path to
    the weight).
    """
    stored = value(conv.kernel, like)
    if (
        not backends.settings.torch_conv_kernel_cache
        or (torch.is_grad_enabled() and stored.requires_grad)
        or like.device.type == "meta"
        or in_stateless_scope()
        or torch.compiler.is_compiling()
    ):
        return stored.to(like.dtype).permute(3, 2, 0, 1)
    key = id(stored)
    entry = _conv_kernels.get(key)
    if (
        entry is not None
        and entry[0]() is stored
        and entry[1] == stored._version
        and entry[2] == like.dtype
        and entry[3] == stored.device
    ):
        backends.note("torch.conv_kernel_cache_hit")
        return entry[4]
    # A normal tensor even under `inference_mode`, so that a later call with
    # gradients for the activations may save it for the backward pass; and
    # always a copy (`contiguous()` may return a view, which would keep the
    # weight's tensor, and so this entry, alive for good).
    with torch.inference_mode(False), torch.no_grad():
        kernel = (
            stored.to(like.dtype)
            .permute(3, 2, 0, 1)
            .clone(memory_format=torch.contiguous_format)
        )
    ref = weakref.ref(stored, lambda _, key=key: _conv_kernels.pop(key, None))
    _conv_kernels[key] = (ref, stored._version, like.dtype, stored.device, kernel)
    return kernel


def batch_norm_fusable(norm, ndim):
    """Whether `batch_norm` computes this `GlobalBatchNormalization`'s call
    on `ndim`-D inputs: channels last, no renorm, not distributed (where the
    layer all-reduces its statistics)."""
    return (
        norm.built
        and norm.axis in (-1, ndim - 1)
        and not norm.renorm
        and not distributed.replica_context().active
    )


def batch_norm(norm, x, training):
    """A `GlobalBatchNormalization` on an NCHW tensor as one
    `F.batch_norm` (ATen's / cuDNN's fused kernel, forward and backward).

    Keras's op-by-op arithmetic keeps several full-size intermediates (and a
    float32 copy of a bfloat16 activation) for the backward pass. Same maths
    as Keras's layer: biased batch variance for the moving statistics
    (`moving = momentum * moving + (1 - momentum) * batch`), statistics in
    float32. Takes and returns NCHW: the `movedim(-1, 1)` view of an NHWC
    tensor costs no copy.
    """
    training = training and norm.trainable
    if training and x.numel() == x.shape[1]:
        # One value per channel: torch refuses; Keras's arithmetic gives 0 variance.
        plain = type(norm).call.__wrapped__
        return plain(norm, x.movedim(1, -1), training=True).movedim(-1, 1)
    if x.device.type != "cuda":
        # One copy, float32 and contiguous NCHW: ATen's CPU kernel on
        # channels-last memory is several times less precise single-threaded.
        # CUDA's kernel takes channels-last half inputs with float32 statistics.
        x = x.to(dtype=torch.float32, memory_format=torch.contiguous_format)
    weight = value(norm.gamma, x).float() if norm.scale else None
    bias = value(norm.beta, x).float() if norm.center else None
    if training:
        channels = x.shape[1]
        mean = torch.zeros(channels, device=x.device)
        var = torch.ones(channels, device=x.device)
        # momentum=1 makes torch write the batch statistics into `mean` and
        # `var` (its variance unbiased: n / (n - 1) times Keras's).
        y = F.batch_norm(x, mean, var, weight, bias, True, 1.0, norm.epsilon)
        n = x.numel() // channels
        var = var * ((n - 1) / n)
        m = norm.momentum
        norm.moving_mean.assign(norm.moving_mean.value * m + mean * (1.0 - m))
        norm.moving_variance.assign(norm.moving_variance.value * m + var * (1.0 - m))
    else:
        y = F.batch_norm(
            x,
            value(norm.moving_mean, x).float(),
            value(norm.moving_variance, x).float(),
            weight,
            bias,
            False,
            0.0,
            norm.epsilon,
        )
    return y.to(getattr(torch, keras.backend.standardize_dtype(norm.compute_dtype)))


def conv_bn(conv, norm, x, training, stride=1, padding=0):
    """`norm(conv(x))` on an NCHW tensor in the compute dtype, as two ATen
    calls (the kernel through `conv_kernel`)."""
    y = F.conv2d(x, conv_kernel(conv, x), stride=stride, padding=padding)
    return batch_norm(norm, y, training)


def call_sublayer(layer, *args, **kwargs):
    """A built sublayer's `call`, from inside its parent's fast path.

    Every eager `Layer.__call__` on torch runs torch's module dispatch, then
    Keras's input conversion, name scope, autocast and mask bookkeeping. In
    a parent's `call` that work is done already: the parent's `__call__`
    cast the inputs to the shared dtype policy and opened the autocast scope
    `Dense.call` reads its kernel through. So with
    `settings.torch_skip_layer_call` a built sublayer's `call` is invoked
    directly (its torch forward hooks do not fire then).
    """
    if backends.settings.torch_skip_layer_call and layer.built:
        return layer.call(*args, **kwargs)
    return layer(*args, **kwargs)


def tower_call(tower, inputs, training=False):
    """`tower(inputs, training=training)`, skipping `Layer.__call__` for
    inference of a built tower (`settings.torch_skip_tower_call`).

    Only two of `__call__`'s steps change an inference result, and they are
    done here: float inputs are cast to the compute dtype, and under a mixed
    policy the tower's `call` runs in the autocast scope `__call__` would
    open. Training, towers with torch forward hooks (and global hooks),
    symbolic or stateless calls and calls inside another autocast scope keep
    `__call__`.
    """
    if training or not backends.settings.torch_skip_tower_call:
        return tower(inputs, training=training)
    if isinstance(inputs, np.ndarray):
        inputs = keras.ops.convert_to_tensor(inputs)  # as `__call__` would
    if not (
        isinstance(inputs, torch.Tensor)
        and tower.built
        and tower.autocast
        and inputs.device.type != "meta"
        and get_autocast_scope() is None
        and not in_stateless_scope()
        and not (tower._forward_hooks or tower._forward_pre_hooks)
        and not (
            torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks
        )
    ):
        return tower(inputs, training=training)
    backends.note("torch.tower_call")
    compute = tower.compute_dtype
    if (
        inputs.is_floating_point()
        and keras.backend.standardize_dtype(inputs.dtype) != compute
    ):
        inputs = keras.ops.cast(inputs, compute)
    kwargs = {"training": False} if tower._call_has_training_arg else {}
    if compute == tower.variable_dtype:
        return tower.call(inputs, **kwargs)
    with AutocastScope(compute):
        return tower.call(inputs, **kwargs)
