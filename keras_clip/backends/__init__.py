"""Backend speed paths, one module per backend, and the settings that switch them.

The model code in `keras_clip.models` is plain Keras, written once with
`keras.ops`. What runs faster written for one backend lives here, in
`keras_clip.backends.torch`, `.jax` and `.tensorflow`, attached by one
mechanism:

- a layer's `call` (or a model function) is decorated with `@fast_path`;
- the active backend's module registers, with `register(target)`, a path for
  that function: it takes the same arguments and returns the same result,
  or `NotImplemented` where it does not apply (a switch in `settings` is
  off, a layer is not built or has LoRA / quantization, a symbolic call...);
- on each call the decorated function runs the registered path of the active
  backend if there is one and it applies, else its own plain Keras code.

The active backend's module is imported on the first decorated call (or when
`keras_clip.optimizers` asks for its AdamW); the other backends' modules are
never imported. `settings` switches each path; `fast_paths(...)` changes
switches for a block of code; `record_fast_paths()` tells which paths ran.
What each path does and its measurements: docs/backends.md and
docs/performance.md.

- `tune_xla_cpu()`: XLA's CPU convolution flag for JAX, an explicit call
  (the CLI and the demo make it; nothing is set at import).
"""

import collections
import contextlib
import functools
import importlib
import sys

import keras
import numpy as np

from keras_clip.backends.xla_cpu import apply as tune_xla_cpu

__all__ = [
    "Settings",
    "adamw_base",
    "compiled_encoders_use_xla",
    "fast_path",
    "fast_paths",
    "plain_built",
    "record_fast_paths",
    "register",
    "registered_fast_paths",
    "settings",
    "tune_xla_cpu",
    "value_range",
]


class Settings:
    """The switches of the backend speed paths, all on by default.

    One instance, `keras_clip.backends.settings`, is read by the paths on
    every call (on JAX and TF: when a function is traced, so a switch changed
    after `fit` or an encoder has compiled applies to programs traced after
    it). Each path is tested equal to the plain Keras code, forward and
    gradients, so turning a switch off changes speed and memory, not results
    (up to float rounding). Change them for a block of code with
    `keras_clip.backends.fast_paths(...)`.

    Attributes:
        torch_fused_blocks: torch. Built transformer blocks, batch norms,
            bottlenecks, the attention pool, the towers' own ops (patch
            convolution, embeddings, end-of-text pooling, layer norms) and
            the projections run as direct `torch.nn.functional` calls instead
            of Keras's op-by-op eager dispatch. Layers with LoRA or
            quantization, and batch norm under `torch.distributed` or with
            `renorm`, always take the plain path. Safe to turn off at any
            time: off, every layer runs its Keras `call`.
        torch_conv_kernel_cache: torch. Where no gradient flows into a
            convolution kernel (`torch.no_grad()`, `inference_mode`, a frozen
            kernel), the fused paths keep its contiguous `(out, in, kh, kw)`
            copy between calls, keyed on the weight's tensor and checked
            against its version counter (which every in-place update
            advances). Costs each kernel's size in memory while the model
            lives. Turn it off after writing weights in a way that does not
            advance the version counter (through `.data`, or a custom
            kernel), or to save that memory.
        torch_skip_layer_call: torch. Built sublayers that a fast path
            calls (the blocks of a transformer or a ResNet, a tower's
            transformer, the attention pool) run their `call` directly,
            skipping `Layer.__call__`'s per-call bookkeeping, which their
            parent's `__call__` has done already (input cast, autocast
            scope). Torch forward hooks on those sublayers do not fire while
            this is on: turn it off to have them fire.
        torch_skip_tower_call: torch. In `CLIPModel.encode_image` /
            `encode_text` inference, a built tower runs its `call` directly;
            its inputs are cast and its autocast scope opened as
            `Layer.__call__` would. Training, towers with torch forward hooks
            (or global ones), symbolic or stateless calls and calls inside
            another autocast scope keep `__call__`. Safe to turn off.
        torch_fused_adamw: torch. `keras_clip.optimizers.AdamW` updates
            float32 CPU weights with ATen's fused AdamW kernel (one pass per
            weight); off, or on other devices, with in-place multi-tensor
            passes. Both are Keras's AdamW maths and advance the weights'
            version counters.
        jax_cpu_gradient_boundaries: JAX on the CPU. The residual stream's
            gradient passes through a tiny identity matmul between
            transformer blocks, which XLA's CPU fusion does not duplicate,
            so the backward pass stops re-adding it in every block. Values
            and gradients are unchanged; safe to turn off.
        jax_pointwise_matmul: JAX. The ResNet bottlenecks' 1x1 convolutions
            run as matrix products, which XLA's CPU backend runs faster than
            its convolutions. Safe to turn off.
        compiled_encoders: TF and JAX. `CLIPModel.encode_image` /
            `encode_text`, called eagerly for inference, run as one compiled
            program per tower (`tf.function`, with XLA unless
            `jit_compile=False` was asked for; `jax.jit` unless
            `jit_compile=False`), cached on the model, instead of op by op.
            Safe to turn off; off, they run eagerly.
    """

    FIELDS = (
        "torch_fused_blocks",
        "torch_conv_kernel_cache",
        "torch_skip_layer_call",
        "torch_skip_tower_call",
        "torch_fused_adamw",
        "jax_cpu_gradient_boundaries",
        "jax_pointwise_matmul",
        "compiled_encoders",
    )
    __slots__ = FIELDS

    def __init__(self, **values):
        for name in self.FIELDS:
            setattr(self, name, True)
        for name, value in values.items():
            setattr(self, name, value)

    def __setattr__(self, name, value):
        if name not in self.FIELDS:
            raise AttributeError(
                f"Unknown fast-path setting {name!r}. Expected one of {self.FIELDS}"
            )
        if not isinstance(value, bool):
            raise TypeError(
                f"Fast-path setting {name!r} must be True or False. Received: {value!r}"
            )
        object.__setattr__(self, name, value)

    def as_dict(self):
        """The current values, field by field."""
        return {name: getattr(self, name) for name in self.FIELDS}

    def __repr__(self):
        values = ", ".join(f"{k}={v}" for k, v in self.as_dict().items())
        return f"Settings({values})"


