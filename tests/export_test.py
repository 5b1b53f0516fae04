"""A built `CLIPModel` exports a SavedModel without an `input_signature`.

Compared with the model's own outputs, read back with TensorFlow's
`tf.saved_model.load` as a serving stack would. Keras writes SavedModels from
the TensorFlow and JAX backends; a model trained on torch takes the
documented route: save the `.keras` file, load it on TensorFlow, export.
"""

import os
import subprocess
import sys

import keras
import numpy as np

import keras_clip

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

EXPORT_ELSEWHERE = """
import sys, keras, keras_clip
keras.saving.load_model(sys.argv[1]).export(sys.argv[2], verbose=False)
"""


def _inputs(model, n):
    rng = np.random.default_rng(n)
    c = model.config
    ids = rng.integers(1, c.vocabulary_size - 1, (n, c.context_length)).astype("int32")
    ids[:, -1] = c.eot_token_id
    return {"images": rng.normal(size=(n, c.image_size, c.image_size, 3)).astype("float32"),
            "token_ids": ids}


def test_export_after_fit_and_predict_needs_no_signature(tmp_path):
    tf = __import__("tensorflow")
    model = keras_clip.CLIPModel.from_preset("tiny-vit")
    model.compile(optimizer=keras_clip.make_optimizer(model, total_steps=2))
    train = _inputs(model, 4)
    model.fit(train, batch_size=4, verbose=0)
    model.predict(train, verbose=0)
    path = str(tmp_path / "saved_model")
    if keras.backend.backend() == "torch":
        model.save(str(tmp_path / "m.keras"))
        env = dict(os.environ, KERAS_BACKEND="tensorflow")
        done = subprocess.run([sys.executable, "-c", EXPORT_ELSEWHERE, str(tmp_path / "m.keras"), path],
                              env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    else:
        model.export(path, verbose=False)
    served = tf.saved_model.load(path)
    for n in (1, 7):  # the batch size stays free
        x = _inputs(model, n)
        out = served.serve(x)
        ref = model(x)
        for key in ("logits_per_image", "image_embeddings", "text_embeddings"):
            np.testing.assert_allclose(np.asarray(out[key]), keras.ops.convert_to_numpy(ref[key]),
                                       atol=1e-4, err_msg=key)
