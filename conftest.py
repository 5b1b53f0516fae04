"""Test-session set-up shared by every backend run (KERAS_BACKEND picks one)."""

import os
import sys
import types

# Reference libraries must never try the network (docs/testing.md).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# JAX on CPU compiles one kernel per weight shape when initialising a model;
# the partitionable threefry kernels take seconds each to compile here (see
# docs/backends.md, "JAX on CPU"). The legacy kernels and a persistent compilation
# cache (shared with the subprocesses tests spawn) keep the suite fast.
os.environ.setdefault("JAX_THREEFRY_PARTITIONABLE", "false")
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(os.path.expanduser("~"), ".cache", "keras_clip", "jax"),
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")

# Under pytest-xdist (`make test` runs 2 workers on this 2-core machine) each
# worker computes on one thread: two workers each spinning two threads run
# several times slower than one each (docs/backends.md, "Threads on a shared machine").
if os.environ.get("PYTEST_XDIST_WORKER"):
    for name in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        os.environ.setdefault(name, "1")
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "")
        + " --xla_cpu_multi_thread_eigen=false"
    ).strip()

# PyPI's torchvision is a CUDA build that fails to import beside the CPU
# torch (`operator torchvision::nms does not exist`). An empty
# `_meta_registrations` module lets torchvision's Python parts, timm and
# open_clip import; only torchvision's C kernels stay unavailable. Test-only.
sys.modules.setdefault(
    "torchvision._meta_registrations",
    types.ModuleType("torchvision._meta_registrations"),
)

# On a GPU, float32 matmuls run in TF32 by default on JAX (and convolutions
# on torch/cuDNN), about 3 significant digits. The tests compare float32
# maths with NumPy / open_clip / transformers references at 1e-4..1e-5, so
# they pin full float32 there; no effect on CPU. (Measured on an H200: with
# TF32 the JAX logits differ from the reference by ~3e-3.)
# Only where an NVIDIA device exists: the setting is part of JAX's
# compilation-cache key, and on CPU it changes nothing but the cache.
_GPU = os.path.exists("/dev/nvidia0") or os.path.exists("/dev/nvidiactl")
if _GPU:
    os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
if _GPU and os.environ.get("KERAS_BACKEND") == "torch":
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

# The library's XLA CPU tuning, the explicit call the CLI and the demo make
# (nothing is set at import); after XLA_FLAGS above, before JAX's client starts.
from keras_clip import backends as _backends  # noqa: E402

_backends.tune_xla_cpu()
