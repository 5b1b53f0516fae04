"""Resumable training into an output folder (what `keras-clip train` runs).

`train` owns the folder:

- `checkpoint.keras`: model, tokenizer, optimizer state and step count,
  rewritten atomically at the end of every epoch and when the run is
  interrupted (Ctrl-C / SIGTERM stop at the end of the current step);
- `history.csv`: one row per (possibly partial) epoch, appended across runs;
- `clip.keras`: the final model, written when all epochs are done.

Only the chief process (rank 0) writes files. Running the same command again resumes from `checkpoint.keras` at the exact
optimizer step: the learning-rate schedule continues where it stopped and
the interrupted epoch runs only its remaining steps (on a freshly shuffled
pass, so the samples of those steps are not the ones the interrupted run
would have drawn). No finished step is lost. An epoch is `steps_per_epoch`
batches of the repeated dataset, so epochs and steps stay aligned even when
a pass yields fewer batches because samples were skipped.
"""

import csv
import json
import os
import signal
import time

import keras
import numpy as np

from keras_clip.data.pipeline import SkipCountLogger
from keras_clip.distributed import is_chief

CHECKPOINT = "checkpoint.keras"
FINAL = "clip.keras"
HISTORY = "history.csv"
STATE = "train_state.json"


def save_atomically(model, path):
    """`model.save(path)` through a temporary file, so `path` is never half-written."""
    tmp = path[: -len(".keras")] + ".partial.keras"
    model.save(tmp)
    os.replace(tmp, path)
    return path


