"""CLIPModel: shapes, presets, input errors, training with fit, the clamp."""

import math

import keras
import numpy as np
import pytest

import keras_clip
from keras_clip.models import config as configs


def to_np(x):
    return keras.ops.convert_to_numpy(x)


def synthetic_pairs(config, n, seed=0):
    """Images and captions of a learnable, compositional pairing.

    Caption i holds 3 words from a vocabulary of 8; image i paints three
    horizontal bands in the colours of those words (plus noise), so the
    pairing is learnable in a few dozen steps by any working CLIP.
    """
    rng = np.random.default_rng(seed)
    size, ctx = config.image_size, config.context_length
    palette = rng.standard_normal((9, 3)).astype("float32")
    codes = rng.permutation(512)[:n]
    words = np.stack([codes // 64, (codes // 8) % 8, codes % 8], 1) + 1
    images = 0.1 * rng.standard_normal((n, size, size, 3)).astype("float32")
    bands = np.array_split(np.arange(size), 3)
    for j, rows in enumerate(bands):
        images[:, rows] += palette[words[:, j]][:, None, None, :]
    ids = np.zeros((n, ctx), "int32")
    ids[:, 0] = config.vocabulary_size - 2  # start of text
    ids[:, 1:4] = words
    ids[:, 4] = config.eot_token_id
    return images, ids


def dataset(images, ids, batch):
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices({"images": images, "token_ids": ids})
    return ds.repeat().batch(batch, drop_remainder=True)


# ---- parameter counts -----------------------------------------------------

PUBLISHED_MILLIONS = {
    "RN50": 102.01, "RN101": 119.69, "RN50x4": 178.30, "RN50x16": 290.98,
    "RN50x64": 623.26, "ViT-B/32": 151.28, "ViT-B/16": 149.62,
    "ViT-L/14": 427.62, "ViT-L/14@336px": 427.94,
}


def trainable_count(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_variables)


def analytic_vit_count(c):
    """Parameter count of a ViT CLIP written out from the paper's design."""
    def blocks(w, layers):
        # ln_1 2w, qkv 3w^2+3w, out w^2+w, ln_2 2w, fc 4w^2+4w, proj 4w^2+w.
        return layers * (12 * w * w + 13 * w)

    w, g = c.vision_width, c.image_size // c.patch_size
    vision = 3 * c.patch_size**2 * w + w + (g * g + 1) * w + 2 * w
    vision += blocks(w, c.vision_layers) + 2 * w + w * c.embed_dim
    t = c.text_width
    text = c.vocabulary_size * t + c.context_length * t
    text += blocks(t, c.text_layers) + 2 * t + t * c.embed_dim
    return vision + text + 1  # + the temperature


def test_tiny_vit_count_matches_formula():
    model = keras_clip.CLIPModel.from_preset("tiny-vit")
    assert trainable_count(model) == analytic_vit_count(model.config)


@pytest.mark.slow
@pytest.mark.skipif(
    keras.backend.backend() != "torch",
    reason="architecture is backend-free; the nine full-size builds take "
    "minutes of JAX/TF compilation, so they run once, under torch",
)
@pytest.mark.parametrize("name", list(PUBLISHED_MILLIONS))
def test_paper_parameter_counts(name):
    model = keras_clip.CLIPModel.from_preset(name)
    count = trainable_count(model) / 1e6
    assert count == pytest.approx(PUBLISHED_MILLIONS[name], rel=1e-3)
    if model.config.vision == "vit":
        assert trainable_count(model) == analytic_vit_count(model.config)


def test_presets_listed_and_overridable():
    names = keras_clip.list_presets()
    for name in PUBLISHED_MILLIONS:
        assert name in names
    c = configs.get_preset("ViT-B/32", vocabulary_size=5000, activation="gelu")
    assert (c.vocabulary_size, c.eot_token_id, c.activation) == (5000, 4999, "gelu")
    assert c.vision_heads == 12 and configs.get_preset("RN50").vision_heads == 32
    with pytest.raises(ValueError, match="Unknown preset 'ViT-X'"):
        keras_clip.CLIPModel.from_preset("ViT-X")


def _open_clip_model_config(name):
    """open_clip's own JSON config of `name`, read from the installed package
    (its files only: importing open_clip is not needed)."""
    import importlib.util
    import json
    import os

    spec = importlib.util.find_spec("open_clip")
    if spec is None:
        pytest.skip("open_clip is not installed")
    path = os.path.join(os.path.dirname(spec.origin), "model_configs", f"{name}.json")
    with open(path) as f:
        return json.load(f)


@pytest.mark.parametrize("name", sorted(configs.OPEN_CLIP_NAMES))
def test_open_clip_names_give_open_clip_configs(name):
    ref = _open_clip_model_config(name)
    vision, text = ref["vision_cfg"], ref["text_cfg"]
    c = configs.get_preset(name)
    assert c.embed_dim == ref["embed_dim"]
    assert c.image_size == vision["image_size"]
    assert c.vision_width == vision["width"]
    if isinstance(vision["layers"], list):  # open_clip's ModifiedResNet
        assert c.vision == "resnet"
        assert tuple(c.vision_layers) == tuple(vision["layers"])
        assert c.vision_heads == vision["width"] * 32 // 64
    else:
        assert c.vision == "vit"
        assert (c.vision_layers, c.patch_size) == (vision["layers"], vision["patch_size"])
        assert c.vision_heads == vision["width"] // vision.get("head_width", 64)
    assert (c.context_length, c.vocabulary_size) == (text["context_length"], text["vocab_size"])
    assert (c.text_width, c.text_heads, c.text_layers) == (text["width"], text["heads"], text["layers"])
    assert c.activation == ("quick_gelu" if ref.get("quick_gelu") else "gelu")
    # Overrides still win over the name's activation.
    assert configs.get_preset(name, activation="gelu").activation == "gelu"
    assert name in keras_clip.list_presets(include_open_clip_names=True)
    assert name not in keras_clip.list_presets()


def test_open_clip_plain_resnet_names_stay_openai_presets():
    # open_clip's "RN50" is GELU; ours is OpenAI's (QuickGELU), documented.
    assert _open_clip_model_config("RN50").get("quick_gelu") is None
    assert configs.get_preset("RN50").activation == "quick_gelu"
    with pytest.raises(ValueError, match="open_clip name"):
        configs.get_preset("ViT-B-33")


# ---- forward pass ---------------------------------------------------------

@pytest.mark.parametrize("name", ["tiny-vit", "tiny-resnet"])
def test_encoders_and_logits_agree(name):
    model = keras_clip.CLIPModel.from_preset(name)
    images, ids = synthetic_pairs(model.config, 5)
    img = to_np(model.encode_image(images))
    txt = to_np(model.encode_text(ids[:3]))
    assert img.shape == (5, 32) and txt.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1.0, atol=1e-5)
    raw = to_np(model.encode_image(images, normalize=False))
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), img, atol=1e-5)
    out = model({"images": images, "token_ids": ids[:3]})
    expected = (1 / 0.07) * img @ txt.T
    np.testing.assert_allclose(to_np(out["logits_per_image"]), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(to_np(out["logits_per_text"]), expected.T, rtol=1e-4, atol=1e-4)
    assert float(to_np(model.logit_scale)) == pytest.approx(math.log(1 / 0.07))


# The compiled TF / JAX encoders and torch's tower skip, against the plain
# path: tests/backends_test.py.


def test_shorter_token_sequences_match_padded_ones():
    model = keras_clip.CLIPModel.from_preset("tiny-vit")
    _, ids = synthetic_pairs(model.config, 2)
    full = to_np(model.encode_text(ids))
    short = to_np(model.encode_text(ids[:, :6]))
    np.testing.assert_allclose(short, full, atol=1e-5)


# ---- bad input --------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_vit():
    return keras_clip.CLIPModel.from_preset("tiny-vit")


@pytest.mark.parametrize(
    "images,match",
    [
        (np.zeros((32, 32, 3), "float32"), r"rank 4.*Received: images.shape=\(32, 32, 3\)"),
        (np.zeros((1, 32, 32, 1), "float32"), r"3 channels.*Received: images.shape=\(1, 32, 32, 1\)"),
        (np.zeros((1, 48, 48, 3), "float32"), r"must be 32x32.*Received: images.shape=\(1, 48, 48, 3\)"),
        (np.zeros((1, 32, 32, 3), "uint8"), r"floating point.*Received: images.dtype=uint8"),
    ],
    ids=["rank", "channels", "size", "dtype"],
)
def test_bad_images_raise(tiny_vit, images, match):
    with pytest.raises(ValueError, match=match):
        tiny_vit.encode_image(images)


@pytest.mark.parametrize(
    "ids,match",
    [
        (np.ones((1, 17), "int32"), r"longer than the context length 16.*Received: token_ids.shape=\(1, 17\)"),
        (np.ones((1, 16), "float32"), r"must be integers.*Received: token_ids.dtype=float32"),
        (np.ones((16,), "int32"), r"rank 2.*Received: token_ids.shape=\(16,\)"),
    ],
    ids=["too_long", "float", "rank"],
)
def test_bad_token_ids_raise(tiny_vit, ids, match):
    with pytest.raises(ValueError, match=match):
        tiny_vit.encode_text(ids)


def test_bad_call_and_configs_raise(tiny_vit):
    with pytest.raises(ValueError, match=r"keys 'images' and 'token_ids'.*Received: \['images'\]"):
        tiny_vit({"images": np.zeros((1, 32, 32, 3), "float32")})
    with pytest.raises(ValueError, match=r"divisible by `patch_size`.*image_size=30, patch_size=8"):
        keras_clip.CLIPModel.from_preset("tiny-vit", image_size=30)
    with pytest.raises(ValueError, match=r"divisible by 32.*image_size=40"):
        keras_clip.CLIPModel.from_preset("tiny-resnet", image_size=40)
    with pytest.raises(ValueError, match=r"`vision` must be one of.*vision='vgg'"):
        configs.CLIPConfig(vision="vgg")
    with pytest.raises(ValueError, match="do not pass `loss`"):
        tiny_vit.compile(optimizer="adam", loss="mse")


# ---- training -----------------------------------------------------------

@pytest.mark.parametrize("name", ["tiny-vit", "tiny-resnet"])
def test_fit_on_tf_data_learns_the_pairing(name):
    keras.utils.set_random_seed(0)
    batch = 16
    model = keras_clip.CLIPModel.from_preset(name)
    images, ids = synthetic_pairs(model.config, 64)
    model.compile(
        optimizer=keras_clip.make_optimizer(
            model, total_steps=60, learning_rate=3e-3, warmup_steps=4
        )
    )
    history = model.fit(dataset(images, ids, batch), steps_per_epoch=20, epochs=3, verbose=0)
    logs = history.history
    assert set(logs) >= {"loss", "i2t_accuracy", "t2i_accuracy", "logit_scale"}
    assert logs["loss"][0] > 0.5 * math.log(batch)
    assert logs["loss"][-1] < 0.4 * math.log(batch)
    assert logs["logit_scale"][-1] == pytest.approx(math.exp(float(to_np(model.logit_scale))), rel=0.05)
    results = model.evaluate(dataset(images, ids, batch), steps=4, return_dict=True, verbose=0)
    assert results["i2t_accuracy"] > 0.7 and results["t2i_accuracy"] > 0.7
    assert results["loss"] < 0.4 * math.log(batch)


class RecordLogitScale(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        self.values.append(float(to_np(self.model.logit_scale)))


class ScaleSeekingCLIP(keras_clip.CLIPModel):
    """A CLIP whose loss rewards a larger temperature: every step pushes the
    log scale up, whatever the data, so the clamp must hold it."""

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss = super().compute_loss(x, y, y_pred, sample_weight, training)
        return 0.0 * loss - self.logit_scale


def test_logit_scale_never_exceeds_ln_100():
    keras.utils.set_random_seed(1)
    model = ScaleSeekingCLIP(configs.get_preset("tiny-vit"))
    images, ids = synthetic_pairs(model.config, 32)
    model.logit_scale.assign(math.log(90.0))
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.05))
    recorder = RecordLogitScale()
    recorder.values = []
    model.fit(dataset(images, ids, 16), steps_per_epoch=6, epochs=1, verbose=0, callbacks=[recorder])
    # Steps of +0.05 from ln 90 = 4.50 would pass ln 100 = 4.605 at step 3.
    assert recorder.values[0] == pytest.approx(math.log(90.0) + 0.05, abs=1e-5)
    assert max(recorder.values) <= math.log(100.0) + 1e-6
    assert recorder.values[-1] == pytest.approx(math.log(100.0), abs=1e-6)
    # A value set beyond the clamp by hand still scales logits by at most 100.
    model.logit_scale.assign(7.0)
    logits = to_np(model({"images": images[:4], "token_ids": ids[:4]})["logits_per_image"])
    assert np.abs(logits).max() <= 100.0 + 1e-3


