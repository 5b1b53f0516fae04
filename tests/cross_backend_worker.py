"""Run under another KERAS_BACKEND by saving_test.py: load, check, train, save.

Usage: python -m tests.cross_backend_worker DIR NAME [NAME ...]

For each NAME, loads DIR/NAME.keras saved by another backend, checks its
logits on DIR/NAME.npz's inputs against the saver's, checks the optimizer
state came along, trains two steps with `fit`, and saves DIR/NAME.<backend>.keras
with its new logits in DIR/NAME.<backend>.npz for the first backend to check.
"""

import sys

import conftest  # noqa: F401  (same environment set-up as the tests)
import keras
import numpy as np

import keras_clip  # noqa: F401  (registers the classes the file names)


def main(directory, names):
    backend = keras.backend.backend()
    for name in names:
        data = np.load(f"{directory}/{name}.npz")
        inputs = {"images": data["images"], "token_ids": data["token_ids"]}
        model = keras.saving.load_model(f"{directory}/{name}.keras")
        logits = keras.ops.convert_to_numpy(model(inputs)["logits_per_image"])
        np.testing.assert_allclose(logits, data["logits"], atol=1e-5, rtol=1e-5)
        iterations = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
        assert iterations == int(data["iterations"]), (iterations, data["iterations"])
        before = [np.array(w) for w in model.get_weights()]
        history = model.fit(inputs, epochs=2, batch_size=len(data["images"]), verbose=0)
        assert np.isfinite(history.history["loss"]).all()
        assert any(not np.allclose(a, b) for a, b in zip(before, model.get_weights()))
        out = f"{directory}/{name}.{backend}"
        model.save(f"{out}.keras")
        np.savez(
            f"{out}.npz",
            logits=keras.ops.convert_to_numpy(model(inputs)["logits_per_image"]),
            iterations=int(keras.ops.convert_to_numpy(model.optimizer.iterations)),
        )
        print(f"{name}: loaded on {backend}, trained, saved", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
