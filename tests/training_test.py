"""Resumable training: an interrupted and resumed run equals an uninterrupted one.

Every batch of the test pipeline is the same batch, so the order in which
batches are drawn cannot matter and the two runs must agree step for step.
"""

import os
import signal
import threading

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_clip
from keras_clip_app import training
from keras_clip_app.errors import RunError

STEPS_PER_EPOCH = 4
EPOCHS = 2


def batch():
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 1000, (8, 16)).astype("int32")
    ids[:, 6] = 1023  # tiny-vit's end-of-text id
    ids[:, 7:] = 0
    images = rng.standard_normal((8, 32, 32, 3)).astype("float32")
    return {"images": images, "token_ids": ids}


def build_model():
    keras.utils.set_random_seed(1)
    model = keras_clip.CLIPModel.from_preset("tiny-vit")
    model.compile(
        optimizer=keras_clip.make_optimizer(
            model, total_steps=EPOCHS * STEPS_PER_EPOCH, learning_rate=1e-3, warmup_steps=2
        ),
        # Not the default: the resumed half must restore it from the checkpoint.
        label_smoothing=0.3,
    )
    return model


def make_dataset(model, epoch):
    return tf.data.Dataset.from_tensors(batch()).repeat(STEPS_PER_EPOCH)


class InterruptAt(keras.callbacks.Callback):
    """Sends this process SIGINT (as Ctrl-C would) when step `step` begins."""

    def __init__(self, step):
        super().__init__()
        self.step = step
        self.seen = 0

    def on_train_batch_begin(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.step:
            signal.raise_signal(signal.SIGINT)


def weights(model):
    return [keras.ops.convert_to_numpy(w) for w in model.weights]


def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(tmp_path):
    # The handler can only be installed from the main thread.
    assert threading.current_thread() is threading.main_thread()
    # Whatever handler the caller had (SIG_IGN under `nohup ... &`) comes back.
    caller_handler = signal.getsignal(signal.SIGINT)
    reference, status = training.train(
        build_model, make_dataset, str(tmp_path / "ref"), EPOCHS, STEPS_PER_EPOCH, verbose=0
    )
    assert status == "complete"

    out = str(tmp_path / "run")
    # Ctrl-C during step 3 of epoch 1: the step finishes, is saved, and the run stops.
    _, status = training.train(
        build_model, make_dataset, out, EPOCHS, STEPS_PER_EPOCH,
        callbacks=[InterruptAt(3)], verbose=0,
    )
    assert status == "interrupted"
    assert not os.path.exists(os.path.join(out, training.FINAL))
    saved = keras.saving.load_model(os.path.join(out, training.CHECKPOINT))
    assert training.optimizer_step(saved) == 3
    # The caller's handler is back after the run.
    assert signal.getsignal(signal.SIGINT) is caller_handler

    resumed, status = training.train(
        build_model, make_dataset, out, EPOCHS, STEPS_PER_EPOCH, verbose=0
    )
    assert status == "complete"
    assert training.optimizer_step(resumed) == EPOCHS * STEPS_PER_EPOCH
    for got, want in zip(weights(resumed), weights(reference)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    final = keras.saving.load_model(os.path.join(out, training.FINAL))
    for got, want in zip(weights(final), weights(reference)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    history = training.read_history(out)
    assert history["epoch"] == [0.0, 1.0]
    # Two generations, each written whole: the newest (end of epoch 2) and
    # the one it replaced (end of epoch 1).
    for name, step in ((training.CHECKPOINT, 8), (training.PREVIOUS, 4)):
        saved = keras.saving.load_model(os.path.join(out, name))
        assert training.optimizer_step(saved) == step, name
    assert not [name for name in os.listdir(out) if "partial" in name]
    # A further run finds the work done and changes nothing.
    again, status = training.train(
        build_model, make_dataset, out, EPOCHS, STEPS_PER_EPOCH, verbose=0
    )
    assert status == "complete"
    assert training.optimizer_step(again) == EPOCHS * STEPS_PER_EPOCH
    # A run with more epochs, or other epochs, would not fit the saved
    # schedule (its extra steps at learning rate 0): refused, nothing written.
    before = sorted(os.listdir(out))
    with pytest.raises(RunError, match=r"--epochs changed from 2 to 3; .* steps after step 8 "
                       r"would run at learning rate 0\. .*--epochs 2, or start over with --restart"):
        training.train(build_model, make_dataset, out, EPOCHS + 1, STEPS_PER_EPOCH, verbose=0)
    with pytest.raises(RunError, match=r"samples per epoch .* changed from 4 steps to 3 steps"):
        training.train(build_model, make_dataset, out, EPOCHS, STEPS_PER_EPOCH - 1, verbose=0)
    assert sorted(os.listdir(out)) == before


def test_a_different_run_would_differ(tmp_path):
    # The equality above is not trivially true: one step fewer moves weights.
    full, _ = training.train(build_model, make_dataset, str(tmp_path / "a"), EPOCHS,
                             STEPS_PER_EPOCH, verbose=0)
    short, _ = training.train(build_model, make_dataset, str(tmp_path / "b"), EPOCHS,
                              STEPS_PER_EPOCH - 1, verbose=0)
    diffs = [np.abs(a - b).max() for a, b in zip(weights(full), weights(short))]
    assert max(diffs) > 1e-4


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="steps_per_epoch >= 1"):
        training.train(build_model, make_dataset, str(tmp_path), 1, 0)


def test_a_final_model_without_a_checkpoint_is_not_replaced(tmp_path):
    # A folder holding someone's clip.keras and nothing to resume: a fresh
    # run there would overwrite it at its end.
    (tmp_path / training.FINAL).write_bytes(b"a model the user saved")
    with pytest.raises(RunError, match="--restart to replace it, or train into a new --output-dir"):
        training.train(build_model, make_dataset, str(tmp_path), EPOCHS, STEPS_PER_EPOCH)
    assert (tmp_path / training.FINAL).read_bytes() == b"a model the user saved"


def test_a_non_finite_loss_fails_the_run_without_saving(tmp_path, capsys):
    def nan_from_step_6(model, epoch):
        # Epoch 2's second step on: NaN images.
        good = batch()
        bad = {**good, "images": np.full_like(good["images"], np.nan)}
        return tf.data.Dataset.from_tensors(good).repeat(5).concatenate(
            tf.data.Dataset.from_tensors(bad).repeat())

    out = str(tmp_path)
    model, status = training.train(build_model, nan_from_step_6, out, EPOCHS, STEPS_PER_EPOCH,
                                   verbose=0)
    assert status == "failed"
    said = capsys.readouterr().out
    assert "Stopped: the loss is nan at step 6 (epoch 2)" in said
    assert f"The last good checkpoint, {os.path.join(out, training.CHECKPOINT)} (step 4)" in said
    assert not os.path.exists(os.path.join(out, training.FINAL))
    saved = keras.saving.load_model(os.path.join(out, training.CHECKPOINT))
    assert training.optimizer_step(saved) == 4
    assert not os.path.exists(os.path.join(out, training.PREVIOUS))
    # The failed epoch is in the history, its loss NaN (not dropped).
    history = training.read_history(out)
    assert history["epoch"] == [0.0, 1.0] and np.isnan(history["loss"][1])
    summary = training.history_summary(training.read_history(out, missing=None))
    assert summary["loss"] == "nan" and summary["epoch"] == 2


@pytest.mark.parametrize("value", ["auto", True, False])
def test_set_jit_compile_acts_as_compile_would_and_keeps_the_optimizer(value):
    # The reference: a fresh model compiled with the same value.
    reference = build_model()
    reference.compile(optimizer="sgd", jit_compile=value)
    model = build_model()
    model.fit(batch(), batch_size=8, epochs=1, verbose=0)
    iterations = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    flip = value is not True  # start from the other setting, so a no-op fails
    model.jit_compile = flip
    training.set_jit_compile(model, value)
    assert model.jit_compile == reference.jit_compile
    from keras_clip import backends

    assert backends.compiled_encoders_use_xla(model) == backends.compiled_encoders_use_xla(reference)
    assert model.get_compile_config()["jit_compile"] == value
    assert model.train_function is None
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == iterations == 1
    with pytest.raises(ValueError, match="'auto', True or False"):
        training.set_jit_compile(model, "yes")


def test_unless_failed_skips_only_the_epoch_end_after_a_failure():
    calls = []

    class Recorder(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            calls.append("begin")

        def on_epoch_end(self, epoch, logs=None):
            calls.append(f"end {epoch}")

    guard = keras_clip.StopOnNonFinite()
    wrapped = training.UnlessFailed(Recorder(), guard)
    wrapped.on_train_begin()
    wrapped.on_epoch_end(0)
    guard.failed = True
    wrapped.on_epoch_end(1)
    assert calls == ["begin", "end 0"]
    # Hooks the inner callback leaves alone stay Keras's defaults, so `fit`
    # keeps dispatching batches asynchronously where it can.
    from keras.src import utils

    assert utils.is_default(wrapped.on_train_batch_end)
