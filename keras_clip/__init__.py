"""keras_clip: CLIP (Radford et al. 2021) for Keras 3 on TensorFlow, JAX and PyTorch.

Importing the package registers its Keras classes (so `keras.saving.load_model`
finds them) and changes nothing else: no environment variable, no global flag.
TensorFlow is needed only by the `tf.data` pipelines (`keras_clip.data`) and
the in-graph tokenizer, which import it when used.

Where each role lives:

- `keras_clip.models`: configuration and presets, layers, the towers, `CLIPModel`;
- `keras_clip.backends`: the per-backend speed paths and their settings;
- `keras_clip.text`: the tokenizer, BPE and its training;
- `keras_clip.data`: sources, pipeline, augmentation, preprocessing, datasets;
- `keras_clip.losses`, `keras_clip.optimizers`, `keras_clip.distributed`: training maths;
- `keras_clip.evaluation`: zero-shot, retrieval, linear probe, prompts, callbacks;
- `keras_clip.convert`: checkpoints in and out.
"""

import importlib

from keras_clip import backends
from keras_clip import distributed
from keras_clip import losses
from keras_clip import optimizers
from keras_clip.callbacks import StopOnNonFinite
from keras_clip.evaluation import linear_probe
from keras_clip.evaluation import prompts
from keras_clip.evaluation import retrieval
from keras_clip.evaluation import zero_shot
from keras_clip.evaluation.callbacks import RetrievalEvaluation
from keras_clip.evaluation.callbacks import TimeBudgetCosineDecay
from keras_clip.evaluation.callbacks import ZeroShotEvaluation
from keras_clip.evaluation.zero_shot import ZeroShotClassifier
from keras_clip.losses import ContrastiveLoss
from keras_clip.losses import clip_logits
from keras_clip.losses import contrastive_loss
from keras_clip.models.clip_model import CLIPModel
from keras_clip.models.config import CLIPConfig
from keras_clip.models.config import get_preset
from keras_clip.models.config import list_presets
from keras_clip.optimizers import WarmupCosineDecay
from keras_clip.optimizers import make_optimizer
from keras_clip.text.tokenizer import CLIPTokenizer

__version__ = "0.1.0"

__all__ = [
    "CLIPConfig",
    "CLIPModel",
    "CLIPTokenizer",
    "ContrastiveLoss",
    "RetrievalEvaluation",
    "StopOnNonFinite",
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

# Subpackages that import optional libraries (TensorFlow for `data`, torch
# or safetensors for `convert`) load on first access: `keras_clip.data`
# works after `import keras_clip` without importing TensorFlow before then.
_LAZY = ("convert", "data")


def __getattr__(name):
    if name in _LAZY:
        return importlib.import_module(f"keras_clip.{name}")
    raise AttributeError(f"module 'keras_clip' has no attribute {name!r}")