settings = Settings()


@contextlib.contextmanager
def fast_paths(enabled=None, **fields):
    """Changes `settings` for a block of code, then restores them.

    Args:
        enabled: `True` / `False` sets every switch first; `None` leaves them.
        **fields: switches to set, by name (after `enabled`).

    Example:

    ```python
    with keras_clip.backends.fast_paths(False):
        plain = model.encode_image(images)  # the plain Keras code only
    with keras_clip.backends.fast_paths(torch_conv_kernel_cache=False):
        ...
    ```
    """
    saved = settings.as_dict()
    try:
        if enabled is not None:
            for name in Settings.FIELDS:
                setattr(settings, name, bool(enabled))
        for name, value in fields.items():
            setattr(settings, name, value)
        yield settings
    finally:
        for name, value in saved.items():
            setattr(settings, name, value)


# backend name -> {dispatcher: path}; filled by the backend's module.
_PATHS = {}
# The Counter of `record_fast_paths()`, or None when nothing records.
_recorder = None


def _load(backend):
    """The registered paths of `backend`, importing its module once."""
    paths = _PATHS.get(backend)
    if paths is None:
        paths = _PATHS[backend] = {}
        try:
            importlib.import_module(f"keras_clip.backends.{backend}")
        except ModuleNotFoundError as error:
            if error.name != f"keras_clip.backends.{backend}":
                del _PATHS[backend]
                raise
            # A backend without a module here (numpy, openvino): no paths.
        except BaseException:
            del _PATHS[backend]
            raise
    return paths


def fast_path(function):
    """Decorator: lets the active backend replace `function` by a registered path.

    For a layer's `call`, a model method or a plain function of the model
    code. The decorated function keeps its signature (Keras reads `call`'s).
    """

    @functools.wraps(function)
    def dispatch(*args, **kwargs):
        path = _load(keras.backend.backend()).get(dispatch)
        if path is not None:
            out = path(*args, **kwargs)
            if out is not NotImplemented:
                if _recorder is not None:
                    _recorder[path.fast_path_name] += 1
                return out
        return function(*args, **kwargs)

    dispatch.is_fast_path_dispatch = True
    return dispatch


