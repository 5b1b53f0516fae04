"""Eager preprocessing against open_clip's evaluation transform, and the
whole path (image file + strings -> probabilities) against open_clip."""

import keras
import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg  # noqa: E402
from open_clip.transform import image_transform  # noqa: E402

from keras_clip import convert  # noqa: E402
from keras_clip.models.config import OPENAI_IMAGE_MEAN, OPENAI_IMAGE_STD  # noqa: E402
from keras_clip.data.preprocess import preprocess_images  # noqa: E402


def random_image(width, height, seed):
    rng = np.random.default_rng(seed)
    # Smooth-ish content: a gradient plus noise, so resizing filters matter.
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], -1)
    pixels = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype("uint8")
    return Image.fromarray(pixels)


@pytest.mark.parametrize("width,height", [(50, 37), (37, 50), (32, 32), (101, 64), (20, 24)])
def test_matches_open_clip_eval_transform(width, height):
    image = random_image(width, height, seed=width * height)
    reference = image_transform(32, is_train=False, mean=OPENAI_IMAGE_MEAN, std=OPENAI_IMAGE_STD)
    expected = reference(image).permute(1, 2, 0).numpy()
    got = preprocess_images([image], 32, OPENAI_IMAGE_MEAN, OPENAI_IMAGE_STD)[0]
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_bad_images_raise():
    with pytest.raises(ValueError, match=r"uint8 array.*Received: array of dtype float32"):
        preprocess_images([np.zeros((8, 8, 3), "float32")], 8, OPENAI_IMAGE_MEAN, OPENAI_IMAGE_STD)
    with pytest.raises(ValueError, match=r"batch of images.*shape \(8, 8, 3\)"):
        preprocess_images(np.zeros((8, 8, 3), "uint8"), 8, OPENAI_IMAGE_MEAN, OPENAI_IMAGE_STD)
    with pytest.raises(ValueError, match=r"1, 3 or 4 channels.*\(8, 8, 2\)"):
        preprocess_images([np.zeros((8, 8, 2), "uint8")], 8, OPENAI_IMAGE_MEAN, OPENAI_IMAGE_STD)


def test_file_and_strings_give_open_clips_probabilities(tmp_path):
    torch.manual_seed(3)
    reference = CLIP(
        32,
        vision_cfg=CLIPVisionCfg(layers=1, width=64, patch_size=8, image_size=32),
        text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=2, layers=1),
        quick_gelu=True,
    ).eval()
    with torch.no_grad():
        reference.logit_scale.fill_(4.0)
    path = tmp_path / "photo.png"
    random_image(45, 30, seed=7).save(path)
    strings = ["a photo of a cat.", "a diagram", "Two dogs & 3 birds!", "café at night"]

    # Reference: open_clip's own preprocessing, tokenizer and model.
    transform = image_transform(32, is_train=False, mean=OPENAI_IMAGE_MEAN, std=OPENAI_IMAGE_STD)
    with torch.no_grad():
        image = transform(Image.open(path)).unsqueeze(0)
        tokens = open_clip.get_tokenizer("ViT-B-32")(strings)
        logits, _ = reference.get_logits(image, tokens)
        expected = logits.softmax(-1).numpy()

    # keras_clip: the converted model carries tokenizer and preprocessing.
    # Head counts are invisible in a state dict: name the reference's.
    model = convert.from_open_clip(reference.state_dict(), activation="quick_gelu", text_heads=2)
    probabilities = keras.ops.softmax(
        model({"images": model.preprocess([str(path)]), "token_ids": model.tokenizer(strings)})["logits_per_image"],
        axis=-1,
    )
    np.testing.assert_allclose(keras.ops.convert_to_numpy(probabilities), expected, atol=1e-4)
