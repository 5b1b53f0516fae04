"""The torch backend's speed paths (imported only when Keras runs on torch).

- `layers`: fused transformer blocks, batch norm, bottlenecks, attention
  pool and towers, and the towers' `Layer.__call__` skip in `CLIPModel`'s
  encoders (registered for the model classes on import);
- `functional`: the Keras layers' maths as ATen calls, the convolution
  kernel cache;
- `adamw`: the AdamW base class of `keras_clip.optimizers.AdamW` on torch.
"""

from keras_clip.backends.torch import layers  # noqa: F401 (registers the paths)
from keras_clip.backends.torch.adamw import AdamW
from keras_clip.backends.torch.functional import conv_kernel_cache_size

__all__ = ["AdamW", "conv_kernel_cache_size"]

import torch  # noqa: E402

from keras_clip.backends import register, value_range  # noqa: E402


@register(value_range, "torch", "torch.value_range")
def _tensor_value_range(x):
    """A torch tensor's range (its values are always known; `meta` ones are
    symbolic shapes only)."""
    if not isinstance(x, torch.Tensor) or x.device.type == "meta":
        return NotImplemented
    if x.numel() == 0:
        return None
    return x.min().item(), x.max().item()
