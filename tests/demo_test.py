"""The main job end to end, at toy scale: Twemoji in, zero-shot numbers and
a loadable clip.keras out."""

import inspect
import json
import os
import re

import keras
import numpy as np
import pytest
from PIL import Image

import keras_clip
import keras_clip_app.cli
from keras_clip_app import demo
from keras_clip.evaluation import zero_shot


def test_concept_top1_counts_a_right_concept_in_any_skin_tone(monkeypatch):
    # Four captions, two concepts: {0, 1} (skin-tone variants) and {2, 3}.
    concept_ids = np.array([7, 7, 9, 9])
    probs = np.array([
        [0.1, 0.7, 0.1, 0.1],  # wrong tone, right concept
        [0.1, 0.7, 0.1, 0.1],  # exactly right
        [0.6, 0.1, 0.2, 0.1],  # wrong concept
        [0.1, 0.1, 0.5, 0.3],  # wrong variant, right concept
    ])
    monkeypatch.setattr(zero_shot, "classify", lambda *args, **kwargs: probs)
    scores = demo.zero_shot_scores(None, None, ["a", "b", "c", "d"], concept_ids)
    guess = probs.argmax(axis=1)
    assert scores["top1"] == np.mean(guess == np.arange(4)) == 0.25
    assert scores["concept_top1"] == np.mean(concept_ids[guess] == concept_ids) == 0.75
    assert "concept_top1" not in demo.zero_shot_scores(None, None, ["a", "b", "c", "d"])


def test_clock_progress_prints_time_against_budget_and_logs():
    lines = []
    progress = demo.ClockProgress(570, print_fn=lines.append)
    progress.on_train_begin()
    progress.start -= 98  # 1:38 into the budget
    progress.on_epoch_end(11, {"loss": 2.0, "i2t_accuracy": 0.5, "heldout_top1": 0.25,
                               "learning_rate": 1e-3, "logit_scale": 14.0})
    assert lines == ["epoch  12 - 1:38 / 9:30 - loss 2.000 - i2t acc 0.500 - "
                     "held-out top-1 0.250 - lr 1.00e-03"]


# `make demo` prints what it did, not Keras's warnings about how it was fed.
@pytest.mark.filterwarnings("error::UserWarning")
def test_demo_trains_evaluates_and_saves(tmp_path, capsys):
    # The default, clock-driven schedule: the budget ends the run.
    metrics = demo.run(
        output_dir=str(tmp_path),
        minutes=0.25,
        batch_size=64,
        image_size=32,
        vocabulary_size=700,
        preset="tiny-resnet",
        downscale=0.25,
        color_jitter=0.0,
        alias_probability=0.25,
    )
    # Under the clock, one line per epoch with the time spent against the
    # budget, not Keras's "Epoch k/1000".
    captured = capsys.readouterr()
    out = captured.out
    assert "epoch   1 - 0:" in out and " / 0:15 - loss " in out and "/1000" not in out
    # Plain lines (this output is not a terminal), the tokenizer's shortfall
    # (if any) said in one line, not warned.
    for stream in (out, captured.err):
        assert "\x1b[" not in stream and "\r" not in stream
    assert "-token BPE vocabulary from " in out
    # The training emoji's aliases join their names as captions.
    aliases = int(re.search(r"\(and ([\d,]+) aliases\)", out).group(1).replace(",", ""))
    assert aliases > 1000
    held = metrics["heldout"]
    assert held["classes"] > 300 and held["chance_top1"] == 1.0 / held["classes"]
    assert 0.0 <= held["top1"] <= held["top5"] <= 1.0
    assert held["top1"] <= held["concept_top1"] <= 1.0
    if metrics["noto"] is not None:
        assert metrics["noto"]["classes"] > 3000
    with open(tmp_path / "metrics.json") as f:
        saved = json.load(f)
    assert saved["heldout"]["classes"] == held["classes"]
    assert saved["train_seconds"] >= 15 and saved["recipe"]["epochs"] is None
    assert len(saved["history"]["learning_rate"]) == saved["epochs"] >= 1
    # The run's settings are saved with its numbers, the ones passed and
    # the defaults alike.
    recipe = saved["recipe"]
    assert (recipe["downscale"], recipe["color_jitter"], recipe["vocabulary_size"]) == (0.25, 0.0, 700)
    defaults = inspect.signature(demo.run).parameters
    assert recipe["label_smoothing"] == defaults["label_smoothing"].default
    assert recipe["crop_scale"] == list(defaults["crop_scale"].default)
    assert recipe["alias_probability"] == 0.25
    for name in ("training_curves", "similarity", "heldout_predictions"):
        with Image.open(metrics["outputs"][name]) as png:
            assert png.format == "PNG" and min(png.size) > 100, name
    # The saved file is all a user needs: model, tokenizer, preprocessing.
    model = keras.saving.load_model(os.path.join(tmp_path, "clip.keras"))
    assert isinstance(model.tokenizer, keras_clip.CLIPTokenizer)
    images = np.full((2, 50, 40, 3), 255, "uint8")
    probs = zero_shot.classify(model, images, ["red heart", "grinning face", "dog"], templates=["{}"])
    assert probs.shape == (2, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_a_non_finite_loss_fails_the_demo_and_saves_no_model(tmp_path, monkeypatch, capsys):
    real = demo.data.from_arrays

    def nan_images(*args, **kwargs):
        return real(*args, **kwargs).map(
            lambda batch: {**batch, "images": batch["images"] * np.nan})

    monkeypatch.setattr(demo.data, "from_arrays", nan_images)
    # A ViT: its layer norms carry a NaN through (under XLA a ResNet's ReLUs
    # and max-pooling may turn NaN into 0, and the loss stays finite).
    status = keras_clip_app.cli.main([
        "demo", "--output-dir", str(tmp_path), "--minutes", "1", "--epochs", "3",
        "--batch-size", "64", "--vocabulary-size", "700", "--preset", "tiny-vit"])
    captured = capsys.readouterr()
    assert status == 1
    assert "Stopped: the loss is nan at step 1 (epoch 1)" in captured.out
    assert "keras-clip demo: error: training failed: the loss was nan at step 1" in captured.err
    assert not (tmp_path / "clip.keras").exists()

    def refuse(name):
        raise AssertionError(f"metrics.json holds {name}")

    with open(tmp_path / "metrics.json") as f:
        saved = json.load(f, parse_constant=refuse)
    assert saved["status"] == "failed"
    assert saved["non_finite"] == {"metric": "loss", "value": "nan", "step": 1, "epoch": 1}
    assert saved["history"]["loss"] == ["nan"]
