"""The paper's modified ResNet image tower (Radford et al. 2021, section 2.4).

Three changes from ResNet-D: a 3-convolution stem with an average pool
instead of a max pool; anti-aliased downsampling (an average pool *before*
the strided path, stride-1 convolutions after); attention pooling instead of
global average pooling.
"""

import keras
from keras import ops

from keras_clip import distributed
from keras_clip.models import layers as clip_layers
from keras_clip.models.layers import sublayer

# PyTorch BatchNorm2d defaults (momentum 0.1 there is 0.9 here).
_BN = dict(momentum=0.9, epsilon=1e-5)


def _conv(filters, kernel, name, policy):
    return keras.layers.Conv2D(
        filters, kernel, use_bias=False, name=name, dtype=policy
    )


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

    def call(self, inputs, training=None, mask=None):
        if (
            clip_layers._TORCH
            and mask is None
            and self.axis in (-1, len(inputs.shape) - 1)
            and self._torch_fusable()
        ):
            y = self._torch_fused(inputs.movedim(-1, 1), bool(training) and self.trainable)
            return y.movedim(1, -1)
        return super().call(inputs, training=training, mask=mask)

    def _torch_fusable(self):
        return not self.renorm and not distributed.replica_context().active

    def _torch_fused(self, x, training):
        """One `torch.nn.functional.batch_norm` call (cuDNN / ATen's fused
        kernel, forward and backward) instead of Keras's op-by-op arithmetic
        on torch, which keeps several full-size intermediates (and a float32
        copy of a bfloat16 activation) for the backward pass.

        Takes and returns an NCHW tensor: an NHWC tensor's `movedim(-1, 1)`
        view, as the fused blocks below pass it, costs no copy.

        Same maths as Keras's layer: biased batch variance for the moving
        statistics (`moving = momentum * moving + (1 - momentum) * batch`),
        statistics in float32.
        """
        import torch
        import torch.nn.functional as F

        if training and x.numel() == x.shape[1]:
            # One value per channel: torch refuses; Keras's arithmetic gives 0 variance.
            return super().call(x.movedim(1, -1), training=True).movedim(-1, 1)
        if x.device.type != "cuda":
            # One copy, float32 and contiguous NCHW: ATen's CPU kernel on
            # channels-last memory is several times less precise
            # single-threaded (~5e-6 vs ~7e-7 against float64 here). CUDA's
            # kernel takes channels-last half inputs with float32 statistics.
            x = x.to(dtype=torch.float32, memory_format=torch.contiguous_format)
        value = clip_layers.torch_value
        weight = value(self.gamma, x).float() if self.scale else None
        bias = value(self.beta, x).float() if self.center else None
        if training:
            channels = x.shape[1]
            mean = torch.zeros(channels, device=x.device)
            var = torch.ones(channels, device=x.device)
            # momentum=1 makes torch write the batch statistics into `mean`
            # and `var` (its variance unbiased: n / (n - 1) times Keras's).
            y = F.batch_norm(x, mean, var, weight, bias, True, 1.0, self.epsilon)
            n = x.numel() // channels
            var = var * ((n - 1) / n)
            m = self.momentum
            self.moving_mean.assign(self.moving_mean.value * m + mean * (1.0 - m))
            self.moving_variance.assign(self.moving_variance.value * m + var * (1.0 - m))
        else:
            y = F.batch_norm(
                x,
                value(self.moving_mean, x).float(),
                value(self.moving_variance, x).float(),
                weight, bias, False, 0.0, self.epsilon,
            )
        return y.to(getattr(torch, keras.backend.standardize_dtype(self.compute_dtype)))


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


def _torch_fusable(convs, norms):
    """Whether the torch fused path may replace these sublayers' `call`s."""
    return clip_layers.torch_fusable(convs) and all(
        n.built and n._torch_fusable() for n in norms
    )


# JAX only: run the blocks' 1x1 convolutions as matrix products
# (`_pointwise`). Module-level so tests and benchmarks can compare paths.
JAX_POINTWISE_MATMUL = True