def test_mixed_precision_trains_with_float32_loss_and_temperature():
    keras.utils.set_random_seed(2)
    model = keras_clip.CLIPModel.from_preset("tiny-vit", dtype="mixed_bfloat16")
    images, ids = synthetic_pairs(model.config, 32)
    out = model({"images": images[:4], "token_ids": ids[:4]})
    assert keras.backend.standardize_dtype(out["logits_per_image"].dtype) == "float32"
    assert model.logit_scale.dtype == "float32"
    assert keras.backend.standardize_dtype(model.image_encoder.compute_dtype) == "bfloat16"
    model.compile(optimizer=keras_clip.make_optimizer(model, total_steps=24, learning_rate=3e-3, warmup_steps=2))
    logs = model.fit(dataset(images, ids, 16), steps_per_epoch=8, epochs=3, verbose=0).history
    assert np.isfinite(logs["loss"]).all()
    assert logs["loss"][-1] < logs["loss"][0]


def test_mixed_bfloat16_tracks_float32_training():
    # Same initial weights, same batches, SGD: the loss curve under
    # mixed_bfloat16 follows float32's within bfloat16's precision.
    def losses(dtype):
        keras.utils.set_random_seed(3)
        model = keras_clip.CLIPModel.from_preset("tiny-vit", dtype=dtype)
        images, ids = synthetic_pairs(model.config, 32)
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.2))
        history = model.fit(dataset(images, ids, 16), steps_per_epoch=1, epochs=6, verbose=0)
        return np.asarray(history.history["loss"])

    want, got = losses("float32"), losses("mixed_bfloat16")
    assert want[-1] < want[0]
    np.testing.assert_allclose(got, want, rtol=5e-2)


