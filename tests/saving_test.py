"""`.keras` files saved on one backend load and keep training on the others.

Each backend's run of the suite saves under its own backend, has the two
other backends load, check and train the file in subprocesses, and loads
their files back: over the three CI runs every ordered pair of backends is
covered (twice).
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_clip
from tests.model_test import dataset, synthetic_pairs

BACKENDS = ("tensorflow", "jax", "torch")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def to_np(x):
    return keras.ops.convert_to_numpy(x)


def logits_of(model, images, ids):
    return to_np(model({"images": images, "token_ids": ids})["logits_per_image"])


@pytest.mark.slow
def test_round_trip_across_backends(tmp_path):
    here = keras.backend.backend()
    others = [b for b in BACKENDS if b != here]
    names = ["tiny-vit", "tiny-resnet"]
    # Options of the loss that every backend must keep when it loads the
    # file, trains with it and saves it again.
    losses = {"tiny-vit": {"label_smoothing": 0.1, "chunk_size": 3, "micro_batches": 2},
              "tiny-resnet": {"label_smoothing": 0.2, "chunk_size": None, "micro_batches": None}}
    for name in names:
        keras.utils.set_random_seed(0)
        model = keras_clip.CLIPModel.from_preset(name)
        images, ids = synthetic_pairs(model.config, 8)
        model.compile(optimizer=keras_clip.make_optimizer(model, total_steps=20, learning_rate=1e-3, warmup_steps=2),
                      loss=keras_clip.ContrastiveLoss(**losses[name]))
        model.fit(dataset(images, ids, 8), steps_per_epoch=3, epochs=1, verbose=0)
        model.save(str(tmp_path / f"{name}.keras"))
        np.savez(
            tmp_path / f"{name}.npz",
            images=images,
            token_ids=ids,
            logits=logits_of(model, images, ids),
            iterations=3,
        )
    procs = []
    for backend in others:
        env = dict(os.environ, KERAS_BACKEND=backend)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "tests.cross_backend_worker", str(tmp_path), *names],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    for backend, proc in zip(others, procs):
        output, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, f"{here} -> {backend} failed:\n{output[-4000:]}"
    for backend in others:
        for name in names:
            data = np.load(tmp_path / f"{name}.{backend}.npz")
            loaded = keras.saving.load_model(str(tmp_path / f"{name}.{backend}.keras"))
            assert loaded.loss.get_config() == losses[name], (backend, name)
            images = np.load(tmp_path / f"{name}.npz")["images"]
            ids = np.load(tmp_path / f"{name}.npz")["token_ids"]
            np.testing.assert_allclose(logits_of(loaded, images, ids), data["logits"], atol=1e-5, rtol=1e-5)
            assert int(to_np(loaded.optimizer.iterations)) == int(data["iterations"]) == 5
            loaded.fit({"images": images, "token_ids": ids}, batch_size=8, epochs=1, verbose=0)
            assert int(to_np(loaded.optimizer.iterations)) == 6


def test_config_round_trip_keeps_everything():
    model = keras_clip.CLIPModel.from_preset("tiny-resnet", activation="gelu", embed_dim=24)
    clone = keras_clip.CLIPModel.from_config(model.get_config())
    assert clone.config == model.config
    clone.set_weights(model.get_weights())
    images, ids = synthetic_pairs(model.config, 3)
    np.testing.assert_allclose(logits_of(clone, images, ids), logits_of(model, images, ids), atol=1e-5)


def test_mixed_precision_model_round_trip(tmp_path):
    model = keras_clip.CLIPModel.from_preset("tiny-vit", dtype="mixed_bfloat16")
    path = str(tmp_path / "mixed.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.dtype_policy.name == "mixed_bfloat16"
    images, ids = synthetic_pairs(model.config, 3)
    np.testing.assert_allclose(logits_of(loaded, images, ids), logits_of(model, images, ids), atol=1e-5)


def test_model_carries_its_tokenizer(tmp_path):
    captions = ["a red circle", "a blue square", "two green triangles", "a red square"] * 5
    tokenizer = keras_clip.CLIPTokenizer.train(captions, vocabulary_size=540, context_length=16)
    model = keras_clip.CLIPModel.from_preset(
        "tiny-vit",
        tokenizer=tokenizer,
        vocabulary_size=tokenizer.vocabulary_size,
        eot_token_id=tokenizer.eot_token_id,
    )
    path = str(tmp_path / "with_tokenizer.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded.tokenizer, keras_clip.CLIPTokenizer)
    ids = loaded.tokenizer(["a blue circle", "two red squares"])
    np.testing.assert_array_equal(ids, tokenizer(["a blue circle", "two red squares"]))
    np.testing.assert_allclose(to_np(loaded.encode_text(ids)), to_np(model.encode_text(ids)), atol=1e-6)


def test_model_with_tokenizer_fits_and_evaluates():
    # Under torch, Keras calls module.train(True) / .eval() on every
    # sublayer, the tokenizer included; CLIPTokenizer.train must not hijack it.
    tokenizer = keras_clip.CLIPTokenizer.train(["a red circle", "a blue square"] * 3, vocabulary_size=530, context_length=16)
    model = keras_clip.CLIPModel.from_preset(
        "tiny-vit", tokenizer=tokenizer, vocabulary_size=tokenizer.vocabulary_size, eot_token_id=tokenizer.eot_token_id
    )
    images, _ = synthetic_pairs(model.config, 4)
    ids = tokenizer(["a red circle", "a blue square", "a red square", "a blue circle"])
    model.compile(optimizer="adam")
    logs = model.fit({"images": images, "token_ids": ids}, batch_size=4, epochs=1, verbose=0).history
    assert np.isfinite(logs["loss"]).all()
    assert set(model.evaluate({"images": images, "token_ids": ids}, batch_size=4, verbose=0, return_dict=True)) >= {"loss", "i2t_accuracy"}
    assert model.predict({"images": images, "token_ids": ids}, batch_size=4, verbose=0)["logits_per_image"].shape == (4, 4)


@keras.saving.register_keras_serializable(package="keras_clip_tests")
class SlowSGD(keras.optimizers.SGD):
    """A user's own optimizer class: saving must keep naming it."""


