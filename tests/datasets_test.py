"""Tests for keras_clip.data.datasets: the Twemoji and Noto Color Emoji sets."""

import os

import numpy as np
import pytest

from keras_clip.data.datasets import emoji

SIZE = 16
HAS_NOTO = any(os.path.isfile(p) for p in emoji.NOTO_FONT_PATHS)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("emoji_cache"))


@pytest.fixture(scope="module")
def twemoji_all(cache):
    return emoji.load_twemoji(SIZE, "all", cache_dir=cache)


def test_names_are_cleaned_and_grouped():
    assert emoji.clean_name(":grinning_face:") == "grinning face"
    assert emoji.clean_name(":A_button_(blood_type):") == "A button (blood type)"
    assert emoji.concept_of("thumbs up medium-dark skin tone") == "thumbs up"
    assert emoji.concept_of(
        "woman medium-light skin tone white hair") == "woman white hair"
    assert emoji.concept_of(
        "kiss woman man light skin tone dark skin tone") == "kiss woman man"
    assert emoji.concept_of("dark sunglasses") == "dark sunglasses"


def test_twemoji_counts_images_and_cache(twemoji_all, cache):
    pairs = twemoji_all
    assert len(pairs) == 3953
    assert pairs.images.shape == (3953, SIZE, SIZE, 3)
    assert pairs.images.dtype == np.uint8
    assert len(set(pairs.captions)) == len(pairs)  # one caption per image
    assert "grinning face" in pairs.captions
    # Composited on white: corners are white for most emoji.
    assert np.mean(pairs.images[:, 0, 0] == 255) > 0.5
    assert any(f.startswith("twemoji-") for f in os.listdir(cache))
    again = emoji.load_twemoji(SIZE, "all", cache_dir=cache)  # from the cache
    np.testing.assert_array_equal(again.images, pairs.images)


def test_split_holds_out_whole_concepts(twemoji_all, cache):
    train = emoji.load_twemoji(SIZE, "train", cache_dir=cache)
    held = emoji.load_twemoji(SIZE, "heldout", cache_dir=cache)
    assert len(train) + len(held) == len(twemoji_all)
    assert not set(train.concept_ids) & set(held.concept_ids)
    n_concepts = len(twemoji_all.concepts)
    assert len(set(held.concept_ids)) == round(0.1 * n_concepts)
    assert 0.05 < len(held) / len(twemoji_all) < 0.2
    # Skin-tone variants travel with their concept.
    thumbs = [i for i, c in enumerate(twemoji_all.captions)
              if emoji.concept_of(c) == "thumbs up"]
    assert len(thumbs) == 6
    in_held = {twemoji_all.captions[i] in set(held.captions) for i in thumbs}
    assert len(in_held) == 1
    # Deterministic per seed, different across seeds.
    again = emoji.load_twemoji(SIZE, "heldout", cache_dir=cache)
    assert again.captions == held.captions
    other = emoji.load_twemoji(SIZE, "heldout", seed=1, cache_dir=cache)
    assert other.captions != held.captions
    with pytest.raises(ValueError, match="split"):
        emoji.load_twemoji(SIZE, "test", cache_dir=cache)


def test_aliases_name_the_emoji_with_its_tone(twemoji_all):
    aliases = emoji.aliases(twemoji_all)
    assert len(aliases) == len(twemoji_all)
    by_caption = dict(zip(twemoji_all.captions, aliases))
    # The `emoji` package's short codes (":thumbsup:", ":+1:" for U+1F44D);
    # a skin-toned variant has none of its own and takes its base's + tone.
    assert by_caption["thumbs up"] == ["thumbsup", "+1"]
    assert by_caption["thumbs up dark skin tone"] == [
        "thumbsup dark skin tone", "+1 dark skin tone"]
    assert by_caption["face with tears of joy"] == ["joy"]
    # ":bahrain:" is the caption itself, so only ":flag_for_Bahrain:" stays.
    assert by_caption["Bahrain"] == ["flag for Bahrain"]
    assert by_caption["man teacher"] == []
    assert sum(map(bool, aliases)) > 1000
    for caption, row in by_caption.items():
        assert caption.lower() not in {a.lower() for a in row}
        assert len(set(row)) == len(row)


def test_missing_noto_font_names_the_debian_package():
    with pytest.raises(FileNotFoundError, match="fonts-noto-color-emoji"):
        emoji.load_noto_emoji(SIZE, font_path="/nonexistent/NotoColorEmoji.ttf")


@pytest.mark.skipif(not HAS_NOTO, reason="fonts-noto-color-emoji not installed")
def test_noto_matches_twemoji_concepts(twemoji_all, cache):
    noto = emoji.load_noto_emoji(SIZE, "all", cache_dir=cache)
    assert noto.concepts == twemoji_all.concepts
    assert set(noto.captions) <= set(twemoji_all.captions)
    assert len(noto) / len(twemoji_all) > 0.9  # Debian 12's font: 3,798 of 3,953
    index = {c: i for i, c in enumerate(twemoji_all.captions)}
    same = [twemoji_all.concept_ids[index[c]] for c in noto.captions]
    np.testing.assert_array_equal(noto.concept_ids, same)
    held = emoji.load_noto_emoji(SIZE, "heldout", cache_dir=cache)
    twemoji_held = set(emoji.load_twemoji(SIZE, "heldout", cache_dir=cache).captions)
    assert set(held.captions) <= twemoji_held
    # A different art style: the same caption's pixels differ.
    i = noto.captions.index("grinning face")
    assert np.abs(noto.images[i].astype(int)
                  - twemoji_all.images[index["grinning face"]]).mean() > 5


def test_twemoji_dataset_batches(cache):
    import tensorflow as tf

    def tokenizer(captions):
        words = tf.strings.split(captions)
        return tf.strings.to_hash_bucket_fast(words, 100).to_tensor(shape=[None, 6])

    ds = emoji.twemoji_dataset(tokenizer, 64, image_size=SIZE, split="heldout",
                               training=True, cache_dir=cache)
    batch = next(iter(ds))
    assert batch["images"].shape == (64, SIZE, SIZE, 3)
    assert batch["token_ids"].shape == (64, 6)