def optimizer_step(model):
    """The optimizer's step count (0 for a model not yet trained)."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        return 0
    return int(keras.ops.convert_to_numpy(optimizer.iterations))


class Checkpointer(keras.callbacks.Callback):
    """Saves `checkpoint.keras` at each epoch end, and on request mid-epoch.

    `request_stop()` (called from a signal handler) makes the run save at
    the end of the current step and stop.
    """

    def __init__(self, output_dir, epochs, steps_per_epoch):
        super().__init__()
        self.output_dir = output_dir
        self.path = os.path.join(output_dir, CHECKPOINT)
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.stop_requested = False
        self.interrupted_at = None

    def request_stop(self):
        self.stop_requested = True

    def _save(self, epoch_done):
        if not is_chief():
            return
        save_atomically(self.model, self.path)
        state = {
            "step": optimizer_step(self.model),
            "epochs_done": epoch_done,
            "epochs": self.epochs,
            "steps_per_epoch": self.steps_per_epoch,
            "saved_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        with open(os.path.join(self.output_dir, STATE), "w") as f:
            json.dump(state, f, indent=2)

    def on_train_batch_end(self, batch, logs=None):
        if self.stop_requested and self.interrupted_at is None:
            self.interrupted_at = optimizer_step(self.model)
            self._save(epoch_done=False)
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self.interrupted_at is None:
            self._save(epoch_done=True)


class _StopOnSignals:
    """Within the block, SIGINT / SIGTERM ask `checkpointer` to stop cleanly.

    A second Ctrl-C raises `KeyboardInterrupt` as usual.
    """

    def __init__(self, checkpointer):
        self.checkpointer = checkpointer
        self.previous = {}

    def _handler(self, signum, frame):
        if self.checkpointer.stop_requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        print(
            f"\nReceived {signal.Signals(signum).name}: saving a checkpoint at the end "
            "of this step (Ctrl-C again to abort without saving).",
            flush=True,
        )
        self.checkpointer.request_stop()

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.previous[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread: no signal handling
                pass
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        return False


def read_history(output_dir):
    """`history.csv` as a dict of lists, one value per epoch (the last row of each; NaN where not logged)."""
    path = os.path.join(output_dir, HISTORY)
    if not os.path.exists(path):
        return {}
    rows = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            rows[int(row["epoch"])] = row
    keys = {key for row in rows.values() for key in row}
    history = {key: [] for key in keys}
    for epoch in sorted(rows):
        for key in keys:
            # A metric logged every N epochs is empty in the other rows: NaN
            # keeps every list aligned with the epochs.
            try:
                history[key].append(float(rows[epoch].get(key)))
            except (TypeError, ValueError):
                history[key].append(float("nan"))
    return {k: v for k, v in history.items() if not all(np.isnan(v))}


def set_jit_compile(model, value):
    """Sets a compiled model's `jit_compile` as `compile(jit_compile=value)`
    would ("auto" resolved per backend and device), keeping its optimizer
    state; a `CLIPModel` records what was asked for (its encoders and saved
    file follow it)."""
    if value not in ("auto", True, False):
        raise ValueError(
            f"Expected jit_compile to be 'auto', True or False. Received: {value!r}"
        )
    resolved = model._resolve_auto_jit_compile() if value == "auto" else value
    if model.run_eagerly:
        resolved = False  # as compile() does: eager steps cannot be jitted
    model.jit_compile = resolved
    if hasattr(model, "_requested_jit_compile"):
        model._requested_jit_compile = value
    # A train function built before follows the old setting; rebuild it.
    model.train_function = None
    model.test_function = None
    model.predict_function = None


def train(
    build_model,
    make_dataset,
    output_dir,
    epochs,
    steps_per_epoch,
    callbacks=(),
    verbose="auto",
    resume=True,
    jit_compile=None,
):
    """Trains into `output_dir`, resuming from its checkpoint when there is one.

    Args:
        build_model: callable `() -> CLIPModel`, compiled with its optimizer
            and schedule; called only when no checkpoint exists.
        make_dataset: callable `(model, epoch) -> tf.data.Dataset` of
            training batches for one pass, sized for `model` (its
            `tokenizer`, `config.image_size`); `epoch` (the first epoch this
            run trains) should vary the shuffling seed. A `skip_counter` on
            the dataset is reported after every epoch.
        output_dir: folder of the checkpoint, history and final model.
        epochs: total epochs of the run (across resumptions).
        steps_per_epoch: batches per epoch (one pass of `make_dataset`).
        callbacks: further Keras callbacks.
        verbose: passed to `fit` (progress bar with "auto" on a terminal).
        resume: bool; `False` starts over even if a checkpoint exists.
        jit_compile: `None` keeps the model's own setting (a resumed run:
            the checkpoint's); `"auto"`, `True` or `False` sets it for this
            run, as `compile(jit_compile=...)` would.

    Returns:
        `(model, status)`: status is `"complete"`, or `"interrupted"` when a
        signal stopped the run (the checkpoint holds its state).
    """
    if epochs < 1 or steps_per_epoch < 1:
        raise ValueError(
            "Expected epochs >= 1 and steps_per_epoch >= 1. "
            f"Received: epochs={epochs}, steps_per_epoch={steps_per_epoch}"
        )
    os.makedirs(output_dir, exist_ok=True)
    checkpoint = os.path.join(output_dir, CHECKPOINT)
    if resume and os.path.exists(checkpoint):
        model = keras.saving.load_model(checkpoint)
        step = optimizer_step(model)
        print(f"Resuming from {checkpoint} at step {step:,}.")
    else:
        if os.path.exists(os.path.join(output_dir, HISTORY)):
            os.remove(os.path.join(output_dir, HISTORY))
        model = build_model()
        step = 0
    if jit_compile is not None:
        set_jit_compile(model, jit_compile)
    total = epochs * steps_per_epoch
    if step >= total:
        print(f"Training already complete ({step:,} of {total:,} steps).")
        return model, "complete"
    epoch, done_in_epoch = divmod(step, steps_per_epoch)
    checkpointer = Checkpointer(output_dir, epochs, steps_per_epoch)
    all_callbacks = [checkpointer, *callbacks]
    # Repeated, with an explicit epoch length: steps and epochs stay in step
    # even when a pass yields fewer batches (skipped samples).
    dataset = make_dataset(model, epoch)
    counter = getattr(dataset, "skip_counter", None)
    if counter is not None:
        all_callbacks.append(SkipCountLogger(counter))
    # Last, so the row holds what the evaluation callbacks added to the logs.
    if is_chief():
        all_callbacks.append(
            keras.callbacks.CSVLogger(os.path.join(output_dir, HISTORY), append=True)
        )
    dataset = dataset.repeat()
    with _StopOnSignals(checkpointer):
        if done_in_epoch:
            # Finish the interrupted epoch with its remaining steps only.
            model.fit(
                dataset,
                steps_per_epoch=steps_per_epoch - done_in_epoch,
                initial_epoch=epoch,
                epochs=epoch + 1,
                callbacks=all_callbacks,
                shuffle=False,  # the pipeline shuffles; Keras's flag would only warn
                verbose=verbose,
            )
            epoch += 1
        if epoch < epochs and checkpointer.interrupted_at is None:
            model.fit(
                dataset,
                steps_per_epoch=steps_per_epoch,
                initial_epoch=epoch,
                epochs=epochs,
                callbacks=all_callbacks,
                shuffle=False,  # the pipeline shuffles; Keras's flag would only warn
                verbose=verbose,
            )
    if checkpointer.interrupted_at is not None:
        print(
            f"Stopped at step {checkpointer.interrupted_at:,} of {total:,}; saved "
            f"{checkpoint}. Run the same command again to resume."
        )
        return model, "interrupted"
    if is_chief():
        save_atomically(model, os.path.join(output_dir, FINAL))
    return model, "complete"


def history_summary(history):
    """The last logged value of each metric (for metrics.json)."""
    out = {}
    for key, values in history.items():
        values = np.asarray(values, dtype="float64")
        values = values[np.isfinite(values)]
        if len(values):
            out[key] = float(values[-1])
    return out