def _pointwise(conv, x):
    """`conv(x)` for a bias-free, stride-1 1x1 `Conv2D` inside a block.

    On JAX's CPU backend XLA runs a 1x1 convolution's forward and backward
    passes 1.7-3.5x slower than the same contraction written as a matrix
    product (RN50's shapes, batch 8, one-process A/B, README). So on JAX a
    built, plain 1x1 convolution is `x @ kernel[0, 0]`; the kernel is read
    through the parent's autocast scope, as `Conv2D.call` reads it. Other
    backends, and convolutions with LoRA or quantization, call the layer.
    """
    if clip_layers._JAX and JAX_POINTWISE_MATMUL and clip_layers.plain_built([conv]):
        return ops.matmul(x, conv.kernel[0, 0])
    return sublayer(conv, x)


def _torch_conv_bn(conv, norm, x, training, stride=1, padding=0):
    """`norm(conv(x))` on an NCHW torch tensor, as direct ATen calls.

    `x` is in the compute dtype (the parent layer's `__call__` cast it);
    the kernel, kept `(kh, kw, in, out)` by Keras, is cast to it and read
    as `(out, in, kh, kw)` (`layers.torch_conv_kernel`: a permuted view, or
    without a gradient a cached contiguous copy).
    """
    import torch.nn.functional as F

    kernel = clip_layers.torch_conv_kernel(conv, x)
    y = F.conv2d(x, kernel, stride=stride, padding=padding)
    return norm._torch_fused(y, training and norm.trainable)


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
        self.conv1 = _conv(filters, 1, "conv1", p)
        self.bn1 = _bn("bn1", p)
        self.pad2 = _pad("pad2", p)
        self.conv2 = _conv(filters, 3, "conv2", p)
        self.bn2 = _bn("bn2", p)
        self.pool = (
            keras.layers.AveragePooling2D(stride, name="pool", dtype=p)
            if stride > 1
            else None
        )
        self.conv3 = _conv(out, 1, "conv3", p)
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
            self.downsample_conv = _conv(out, 1, "downsample_conv", p)
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

    def call(self, x, training=None):
        if clip_layers._TORCH and self._torch_fusable():
            return self._torch_fused(x.movedim(-1, 1), training).movedim(1, -1)
        identity = x
        out = ops.relu(sublayer(self.bn1, _pointwise(self.conv1, x), training=training))
        out = sublayer(self.conv2, sublayer(self.pad2, out))
        out = ops.relu(sublayer(self.bn2, out, training=training))  # (B, H, W, F)
        if self.pool is not None:
            out = sublayer(self.pool, out)  # (B, H / s, W / s, F)
        out = sublayer(self.bn3, _pointwise(self.conv3, out), training=training)  # (B, H/s, W/s, 4F)
        if self.downsample_conv is not None:
            if self.downsample_pool is not None:
                identity = sublayer(self.downsample_pool, identity)
            identity = _pointwise(self.downsample_conv, identity)
            identity = sublayer(self.downsample_bn, identity, training=training)
        return ops.relu(out + identity)

    def _torch_fusable(self):
        convs = [self.conv1, self.conv2, self.conv3, self.downsample_conv]
        norms = [self.bn1, self.bn2, self.bn3, self.downsample_bn]
        return _torch_fusable(
            [c for c in convs if c is not None], [n for n in norms if n is not None]
        )

    def _torch_fused(self, x, training):
        """The same block as direct `torch.nn.functional` calls, on NCHW.

        On torch, Keras's `Conv2D` copies its input twice per call (into
        contiguous NCHW, then into channels-last memory) and its pooling
        transposes too; a bottleneck then spends more time (and, for the
        backward pass, memory) on copies than on its convolutions. Here the
        block runs on the NCHW view of the NHWC tensor: `F.conv2d` with the
        Keras kernel as a `(out, in, kh, kw)` view, the fused batch norm,
        `F.avg_pool2d`; no layout copies. Same weights and maths.
        """
        import torch
        import torch.nn.functional as F

        training = bool(training)
        identity = x
        # In place on each batch norm's fresh output (its backward needs its
        # input, not its output), as open_clip's `ReLU(inplace=True)`: one
        # allocation less per activation.
        out = torch.relu_(_torch_conv_bn(self.conv1, self.bn1, x, training))
        out = torch.relu_(_torch_conv_bn(self.conv2, self.bn2, out, training, padding=1))
        if self.pool is not None:
            out = F.avg_pool2d(out, self.stride)
        out = _torch_conv_bn(self.conv3, self.bn3, out, training)
        if self.downsample_conv is not None:
            if self.downsample_pool is not None:
                identity = F.avg_pool2d(identity, self.stride)
            identity = _torch_conv_bn(
                self.downsample_conv, self.downsample_bn, identity, training
            )
        return torch.relu_(out.add_(identity))

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

    def call(self, x):
        if clip_layers._TORCH and clip_layers.torch_fusable(
            (self.q_proj, self.k_proj, self.v_proj, self.c_proj)
        ):
            return self._torch_fused(x)
        batch = ops.shape(x)[0]
        n = self.spatial_size**2
        heads, head_dim = self.num_heads, self.width // self.num_heads
        x = ops.reshape(x, (batch, n, self.width))  # (B, N, C)
        x = ops.concatenate([ops.mean(x, axis=1, keepdims=True), x], axis=1)
        x = x + ops.cast(self.positional_embedding, x.dtype)[None]  # (B, N+1, C)
        q = ops.reshape(sublayer(self.q_proj, x[:, :1]), (batch, 1, heads, head_dim))
        k = ops.reshape(sublayer(self.k_proj, x), (batch, n + 1, heads, head_dim))
        v = ops.reshape(sublayer(self.v_proj, x), (batch, n + 1, heads, head_dim))
        out = ops.dot_product_attention(q, k, v)  # (B, 1, H, Dh)
        out = ops.reshape(out, (batch, self.width))  # (B, C)
        return sublayer(self.c_proj, out)  # (B, output_dim)

    def _torch_fused(self, x):
        """`call` as direct torch calls: at the small maps this pool sees,
        Keras's eager dispatch of its ~12 ops (each reshape alone
        flattens its arguments to look for symbolic tensors) costs more
        than the attention."""
        import torch
        import torch.nn.functional as F

        linear = clip_layers.torch_linear
        batch, n = x.shape[0], self.spatial_size**2
        heads, head_dim = self.num_heads, self.width // self.num_heads
        x = x.reshape(batch, n, self.width)  # (B, N, C)
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)
        x = x + clip_layers.torch_value(self.positional_embedding, x).to(x.dtype)

        def heads_first(h, length):  # (B, T, C) -> (B, H, T, Dh)
            return h.view(batch, length, heads, head_dim).transpose(1, 2)

        q = heads_first(linear(x[:, :1], self.q_proj), 1)
        k = heads_first(linear(x, self.k_proj), n + 1)
        v = heads_first(linear(x, self.v_proj), n + 1)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, H, 1, Dh)
        return linear(out.transpose(1, 2).reshape(batch, self.width), self.c_proj)

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

    def call(self, images, training=None):
        if clip_layers._TORCH and self._torch_stem_fusable():
            x = self._torch_stem(images.movedim(-1, 1), training).movedim(1, -1)
        else:
            x = self._stem(images, training)  # (B, S/4, S/4, width)
        for block in self.blocks:
            if getattr(self, "remat", False):
                x = keras.remat(lambda y, b=block: b(y, training=training))(x)
            else:
                x = sublayer(block, x, training=training)  # (B, S/32, S/32, 32 width) at end
        return sublayer(self.attnpool, x)  # (B, output_dim)

    def _stem_convs_and_norms(self):
        convs = [layer for layer in self.stem if isinstance(layer, keras.layers.Conv2D)]
        norms = [layer for layer in self.stem if isinstance(layer, GlobalBatchNormalization)]
        return convs, norms

    def _torch_stem_fusable(self):
        return _torch_fusable(*self._stem_convs_and_norms())

    def _torch_stem(self, x, training):
        """The stem on the NCHW view, as `Bottleneck._torch_fused` runs a block."""
        import torch
        import torch.nn.functional as F

        training = bool(training)
        for conv, norm in zip(*self._stem_convs_and_norms()):
            x = torch.relu_(
                _torch_conv_bn(conv, norm, x, training, stride=conv.strides[0], padding=1)
            )
        return F.avg_pool2d(x, 2)

    def _stem(self, images, training):
        x = images
        for layer in self.stem:
            if isinstance(layer, keras.layers.BatchNormalization):
                x = ops.relu(sublayer(layer, x, training=training))
            else:
                x = sublayer(layer, x)
        return sublayer(self.stem_pool, x)

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
