"""`CLIPModel`'s input checks and tokenizer agreement (first-hour faults).

Each check is compared with what the model must do by construction: the
fields a tokenizer fixes, the ids a vocabulary holds, the pairs a batch has.
"""

import keras
import numpy as np
import pytest

import keras_clip

CAPTIONS = ["a red square", "a blue circle", "two green dots", "one big star"]


@pytest.fixture(scope="module")
def tokenizer():
    return keras_clip.CLIPTokenizer.train(CAPTIONS * 5, vocabulary_size=600, context_length=16)


def test_from_preset_takes_the_tokenizer_s_fields(tokenizer):
    model = keras_clip.CLIPModel.from_preset("tiny-vit", tokenizer=tokenizer)
    c = model.config
    assert (c.vocabulary_size, c.eot_token_id, c.context_length) == (
        tokenizer.vocabulary_size, tokenizer.eot_token_id, tokenizer.context_length)
    # The text tower pools at the tokenizer's end-of-text: equal to pooling
    # the same ids by hand (position of the first end-of-text id).
    ids = np.asarray(tokenizer(CAPTIONS))
    eot = np.argmax(ids == tokenizer.eot_token_id, axis=1)
    assert (ids[np.arange(len(ids)), eot] == tokenizer.eot_token_id).all()
    # A larger (padded) vocabulary may be asked for; the end-of-text id stays the tokenizer's.
    padded = keras_clip.CLIPModel.from_preset("tiny-vit", tokenizer=tokenizer, vocabulary_size=1024)
    assert padded.config.vocabulary_size == 1024
    assert padded.config.eot_token_id == tokenizer.eot_token_id
    for bad, words in ((dict(vocabulary_size=100), "vocabulary_size=100.*534|vocabulary_size=100"),
                       (dict(context_length=12), "context_length=12.*16"),
                       (dict(eot_token_id=5), "eot_token_id=5")):
        with pytest.raises(ValueError, match=words):
            keras_clip.CLIPModel.from_preset("tiny-vit", tokenizer=tokenizer, **bad)
    # A model built without it refuses to carry it.
    with pytest.raises(ValueError, match="does not fit the model"):
        keras_clip.CLIPModel(keras_clip.get_preset("tiny-vit"), tokenizer=tokenizer)


def test_token_ids_out_of_range_are_refused_where_they_can_be_seen(tokenizer):
    model = keras_clip.CLIPModel.from_preset("tiny-vit", tokenizer=tokenizer)
    vocabulary = model.config.vocabulary_size
    good = np.asarray(tokenizer(CAPTIONS))
    for bad in (good + vocabulary, good - 1):
        for ids in (bad, keras.ops.convert_to_tensor(bad.astype("int32"))):
            with pytest.raises(ValueError, match=rf"Expected token ids in \[0, {vocabulary}\)"):
                model.encode_text(ids)
        with pytest.raises(ValueError, match="Expected token ids"):
            model({"images": np.zeros((4, 32, 32, 3), "float32"), "token_ids": bad})
    model.compile(optimizer=keras_clip.make_optimizer(model, total_steps=2))
    images = np.zeros((4, 32, 32, 3), "float32")
    with pytest.raises(ValueError, match="Expected token ids"):
        model.fit({"images": images, "token_ids": good + vocabulary}, batch_size=4, verbose=0)
    # In range passes.
    model.fit({"images": images, "token_ids": good}, batch_size=4, verbose=0)


def test_encode_text_tokenizes_texts_with_the_model_s_tokenizer(tokenizer):
    model = keras_clip.CLIPModel.from_preset("tiny-vit", tokenizer=tokenizer)
    by_ids = keras.ops.convert_to_numpy(model.encode_text(np.asarray(tokenizer(CAPTIONS))))
    by_text = keras.ops.convert_to_numpy(model.encode_text(CAPTIONS))
    np.testing.assert_allclose(by_text, by_ids, atol=1e-6)
    one = keras.ops.convert_to_numpy(model.encode_text(CAPTIONS[1]))
    np.testing.assert_allclose(one[0], by_ids[1], atol=1e-6)
    with pytest.raises(ValueError, match="model.tokenizer` is None"):
        keras_clip.CLIPModel.from_preset("tiny-vit").encode_text(CAPTIONS)


def test_fit_refuses_batches_of_one_and_unpaired_inputs(tokenizer):
    model = keras_clip.CLIPModel.from_preset("tiny-vit", tokenizer=tokenizer)
    model.compile(optimizer=keras_clip.make_optimizer(model, total_steps=2))
    images = np.zeros((4, 32, 32, 3), "float32")
    ids = np.asarray(tokenizer(CAPTIONS))
    with pytest.raises(ValueError, match="batch_size` >= 2"):
        model.fit({"images": images, "token_ids": ids}, batch_size=1, verbose=0)
    with pytest.raises(ValueError, match="4 images and 3 token id rows"):
        model.fit({"images": images, "token_ids": ids[:3]}, batch_size=4, verbose=0)
    with pytest.raises(ValueError, match="at least 2 image-caption pairs"):
        model.fit({"images": images[:1], "token_ids": ids[:1]}, verbose=0)
    with pytest.raises(ValueError, match="4 images and 3 token id rows"):
        model({"images": images, "token_ids": ids[:3]}, training=True)
    # Inference scores any images against any texts.
    logits = model({"images": images, "token_ids": ids[:3]})["logits_per_image"]
    assert tuple(logits.shape) == (4, 3)


def test_prompt_templates_travel_in_the_keras_file(tokenizer, tmp_path):
    model = keras_clip.CLIPModel.from_preset("tiny-vit", tokenizer=tokenizer, prompt_templates=["{}"])
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.prompt_templates == ["{}"]
    assert keras_clip.zero_shot.model_templates(loaded) == ["{}"]
    images = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    # The carried template is the default: same as passing it explicitly.
    np.testing.assert_allclose(
        keras_clip.zero_shot.classify(loaded, images, CAPTIONS),
        keras_clip.zero_shot.classify(loaded, images, CAPTIONS, templates=["{}"]), atol=1e-6)
    assert keras_clip.CLIPModel.from_preset("tiny-vit").prompt_templates is None
