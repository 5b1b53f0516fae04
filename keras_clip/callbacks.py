"""Keras callbacks that guard a training run.

`StopOnNonFinite` stops `fit` at the first step whose loss is NaN or
infinite, instead of training on through it (a NaN image, a diverging
learning rate), and keeps what happened (`failed`, `step`, `value`) for
the caller to report. The weights after that step are not finite either:
a caller that saves the model must check `failed` first.
"""

import math

import keras


def describe_value(value):
    """A non-finite float as JSON can hold it: "nan", "inf" or "-inf"; a finite one unchanged."""
    value = float(value)
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


class StopOnNonFinite(keras.callbacks.Callback):
    """Stops training at the first step whose monitored value is NaN or inf.

    Keras's `TerminateOnNaN` stops too, but leaves the run looking
    finished; this callback marks it failed and says where: after `fit`
    returns, `failed` is `True`, `step` is the optimizer step (1-based)
    that produced the value, `epoch` its epoch (1-based), `value` the value
    and `message` one line naming both. The model's weights are those after
    that step, usually not finite: save nothing from a failed run.

    Args:
        monitor: the log key to check after every batch (default "loss",
            the running mean of the epoch, which stays non-finite once a
            step's loss was).
        print_fn: called with `message` when the run stops (`None`: quiet).

    Example:

    ```python
    guard = keras_clip.callbacks.StopOnNonFinite()
    model.fit(ds, epochs=10, callbacks=[guard])
    if guard.failed:
        raise SystemExit(guard.message)
    ```
    """

    def __init__(self, monitor="loss", print_fn=print):
        super().__init__()
        self.monitor = monitor
        self.print_fn = print_fn
        self.failed = False
        self.step = None
        self.epoch = None
        self.value = None
        self.message = None
        self._epoch = 0
        self._steps = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self._steps += 1
        if self.failed or not logs or self.monitor not in logs:
            return
        value = float(keras.ops.convert_to_numpy(logs[self.monitor]))
        if math.isfinite(value):
            return
        # Only now read the model: on JAX each access syncs its state.
        model = self.model
        optimizer = getattr(model, "optimizer", None)
        if optimizer is not None:
            step = int(keras.ops.convert_to_numpy(optimizer.iterations))
        else:
            step = self._steps
        self.failed = True
        self.step = step
        self.epoch = self._epoch + 1
        self.value = value
        self.message = (
            f"Stopped: the {self.monitor} is {describe_value(value)} at step "
            f"{step:,} (epoch {self.epoch}); a non-finite {self.monitor} is "
            "not trained through."
        )
        model.stop_training = True
        if self.print_fn is not None:
            self.print_fn(self.message)

    def as_dict(self):
        """What happened, JSON-ready (`value` as "nan" / "inf" / "-inf"); `None` if the run did not fail."""
        if not self.failed:
            return None
        return {
            "metric": self.monitor,
            "value": describe_value(self.value),
            "step": self.step,
            "epoch": self.epoch,
        }
