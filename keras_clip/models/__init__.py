"""The CLIP model: its configuration and presets, the layers, one file per
tower (`VisionTransformer`, `ModifiedResNet`, `TextTransformer`) and
`CLIPModel`, which joins them with the projections and the temperature.

Written once in `keras.ops`; backend speed paths live in `keras_clip.backends`.
"""

from keras_clip.models.config import CLIPConfig, get_preset, list_presets
from keras_clip.models.clip_model import CLIPModel
from keras_clip.models.modified_resnet import ModifiedResNet
from keras_clip.models.text_transformer import TextTransformer
from keras_clip.models.vision_transformer import VisionTransformer
