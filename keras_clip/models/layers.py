"""Layers shared by the CLIP towers: activation, attention, transformer."""

import functools
import math
import weakref

import keras
from keras import ops
from keras.src.backend.common.stateless_scope import in_stateless_scope

# PyTorch's LayerNorm default; Keras's default (1e-3) would break parity
# with OpenAI weights.
LAYER_NORM_EPSILON = 1e-5


@keras.saving.register_keras_serializable(package="keras_clip")
def quick_gelu(x):
    """OpenAI's GELU approximation: `x * sigmoid(1.702 * x)`."""
    return x * ops.sigmoid(1.702 * x)


def get_activation(name):
    if name == "quick_gelu":
        return quick_gelu
    if name == "gelu":
        # Exact (erf) GELU, as torch.nn.GELU() computes by default.
        return lambda x: keras.activations.gelu(x, approximate=False)
    raise ValueError(
        "`activation` must be 'quick_gelu' or 'gelu'. "
        f"Received: activation={name!r}"
    )


_TORCH = keras.backend.backend() == "torch"
_JAX = keras.backend.backend() == "jax"
# Torch only: run each built transformer block as direct
# `torch.nn.functional` calls (`ResidualAttentionBlock._torch_fused`).
# Module-level so tests can compare it with the Keras-ops path.
TORCH_FUSED_BLOCKS = True


def torch_fusable(layers):
    """Whether a torch fused path may use these built sublayers' weights
    directly: the switch is on and none has LoRA or quantization (whose
    `call` does more than its kernel)."""
    return TORCH_FUSED_BLOCKS and plain_built(layers)


def plain_built(layers):
    """Whether these sublayers are built and their `call` is only their
    kernel's maths (no LoRA, no quantization), so a fused path may read
    their weights directly."""
    return all(
        layer.built
        and not getattr(layer, "lora_enabled", False)
        and getattr(layer, "quantization_mode", None) is None
        for layer in layers
    )


def torch_value(variable, like):
    """The torch tensor of a Keras variable, for a fused torch path.

    Keras's `variable.value` costs ~10 us per read on torch (it checks the
    stateless scope, the autocast scope and whether the current device is
    `meta`); a fused transformer block reads 12 weights, a bottleneck up to
    16, so those reads cost more than a small block's arithmetic. The fused
    paths cast each weight to the activation's dtype themselves, so they need
    only the stored tensor (same object, same autograd leaf). Falls back to
    `.value` where Keras substitutes another tensor: inside a stateless scope,
    for an uninitialised variable, and in a symbolic call on the `meta`
    device (`like` is the activation the weight meets).
    """
    value = getattr(variable, "_value", None)
    if value is None or like.device.type == "meta" or in_stateless_scope():
        return variable.value
    return value


# Torch only: keep each convolution kernel's `(out, in, kh, kw)` copy between
# calls that record no gradient for it (`torch_conv_kernel`). Module-level so
# tests and benchmarks can compare both paths.
TORCH_CONV_KERNEL_CACHE = True
# id(stored kernel tensor) -> (weak reference to it, its version counter,
# dtype, device, OIHW copy). An entry goes when its tensor does. (Not a
# WeakKeyDictionary: that compares keys with `==`, elementwise on tensors.)
_conv_kernels = {}


def torch_conv_kernel(conv, like):
    """A Keras `Conv2D`'s kernel as torch's `(out, in, kh, kw)`, in `like`'s
    dtype, for `F.conv2d` in a fused torch path.

    Keras stores the kernel `(kh, kw, in, out)`. A permuted view of it costs
    nothing to make, but ATen's CPU convolution first copies a non-contiguous
    weight into its own layout on every call, and that transposing copy costs
    more than a small batch's convolution (a 3x3, 256 -> 256 kernel here:
    ~0.9 ms for the copy, 0.15 ms for the batch-1 convolution). So where no
    gradient flows into the kernel (`torch.no_grad()` / `inference_mode`, or
    a frozen kernel), the contiguous copy is made once and reused until the
    kernel's tensor changes: the entry is keyed on the stored tensor and
    checked against its version counter, which every in-place update
    (optimizer step, `assign`, `load_weights`) advances. The copy costs the
    kernel's size in memory while the model lives. With a gradient the
    permuted view is passed as before (autograd needs the path to the
    weight), and `TORCH_CONV_KERNEL_CACHE = False` turns the cache off.
    A write that bypasses torch's version counter (through `.data`, or a
    kernel such as `torch._fused_adamw_`, whose use in
    `keras_clip.optimizers.AdamW` advances the counter itself) would not be
    seen: after one, set the switch off or assign the kernel.
    """
    import torch

    value = torch_value(conv.kernel, like)
    if (
        not TORCH_CONV_KERNEL_CACHE
        or (torch.is_grad_enabled() and value.requires_grad)
        or like.device.type == "meta"
        or in_stateless_scope()
        or torch.compiler.is_compiling()
    ):
        return value.to(like.dtype).permute(3, 2, 0, 1)
    key = id(value)
    entry = _conv_kernels.get(key)
    if (
        entry is not None
        and entry[0]() is value
        and entry[1] == value._version
        and entry[2] == like.dtype
        and entry[3] == value.device
    ):
        return entry[4]
    # A normal tensor even under `inference_mode`, so that a later call with
    # gradients for the activations may save it for the backward pass; and
    # always a copy (`contiguous()` may return a view, which would keep the
    # weight's tensor, and so this entry, alive for good).
    with torch.inference_mode(False), torch.no_grad():
        kernel = value.to(like.dtype).permute(3, 2, 0, 1).clone(
            memory_format=torch.contiguous_format
        )
    ref = weakref.ref(value, lambda _, key=key: _conv_kernels.pop(key, None))
    _conv_kernels[key] = (ref, value._version, like.dtype, value.device, kernel)
    return kernel


