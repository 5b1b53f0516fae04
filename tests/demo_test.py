"""The main job end to end, at toy scale: Twemoji in, zero-shot numbers and
a loadable clip.keras out."""

import inspect
import json
import os

import keras
import numpy as np
import pytest
from PIL import Image

import keras_clip
from keras_clip import demo, zero_shot


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


# `make demo` prints what it did, not Keras's warnings about how it was fed.
@pytest.mark.filterwarnings("error::UserWarning")
def test_demo_trains_evaluates_and_saves(tmp_path):
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
    )
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
