"""keras_clip: CLIP (Radford et al. 2021) for Keras 3 on TensorFlow, JAX and PyTorch.

Importing the package does no work: the public names below load their
modules (and Keras, which fixes the backend) on first use, so a program such
as the `keras-clip` CLI can still choose `KERAS_BACKEND` after importing it.
TensorFlow is needed only by the tf.data pipelines and the in-graph
tokenizer.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "CLIPConfig": "keras_clip.configs",
    "get_preset": "keras_clip.configs",
    "list_presets": "keras_clip.configs",
    "clip_logits": "keras_clip.losses",
    "contrastive_loss": "keras_clip.losses",
    "CLIPModel": "keras_clip.model",
    "WarmupCosineDecay": "keras_clip.optimizers",
    "make_optimizer": "keras_clip.optimizers",
    "CLIPTokenizer": "keras_clip.tokenizer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'keras_clip' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
