"""XLA's CPU convolutions on the JAX backend: one default flag.

jaxlib 0.10 hands each convolution on the CPU to YNNPACK as its own fusion
(`LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION`). At ResNet shapes that path
ran 3-4x slower than XLA's own (Eigen) convolution on this machine, forward
and both gradients (3x3 kernels, batch 8, 58x58 to 16x16 maps, one process
per setting); RN50's training step went 6.0 -> 4.7 s with YNNPACK's
convolutions off and its matmuls, reductions and elementwise fusions kept.

XLA reads `XLA_FLAGS` once, when JAX creates its CPU client, so `apply()`
runs when `keras_clip` is imported, before any computation. It only puts
`-LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION` first in XLA_FLAGS when:
- Keras's backend is JAX;
- the installed jaxlib is a version where the flag was measured (0.10.x):
  XLA aborts on a flag it does not know;
- XLA_FLAGS does not already choose YNNPACK's fusion types (yours win)
  and is not the name of a flags file;
- KERAS_CLIP_XLA_CPU_DEFAULTS is not "0" (the opt-out).
The flag is a CPU one: on a GPU it changes nothing. TensorFlow's XLA (2.21)
accepts it too, should the same process also compile with TF's XLA.
"""

import os

FLAG = "--xla_cpu_experimental_ynn_fusion_type=-LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"
_MEASURED_JAXLIB = ("0.10.",)


def flags_to_add(environ, backend, jaxlib_version):
    """The XLA_FLAGS value to set, or None to leave it as it is."""
    if backend != "jax" or environ.get("KERAS_CLIP_XLA_CPU_DEFAULTS", "1") == "0":
        return None
    if not jaxlib_version.startswith(_MEASURED_JAXLIB):
        return None
    current = environ.get("XLA_FLAGS", "").strip()
    if "xla_cpu_experimental_ynn_fusion_type" in current:
        return None
    if current and not current.startswith("--"):
        return None  # XLA reads a value not starting with "--" as a file of flags
    # First: XLA stops reading at a token that is not a flag (the common
    # "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    # has one), so an appended flag could be silently ignored.
    return f"{FLAG} {current}".strip()


def apply():
    """Sets the flag in `os.environ` where `flags_to_add` says so."""
    import keras

    if keras.backend.backend() != "jax":
        return
    import jaxlib

    value = flags_to_add(os.environ, "jax", jaxlib.__version__)
    if value is not None:
        os.environ["XLA_FLAGS"] = value
