"""The Keras internals keras_clip uses, in one place.

Checked against Keras 3.15.1. Keras exports no public name for these; a
Keras version that moves one breaks here, with its name, and nowhere else in
the package. The torch class is imported only when asked for (on torch).

- `in_stateless_scope()`: whether a `keras.StatelessScope` is open (fast
  paths then read variables through `.value`, which the scope maps, and
  the compiled JAX encoders do not nest a second scope).
- `AutocastScope(dtype)` / `get_autocast_scope()`: the scope `Layer.__call__`
  opens for a mixed dtype policy, in which a variable reads as the compute
  dtype; the torch tower skip opens it as `__call__` would.
- `torch_adamw_base()`: the torch AdamW class Keras substitutes for
  `keras.optimizers.AdamW` on torch (its multi-tensor update); a subclass
  must derive from it to keep that update.
"""

from keras.src.backend.common.stateless_scope import in_stateless_scope
from keras.src.backend.common.variables import AutocastScope, get_autocast_scope

__all__ = [
    "AutocastScope",
    "get_autocast_scope",
    "in_stateless_scope",
    "torch_adamw_base",
]


def torch_adamw_base():
    from keras.src.backend.torch.optimizers.torch_adamw import AdamW

    return AdamW
