"""A checkpoint <-> Keras weight map: one entry per source key.

An entry names the source key, the Keras variable it fills and how the
layout changes between the two (PyTorch `Linear` weights are the transpose
of Keras `Dense` kernels; `Conv2d` weights `(out, in, kh, kw)` become
`(kh, kw, in, out)`; Hugging Face's separate q/k/v projections are slices of
the fused `qkv` kernel). Loading checks the key sets and every shape before
assigning anything; exporting runs the same map backwards, so a round trip
is exact.
"""

import dataclasses

import keras
import numpy as np

COPY = "copy"  # same layout
LINEAR = "linear"  # torch (out, in) <-> Keras (in, out)
CONV = "conv"  # torch (out, in, kh, kw) <-> Keras (kh, kw, in, out)
LINEAR_PART = "linear_part"  # one of `count` row blocks of a fused Linear
BIAS_PART = "bias_part"  # one of `count` blocks of a fused bias
COUNTER = "counter"  # BatchNorm `num_batches_tracked`: checked, not kept
CONSTANT = "constant"  # a buffer with one valid value (masks, position ids)


@dataclasses.dataclass
class Entry:
    key: str
    variable: object = None
    kind: str = COPY
    part: tuple = (0, 1)  # (index, count) for *_PART kinds.
    value: object = None  # CONSTANT: the expected array.
    optional: bool = False  # may be absent from a checkpoint.
    export: bool = True  # written by `export_state_dict`.

    def source_shape(self):
        if self.kind in (COUNTER,):
            return ()
        if self.kind == CONSTANT:
            return tuple(self.value.shape)
        shape = tuple(self.variable.shape)
        if self.kind == LINEAR:
            return shape[::-1]
        if self.kind == CONV:
            kh, kw, cin, cout = shape
            return (cout, cin, kh, kw)
        if self.kind == LINEAR_PART:
            return (shape[1] // self.part[1], shape[0])
        if self.kind == BIAS_PART:
            return (shape[0] // self.part[1],)
        return shape


def _to_keras(entry, array):
    if entry.kind in (LINEAR, LINEAR_PART):
        return array.T
    if entry.kind == CONV:
        return array.transpose(2, 3, 1, 0)
    return array


def _from_keras(entry, value):
    index, count = entry.part
    if entry.kind == LINEAR:
        return value.T
    if entry.kind == CONV:
        return value.transpose(3, 2, 0, 1)
    if entry.kind == LINEAR_PART:
        size = value.shape[1] // count
        return value[:, index * size : (index + 1) * size].T
    if entry.kind == BIAS_PART:
        size = value.shape[0] // count
        return value[index * size : (index + 1) * size]
    return value


def load_weights(entries, state_dict, architecture, source="checkpoint"):
    """Checks `state_dict` against `entries`, then assigns every variable.

    Args:
        entries: list of `Entry`.
        state_dict: mapping of source keys to NumPy arrays.
        architecture: a few words naming what was inferred, for errors.
        source: where the state dict came from, for errors.

    Raises:
        ValueError: naming every missing key, every key left unused, every
            shape that differs, every weight holding NaN or infinity and
            every constant buffer with a wrong value.
    """
    expected = {e.key: e for e in entries}
    missing = [e.key for e in entries if not e.optional and e.key not in state_dict]
    unused = [k for k in state_dict if k not in expected]
    if missing or unused:
        raise ValueError(
            f"Expected the keys of {architecture}. Received: {source} with "
            f"{len(missing)} missing key(s) {missing[:20]} and "
            f"{len(unused)} unused key(s) {unused[:20]}"
        )
    wrong = []
    for key, array in state_dict.items():
        want = expected[key].source_shape()
        if tuple(array.shape) != want:
            wrong.append(f"{key}: expected {want}, received {tuple(array.shape)}")
    if wrong:
        raise ValueError(
            f"Expected the shapes of {architecture}. Received: {source} "
            f"with {len(wrong)} wrong shape(s): " + "; ".join(wrong[:20])
        )
    non_finite = []
    for entry in entries:
        if entry.variable is None or entry.kind in (COUNTER, CONSTANT):
            continue
        array = np.asarray(state_dict[entry.key])
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            nan = int(np.isnan(array).sum())
            non_finite.append(
                f"{entry.key} ({nan} NaN, {int(np.isinf(array).sum())} infinite "
                f"of {array.size})"
            )
    if non_finite:
        raise ValueError(
            f"Expected finite values in every weight of {architecture}. "
            f"Received: {source} with NaN or infinity at {len(non_finite)} "
            f"key(s): {'; '.join(non_finite[:20])}. The file is damaged or "
            "was saved after training diverged: convert an earlier checkpoint."
        )
    for entry in entries:
        if entry.key in state_dict and entry.kind == CONSTANT:
            array = state_dict[entry.key]
            if not np.array_equal(array, entry.value):
                raise ValueError(
                    f"Expected {entry.key} to hold its only valid value "
                    f"{entry.value.ravel()[:4]}... Received: "
                    f"{array.ravel()[:4]}... in {source}"
                )
        if entry.key in state_dict and entry.kind == COUNTER:
            if not np.issubdtype(state_dict[entry.key].dtype, np.integer):
                raise ValueError(
                    f"Expected an integer counter at {entry.key}. Received: "
                    f"dtype {state_dict[entry.key].dtype} in {source}"
                )
    # Fused variables are filled part by part, then assigned once.
    values = {}
    for entry in entries:
        if entry.variable is None or entry.kind in (COUNTER, CONSTANT):
            continue
        var = entry.variable
        array = _to_keras(entry, np.asarray(state_dict[entry.key], np.float32))
        if entry.kind in (LINEAR_PART, BIAS_PART):
            index, count = entry.part
            buffer = values.setdefault(
                id(var), (var, np.zeros(tuple(var.shape), np.float32))
            )[1]
            size = buffer.shape[-1] // count
            buffer[..., index * size : (index + 1) * size] = array
        else:
            values[id(var)] = (var, array)
    for var, array in values.values():
        _assign(var, array)
    finish_deferred_variables()


def is_deferred(variable):
    """Whether `variable` was made in `StatelessScope(initialize_variables=False)`
    and holds no value yet (see `deferred_variables`)."""
    return getattr(variable, "_value", 0) is None and callable(
        getattr(variable, "_initializer", None)
    )


class _Constant:
    def __init__(self, array):
        self.array = array

    def __call__(self, shape, dtype=None):
        return self.array


def _assign(variable, array):
    array = np.array(array, dtype=variable.dtype, order="C")
    if is_deferred(variable):
        # Keras 3 private API: the value becomes the variable's initializer,
        # so no random initializer ever runs (on JAX each variable shape
        # would otherwise compile an XLA program).
        variable._initializer = _Constant(array)
    else:
        variable.assign(array)


def finish_deferred_variables():
    """Initialises the variables still deferred (Keras does it on leaving a
    top-level `StatelessScope`): checkpoint values or the layers' own
    initializers (metrics)."""
    with keras.StatelessScope():
        pass


def abandon_deferred(variables):
    """Zero-fills deferred variables of a model whose conversion failed."""
    for variable in variables:
        if is_deferred(variable):
            variable._initializer = _Constant(
                np.zeros(tuple(variable.shape), variable.dtype)
            )
    finish_deferred_variables()


def export_state_dict(entries):
    """The source-layout state dict of `entries`' variables (NumPy)."""
    out = {}
    cache = {}
    for entry in entries:
        if not entry.export:
            continue
        if entry.kind == COUNTER:
            out[entry.key] = np.zeros((), np.int64)
            continue
        if entry.kind == CONSTANT:
            out[entry.key] = np.array(entry.value)
            continue
        var = entry.variable
        if id(var) not in cache:
            cache[id(var)] = keras.ops.convert_to_numpy(var).astype(np.float32)
        out[entry.key] = np.array(_from_keras(entry, cache[id(var)]), order="C")
    return out