def torch_layer_norm(x, layer):
    """Keras `LayerNormalization` over the last axis as one
    `F.layer_norm`, in float32 as Keras computes it, back in `x`'s dtype."""
    import torch.nn.functional as F

    out = F.layer_norm(
        x.float(),
        (x.shape[-1],),
        torch_value(layer.gamma, x).float() if layer.scale else None,
        torch_value(layer.beta, x).float() if layer.center else None,
        layer.epsilon,
    )
    return out.to(x.dtype)


def torch_linear(x, layer):
    """A plain Keras `Dense` as one `F.linear` (`addmm` with the bias
    fused), its `(in, out)` kernel read transposed as a view."""
    import torch.nn.functional as F

    kernel = torch_value(layer.kernel, x).to(x.dtype)
    bias = torch_value(layer.bias, x).to(x.dtype) if layer.use_bias else None
    return F.linear(x, kernel.t(), bias)


def sublayer(layer, *args, **kwargs):
    """Calls a built sublayer from inside its parent layer's `call`.

    On torch every `Layer.__call__` runs eagerly on every step: torch's
    module dispatch, then Keras's name scope, input casting, autocast and
    mask bookkeeping, 0.1-0.3 ms per call on this machine against ~0.03 ms
    for the matmul of a small `Dense`. Inside a parent's `call` that work is
    already done: the parent's `__call__` has cast the inputs to the shared
    dtype policy and opened the autocast scope that `Dense.call` reads its
    kernel through. So on torch a built sublayer's `call` is invoked
    directly. TF and JAX trace `__call__` once per compiled program, so they
    keep it. (So torch forward hooks registered on such a sublayer do not
    fire; hooks on the towers and the model still do.)
    """
    if _TORCH and layer.built:
        return layer.call(*args, **kwargs)
    return layer(*args, **kwargs)


# JAX only: pass each residual stream's gradient through a non-fusible op
# between blocks on the CPU (`gradient_boundary`). Module-level so tests and
# benchmarks can compare both paths.
JAX_CPU_GRADIENT_BOUNDARIES = True


def _boundary_identity(g):
    """`g` unchanged, as an op XLA's CPU fusion cannot absorb: a dot of its
    last axis, split into groups of 16, with a 16x16 identity (full
    precision, exact: each output is one element times 1 plus zeros; the
    leading axes, and so a batch sharding, stay as they are)."""
    import jax
    import jax.numpy as jnp

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


@functools.lru_cache(maxsize=None)
def _make_gradient_boundary():
    import jax

    @jax.custom_vjp
    def boundary(x):
        return x

    def forward(x):
        return x, None

    def backward(_, g):
        return (_boundary_identity(g),)

    boundary.defvjp(forward, backward)
    return boundary


def gradient_boundary(x):
    """Identity whose gradient is materialised once, on JAX's CPU backend.

    In a deep residual stack the gradient reaching block k is a sum of
    every later block's contributions. XLA's CPU fusion (which may
    duplicate elementwise work) never stores that sum: each of its
    consumers in each block re-adds the chain from the top, so the backward
    pass reads O(depth^2) activations. At 12 blocks of width 512 (batch 8,
    77 tokens) those fused copies took a third of the text tower's backward
    pass. `jax.lax.optimization_barrier` does not stop it there (the CPU
    compiler expands barriers before fusing), so the gradient passes through
    a tiny identity matmul, which XLA does not fuse. Forward values and
    gradients are unchanged; other backends and devices return `x` as is.
    """
    if not (_JAX and JAX_CPU_GRADIENT_BOUNDARIES):
        return x
    import jax

    if jax.default_backend() != "cpu":
        return x
    return _make_gradient_boundary()(x)


