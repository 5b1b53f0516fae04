"""Resumable training into an output folder (what `keras-clip train` runs).

`train` owns the folder (file names in `keras_clip_app.checkpoints`):

- `checkpoint.keras`: model, tokenizer, optimizer state and step count,
  rewritten atomically at the end of every epoch and when the run is
  interrupted (Ctrl-C / SIGTERM stop at the end of the current step); the
  one it replaces is kept as `checkpoint.prev.keras`, so one damaged file
  costs at most one epoch (the run resumes from the previous one, saying
  so);
- `train_state.json`: the run's plan and settings; a resumed run whose
  epochs, steps per epoch or settings differ is refused, naming the change;
- `history.csv`: one row per (possibly partial) epoch, appended across runs;
- `tensorboard/` (with `tensorboard=True`): the same numbers per epoch;
- `clip.keras`: the final model, written when all epochs are done.

Only the chief process (rank 0) writes files. Running the same command again resumes from `checkpoint.keras` at the exact
optimizer step: the learning-rate schedule continues where it stopped and
the interrupted epoch runs only its remaining steps (on a freshly shuffled
pass, so the samples of those steps are not the ones the interrupted run
would have drawn). No finished step is lost. An epoch is `steps_per_epoch`
batches of the repeated dataset, so epochs and steps stay aligned even when
a pass yields fewer batches because samples were skipped.

A NaN or infinite loss stops the run (`keras_clip.StopOnNonFinite`): its
status is "failed", no checkpoint or final model is written from the
non-finite weights, and the last good checkpoint stays in place.
"""

import csv
import os
import signal
import time

import keras
import numpy as np

from keras_clip.callbacks import StopOnNonFinite
from keras_clip.callbacks import describe_value
from keras_clip.data.pipeline import SkipCountLogger
from keras_clip.distributed import is_chief
from keras_clip_app import checkpoints
from keras_clip_app import progress
from keras_clip_app.checkpoints import CHECKPOINT  # noqa: F401 (the folder's names, for callers)
from keras_clip_app.checkpoints import DAMAGED  # noqa: F401
from keras_clip_app.checkpoints import FINAL
from keras_clip_app.checkpoints import HISTORY
from keras_clip_app.checkpoints import PREVIOUS  # noqa: F401
from keras_clip_app.checkpoints import STATE
from keras_clip_app.checkpoints import TENSORBOARD
from keras_clip_app.checkpoints import optimizer_step
from keras_clip_app.checkpoints import save_atomically
from keras_clip_app.errors import RunError


