"""Plain progress lines for logs: what they say, and when."""

import io

import numpy as np

from keras_clip_app import progress


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_progress_lines_one_per_epoch_and_one_a_minute_within_it():
    clock, lines = FakeClock(), []
    bar = progress.ProgressLines(
        epochs=2,
        steps_per_epoch=4,
        initial_step=2,
        every_seconds=60,
        print_fn=lines.append,
        clock=clock,
    )
    bar.on_train_begin()
    # Resumed at step 2: steps 3 and 4 end epoch 1, 10 s each.
    for batch in range(2):
        clock.now += 10
        bar.on_train_batch_end(batch, {"loss": 3.0})
    bar.on_epoch_end(
        0,
        {
            "loss": 2.5,
            "i2t_accuracy": 0.25,
            "learning_rate": 1e-3,
            "skipped_samples": 2,
            "val_retrieval_i2t_r1": 0.5,
        },
    )
    assert lines == [
        "epoch 1/2 - step 4/8 - 0:20 elapsed - ETA 0:40 - loss 2.5000 - "
        "i2t acc 0.2500 - lr 1.00e-03 - skipped 2 - val_retrieval_i2t_r1 0.5000"
    ]
    bar.on_train_begin()  # the second `fit` of a resumed run keeps the clock
    clock.now += 70  # a slow step: a line within the epoch
    bar.on_train_batch_end(0, {"loss": 1.5})
    clock.now += 10
    bar.on_train_batch_end(1, {"loss": 1.4})  # under a minute since: no line
    assert lines[1:] == ["epoch 2/2 - step 5/8 - 1:30 elapsed - ETA 1:30 - loss 1.5000"]
    for batch in (2, 3):
        clock.now += 10
        bar.on_train_batch_end(batch, {"loss": 1.0})
    bar.on_epoch_end(1, {"loss": float("nan")})
    assert lines[2:] == [
        "epoch 2/2 - step 8/8 - 2:00 elapsed - loss nan"
    ]  # done: no ETA


def test_counter_is_plain_lines_off_a_terminal(monkeypatch):
    lines = []
    monkeypatch.setattr("sys.stdout", io.StringIO())
    count = progress.counter(5, "image")
    assert not progress.is_terminal()
    count.print_fn = lines.append
    count.add(3)
    count.add(2)
    assert lines == ["5/5 images - 0:00 elapsed"]


def test_clock_text_and_format_logs():
    assert [progress.clock_text(s) for s in (5, 65, 3725)] == [
        "0:05",
        "1:05",
        "1:02:05",
    ]
    assert progress.format_logs(
        {"loss": np.float32(2.0), "note": "text", "logit_scale": np.inf}
    ) == ["loss 2.0000", "logit scale inf"]