def normal(stddev):
    return keras.initializers.RandomNormal(stddev=stddev)


def layer_norm(name, dtype=None):
    return keras.layers.LayerNormalization(
        epsilon=LAYER_NORM_EPSILON, name=name, dtype=dtype
    )


@keras.saving.register_keras_serializable(package="keras_clip")
class MultiHeadSelfAttention(keras.layers.Layer):
    """Multi-head self-attention with one fused query/key/value projection.

    The fused `qkv` projection has the layout of PyTorch's
    `nn.MultiheadAttention.in_proj_weight` (queries, keys, values stacked),
    which keeps checkpoint conversion a transpose.

    Args:
        width: model width `D`.
        num_heads: number of heads; `D` must be divisible by it.
        causal: mask attention to future positions (text tower).

    Call arguments:
        x: `(B, T, D)` tensor.

    Returns:
        `(B, T, D)` tensor.
    """

    def __init__(
        self,
        width,
        num_heads,
        causal=False,
        qkv_initializer="glorot_uniform",
        out_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if width % num_heads:
            raise ValueError(
                "`width` must be divisible by `num_heads`. "
                f"Received: width={width}, num_heads={num_heads}"
            )
        self.width = width
        self.num_heads = num_heads
        self.causal = causal
        self.head_dim = width // num_heads
        self.qkv_initializer = keras.initializers.get(qkv_initializer)
        self.out_initializer = keras.initializers.get(out_initializer)
        self.qkv = keras.layers.Dense(
            3 * width,
            kernel_initializer=self.qkv_initializer,
            name="qkv",
            dtype=self.dtype_policy,
        )
        self.out_proj = keras.layers.Dense(
            width,
            kernel_initializer=self.out_initializer,
            name="out_proj",
            dtype=self.dtype_policy,
        )

    def build(self, input_shape):
        self.qkv.build(input_shape)
        self.out_proj.build(tuple(input_shape[:-1]) + (self.width,))

    def call(self, x):
        batch, length = ops.shape(x)[0], ops.shape(x)[1]
        qkv = sublayer(self.qkv, x)  # (B, T, 3D)
        qkv = ops.reshape(qkv, (batch, length, 3, self.num_heads, self.head_dim))
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (B, T, H, Dh) each
        out = ops.dot_product_attention(q, k, v, is_causal=self.causal)
        out = ops.reshape(out, (batch, length, self.width))  # (B, T, D)
        return sublayer(self.out_proj, out)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            width=self.width,
            num_heads=self.num_heads,
            causal=self.causal,
            qkv_initializer=keras.initializers.serialize(self.qkv_initializer),
            out_initializer=keras.initializers.serialize(self.out_initializer),
        )
        return config


