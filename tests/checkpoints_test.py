"""The training folder's files: damaged checkpoints, the previous
generation, the plan a resumed run must keep, a restart's clean-up.

A compiled one-layer model stands in for CLIP: these functions only save,
load and read the optimizer's step count.
"""

import os

import keras
import numpy as np
import pytest

from keras_clip_app import checkpoints
from keras_clip_app.errors import RunError


def small_model(steps):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x = np.zeros((steps, 2), "float32")
    model.fit(x, x[:, :1], batch_size=1, epochs=1, verbose=0)
    return model


def test_damage_reason_names_what_is_wrong(tmp_path):
    good = tmp_path / "good.keras"
    small_model(1).save(good)
    data = good.read_bytes()
    assert checkpoints.damage_reason(good) is None
    (tmp_path / "empty.keras").write_bytes(b"")
    (tmp_path / "cut.keras").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.keras").write_text("hello")
    assert checkpoints.damage_reason(tmp_path / "empty.keras") == "an empty file"
    assert checkpoints.damage_reason(tmp_path / "cut.keras").startswith(
        "not a zip archive"
    )
    assert "(5 bytes)" in checkpoints.damage_reason(tmp_path / "text.keras")
    # A flipped byte inside a member: the zip's checksum catches it.
    flipped = bytearray(data)
    middle = data.index(b"model.weights.h5") + 200
    flipped[middle] ^= 0xFF
    (tmp_path / "flipped.keras").write_bytes(bytes(flipped))
    assert checkpoints.damage_reason(tmp_path / "flipped.keras") is not None


def test_two_generations_and_the_fallback_to_the_previous_one(tmp_path, capsys):
    out = str(tmp_path)
    checkpoints.save_checkpoint(small_model(2), out)
    assert not os.path.exists(os.path.join(out, checkpoints.PREVIOUS))
    checkpoints.save_checkpoint(small_model(5), out)
    model, path = checkpoints.load_checkpoint(out)
    assert (path, checkpoints.optimizer_step(model)) == (
        os.path.join(out, checkpoints.CHECKPOINT),
        5,
    )
    # The newest damaged: the previous one, said, the damaged file kept aside
    # (the next save would otherwise rotate it over the good one).
    newest = os.path.join(out, checkpoints.CHECKPOINT)
    with open(newest, "wb") as f:
        f.write(b"garbage")
    model, path = checkpoints.load_checkpoint(out)
    assert (path, checkpoints.optimizer_step(model)) == (
        os.path.join(out, checkpoints.PREVIOUS),
        2,
    )
    said = capsys.readouterr().out
    assert f"{newest} is damaged" in said and "Resuming from the previous one" in said
    assert open(os.path.join(out, checkpoints.DAMAGED), "rb").read() == b"garbage"
    checkpoints.save_checkpoint(model, out)
    assert (
        checkpoints.optimizer_step(
            keras.saving.load_model(os.path.join(out, checkpoints.PREVIOUS))
        )
        == 2
    )
    # Neither loads: one error naming both files and the fix.
    for name in (checkpoints.CHECKPOINT, checkpoints.PREVIOUS):
        with open(os.path.join(out, name), "wb") as f:
            f.write(b"")
    with pytest.raises(RunError, match=r"Expected a readable checkpoint .* --restart"):
        checkpoints.load_checkpoint(out)


def test_a_missing_newest_checkpoint_falls_back_too(tmp_path, capsys):
    # A crash between the two renames of a save leaves only the previous one.
    out = str(tmp_path)
    small_model(3).save(os.path.join(out, checkpoints.PREVIOUS))
    model, path = checkpoints.load_checkpoint(out)
    assert (
        path.endswith(checkpoints.PREVIOUS) and checkpoints.optimizer_step(model) == 3
    )
    assert "is missing" in capsys.readouterr().out


STATE = {
    "epochs": 2,
    "steps_per_epoch": 3,
    "settings": {"--batch-size": 8, "--lr": 0.001, "--preset": "tiny-vit"},
}


def test_check_plan_accepts_the_same_plan_and_names_any_change(tmp_path):
    settings = {
        "--batch-size": 8,
        "--lr": 0.001,
        "--preset": "tiny-vit",
        "--new-flag": 1,
    }
    checkpoints.check_plan(
        STATE, "out", 2, 3, settings
    )  # unchanged (new flags not compared)
    checkpoints.check_plan(None, "out", 5, 5, settings)  # nothing saved to compare
    with pytest.raises(RunError) as error:
        checkpoints.check_plan(STATE, "out", 2, 6, {**settings, "--batch-size": 4})
    message = str(error.value)
    assert "--batch-size changed from 8 to 4" in message
    assert (
        "planned for 6 steps (2 epochs of 3), and this command plans 12 (2 of 6)"
        in message
    )
    assert (
        "resume with the original --batch-size 8, or start over with --restart"
        in message
    )
    with pytest.raises(RunError, match="--epochs changed from 2 to 1;"):
        checkpoints.check_plan(STATE, "out", 1, 3, settings)
    with pytest.raises(
        RunError,
        match="--preset changed from tiny-vit to RN50; the checkpoint "
        "keeps its own model and optimizer settings",
    ):
        checkpoints.check_plan(STATE, "out", 2, 3, {**settings, "--preset": "RN50"})


def test_clear_previous_run_removes_only_run_files(tmp_path, capsys):
    for name in (
        checkpoints.CHECKPOINT,
        checkpoints.FINAL,
        checkpoints.HISTORY,
        "mine.txt",
    ):
        (tmp_path / name).write_text("x")
    (tmp_path / checkpoints.TENSORBOARD / "train").mkdir(parents=True)
    removed = checkpoints.clear_previous_run(str(tmp_path))
    assert sorted(removed) == sorted(
        [
            checkpoints.CHECKPOINT,
            checkpoints.FINAL,
            checkpoints.HISTORY,
            checkpoints.TENSORBOARD,
        ]
    )
    assert os.listdir(tmp_path) == ["mine.txt"]
    assert "Starting over: removed the previous run's" in capsys.readouterr().out


def test_check_keras_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        checkpoints.check_keras_file(str(tmp_path / "missing.keras"))
    with pytest.raises(RunError, match="Received: a folder"):
        checkpoints.check_keras_file(str(tmp_path))
    (tmp_path / "x.keras").write_text("hello")
    with pytest.raises(
        RunError, match=r"at --model .*x\.keras\. Received: not a zip archive"
    ):
        checkpoints.check_keras_file(str(tmp_path / "x.keras"))