class Checkpointer(keras.callbacks.Callback):
    """Saves `checkpoint.keras` at each epoch end, and on request mid-epoch.

    `request_stop()` (called from a signal handler) makes the run save at
    the end of the current step and stop. Nothing is saved once `guard`
    (a `StopOnNonFinite`) has seen a non-finite loss.
    """

    def __init__(self, output_dir, epochs, steps_per_epoch, settings=None, guard=None):
        super().__init__()
        self.output_dir = output_dir
        self.path = os.path.join(output_dir, checkpoints.CHECKPOINT)
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.settings = dict(settings or {})
        self.guard = guard
        self.stop_requested = False
        self.interrupted_at = None

    def request_stop(self):
        self.stop_requested = True

    def _save(self, epoch_done):
        if not is_chief() or (self.guard is not None and self.guard.failed):
            return
        checkpoints.save_checkpoint(self.model, self.output_dir)
        state = {
            "step": optimizer_step(self.model),
            "epochs_done": epoch_done,
            "epochs": self.epochs,
            "steps_per_epoch": self.steps_per_epoch,
            "settings": checkpoints._jsonable(self.settings),
            "saved_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        checkpoints.write_json_atomically(os.path.join(self.output_dir, STATE), state)

    def on_train_batch_end(self, batch, logs=None):
        if self.stop_requested and self.interrupted_at is None:
            self.interrupted_at = optimizer_step(self.model)
            self._save(epoch_done=False)
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self.interrupted_at is None:
            self._save(epoch_done=True)


class UnlessFailed(keras.callbacks.Callback):
    """Runs `inner`'s hooks, except its epoch end after a non-finite loss
    (an evaluation of non-finite weights would only cost time)."""

    def __init__(self, inner, guard):
        super().__init__()
        self.inner = inner
        self.guard = guard
        # `inner`'s own methods: Keras sees the same hooks implemented (a
        # callback without batch hooks keeps `fit`'s asynchronous dispatch).
        for name in dir(keras.callbacks.Callback):
            if name.startswith("on_") and name != "on_epoch_end":
                setattr(self, name, getattr(inner, name))

    def set_params(self, params):
        super().set_params(params)
        self.inner.set_params(params)

    def set_model(self, model):
        super().set_model(model)
        self.inner.set_model(model)

    def on_epoch_end(self, epoch, logs=None):
        if not self.guard.failed:
            self.inner.on_epoch_end(epoch, logs)


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


def read_history(output_dir, missing=float("nan")):
    """`history.csv` as a dict of lists, one value per epoch (the last row of each).

    A metric not logged in an epoch (an evaluation every N epochs) reads as
    `missing` (NaN by default, keeping every list aligned with the epochs);
    a logged NaN or infinity reads as itself, so a failed epoch stays seen.
    Metrics never logged are left out.
    """
    path = os.path.join(output_dir, HISTORY)
    if not os.path.exists(path):
        return {}
    rows = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            rows[int(row["epoch"])] = row
    keys = {key for row in rows.values() for key in row if key is not None}
    history = {key: [] for key in keys}
    logged = set()
    for epoch in sorted(rows):
        for key in keys:
            try:
                value = float(rows[epoch].get(key))
            except (TypeError, ValueError):
                value = missing
            else:
                logged.add(key)
            history[key].append(value)
    return {k: v for k, v in history.items() if k in logged}


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
    if hasattr(model, "requested_jit_compile"):  # a CLIPModel
        model.requested_jit_compile = value
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
    settings=None,
    guard=None,
    tensorboard=False,
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
        callbacks: further Keras callbacks (their epoch end is skipped
            after a non-finite loss).
        verbose: passed to `fit`; "auto" is Keras's progress bar on a
            terminal and "lines" otherwise: plain lines for a log file
            (`progress.ProgressLines`).
        resume: bool; `False` starts over even if a checkpoint exists,
            removing the earlier run's files.
        jit_compile: `None` keeps the model's own setting (a resumed run:
            the checkpoint's); `"auto"`, `True` or `False` sets it for this
            run, as `compile(jit_compile=...)` would.
        settings: `{flag: value}` that a resumed run must share with the
            saved one (saved in `train_state.json`); `epochs` and
            `steps_per_epoch` are always checked.
        guard: the `StopOnNonFinite` to use (read it after a failed run);
            one is made when `None`.
        tensorboard: also write TensorBoard logs into `output_dir/tensorboard`.

    Returns:
        `(model, status)`: status is `"complete"`, `"interrupted"` when a
        signal stopped the run (the checkpoint holds its state), or
        `"failed"` when a loss was not finite (see `guard`).

    Raises:
        RunError: a resumed run whose plan or settings differ from the
            saved ones, no readable checkpoint to resume from, or a
            `clip.keras` of unknown origin that a fresh run would replace.
    """
    if epochs < 1 or steps_per_epoch < 1:
        raise ValueError(
            "Expected epochs >= 1 and steps_per_epoch >= 1. "
            f"Received: epochs={epochs}, steps_per_epoch={steps_per_epoch}"
        )
    settings = dict(settings or {})
    guard = guard if guard is not None else StopOnNonFinite()
    os.makedirs(output_dir, exist_ok=True)
    total = epochs * steps_per_epoch
    final = os.path.join(output_dir, FINAL)
    newest = os.path.join(output_dir, checkpoints.CHECKPOINT)
    saved = [p for p in (newest, os.path.join(output_dir, checkpoints.PREVIOUS)) if os.path.exists(p)]
    if resume and saved:
        state = checkpoints.read_state(output_dir)
        checkpoints.check_plan(state, output_dir, epochs, steps_per_epoch, settings)
        if (state and state.get("step", 0) >= total and os.path.exists(final)
                and checkpoints.damage_reason(final) is None):
            print(f"Training already complete ({total:,} of {total:,} steps); the final model is {final}.")
            return keras.saving.load_model(final), "complete"
        model, source = checkpoints.load_checkpoint(output_dir, chief=is_chief())
        step = optimizer_step(model)
        print(f"Resuming from {source} at step {step:,} of {total:,}.")
    else:
        if resume and os.path.exists(final):
            raise RunError(
                f"Expected an empty folder or a run to resume in {output_dir}. Received: "
                f"{final} without a checkpoint, which this run would replace. Pass "
                "--restart to replace it, or train into a new --output-dir."
            )
        if is_chief():
            checkpoints.clear_previous_run(output_dir)
        model, source = build_model(), None
        step = 0
    if jit_compile is not None:
        set_jit_compile(model, jit_compile)
    if step > total:
        raise RunError(
            f"Expected a checkpoint at most at step {total:,} ({epochs} epochs of "
            f"{steps_per_epoch}). Received: {source} at step {step:,}. Resume with the "
            f"original --epochs and --batch-size, or {checkpoints.RESTART}."
        )
    if step == total:
        if is_chief() and (not os.path.exists(final) or checkpoints.damage_reason(final)):
            save_atomically(model, final)
            print(f"Wrote the final model {final} from {source}.")
        print(f"Training already complete ({step:,} of {total:,} steps); the final model is {final}.")
        return model, "complete"
    epoch, done_in_epoch = divmod(step, steps_per_epoch)
    checkpointer = Checkpointer(output_dir, epochs, steps_per_epoch, settings, guard)
    # The guard first: a failed step must be seen before anything saves.
    all_callbacks = [guard, checkpointer]
    # Repeated, with an explicit epoch length: steps and epochs stay in step
    # even when a pass yields fewer batches (skipped samples).
    dataset = make_dataset(model, epoch)
    counter = getattr(dataset, "skip_counter", None)
    if counter is not None:
        all_callbacks.append(SkipCountLogger(counter))
    all_callbacks += [UnlessFailed(c, guard) for c in callbacks]
    all_callbacks.append(progress.LearningRateLog())
    if verbose == "auto":
        verbose = 1 if progress.is_terminal() else "lines"
    # Last, so that they see what the evaluation callbacks added to the logs.
    if is_chief():
        all_callbacks.append(
            keras.callbacks.CSVLogger(os.path.join(output_dir, HISTORY), append=True)
        )
        if tensorboard:
            all_callbacks.append(keras.callbacks.TensorBoard(
                os.path.join(output_dir, TENSORBOARD), write_graph=False))
    if verbose == "lines":
        all_callbacks.append(progress.ProgressLines(epochs, steps_per_epoch, step))
        verbose = 0
    dataset = dataset.repeat()
    fit = dict(callbacks=all_callbacks, verbose=verbose,
               shuffle=False)  # the pipeline shuffles; Keras's flag would only warn
    with _StopOnSignals(checkpointer):
        if done_in_epoch:
            # Finish the interrupted epoch with its remaining steps only.
            model.fit(dataset, steps_per_epoch=steps_per_epoch - done_in_epoch,
                      initial_epoch=epoch, epochs=epoch + 1, **fit)
            epoch += 1
        if epoch < epochs and checkpointer.interrupted_at is None and not guard.failed:
            model.fit(dataset, steps_per_epoch=steps_per_epoch, initial_epoch=epoch,
                      epochs=epochs, **fit)
    if guard.failed:
        _report_failure(output_dir)
        return model, "failed"
    if checkpointer.interrupted_at is not None:
        print(
            f"Stopped at step {checkpointer.interrupted_at:,} of {total:,}; saved "
            f"{newest}. Run the same command again to resume."
        )
        return model, "interrupted"
    if is_chief():
        save_atomically(model, final)
    return model, "complete"


def _report_failure(output_dir):
    newest = os.path.join(output_dir, checkpoints.CHECKPOINT)
    state = checkpoints.read_state(output_dir) or {}
    if os.path.exists(newest):
        kept = f"The last good checkpoint, {newest} (step {state.get('step', '?')}), is kept"
    else:
        kept = "No checkpoint was saved before it"
    print(
        f"{kept}; {FINAL} was not written. Look for NaN or infinite values in "
        "the training data, or lower --lr; then run the same command to resume."
    )


def history_summary(history):
    """The last logged value of each metric (for metrics.json), from a
    `read_history(..., missing=None)`: non-finite values as "nan" / "inf" /
    "-inf" (JSON has no NaN), and `epoch` as the number of epochs run."""
    out = {}
    for key, values in history.items():
        values = [v for v in values if v is not None]
        if not values:
            continue
        if key == "epoch":
            out[key] = int(values[-1]) + 1
        elif key == "skipped_samples" and np.isfinite(values[-1]):
            out[key] = int(values[-1])
        else:
            out[key] = describe_value(values[-1])
    return out

