"""Evaluation callbacks in `fit`, and the model-based zero-shot wrappers.

One tiny ViT CLIP with a tiny trained tokenizer is shared by the module.
"""

import keras
import numpy as np
import pytest

import keras_clip
from keras_clip.evaluation import callbacks
from keras_clip.evaluation import retrieval
from keras_clip.evaluation import zero_shot

WORDS = ["red", "green", "blue", "cat", "dog", "car", "tree", "house"]
CLASSNAMES = ["cat", "dog", "car"]
# Few distinct shapes: eager JAX compiles every op once per input shape.
TEMPLATES = ["a photo of a {}.", "a {}"]


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    captions = [f"a photo of a {a} {b}" for a in WORDS for b in WORDS]
    tok = keras_clip.CLIPTokenizer.train(
        captions, vocabulary_size=600, context_length=16
    )
    # The model carries no tokenizer; the evaluators get it explicitly. (On
    # torch, `fit` calls `nn.Module.train(True)` on every sublayer, which
    # reaches the classmethod `CLIPTokenizer.train` of an attached tokenizer.)
    model = keras_clip.CLIPModel.from_preset(
        "tiny-vit", vocabulary_size=tok.vocabulary_size,
        eot_token_id=tok.eot_token_id,
    )
    n = 8
    images = rng.standard_normal((n, 32, 32, 3)).astype("float32")
    token_ids = np.asarray(tok(captions[:n]))
    return model, tok, images, token_ids


def test_callbacks_log_into_history(setup):
    model, tok, images, token_ids = setup
    labels = np.arange(len(images)) % len(CLASSNAMES)
    zs = callbacks.ZeroShotEvaluation(
        images, labels, CLASSNAMES, TEMPLATES, tokenizer=tok
    )
    order = np.random.default_rng(0).permutation(len(images))
    rt = callbacks.RetrievalEvaluation(
        images[order], token_ids, text_to_image=np.argsort(order),
        every_n_epochs=2,
    )
    model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    history = model.fit(
        {"images": images, "token_ids": token_ids},
        batch_size=4, epochs=2, verbose=0, callbacks=[zs, rt],
    ).history
    assert len(history["loss"]) == 2
    for key in ("zeroshot_top1", "zeroshot_top5"):
        assert len(history[key]) == 2
        assert all(0.0 <= v <= 1.0 for v in history[key])
    assert history["zeroshot_top5"] == [1.0, 1.0]  # Only 3 classes.
    # every_n_epochs=2: evaluated after the second epoch only.
    for key in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"):
        values = history[f"retrieval_{key}"]
        assert len(values) == 1 and 0.0 <= values[0] <= 1.0
    assert history["retrieval_t2i_r10"] == [1.0]  # 8 images.
    assert "retrieval_i2t_median_rank" in history


def test_callback_values_match_the_library(setup):
    model, tok, images, token_ids = setup
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    zs = callbacks.ZeroShotEvaluation(
        images, labels, CLASSNAMES, TEMPLATES, tokenizer=tok
    )
    zs.set_model(model)
    logs = {}
    zs.on_epoch_end(0, logs)
    clf = zero_shot.build_classifier(model, CLASSNAMES, TEMPLATES, tokenizer=tok)
    logits = keras.ops.convert_to_numpy(clf(images))
    assert logs["zeroshot_top1"] == zero_shot.accuracy(logits, labels, 1)
    rt = callbacks.RetrievalEvaluation(images, token_ids)
    rt.set_model(model)
    logs = {}
    rt.on_epoch_end(0, logs)
    ref = retrieval.evaluate_retrieval(model, images, token_ids)
    assert logs["retrieval_i2t_r1"] == ref["i2t_r1"]
    assert logs["retrieval_t2i_r5"] == ref["t2i_r5"]


def test_classifier_saves_and_loads(setup, tmp_path):
    model, tok, images, _ = setup
    clf = zero_shot.build_classifier(model, CLASSNAMES, TEMPLATES, tokenizer=tok)
    assert clf.class_embeddings.trainable is False
    weights = keras.ops.convert_to_numpy(clf.class_embeddings)
    np.testing.assert_allclose(np.linalg.norm(weights, axis=1), 1.0, rtol=1e-5)
    logits = keras.ops.convert_to_numpy(clf(images))
    assert logits.shape == (len(images), 3)
    # Logits are the model's scale times cosine similarities.
    image = zero_shot.encode_images(model, images)
    scale = np.exp(keras.ops.convert_to_numpy(model.logit_scale))
    np.testing.assert_allclose(logits, scale * image @ weights.T, rtol=1e-4, atol=1e-4)
    path = str(tmp_path / "clf.keras")
    clf.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, zero_shot.ZeroShotClassifier)
    assert loaded.classnames == CLASSNAMES
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(images)), logits, rtol=1e-5, atol=1e-5
    )


