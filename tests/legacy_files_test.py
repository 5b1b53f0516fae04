"""`.keras` files saved before the package was reshaped still load and work.

tests/data/main_2026_12_06_*.keras were written by main at 9341679 (the flat
layout, before the backend speed paths and the loss options moved) by
tests/data/make_legacy_models.py, on TensorFlow, with the inputs and the
embeddings that code computed saved beside them. Every backend must load them,
reproduce those embeddings and keep training from the saved optimizer state.
"""

import os

import keras
import numpy as np
import pytest

import keras_clip

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


@pytest.mark.parametrize("preset", ["tiny-vit", "tiny-resnet"])
def test_file_saved_before_the_reshape_loads_computes_and_trains(preset):
    path = os.path.join(DATA, f"main_2026_12_06_{preset}.keras")
    saved = np.load(path.replace(".keras", ".npz"))
    model = keras.saving.load_model(path)
    assert isinstance(model, keras_clip.CLIPModel)
    assert model.tokenizer is not None
    np.testing.assert_array_equal(np.asarray(model.tokenizer(["a red square"]))[0],
                                  saved["token_ids"][0])
    images, ids = saved["images"], saved["token_ids"]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model.encode_image(images)),
                               saved["image_embeddings"], atol=2e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model.encode_text(ids)),
                               saved["text_embeddings"], atol=2e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model.logit_scale),
                               saved["logit_scale"], rtol=1e-6)
    # The optimizer state came along: training continues from the saved step.
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == int(saved["iterations"])
    history = model.fit({"images": images, "token_ids": ids}, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == int(saved["iterations"]) + 1
