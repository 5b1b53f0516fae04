"""The paper's modified ResNet image tower (Radford et al. 2021, section 2.4).

Three changes from ResNet-D: a 3-convolution stem with an average pool
instead of a max pool; anti-aliased downsampling (an average pool *before*
the strided path, stride-1 convolutions after); attention pooling instead of
global average pooling.
"""

import keras
from keras import ops

from keras_clip import backends
from keras_clip import distributed

# PyTorch BatchNorm2d defaults (momentum 0.1 there is 0.9 here).
_BN = dict(momentum=0.9, epsilon=1e-5)


def _conv(filters, kernel, name, policy):
    return keras.layers.Conv2D(
        filters, kernel, use_bias=False, name=name, dtype=policy
    )


@keras.saving.register_keras_serializable(package="keras_clip")
class PointwiseConv2D(keras.layers.Conv2D):
    """A bias-free, stride-1 1x1 `Conv2D`: one matrix product per pixel.

    A `Conv2D` in every respect (weights, config, results); a class of its
    own so that a backend may run it as the matrix product it is
    (`keras_clip.backends.settings.jax_pointwise_matmul`).

    Args:
        filters: output channels.
        **kwargs: `Conv2D`'s other arguments (`name`, `dtype`...).
    """

    def __init__(self, filters, kernel_size=1, use_bias=False, **kwargs):
        super().__init__(filters, kernel_size, use_bias=use_bias, **kwargs)

    @backends.fast_path  # JAX: a matmul (keras_clip.backends)
    def call(self, inputs):
        return super().call(inputs)


def _pointwise(filters, name, policy):
    return PointwiseConv2D(filters, name=name, dtype=policy)


@keras.saving.register_keras_serializable(package="keras_clip")
class GlobalBatchNormalization(keras.layers.BatchNormalization):
    """Batch norm whose training statistics span every replica's batch.

    Under `tf.distribute` or `torch.distributed` the mean and variance are
    all-reduced (with a gradient) across replicas, so a replicated step
    normalises exactly as one device would on the global batch (SyncBN).
    Under JAX arrays are global already; undistributed it is plain batch norm.
    """

    def _moments(self, inputs, mask):
        context = distributed.replica_context()
        if mask is None and context.active:
            return distributed.global_moments(inputs, self._reduction_axes, context)
        return super()._moments(inputs, mask)

    @backends.fast_path  # torch: one fused kernel (keras_clip.backends)
    def call(self, inputs, training=None, mask=None):
        return super().call(inputs, training=training, mask=mask)


def _bn(name, policy, zero_gamma=False):
    return GlobalBatchNormalization(
        gamma_initializer="zeros" if zero_gamma else "ones",
        name=name,
        dtype=policy,
        **_BN,
    )


def _pad(name, policy):
    # Symmetric padding of 1, as PyTorch's `padding=1` (Keras "same" pads
    # stride-2 convolutions asymmetrically).
    return keras.layers.ZeroPadding2D(1, name=name, dtype=policy)


