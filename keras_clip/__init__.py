"""keras_clip: CLIP (Radford et al. 2021) for Keras 3 on TensorFlow, JAX and PyTorch.

Importing the package registers its Keras classes (so `keras.saving.load_model`
finds them). On the JAX backend it also appends one CPU convolution flag to
XLA_FLAGS unless you set that option yourself (`keras_clip.xla_cpu`; opt out
with KERAS_CLIP_XLA_CPU_DEFAULTS=0). TensorFlow is needed only by the tf.data
pipelines and the in-graph tokenizer, which import it when used.
"""

from keras_clip import xla_cpu

xla_cpu.apply()  # before anything creates JAX's CPU client

from keras_clip.configs import CLIPConfig, get_preset, list_presets
from keras_clip.losses import clip_logits, contrastive_loss
from keras_clip.model import CLIPModel
from keras_clip.optimizers import WarmupCosineDecay, make_optimizer
from keras_clip.tokenizer import CLIPTokenizer
from keras_clip.zero_shot import ZeroShotClassifier
from keras_clip.callbacks import (
    RetrievalEvaluation,
    TimeBudgetCosineDecay,
    ZeroShotEvaluation,
)

__version__ = "0.1.0"

__all__ = [
    "CLIPConfig",
    "CLIPModel",
    "CLIPTokenizer",
    "RetrievalEvaluation",
    "TimeBudgetCosineDecay",
    "WarmupCosineDecay",
    "ZeroShotClassifier",
    "ZeroShotEvaluation",
    "clip_logits",
    "contrastive_loss",
    "get_preset",
    "list_presets",
    "make_optimizer",
]