@keras.saving.register_keras_serializable(package="keras_clip")
class ResidualAttentionBlock(keras.layers.Layer):
    """Pre-norm transformer block: `x + attn(ln_1(x))`, then `x + mlp(ln_2(x))`.

    Args:
        width: model width.
        num_heads: attention heads.
        mlp_ratio: hidden width of the MLP as a multiple of `width`.
        activation: "quick_gelu" or "gelu".
        causal: causal self-attention (text tower).
    """

    def __init__(
        self,
        width,
        num_heads,
        mlp_ratio=4.0,
        activation="quick_gelu",
        causal=False,
        init_stds=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.width = width
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.activation = activation
        self.causal = causal
        self.init_stds = None if init_stds is None else tuple(init_stds)
        self._act = get_activation(activation)
        attn_init, out_init, fc_init = (
            [normal(std) for std in self.init_stds]
            if self.init_stds
            else ["glorot_uniform"] * 3
        )
        policy = self.dtype_policy
        self.ln_1 = layer_norm("ln_1", policy)
        self.attn = MultiHeadSelfAttention(
            width,
            num_heads,
            causal=causal,
            name="attn",
            dtype=policy,
            qkv_initializer=attn_init,
            out_initializer=out_init,
        )
        self.ln_2 = layer_norm("ln_2", policy)
        self.mlp_fc = keras.layers.Dense(
            int(width * mlp_ratio),
            kernel_initializer=fc_init,
            name="mlp_fc",
            dtype=policy,
        )
        self.mlp_proj = keras.layers.Dense(
            width, kernel_initializer=out_init, name="mlp_proj", dtype=policy
        )

    def build(self, input_shape):
        self.ln_1.build(input_shape)
        self.attn.build(input_shape)
        self.ln_2.build(input_shape)
        self.mlp_fc.build(input_shape)
        self.mlp_proj.build(
            tuple(input_shape[:-1]) + (int(self.width * self.mlp_ratio),)
        )

    def call(self, x):
        if _TORCH and self._torch_fusable():
            return self._torch_fused(x)
        x = x + sublayer(self.attn, sublayer(self.ln_1, x))  # (B, T, D)
        h = self._act(sublayer(self.mlp_fc, sublayer(self.ln_2, x)))  # (B, T, mlp_ratio * D)
        return x + sublayer(self.mlp_proj, h)

    def _torch_fusable(self):
        return torch_fusable(
            (self.attn.qkv, self.attn.out_proj, self.mlp_fc, self.mlp_proj)
        )

    def _torch_fused(self, x):
        """The same block as straight `torch.nn.functional` calls.

        Eager torch pays Keras's op dispatch on every op of every step
        (argument conversion, dtype resolution, `dot_product_attention`'s
        transposes and copies), about 20 ops per block; open_clip's block
        is a handful of ATen calls. This path makes the ATen calls
        directly: `F.linear` with the Keras kernel transposed as a view
        (one `addmm`, bias fused), `F.layer_norm` in float32 as Keras's
        layer normalisation computes it, and `F.scaled_dot_product_attention`
        on strided views of the fused projection (no copies). Same weights,
        same maths, autograd through it as through any torch code.
        """
        import torch
        import torch.nn.functional as F

        batch, length, width = x.shape
        heads, head_dim = self.num_heads, width // self.num_heads

        linear, norm = torch_linear, torch_layer_norm
        qkv = linear(norm(x, self.ln_1), self.attn.qkv)  # (B, T, 3D)
        qkv = qkv.view(batch, length, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(
            qkv[0], qkv[1], qkv[2], is_causal=self.causal
        )  # (B, H, T, Dh)
        out = out.transpose(1, 2).reshape(batch, length, width)
        x = x + linear(out, self.attn.out_proj)  # (B, T, D)
        h = linear(norm(x, self.ln_2), self.mlp_fc)  # (B, T, mlp_ratio * D)
        if self.activation == "quick_gelu":
            h = h * torch.sigmoid(1.702 * h)
        else:
            h = F.gelu(h)
        return x + linear(h, self.mlp_proj)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            width=self.width,
            num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio,
            activation=self.activation,
            causal=self.causal,
            init_stds=self.init_stds,
        )
        return config


@keras.saving.register_keras_serializable(package="keras_clip")
class Transformer(keras.layers.Layer):
    """A stack of `ResidualAttentionBlock`s named `resblock_0`, `resblock_1`...

    Args:
        width: model width.
        num_layers: number of blocks.
        num_heads: attention heads per block.
        mlp_ratio: MLP hidden width as a multiple of `width`.
        activation: "quick_gelu" or "gelu".
        causal: causal self-attention.
    """

    def __init__(
        self,
        width,
        num_layers,
        num_heads,
        mlp_ratio=4.0,
        activation="quick_gelu",
        causal=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.width = width
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.activation = activation
        self.causal = causal
        # Set by CLIPModel from `CLIPConfig.remat` (not a weight layout choice).
        self.remat = False
        # OpenAI's initialisation (CLIP.initialize_parameters): attention
        # in-projection width^-0.5, output projections additionally scaled by
        # (2 * layers)^-0.5, MLP input (2 * width)^-0.5.
        attn_std = width**-0.5
        init_stds = (
            attn_std,
            attn_std * (2 * num_layers) ** -0.5,
            (2 * width) ** -0.5,
        )
        self.blocks = [
            ResidualAttentionBlock(
                width,
                num_heads,
                mlp_ratio=mlp_ratio,
                activation=activation,
                causal=causal,
                init_stds=init_stds,
                name=f"resblock_{i}",
                dtype=self.dtype_policy,
            )
            for i in range(num_layers)
        ]

    def build(self, input_shape):
        for block in self.blocks:
            block.build(input_shape)

    def call(self, x):
        for block in self.blocks:
            x = keras.remat(block)(x) if self.remat else sublayer(block, x)  # (B, T, D)
            x = gradient_boundary(x)
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            width=self.width,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio,
            activation=self.activation,
            causal=self.causal,
        )
        return config