@keras.saving.register_keras_serializable(package="keras_clip")
class Bottleneck(keras.layers.Layer):
    """Anti-aliased bottleneck block: 1x1, 3x3, avgpool(stride), 1x1 (x4).

    Args:
        in_channels: channels of the input.
        filters: width of the 3x3 convolution; the block outputs 4x that.
        stride: downsampling factor, done by average pooling.
    """

    expansion = 4

    def __init__(self, in_channels, filters, stride=1, **kwargs):
        super().__init__(**kwargs)
        self.in_channels = in_channels
        self.filters = filters
        self.stride = stride
        p = self.dtype_policy
        out = filters * self.expansion
        self.conv1 = _pointwise(filters, "conv1", p)
        self.bn1 = _bn("bn1", p)
        self.pad2 = _pad("pad2", p)
        self.conv2 = _conv(filters, 3, "conv2", p)
        self.bn2 = _bn("bn2", p)
        self.pool = (
            keras.layers.AveragePooling2D(stride, name="pool", dtype=p)
            if stride > 1
            else None
        )
        self.conv3 = _pointwise(out, "conv3", p)
        # Zero-initialised last gain: each block starts as the identity.
        self.bn3 = _bn("bn3", p, zero_gamma=True)
        self.downsample_pool = None
        self.downsample_conv = None
        self.downsample_bn = None
        if stride > 1 or in_channels != out:
            if stride > 1:
                self.downsample_pool = keras.layers.AveragePooling2D(
                    stride, name="downsample_pool", dtype=p
                )
            self.downsample_conv = _pointwise(out, "downsample_conv", p)
            self.downsample_bn = _bn("downsample_bn", p)

    def build(self, input_shape):
        b, h, w, c = input_shape
        out = self.filters * self.expansion
        f, s = self.filters, self.stride
        self.conv1.build((b, h, w, c))
        self.bn1.build((b, h, w, f))
        # Weightless, but built too: tf.distribute's fit traces a model with
        # unbuilt layers symbolically from mean-reduced (float) inputs.
        self.pad2.build((b, h, w, f))
        self.conv2.build((b, h + 2, w + 2, f))
        self.bn2.build((b, h, w, f))
        self.conv3.build((b, h // s, w // s, f))
        self.bn3.build((b, h // s, w // s, out))
        if self.downsample_conv is not None:
            self.downsample_conv.build((b, h // s, w // s, c))
            self.downsample_bn.build((b, h // s, w // s, out))

    @backends.fast_path  # torch: fused (keras_clip.backends)
    def call(self, x, training=None):
        identity = x
        out = ops.relu(self.bn1(self.conv1(x), training=training))  # (B, H, W, F)
        out = ops.relu(self.bn2(self.conv2(self.pad2(out)), training=training))
        if self.pool is not None:
            out = self.pool(out)  # (B, H / s, W / s, F)
        out = self.bn3(self.conv3(out), training=training)  # (B, H / s, W / s, 4F)
        if self.downsample_conv is not None:
            if self.downsample_pool is not None:
                identity = self.downsample_pool(identity)
            identity = self.downsample_conv(identity)
            identity = self.downsample_bn(identity, training=training)
        return ops.relu(out + identity)

    def compute_output_shape(self, input_shape):
        b, h, w, _ = input_shape
        s = self.stride
        return (b, h // s, w // s, self.filters * self.expansion)

    def get_config(self):
        config = super().get_config()
        config.update(
            in_channels=self.in_channels, filters=self.filters, stride=self.stride
        )
        return config


@keras.saving.register_keras_serializable(package="keras_clip")
class AttentionPool2d(keras.layers.Layer):
    """Attention pooling: the mean token queries all spatial positions.

    A mean-of-features token is prepended to the flattened feature map, a
    learned positional embedding is added, and one multi-head attention with
    only that token as query produces the output, projected to `output_dim`.

    Args:
        spatial_size: side of the input feature map.
        width: channels of the input feature map.
        num_heads: attention heads.
        output_dim: output width (the joint embedding size in CLIP).

    Call arguments:
        x: `(B, spatial_size, spatial_size, width)` feature map.

    Returns:
        `(B, output_dim)` tensor.
    """

    def __init__(self, spatial_size, width, num_heads, output_dim, **kwargs):
        super().__init__(**kwargs)
        if width % num_heads:
            raise ValueError(
                "`width` must be divisible by `num_heads`. "
                f"Received: width={width}, num_heads={num_heads}"
            )
        self.spatial_size = spatial_size
        self.width = width
        self.num_heads = num_heads
        self.output_dim = output_dim
        p = self.dtype_policy
        init = keras.initializers.RandomNormal(stddev=width**-0.5)

        def dense(units, name):
            return keras.layers.Dense(
                units, kernel_initializer=init, name=name, dtype=p
            )

        self.q_proj = dense(width, "q_proj")
        self.k_proj = dense(width, "k_proj")
        self.v_proj = dense(width, "v_proj")
        self.c_proj = dense(output_dim, "c_proj")

    def build(self, input_shape=None):
        self.positional_embedding = self.add_weight(
            shape=(self.spatial_size**2 + 1, self.width),
            initializer=keras.initializers.RandomNormal(
                stddev=self.width**-0.5
            ),
            name="positional_embedding",
        )
        for layer in (self.q_proj, self.k_proj, self.v_proj, self.c_proj):
            layer.build((None, self.width))

    @backends.fast_path  # torch: fused (keras_clip.backends)
    def call(self, x):
        batch = ops.shape(x)[0]
        n = self.spatial_size**2
        heads, head_dim = self.num_heads, self.width // self.num_heads
        x = ops.reshape(x, (batch, n, self.width))  # (B, N, C)
        x = ops.concatenate([ops.mean(x, axis=1, keepdims=True), x], axis=1)
        x = x + ops.cast(self.positional_embedding, x.dtype)[None]  # (B, N+1, C)
        q = ops.reshape(self.q_proj(x[:, :1]), (batch, 1, heads, head_dim))
        k = ops.reshape(self.k_proj(x), (batch, n + 1, heads, head_dim))
        v = ops.reshape(self.v_proj(x), (batch, n + 1, heads, head_dim))
        out = ops.dot_product_attention(q, k, v)  # (B, 1, H, Dh)
        out = ops.reshape(out, (batch, self.width))  # (B, C)
        return self.c_proj(out)  # (B, output_dim)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.output_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            spatial_size=self.spatial_size,
            width=self.width,
            num_heads=self.num_heads,
            output_dim=self.output_dim,
        )
        return config


@keras.saving.register_keras_serializable(package="keras_clip")
class ModifiedResNet(keras.layers.Layer):
    """CLIP's ResNet image encoder, ending in attention pooling.

    Args:
        image_size: input resolution (square), divisible by 32.
        layers: blocks in each of the 4 stages, e.g. `(3, 4, 6, 3)` (RN50).
        width: stem width (64 for RN50); stage `i` has `width * 2**i` filters.
        num_heads: attention-pooling heads.
        output_dim: output width (the joint embedding size).

    Call arguments:
        images: `(B, image_size, image_size, 3)` float tensor, normalised.

    Returns:
        `(B, output_dim)` features. In the paper's design the attention
        pool's output projection *is* the image projection, so `CLIPModel`
        adds no other.
    """

    def __init__(self, image_size, layers, width, num_heads, output_dim, **kwargs):
        super().__init__(**kwargs)
        self.image_size = image_size
        self.layers_per_stage = tuple(layers)
        self.width = width
        self.num_heads = num_heads
        self.output_dim = output_dim
        p = self.dtype_policy
        half = width // 2
        self.stem = [
            _pad("stem_pad1", p),
            keras.layers.Conv2D(
                half, 3, strides=2, use_bias=False, name="stem_conv1", dtype=p
            ),
            _bn("stem_bn1", p),
            _pad("stem_pad2", p),
            _conv(half, 3, "stem_conv2", p),
            _bn("stem_bn2", p),
            _pad("stem_pad3", p),
            _conv(width, 3, "stem_conv3", p),
            _bn("stem_bn3", p),
        ]
        self.stem_pool = keras.layers.AveragePooling2D(2, name="stem_pool", dtype=p)
        self.blocks = []
        channels = width
        for stage, count in enumerate(self.layers_per_stage):
            for i in range(count):
                stride = 2 if (stage > 0 and i == 0) else 1
                self.blocks.append(
                    Bottleneck(
                        channels,
                        width * 2**stage,
                        stride=stride,
                        name=f"layer{stage + 1}_{i}",
                        dtype=p,
                    )
                )
                channels = width * 2**stage * Bottleneck.expansion
        self.attnpool = AttentionPool2d(
            image_size // 32,
            width * 32,
            num_heads,
            output_dim,
            name="attnpool",
            dtype=p,
        )

    def build(self, input_shape=None):
        shape = (None, self.image_size, self.image_size, 3)
        for layer in self.stem:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        shape = self.stem_pool.compute_output_shape(shape)
        for block in self.blocks:
            block.build(shape)
            shape = block.compute_output_shape(shape)
        self.attnpool.build(shape)

    @backends.fast_path  # torch: fused stem, blocks called directly
    def call(self, images, training=None):
        x = self.stem_call(images, training)  # (B, S/4, S/4, width)
        for block in self.blocks:
            if getattr(self, "remat", False):
                x = keras.remat(lambda y, b=block: b(y, training=training))(x)
            else:
                x = block(x, training=training)  # (B, S/32, S/32, 32 width) at end
        return self.attnpool(x)  # (B, output_dim)

    def stem_call(self, images, training=None):
        """The stem: three 3x3 convolutions, each with batch norm and ReLU,
        then a 2x2 average pool. `(B, S, S, 3)` -> `(B, S/4, S/4, width)`."""
        x = images
        for layer in self.stem:
            if isinstance(layer, keras.layers.BatchNormalization):
                x = ops.relu(layer(x, training=training))
            else:
                x = layer(x)
        return self.stem_pool(x)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.output_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            image_size=self.image_size,
            layers=self.layers_per_stage,
            width=self.width,
            num_heads=self.num_heads,
            output_dim=self.output_dim,
        )
        return config