def test_users_optimizer_class_survives_saving(tmp_path):
    model = keras_clip.CLIPModel.from_preset("tiny-vit")
    model.compile(optimizer=SlowSGD(learning_rate=0.01))
    assert model.get_compile_config()["optimizer"]["module"] == __name__
    path = str(tmp_path / "custom.keras")
    model.save(path)
    assert isinstance(keras.saving.load_model(path).optimizer, SlowSGD)


def test_loss_options_survive_saving(tmp_path):
    # The loss object travels in the compile config: the loaded model has
    # the same options, computes the same loss and trains on.
    keras.utils.set_random_seed(5)
    model = keras_clip.CLIPModel.from_preset("tiny-vit")
    images, ids = synthetic_pairs(model.config, 8)
    x = {"images": images, "token_ids": ids}
    options = {"label_smoothing": 0.15, "chunk_size": 3, "micro_batches": 2}
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=keras_clip.ContrastiveLoss(**options),
                  exclude_from_weight_decay=False)
    model.fit(x, batch_size=8, epochs=1, verbose=0)
    config = model.get_compile_config()
    assert config["loss"]["config"] == options
    assert config["exclude_from_weight_decay"] is False
    # The options live in the loss object only, not beside it.
    assert not {"label_smoothing", "loss_chunk_size", "micro_batches"} & set(config)
    path = str(tmp_path / "options.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.loss, keras_clip.ContrastiveLoss)
    assert loaded.loss.get_config() == options
    assert loaded.exclude_from_weight_decay is False
    want = model.evaluate(x, batch_size=8, verbose=0, return_dict=True)
    got = loaded.evaluate(x, batch_size=8, verbose=0, return_dict=True)
    for key in ("loss", "i2t_accuracy", "t2i_accuracy"):
        assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), key
    logs = loaded.fit(x, batch_size=8, epochs=1, verbose=0).history
    assert np.isfinite(logs["loss"]).all()
    assert int(to_np(loaded.optimizer.iterations)) == 2


def test_compile_config_saved_before_the_loss_object_builds_the_default_loss(tmp_path):
    # tests/data/main_2026_12_06_tiny-vit.keras was saved with the loss
    # options as compile keyword arguments (loss=None, label_smoothing=0.0,
    # loss_chunk_size=None, micro_batches=None); loading builds the loss
    # object from them, and the file saved again holds that object.
    data = os.path.join(ROOT, "tests", "data")
    model = keras.saving.load_model(os.path.join(data, "main_2026_12_06_tiny-vit.keras"))
    assert model.loss.get_config() == keras_clip.ContrastiveLoss().get_config()
    assert model.exclude_from_weight_decay is True
    path = str(tmp_path / "resaved.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.get_compile_config()["loss"]["class_name"] == "ContrastiveLoss"
    assert loaded.loss.get_config() == model.loss.get_config()
    saved = np.load(os.path.join(data, "main_2026_12_06_tiny-vit.npz"))
    logs = loaded.fit({"images": saved["images"], "token_ids": saved["token_ids"]},
                      batch_size=8, epochs=1, verbose=0).history
    assert np.isfinite(logs["loss"]).all()
    assert int(to_np(loaded.optimizer.iterations)) == int(saved["iterations"]) + 1
