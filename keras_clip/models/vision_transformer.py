"""The CLIP Vision Transformer tower (Radford et al. 2021, section 2.4)."""

import keras
from keras import ops

from keras_clip import backends
from keras_clip.models.layers import Transformer, layer_norm


@keras.saving.register_keras_serializable(package="keras_clip")
class VisionTransformer(keras.layers.Layer):
    """ViT image encoder as in CLIP: patches, class token, `ln_pre`, blocks.

    Differs from the original ViT by the extra LayerNorm (`ln_pre`) applied
    to the patch + position embeddings before the transformer. The output is
    the class token after `ln_post`; the projection into the joint space is
    owned by `CLIPModel`.

    Args:
        image_size: input resolution (square).
        patch_size: side of a patch; must divide `image_size`.
        width: transformer width.
        num_layers: transformer blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width as a multiple of `width`.
        activation: "quick_gelu" (OpenAI weights) or "gelu".

    Call arguments:
        images: `(B, image_size, image_size, 3)` float tensor, normalised.

    Returns:
        `(B, width)` features.
    """

    def __init__(
        self,
        image_size,
        patch_size,
        width,
        num_layers,
        num_heads,
        mlp_ratio=4.0,
        activation="quick_gelu",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if image_size % patch_size:
            raise ValueError(
                "`image_size` must be divisible by `patch_size`. "
                f"Received: image_size={image_size}, patch_size={patch_size}"
            )
        self.image_size = image_size
        self.patch_size = patch_size
        self.width = width
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.activation = activation
        self.grid_size = image_size // patch_size
        policy = self.dtype_policy
        self.patch_embedding = keras.layers.Conv2D(
            width,
            patch_size,
            strides=patch_size,
            use_bias=False,
            name="patch_embedding",
            dtype=policy,
        )
        self.ln_pre = layer_norm("ln_pre", policy)
        self.transformer = Transformer(
            width,
            num_layers,
            num_heads,
            mlp_ratio=mlp_ratio,
            activation=activation,
            name="transformer",
            dtype=policy,
        )
        self.ln_post = layer_norm("ln_post", policy)

    def build(self, input_shape=None):
        size = self.image_size
        scale = self.width**-0.5
        self.patch_embedding.build((None, size, size, 3))
        self.class_embedding = self.add_weight(
            shape=(self.width,),
            initializer=keras.initializers.RandomNormal(stddev=scale),
            name="class_embedding",
        )
        self.positional_embedding = self.add_weight(
            shape=(self.grid_size**2 + 1, self.width),
            initializer=keras.initializers.RandomNormal(stddev=scale),
            name="positional_embedding",
        )
        tokens = (None, self.grid_size**2 + 1, self.width)
        self.ln_pre.build(tokens)
        self.transformer.build(tokens)
        self.ln_post.build((None, self.width))

    @backends.fast_path  # torch: fused (keras_clip.backends)
    def call(self, images):
        x = self.patch_embedding(images)  # (B, G, G, D)
        batch = ops.shape(x)[0]
        x = ops.reshape(x, (batch, self.grid_size**2, self.width))  # (B, N, D)
        cls = ops.cast(self.class_embedding, x.dtype)
        cls = ops.broadcast_to(cls[None, None, :], (batch, 1, self.width))
        x = ops.concatenate([cls, x], axis=1)  # (B, N + 1, D)
        x = x + ops.cast(self.positional_embedding, x.dtype)[None]
        x = self.ln_pre(x)
        x = self.transformer(x)  # (B, N + 1, D)
        return self.ln_post(x[:, 0])  # (B, D)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.width)

    def get_config(self):
        config = super().get_config()
        config.update(
            image_size=self.image_size,
            patch_size=self.patch_size,
            width=self.width,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio,
            activation=self.activation,
        )
        return config
