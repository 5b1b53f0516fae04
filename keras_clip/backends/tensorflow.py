"""The TensorFlow backend's speed path (imported only when Keras runs on TF).

`CLIPModel.encode_image` / `encode_text`, called eagerly for inference, run
as one `tf.function` per tower (with XLA unless `jit_compile=False` was asked
for: `keras_clip.backends.compiled_encoders_use_xla`), as `predict` does,
instead of op by op (`settings.compiled_encoders`).
"""

import functools

import keras
import tensorflow as tf

from keras_clip.backends import compiled_encoders_use_xla, note, register, settings, value_range
from keras_clip.models.clip_model import CLIPModel


def _compiled(model, tower, inputs, normalize, training):
    """The compiled inference function for one tower, or None where it must
    not be used: training, `run_eagerly`, inside a trace, an unbuilt model."""
    if (
        training
        or not settings.compiled_encoders
        or model.run_eagerly
        or not model.built
        or not tf.executing_eagerly()
        or isinstance(inputs, keras.KerasTensor)
    ):
        return None
    xla = compiled_encoders_use_xla(model)
    key = (tower, bool(normalize), xla)  # no switch changes TF's programs
    cache = model.__dict__.setdefault("_keras_clip_compiled_encoders", {})
    if key not in cache:
        method = model._encode_image if tower == "image" else model._encode_text
        encode = functools.partial(method, normalize=bool(normalize), training=False)
        cache[key] = tf.function(encode, jit_compile=xla, reduce_retracing=True)
    if xla:
        note("tensorflow.compiled_encoder_xla")
    return cache[key]


@register(CLIPModel._encode_image, "tensorflow", "tensorflow.compiled_encode_image")
def encode_image(model, images, normalize, training):
    """`encode_image` in eager inference as one compiled program."""
    compiled = _compiled(model, "image", images, normalize, training)
    return NotImplemented if compiled is None else compiled(images)


@register(CLIPModel._encode_text, "tensorflow", "tensorflow.compiled_encode_text")
def encode_text(model, token_ids, normalize, training):
    """As `encode_image`."""
    compiled = _compiled(model, "text", token_ids, normalize, training)
    return NotImplemented if compiled is None else compiled(token_ids)


@register(value_range, "tensorflow", "tensorflow.value_range")
def _eager_value_range(x):
    """An eager TF tensor's range; symbolic ones (in `tf.function`) stay unknown."""
    if not (tf.is_tensor(x) and tf.executing_eagerly()) or isinstance(x, keras.KerasTensor):
        return NotImplemented
    # On the host, as NumPy: two eager TF reductions cost more than the copy
    # of a batch of token ids.
    values = x.numpy()
    if values.size == 0:
        return None
    return values.min().item(), values.max().item()