def register(target, backend, name=None):
    """Decorator for a backend module: `path` replaces `target` on `backend`.

    Args:
        target: a class whose `call` is decorated with `@fast_path`, or a
            function so decorated.
        backend: "torch", "jax" or "tensorflow".
        name: the name `record_fast_paths()` counts it under; by default
            `"<backend>.<class or function name>"`.
    """
    # A class's own `call` only: one inherited is its parent's, whose path
    # this would replace.
    if isinstance(target, type):
        dispatch = target.__dict__.get("call")
    else:
        dispatch = target
    if not getattr(dispatch, "is_fast_path_dispatch", False):
        raise TypeError(
            "`register` expects a class that defines its own `call` decorated "
            f"with `@fast_path`, or a function so decorated. Received: {target!r}"
        )

    def decorate(path):
        path.fast_path_name = name or f"{backend}.{target.__name__}"
        _PATHS.setdefault(backend, {})[dispatch] = path
        return path

    return decorate


def registered_fast_paths():
    """The names of the active backend's registered layer and model paths."""
    return sorted(p.fast_path_name for p in _load(keras.backend.backend()).values())


@contextlib.contextmanager
def record_fast_paths():
    """Counts which fast paths run inside the block.

    Yields a `collections.Counter`: each registered path that ran (rather
    than declined) under its name (`registered_fast_paths()`), e.g.
    `"torch.ResidualAttentionBlock"`, `"jax.gradient_boundaries"`,
    `"tensorflow.compiled_encode_image"`, plus the events that paths note:
    `"torch.tower_call"` (a tower's `Layer.__call__` skipped),
    `"torch.conv_kernel_cache_hit"`, `"torch.fused_adamw"` and
    `"tensorflow.compiled_encoder_xla"` (a compiled encoder run with XLA).
    Inside a TF or JAX compiled program, paths count when it is traced, not
    on each run.
    """
    global _recorder
    outer, _recorder = _recorder, collections.Counter()
    try:
        yield _recorder
    finally:
        if outer is not None:
            outer.update(_recorder)
        _recorder = outer


def note(name):
    """Counts `name` in an active `record_fast_paths()` (for the backend modules)."""
    if _recorder is not None:
        _recorder[name] += 1


def plain_built(*layers):
    """Whether these layers are built and their `call` is only their
    weights' maths (no LoRA, no quantization), so that a fast path may read
    their weights directly."""
    return all(
        layer.built
        and not getattr(layer, "lora_enabled", False)
        and getattr(layer, "quantization_mode", None) is None
        for layer in layers
    )


def compiled_encoders_use_xla(model):
    """Whether TF's compiled encoders of `model` use XLA.

    Yes unless `jit_compile=False` was asked for, through `compile` or by
    setting `model.jit_compile`. Keras's "auto" leaves XLA off for `fit`
    and `predict` on machines with only CPUs; the encoders run inference
    only, where XLA was faster on the CPU for the models measured
    (docs/performance.md), for more compilation per input shape.
    """
    requested = getattr(model, "requested_jit_compile", "auto")
    return True if requested == "auto" else bool(requested)


def adamw_base():
    """The AdamW class `keras_clip.optimizers.AdamW` derives from.

    The active backend's module's `AdamW` where it has one (torch: Keras's
    multi-tensor torch AdamW with the in-place and fused updates), else
    `keras.optimizers.AdamW`.
    """
    backend = keras.backend.backend()
    _load(backend)
    module = sys.modules.get(f"keras_clip.backends.{backend}")
    return getattr(module, "AdamW", None) or keras.optimizers.AdamW


@fast_path
def value_range(x):
    """`(min, max)` of `x` as Python numbers where its values are known now.

    Known: NumPy arrays, lists, and eager tensors of the active backend (each
    backend's module registers the check for its tensors). Unknown (`None`):
    symbolic tensors, inside `tf.function`, `jax.jit` or a Keras functional
    trace, and empty arrays. Input checks use it to refuse bad values where
    they can be seen, without forcing a trace to a value.
    """
    if isinstance(x, (np.ndarray, np.generic, list, tuple)):
        array = np.asarray(x)
        if array.size == 0 or array.dtype == object:
            return None
        return array.min().item(), array.max().item()
    return None
