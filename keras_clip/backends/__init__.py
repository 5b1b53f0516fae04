"""Backend speed paths, one module per backend, and the settings that switch them.

The model code in `keras_clip.models` is plain Keras. What is faster written
for one backend lives here.

- `tune_xla_cpu()`: XLA's CPU convolution flag for JAX, an explicit call
  (the CLI and the demo make it; nothing is set at import).
"""

from keras_clip.backends.xla_cpu import apply as tune_xla_cpu

__all__ = ["tune_xla_cpu"]
