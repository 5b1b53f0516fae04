"""The main job end to end, at toy scale: Twemoji in, zero-shot numbers and
a loadable clip.keras out."""

import json
import os

import keras
import numpy as np
from PIL import Image

import keras_clip
from keras_clip import demo, zero_shot


def test_demo_trains_evaluates_and_saves(tmp_path):
    metrics = demo.run(
        output_dir=str(tmp_path),
        minutes=0.2,
        epochs=1,
        batch_size=64,
        image_size=32,
        vocabulary_size=700,
        preset="tiny-resnet",
    )
    held = metrics["heldout"]
    assert held["classes"] > 300 and held["chance_top1"] == 1.0 / held["classes"]
    assert 0.0 <= held["top1"] <= held["top5"] <= 1.0
    if metrics["noto"] is not None:
        assert metrics["noto"]["classes"] > 3000
    with open(tmp_path / "metrics.json") as f:
        assert json.load(f)["heldout"]["classes"] == held["classes"]
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
