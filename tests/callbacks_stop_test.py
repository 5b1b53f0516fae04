"""`keras_clip.callbacks.StopOnNonFinite`: a NaN or infinite loss stops
`fit` at that step and marks the run failed, naming the step and value.

A one-weight regression stands in for CLIP: the callback reads only the
logged loss and the optimizer's step count.
"""

import json

import keras
import numpy as np
import pytest

import keras_clip
from keras_clip.callbacks import StopOnNonFinite
from keras_clip.callbacks import describe_value

BATCH = 4


def regression():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    return model


def data(bad_batch=None, bad_value=np.nan, where="x"):
    """Six batches; batch `bad_batch` (0-based) holds `bad_value` in `where`."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6 * BATCH, 2)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    if bad_batch is not None:
        target = x if where == "x" else y
        target[bad_batch * BATCH] = bad_value
    return x, y


def iterations(model):
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


def test_a_nan_input_stops_fit_at_that_step_and_marks_the_run_failed():
    model = regression()
    lines = []
    guard = StopOnNonFinite(print_fn=lines.append)
    # Three batches per epoch: the bad one is the second step of epoch 2.
    x, y = data(bad_batch=4)
    batches = ((x[i : i + BATCH], y[i : i + BATCH]) for i in range(0, len(x), BATCH))
    model.fit(
        batches,
        steps_per_epoch=3,
        epochs=2,
        shuffle=False,
        callbacks=[guard],
        verbose=0,
    )
    assert guard.failed
    assert (guard.step, guard.epoch) == (5, 2)
    assert np.isnan(guard.value)
    assert iterations(model) == 5  # nothing trained after the bad step
    assert lines == [guard.message]
    assert (
        "nan" in guard.message
        and "step 5" in guard.message
        and "epoch 2" in guard.message
    )
    # JSON-ready: JSON has no NaN.
    record = guard.as_dict()
    assert record == {"metric": "loss", "value": "nan", "step": 5, "epoch": 2}
    json.dumps(record, allow_nan=False)


def test_an_infinite_loss_is_named_as_inf():
    model = regression()
    guard = StopOnNonFinite(print_fn=None)
    x, y = data(bad_batch=1, bad_value=np.inf, where="y")
    model.fit(
        x, y, batch_size=BATCH, epochs=1, shuffle=False, callbacks=[guard], verbose=0
    )
    assert guard.failed and guard.step == 2
    assert guard.as_dict()["value"] == "inf"
    assert "is inf at step 2" in guard.message


def test_a_finite_run_is_left_alone():
    model = regression()
    guard = StopOnNonFinite(print_fn=None)
    x, y = data()
    model.fit(x, y, batch_size=BATCH, epochs=2, callbacks=[guard], verbose=0)
    assert not guard.failed and guard.as_dict() is None and guard.message is None
    assert iterations(model) == 12


def test_describe_value_and_the_public_name():
    assert [describe_value(v) for v in (np.nan, np.inf, -np.inf, 1.5)] == [
        "nan",
        "inf",
        "-inf",
        1.5,
    ]
    assert keras_clip.StopOnNonFinite is StopOnNonFinite
    assert "StopOnNonFinite" in keras_clip.__all__


@pytest.mark.parametrize("monitor", ["loss", "mae"])
def test_any_logged_metric_can_be_monitored(monitor):
    model = regression()
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse", metrics=["mae"])
    guard = StopOnNonFinite(monitor=monitor, print_fn=None)
    x, y = data(bad_batch=2)
    model.fit(
        x, y, batch_size=BATCH, epochs=1, shuffle=False, callbacks=[guard], verbose=0
    )
    assert guard.failed and guard.step == 3 and guard.as_dict()["metric"] == monitor
