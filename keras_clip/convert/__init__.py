"""Checkpoint conversion: OpenAI / open_clip / Hugging Face <-> `CLIPModel`.

- `from_open_clip(checkpoint, activation=None, tokenizer=None, config=None,
  vision_heads=None, text_heads=None, **options)`: OpenAI `.pt`
  (TorchScript, read without running it), open_clip state dicts
  (`.safetensors`, `.pt`, `.bin`, hub folders), ViT or ResNet. Head counts
  a bare state dict cannot tell are assumed by OpenAI's rule with a
  `UserWarning`, unless given.
- `from_huggingface(path_or_model)`: a `transformers` CLIP folder or model.
- `to_open_clip(model, path=None)`: back to an open_clip state dict /
  `.safetensors`; `open_clip_model_config(config)` gives its `model_cfg`.

torch is imported only to read `torch.save` files.
"""

from keras_clip.convert.checkpoint_io import UnsafeCheckpointError
from keras_clip.convert.checkpoint_io import load_state_dict
from keras_clip.convert.huggingface import from_huggingface
from keras_clip.convert.open_clip import from_open_clip
from keras_clip.convert.open_clip import open_clip_model_config
from keras_clip.convert.open_clip import to_open_clip

__all__ = [
    "UnsafeCheckpointError",
    "from_huggingface",
    "from_open_clip",
    "load_state_dict",
    "open_clip_model_config",
    "to_open_clip",
]