def test_mixed_float16_scales_the_loss_and_trains():
    if keras.backend.backend() == "jax":
        import jax

        if jax.default_backend() == "cpu":
            # XLA:CPU has no float16 dot with float32 accumulation
            # ("precision 'F16_F16_F32' is not supported by dot_general").
            pytest.skip("JAX on CPU cannot run float16 matmuls; use mixed_bfloat16")
    keras.utils.set_random_seed(3)
    reference = keras_clip.CLIPModel.from_preset("tiny-vit")
    keras.utils.set_random_seed(3)
    model = keras_clip.CLIPModel.from_preset("tiny-vit", dtype="mixed_float16")
    images, ids = synthetic_pairs(model.config, 32)
    batch = {"images": images[:16], "token_ids": ids[:16]}
    # Same weights: the float32 loss of float16 towers is float32's within 1e-2.
    want = float(to_np(reference.compute_loss(y_pred=reference(batch))))
    got = float(to_np(model.compute_loss(y_pred=model(batch))))
    assert got == pytest.approx(want, rel=1e-2)
    # Dynamic loss scaling (skipped steps included) still trains.
    model.compile(optimizer=keras_clip.make_optimizer(model, total_steps=24, learning_rate=3e-3, warmup_steps=2))
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    logs = model.fit(dataset(images, ids, 16), steps_per_epoch=8, epochs=3, verbose=0).history
    assert np.isfinite(logs["loss"]).all()
    assert logs["loss"][-1] < logs["loss"][0]


