"""The model and the loss must work where TensorFlow is not installed.

The GPU machines we train on have JAX and torch but no TensorFlow
(docs/backends.md, "GPUs"). A subprocess makes `import tensorflow` fail, then
builds, trains, saves and reloads a model on a non-TensorFlow backend.
"""

import os
import subprocess
import sys

import keras

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r"""
import sys
for name in ("tensorflow", "tensorflow_text"):
    sys.modules[name] = None  # any `import tensorflow` now raises ImportError
import conftest  # noqa: F401
import numpy as np
import keras
import keras_clip
from tests.model_test import synthetic_pairs

model = keras_clip.CLIPModel.from_preset("tiny-vit")
images, ids = synthetic_pairs(model.config, 16)
model.compile(optimizer=keras_clip.make_optimizer(model, total_steps=4, warmup_steps=1))
logs = model.fit({"images": images, "token_ids": ids}, batch_size=8, epochs=2, verbose=0).history
assert np.isfinite(logs["loss"]).all()
model.save(sys.argv[1])
loaded = keras.saving.load_model(sys.argv[1])
a = keras.ops.convert_to_numpy(model.encode_text(ids))
b = keras.ops.convert_to_numpy(loaded.encode_text(ids))
np.testing.assert_allclose(a, b, atol=1e-6)
assert "tensorflow" not in [m.split(".")[0] for m in sys.modules if sys.modules[m] is not None]
print("ok without tensorflow on", keras.backend.backend())
"""


def test_model_trains_and_saves_without_tensorflow(tmp_path):
    # Under the TensorFlow run, check the JAX backend instead.
    backend = keras.backend.backend()
    if backend == "tensorflow":
        backend = "jax"
    env = dict(os.environ, KERAS_BACKEND=backend)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "m.keras")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"ok without tensorflow on {backend}" in proc.stdout
