"""Layers shared by the CLIP towers: activation, attention, transformer."""

import keras
from keras import ops

from keras_clip import backends

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
        qkv = self.qkv(x)  # (B, T, 3D)
        qkv = ops.reshape(qkv, (batch, length, 3, self.num_heads, self.head_dim))
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (B, T, H, Dh) each
        out = ops.dot_product_attention(q, k, v, is_causal=self.causal)
        out = ops.reshape(out, (batch, length, self.width))  # (B, T, D)
        return self.out_proj(out)

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

    @backends.fast_path  # torch: fused (keras_clip.backends)
    def call(self, x):
        x = x + self.attn(self.ln_1(x))  # (B, T, D)
        h = self._act(self.mlp_fc(self.ln_2(x)))  # (B, T, mlp_ratio * D)
        return x + self.mlp_proj(h)

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

    @backends.fast_path  # torch: blocks called directly; JAX CPU: gradient boundaries
    def call(self, x):
        for block in self.blocks:
            x = keras.remat(block)(x) if self.remat else block(x)  # (B, T, D)
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