def test_label_smoothing_is_the_smoothed_loss_and_is_saved(tmp_path):
    from tests.losses_test import np_smoothed_cross_entropy

    keras.utils.set_random_seed(2)
    model = keras_clip.CLIPModel.from_preset("tiny-vit")
    images, ids = synthetic_pairs(model.config, 8)
    model.compile(optimizer=keras.optimizers.SGD(0.01), label_smoothing=0.2)
    logits = to_np(model({"images": images, "token_ids": ids})["logits_per_image"])
    labels = np.arange(8)
    want = 0.5 * (np_smoothed_cross_entropy(logits, labels, 0.2)
                  + np_smoothed_cross_entropy(logits.T, labels, 0.2))
    plain = 0.5 * (np_smoothed_cross_entropy(logits, labels, 0.0)
                   + np_smoothed_cross_entropy(logits.T, labels, 0.0))
    assert abs(want - plain) > 2e-3  # the comparisons below (rel 1e-4) can fail
    x = {"images": images, "token_ids": ids}
    got = model.evaluate(x, batch_size=8, verbose=0, return_dict=True)["loss"]
    assert got == pytest.approx(want, rel=1e-4)
    # The first training step's loss (before its update) too.
    logs = model.train_on_batch(x, return_dict=True)
    assert logs["loss"] == pytest.approx(want, rel=1e-4)
    # Saved with the compile config: the loaded model keeps smoothing.
    path = str(tmp_path / "smoothed.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.loss.label_smoothing == 0.2
    assert loaded.get_compile_config()["loss"]["config"]["label_smoothing"] == 0.2
    logits = to_np(loaded(x)["logits_per_image"])
    want = 0.5 * (np_smoothed_cross_entropy(logits, labels, 0.2)
                  + np_smoothed_cross_entropy(logits.T, labels, 0.2))
    got = loaded.evaluate(x, batch_size=8, verbose=0, return_dict=True)["loss"]
    assert got == pytest.approx(want, rel=1e-4)
    with pytest.raises(ValueError, match=r"label_smoothing.*\[0, 1\).*Received: 1\.2"):
        model.compile(optimizer="sgd", label_smoothing=1.2)


def test_compile_with_the_loss_object_trains_as_the_old_keyword_arguments():
    # `compile(loss=ContrastiveLoss(...))` and the keyword arguments it
    # replaces build the same loss: same options, same training, step by step.
    def train(**compile_kwargs):
        keras.utils.set_random_seed(4)
        model = keras_clip.CLIPModel.from_preset("tiny-vit")
        images, ids = synthetic_pairs(model.config, 8)
        model.compile(optimizer=keras.optimizers.SGD(0.1), **compile_kwargs)
        initial = model.get_weights()
        history = model.fit({"images": images, "token_ids": ids}, batch_size=8, epochs=3,
                            verbose=0).history
        return model, history, initial

    options = dict(label_smoothing=0.1, chunk_size=3, micro_batches=2)
    new, new_logs, initial = train(loss=keras_clip.ContrastiveLoss(**options))
    old, old_logs, _ = train(label_smoothing=0.1, loss_chunk_size=3, micro_batches=2)
    assert isinstance(old.loss, keras_clip.ContrastiveLoss)
    assert old.loss.get_config() == new.loss.get_config() == options
    assert old.get_compile_config()["loss"] == new.get_compile_config()["loss"]
    for key in ("loss", "i2t_accuracy", "t2i_accuracy", "logit_scale"):
        np.testing.assert_allclose(old_logs[key], new_logs[key], rtol=1e-6, err_msg=key)
    for a, b in zip(old.get_weights(), new.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # The comparison can fail: the steps moved the weights.
    assert max(np.abs(a - b).max() for a, b in zip(new.get_weights(), initial)) > 1e-3
    # The default: the paper's loss, with no option set.
    model = keras_clip.CLIPModel.from_preset("tiny-vit")
    model.compile(optimizer="sgd")
    assert model.loss.get_config() == keras_clip.ContrastiveLoss().get_config()
    assert model.exclude_from_weight_decay is True


def test_compile_rejects_a_loss_object_and_loss_keywords_together(tiny_vit):
    with pytest.raises(ValueError, match=r"not both.*label_smoothing.: 0\.2"):
        tiny_vit.compile(optimizer="sgd", loss=keras_clip.ContrastiveLoss(), label_smoothing=0.2)
    with pytest.raises(ValueError, match=r"ContrastiveLoss.*Received: loss=<"):
        tiny_vit.compile(optimizer="sgd", loss=keras.losses.MeanSquaredError())
