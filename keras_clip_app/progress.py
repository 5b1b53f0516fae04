"""Progress output that reads well in a log file as on a terminal.

Keras's progress bar redraws itself with carriage returns and ANSI colour
codes even when the output is not a terminal (it takes any POSIX system
for one), which fills a log file with control characters. On a terminal
the commands keep Keras's bar; otherwise they print plain lines:

- `ProgressLines`: one line per epoch, and one a minute within an epoch,
  with the step, the time spent, the time left at the current pace and
  the logged metrics;
- `counter`: the same for the encoders of `eval` and `embed`.

`LearningRateLog` adds the learning rate to the epoch logs, so that it
reaches `history.csv`, the figures and TensorBoard.
"""

import math
import sys
import time

import keras


def is_terminal(stream=None):
    stream = sys.stdout if stream is None else stream
    return bool(getattr(stream, "isatty", None) and stream.isatty())


def clock_text(seconds):
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return (
        f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"
    )


LABELS = {
    "loss": "loss",
    "i2t_accuracy": "i2t acc",
    "t2i_accuracy": "t2i acc",
    "logit_scale": "logit scale",
    "learning_rate": "lr",
    "skipped_samples": "skipped",
}


def format_logs(logs):
    """`name value` pairs of the numeric logs, known names first."""
    logs = dict(logs or {})
    keys = [k for k in LABELS if k in logs] + sorted(k for k in logs if k not in LABELS)
    parts = []
    for key in keys:
        try:
            value = float(keras.ops.convert_to_numpy(logs[key]))
        except (TypeError, ValueError):
            continue
        label = LABELS.get(key, key)
        if not math.isfinite(value):
            text = str(value)
        elif key == "learning_rate":
            text = f"{value:.2e}"
        elif key == "skipped_samples":
            text = f"{int(value):,}"
        else:
            text = f"{value:.4f}"
        parts.append(f"{label} {text}")
    return parts


class ProgressLines(keras.callbacks.Callback):
    """Plain progress lines for `fit` (use with `verbose=0`).

    Args:
        epochs: epochs of the whole run.
        steps_per_epoch: steps per epoch.
        initial_step: the step the run starts (or resumes) at.
        every_seconds: within an epoch, a line after the first step that
            ends this long after the previous line.
        print_fn: where lines go.
        clock: a no-argument callable returning seconds.
    """

    def __init__(
        self,
        epochs,
        steps_per_epoch,
        initial_step=0,
        every_seconds=60.0,
        print_fn=print,
        clock=time.monotonic,
    ):
        super().__init__()
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.total = epochs * steps_per_epoch
        self.step = initial_step
        self.initial_step = initial_step
        self.every_seconds = every_seconds
        self.print_fn = print_fn
        self.clock = clock
        self.start = None

    def on_train_begin(self, logs=None):
        if self.start is None:  # a resumed epoch and the rest are two `fit` calls
            self.start = self.last = self.clock()

    def _line(self, epoch, logs):
        now = self.clock()
        elapsed = now - self.start
        done = self.step - self.initial_step
        parts = [
            f"epoch {epoch + 1}/{self.epochs}",
            f"step {self.step:,}/{self.total:,}",
            f"{clock_text(elapsed)} elapsed",
        ]
        if 0 < done and self.step < self.total:
            parts.append(f"ETA {clock_text(elapsed / done * (self.total - self.step))}")
        self.print_fn(" - ".join(parts + format_logs(logs)))
        self.last = now

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        in_epoch = self.step % self.steps_per_epoch
        if in_epoch and self.clock() - self.last >= self.every_seconds:
            loss = {"loss": logs["loss"]} if logs and "loss" in logs else {}
            self._line(self.step // self.steps_per_epoch, loss)

    def on_epoch_end(self, epoch, logs=None):
        self._line(epoch, logs)


class LearningRateLog(keras.callbacks.Callback):
    """Adds `learning_rate` (the rate of the epoch's last step) to the epoch logs."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or "learning_rate" in logs:
            return
        optimizer = getattr(self.model, "optimizer", None)
        optimizer = getattr(optimizer, "inner_optimizer", optimizer)
        rate = getattr(optimizer, "_learning_rate", None)
        if rate is None:
            return
        if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
            step = int(keras.ops.convert_to_numpy(optimizer.iterations))
            rate = rate(max(step - 1, 0))
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(rate))


class _Lines:
    """`keras.utils.Progbar`'s `add`, as a line a minute and one at the end."""

    def __init__(
        self, total, unit_name, every_seconds=60.0, print_fn=print, clock=time.monotonic
    ):
        self.total, self.unit_name = total, unit_name
        self.every_seconds, self.print_fn, self.clock = every_seconds, print_fn, clock
        self.done = 0
        self.start = self.last = clock()

    def add(self, n, values=None):
        self.done += n
        now = self.clock()
        if self.done >= self.total or now - self.last >= self.every_seconds:
            self.print_fn(
                f"{self.done:,}/{self.total:,} {self.unit_name}s - "
                f"{clock_text(now - self.start)} elapsed"
            )
            self.last = now


def counter(total, unit_name):
    """Keras's progress bar on a terminal, plain lines otherwise."""
    if is_terminal():
        return keras.utils.Progbar(total, unit_name=unit_name)
    return _Lines(total, unit_name)