def test_classify_uint8_images_of_any_size(setup):
    model, tok, _, _ = setup
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (8, 40, 50, 3), dtype="uint8")
    labels = ["a red dog", "the green house", "car"]
    probs = zero_shot.classify(model, images, labels, TEMPLATES, tokenizer=tok)
    assert probs.shape == (8, 3) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    # A list of differently sized images gives the same answer per image.
    listed = list(images[:7]) + [images[7][:30]]
    listed = zero_shot.classify(model, listed, labels, TEMPLATES, tokenizer=tok)
    np.testing.assert_allclose(listed[:7], probs[:7], rtol=1e-4, atol=1e-6)
    # Same as the classifier path.
    clf = zero_shot.build_classifier(model, labels, TEMPLATES, tokenizer=tok)
    ref = zero_shot.softmax(keras.ops.convert_to_numpy(clf(model.preprocess(images))))
    np.testing.assert_allclose(probs, ref, rtol=1e-4, atol=1e-6)


def test_errors(setup):
    model, tok, images, _ = setup
    with pytest.raises(ValueError, match="needs a tokenizer"):
        zero_shot.classify(model, images, ["cat"])
    with pytest.raises(ValueError, match="one entry per image"):
        callbacks.ZeroShotEvaluation(images, [0, 1], CLASSNAMES)
    with pytest.raises(ValueError, match="every_n_epochs"):
        callbacks.RetrievalEvaluation(images, images, every_n_epochs=0)
    with pytest.raises(ValueError, match="32 columns"):
        zero_shot.ZeroShotClassifier(model, np.zeros((3, 5)))


def _budget_rates(steps, seconds, peak, warmup, end):
    """NumPy reference: the rate of step k when step k starts k s in."""
    k = np.arange(steps, dtype="float64")
    progress = np.clip((k - warmup) / (seconds - warmup), 0.0, 1.0)
    cosine = end + 0.5 * (peak - end) * (1.0 + np.cos(np.pi * progress))
    return np.where(k < warmup, peak * (k + 1) / max(warmup, 1), cosine)


@pytest.mark.parametrize("warmup", [0, 3])
def test_time_budget_cosine_decay_reaches_the_compiled_step(warmup):
    # A fake clock that advances 1 s per step. With SGD on sum(x @ w) and
    # x = 1 the gradient is 1, so each step moves w by exactly the rate the
    # compiled step used: w ends at -(sum of rates), which only holds if
    # every rate set from the host reached the step (on JAX: via the sync).
    now = {"t": 0.0}

    class Tick(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            now["t"] += 1.0

    seconds, peak, end = 10, 0.1, 0.01
    model = keras.Sequential([
        keras.Input((3,)),
        keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros"),
    ])
    model.compile(optimizer=keras.optimizers.SGD(0.5),
                  loss=lambda y, p: keras.ops.sum(p) / 4.0)
    budget = callbacks.TimeBudgetCosineDecay(
        seconds, peak, warmup_steps=warmup, end_learning_rate=end,
        clock=lambda: now["t"])
    x = np.ones((16, 3), "float32")
    history = model.fit(x, np.zeros((16, 1), "float32"), batch_size=4,
                        epochs=100, verbose=0, shuffle=False,
                        callbacks=[Tick(), budget])
    rates = _budget_rates(seconds, seconds, peak, warmup, end)
    assert budget.step == seconds  # stopped after the step that ended at 10 s
    assert len(history.history["loss"]) == 3  # 4 steps per epoch
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model.layers[0].kernel)[:, 0],
        np.full(3, -rates.sum()), rtol=1e-5)
    np.testing.assert_allclose(history.history["learning_rate"][-1], rates[-1], rtol=1e-6)


def test_time_budget_cosine_decay_errors():
    with pytest.raises(ValueError, match="seconds > 0"):
        callbacks.TimeBudgetCosineDecay(0, 1e-3)
    with pytest.raises(ValueError, match="warmup_steps"):
        callbacks.TimeBudgetCosineDecay(10, 1e-3, warmup_steps=-1)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(
        keras_clip.WarmupCosineDecay(0.1, total_steps=10)), loss="mse")
    with pytest.raises(ValueError, match="float `learning_rate`.*WarmupCosineDecay"):
        model.fit(np.ones((4, 3)), np.ones((4, 1)), verbose=0,
                  callbacks=[callbacks.TimeBudgetCosineDecay(10, 1e-3)])
