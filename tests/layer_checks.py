"""A reusable check for any keras_clip layer: config and `.keras` round trips,
a `fit` step and mixed precision."""

import os
import tempfile

import keras
import numpy as np


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


def check_layer(layer_cls, init_kwargs, inputs, atol=1e-5):
    """Runs the standard battery on `layer_cls(**init_kwargs)` fed `inputs`.

    Checks: the config round trip rebuilds a layer that gives the same
    output with the same weights; a functional model holding the layer
    saves to `.keras` and loads with identical output; one `fit` step
    changes the trainable weights; under "mixed_bfloat16" the output is
    bfloat16 and close to the float32 output.
    """
    layer = layer_cls(**init_kwargs)
    inp = keras.Input(shape=inputs.shape[1:], dtype=str(inputs.dtype), batch_size=None)
    model = keras.Model(inp, layer(inp))
    expected = _numpy(model(inputs))

    # Config round trip.
    clone = layer_cls.from_config(layer.get_config())
    clone_model = keras.Model(inp, clone(inp))
    clone_model.set_weights(model.get_weights())
    np.testing.assert_allclose(_numpy(clone_model(inputs)), expected, atol=atol)

    # `.keras` round trip.
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "layer.keras")
        model.save(path)
        loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(_numpy(loaded(inputs)), expected, atol=atol)

    # One fit step moves the weights.
    before = [np.array(w) for w in model.get_weights()]
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    target = np.ones_like(expected)
    model.fit(inputs, target, batch_size=len(inputs), epochs=1, verbose=0)
    after = model.get_weights()
    assert any(not np.allclose(a, b) for a, b in zip(before, after))

    # Mixed precision: bfloat16 compute, output close to float32.
    mixed = layer_cls(**{**init_kwargs, "dtype": "mixed_bfloat16"})
    mixed_model = keras.Model(inp, mixed(inp))
    mixed_model.set_weights(loaded.get_weights())
    out = mixed_model(inputs)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    scale = np.abs(expected).max() + 1e-6
    error = np.abs(_numpy(keras.ops.cast(out, "float32")) - expected).max()
    assert error / scale < 0.1, f"bfloat16 output off by {error / scale:.3f}"
    return expected
