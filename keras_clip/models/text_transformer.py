"""The CLIP text tower: a causal transformer pooled at end-of-text."""

import keras
from keras import ops

from keras_clip import backends
from keras_clip.models.layers import Transformer, layer_norm


@backends.fast_path  # torch: direct torch calls (keras_clip.backends)
def end_of_text_positions(token_ids, eot_token_id):
    """Index of the first `eot_token_id` in each row of `token_ids`.

    Rows without that id (a tokenizer that truncated it away) fall back to
    their last non-padding position, so pooling never silently reads the
    start token. Pooling by `argmax(token_ids)` only works when end-of-text
    is the largest id, which a trained vocabulary need not respect.

    Args:
        token_ids: `(B, L)` integer tensor, padded with 0.
        eot_token_id: the end-of-text id.

    Returns:
        `(B,)` int32 positions.
    """
    length = ops.shape(token_ids)[1]
    is_eot = ops.cast(ops.equal(token_ids, eot_token_id), "int32")
    first_eot = ops.argmax(is_eot, axis=1)
    not_pad = ops.cast(ops.not_equal(token_ids, 0), "int32")
    last_token = length - 1 - ops.argmax(ops.flip(not_pad, axis=1), axis=1)
    has_eot = ops.max(is_eot, axis=1) > 0
    return ops.cast(ops.where(has_eot, first_eot, last_token), "int32")


@keras.saving.register_keras_serializable(package="keras_clip")
class TextTransformer(keras.layers.Layer):
    """Causal text transformer; features are read at the end-of-text token.

    Args:
        vocabulary_size: number of token ids.
        context_length: maximum sequence length (positional embeddings).
        width: transformer width.
        num_layers: transformer blocks.
        num_heads: attention heads.
        eot_token_id: id whose first occurrence marks the pooled position.
        mlp_ratio: MLP hidden width as a multiple of `width`.
        activation: "quick_gelu" (OpenAI weights) or "gelu".

    Call arguments:
        token_ids: `(B, L)` int tensor, `L <= context_length`, padded with 0.

    Returns:
        `(B, width)` features after the final LayerNorm.
    """

    def __init__(
        self,
        vocabulary_size,
        context_length,
        width,
        num_layers,
        num_heads,
        eot_token_id,
        mlp_ratio=4.0,
        activation="quick_gelu",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.vocabulary_size = vocabulary_size
        self.context_length = context_length
        self.width = width
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.eot_token_id = eot_token_id
        self.mlp_ratio = mlp_ratio
        self.activation = activation
        policy = self.dtype_policy
        self.token_embedding = keras.layers.Embedding(
            vocabulary_size,
            width,
            embeddings_initializer=keras.initializers.RandomNormal(stddev=0.02),
            name="token_embedding",
            dtype=policy,
        )
        self.transformer = Transformer(
            width,
            num_layers,
            num_heads,
            mlp_ratio=mlp_ratio,
            activation=activation,
            causal=True,
            name="transformer",
            dtype=policy,
        )
        self.ln_final = layer_norm("ln_final", policy)

    def build(self, input_shape=None):
        self.token_embedding.build((None, self.context_length))
        self.positional_embedding = self.add_weight(
            shape=(self.context_length, self.width),
            initializer=keras.initializers.RandomNormal(stddev=0.01),
            name="positional_embedding",
        )
        self.transformer.build((None, self.context_length, self.width))
        self.ln_final.build((None, self.width))

    @backends.fast_path  # torch: fused (keras_clip.backends)
    def call(self, token_ids):
        length = ops.shape(token_ids)[1]
        x = self.token_embedding(token_ids)  # (B, L, D)
        pos = ops.cast(self.positional_embedding[:length], x.dtype)
        x = self.transformer(x + pos[None])  # (B, L, D)
        positions = end_of_text_positions(token_ids, self.eot_token_id)
        x = ops.take_along_axis(x, positions[:, None, None], axis=1)[:, 0]
        return self.ln_final(x)  # (B, D)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.width)

    def get_config(self):
        config = super().get_config()
        config.update(
            vocabulary_size=self.vocabulary_size,
            context_length=self.context_length,
            width=self.width,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            eot_token_id=self.eot_token_id,
            mlp_ratio=self.mlp_ratio,
            activation=self.activation,
        )
        return config
