"""Counting the samples an input pipeline skips: `SkipCounter`, and
`SkipCountLogger`, which reports the counts from `model.fit`.

`keras_clip.data.pipeline` describes how the counts leave the `tf.data`
graph; the reasons are `keras_clip.data.decode.REASONS`.
"""

import logging

import keras
import numpy as np
import tensorflow as tf

from keras_clip.data.decode import OK
from keras_clip.data.decode import REASONS

logger = logging.getLogger("keras_clip.data")


class SkipCounter:
    """Counts the samples an input pipeline skipped, per reason.

    One counter belongs to one pipeline. A pass (epoch) is counted when the
    consumer asks for its last batch; the counts are final before that batch
    is returned. Each finished pass is also written to the `keras_clip.data`
    logger (warning level when anything was skipped).

    Args:
        name: str, names the source in log lines and errors.

    Example:

    >>> counter = SkipCounter()
    >>> ds = keras_clip.data.from_csv("pairs.csv", tok, batch_size=32,
    ...                               counter=counter)  # doctest: +SKIP
    >>> for batch in ds: ...  # doctest: +SKIP
    >>> counter.last_pass()  # {"ok": 98, "missing_image": 1, ...}
    """

    def __init__(self, name="dataset"):
        self.name = name
        self._attached = False
        n = len(REASONS) + 1
        with tf.init_scope(), tf.device("/cpu:0"):
            self._total = tf.Variable(tf.zeros([n], tf.int64), trainable=False)
            self._last = tf.Variable(tf.zeros([n], tf.int64), trainable=False)
            self._passes = tf.Variable(tf.constant(0, tf.int64), trainable=False)

    @staticmethod
    def _as_dict(vector):
        values = [int(v) for v in np.asarray(vector)]
        return dict(zip(("ok",) + REASONS, values))

    @property
    def num_passes(self):
        """Number of passes (epochs) completed so far."""
        return int(self._passes.numpy())

    def totals(self):
        """Dict `{"ok": n, reason: n, ...}` summed over completed passes."""
        return self._as_dict(self._total.numpy())

    def last_pass(self):
        """Dict `{"ok": n, reason: n, ...}` of the last completed pass."""
        return self._as_dict(self._last.numpy())

    def skipped(self, last_pass=False):
        """Total number of skipped samples (all passes, or the last one)."""
        counts = self.last_pass() if last_pass else self.totals()
        return sum(v for k, v in counts.items() if k != "ok")

    def reset(self):
        """Sets every count to zero."""
        for var in (self._total, self._last, self._passes):
            var.assign(tf.zeros_like(var))

    def summary(self, counts=None):
        """One line describing `counts` (default: the last pass)."""
        counts = self.last_pass() if counts is None else counts
        bad = {k: v for k, v in counts.items() if k != "ok" and v}
        detail = ", ".join(f"{k}={v}" for k, v in bad.items()) or "none"
        return (
            f"{self.name}: {counts['ok']} pairs ok, {sum(bad.values())} "
            f"skipped ({detail})"
        )

    def _attach(self):
        if self._attached:
            raise ValueError(
                f"Expected a fresh `SkipCounter` for each pipeline. Received: "
                f"the counter '{self.name}', already used by another pipeline."
            )
        self._attached = True

    def _close_pass(self, tally, decoded, batch_of_one, full_batch):
        """Graph side: `tally` is `[entered, count per checked reason...]`;
        `batch_of_one` is 1 when the last batch (one pair) is dropped;
        `full_batch` is the batch size under `drop_remainder`, else 1."""
        checked = tally[1:]
        lost_in_checks = tally[0] - tf.reduce_sum(checked)
        decode_errors = checked[OK] - decoded + lost_in_checks
        counts = tf.concat(
            [[decoded - batch_of_one], checked[1:], [decode_errors, batch_of_one]],
            axis=0,
        )
        updates = [
            self._total.assign_add(counts),
            self._last.assign(counts),
            self._passes.assign_add(1),
        ]
        with tf.control_dependencies(updates):
            return tf.py_function(self._report, [counts, full_batch], Tout=tf.bool)

    def _report(self, counts, full_batch):
        counts = self._as_dict(counts.numpy())
        full_batch = int(full_batch.numpy())
        if counts["ok"] == 0:
            hint = "Check the paths, column names and caption encoding"
            if counts["batch_of_one"]:
                hint += (
                    "; a single usable pair is dropped (a contrastive batch "
                    "of one has no negatives), so give it at least two"
                )
            raise ValueError(
                f"Every sample of {self.name} was skipped, so the pipeline "
                f"has nothing to yield. Counts: {counts}. {hint}."
            )
        if counts["ok"] < full_batch:
            raise ValueError(
                f"Expected at least one full batch of {full_batch} pairs from "
                f"{self.name}, since `drop_remainder=True` (the default when "
                f"training) drops the last partial batch. Received: "
                f"{counts['ok']} usable pairs in the pass, so it yields no "
                f"batch. Lower `batch_size` to {max(2, counts['ok'])} or less, "
                "or pass drop_remainder=False."
            )
        skipped = sum(counts.values()) > counts["ok"]
        level = logging.WARNING if skipped else logging.INFO
        logger.log(level, "pass %d over %s", self.num_passes, self.summary(counts))
        return True


class SkipCountLogger(keras.callbacks.Callback):
    """Keras callback that reports a pipeline's skip counts after each epoch.

    Adds `skipped_samples` (the count of the last finished pass) to the epoch
    logs, so it appears in `History`, and logs the per-reason line.

    Args:
        counter: the `SkipCounter` of the training pipeline (also reachable as
            `dataset.skip_counter`).

    Example:

    >>> ds = keras_clip.data.from_csv(...)  # doctest: +SKIP
    >>> model.fit(ds, epochs=3,
    ...           callbacks=[SkipCountLogger(ds.skip_counter)])  # doctest: +SKIP
    """

    def __init__(self, counter):
        super().__init__()
        if not isinstance(counter, SkipCounter):
            raise TypeError(
                f"Expected a `SkipCounter`. Received: counter={counter!r}"
            )
        self.counter = counter

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["skipped_samples"] = self.counter.skipped(last_pass=True)
        logger.info("epoch %d: %s", epoch + 1, self.counter.summary())
