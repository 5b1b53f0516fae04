"""keras_clip in an environment where TensorFlow is not installed at all.

Run by .ci/run in the light environment that `.ci/no_tensorflow_env.sh`
builds (keras, numpy, ftfy, regex, pillow and torch; no extras). Unlike
tests/no_tensorflow_test.py, which hides TensorFlow inside the full .venv,
this proves that the base dependencies in pyproject.toml are enough: the
model builds, encodes, trains a step, and the eager tokenizer and image
preprocessing run, and TensorFlow is never imported.
"""

import importlib.util
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "torch")

if importlib.util.find_spec("tensorflow") is not None:
    sys.exit("error: tensorflow is installed here; this check needs an env without it")

import numpy as np  # noqa: E402

import keras  # noqa: E402
import keras_clip  # noqa: E402
from keras_clip.data import preprocess  # noqa: E402

model = keras_clip.CLIPModel.from_preset("tiny-vit")
config = model.config
rng = np.random.default_rng(0)
n = 8

# Images: through the eager (PIL) preprocessing, from uint8 arrays.
raw = rng.integers(0, 256, (n, 40, 48, 3), dtype=np.uint8)
images = preprocess.preprocess_images(
    raw, config.image_size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)
)
assert images.shape == (n, config.image_size, config.image_size, 3), images.shape

# Token ids: from the eager tokenizer (ftfy + regex), trained on a few captions.
captions = [f"a photo of a {c} {s}" for c in ("red", "blue") for s in "abcd"]
tokenizer = keras_clip.CLIPTokenizer.train_from_captions(
    captions, vocabulary_size=520, context_length=config.context_length
)
ids = np.asarray(keras.ops.convert_to_numpy(tokenizer(captions)), "int32")
assert ids.shape == (n, config.context_length), ids.shape
assert ids.max() < config.vocabulary_size

image_emb = keras.ops.convert_to_numpy(model.encode_image(images))
text_emb = keras.ops.convert_to_numpy(model.encode_text(ids))
assert image_emb.shape == text_emb.shape == (n, config.embed_dim)
assert np.isfinite(image_emb).all() and np.isfinite(text_emb).all()
np.testing.assert_allclose(np.linalg.norm(image_emb, axis=-1), 1.0, atol=1e-4)

model.compile(
    optimizer=keras_clip.make_optimizer(model, total_steps=2, warmup_steps=1)
)
logs = model.train_on_batch(
    {"images": images, "token_ids": ids}, return_dict=True
)
assert np.isfinite(float(logs["loss"])), logs

loaded = sorted(
    m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tensorflow_text")
)
assert not loaded, f"TensorFlow was imported: {loaded[:5]}"
print(
    f"ok: no tensorflow; keras {keras.__version__} on {keras.backend.backend()}, "
    f"loss {float(logs['loss']):.4f}"
)
