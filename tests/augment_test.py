"""Tests for keras_clip.data.augment against NumPy / PIL references."""

import math

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_clip.data import augment


def smooth_image(seed, h, w):
    """A random image with some spatial structure (bicubic is not all noise)."""
    noise = np.random.default_rng(seed).integers(0, 256, (h // 4 + 2, w // 4 + 2, 3))
    small = Image.fromarray(noise.astype(np.uint8))
    return np.asarray(small.resize((w, h), Image.BILINEAR))


def reference_box(h, w, u, scale, ratio):
    """torchvision's RandomResizedCrop.get_params, fed our uniforms `u` (4, 10)."""
    area = np.float32(h * w)
    for i in range(u.shape[1]):
        target = area * np.float32(scale[0] + (scale[1] - scale[0]) * u[0, i])
        lo, hi = math.log(ratio[0]), math.log(ratio[1])
        aspect = np.exp(np.float32(lo + (hi - lo) * u[1, i]))
        bw = np.round(np.sqrt(target * aspect))
        bh = np.round(np.sqrt(target / aspect))
        if 0 < bw <= w and 0 < bh <= h:
            top = np.floor(u[2, i] * (h - bh + 1))
            left = np.floor(u[3, i] * (w - bw + 1))
            return [int(top), int(left), int(bh), int(bw)]
    in_ratio = w / h
    bw = round(h * ratio[1]) if in_ratio > ratio[1] else w
    bh = round(w / ratio[0]) if in_ratio < ratio[0] else h
    return [(h - bh) // 2, (w - bw) // 2, bh, bw]


@pytest.mark.parametrize(
    "h,w,scale,ratio",
    [
        (72, 72, (0.9, 1.0), (3 / 4, 4 / 3)),
        (100, 60, (0.08, 1.0), (3 / 4, 4 / 3)),
        (40, 90, (0.5, 0.9), (1.0, 1.0)),
        (30, 200, (0.9, 1.0), (0.9, 1.1)),  # mostly falls back
    ],
)
def test_crop_box_matches_reference(h, w, scale, ratio):
    for i in range(40):
        seed = tf.constant([i, 7], tf.int64)
        box = augment.random_resized_crop_box(h, w, scale, ratio, seed).numpy()
        u = tf.random.stateless_uniform([4, 10], seed=seed).numpy()
        assert list(box) == reference_box(h, w, u, scale, ratio), (i, box)
        top, left, bh, bw = box
        assert 0 <= top and top + bh <= h and 0 <= left and left + bw <= w


def test_crop_box_scale_and_ratio_in_range():
    for i in range(100):
        top, left, bh, bw = augment.random_resized_crop_box(
            200, 300, (0.3, 0.6), (0.5, 2.0), [i, 0]).numpy()
        assert 0.3 - 0.02 <= bh * bw / 60000 <= 0.6 + 0.02
        assert 0.5 - 0.02 <= bw / bh <= 2.0 + 0.02


@pytest.mark.parametrize("h,w,size", [(72, 72, 32), (100, 60, 32), (50, 90, 64),
                                      (20, 30, 48), (300, 200, 224)])
def test_eval_transform_matches_pil_resize_and_center_crop(h, w, size):
    image = smooth_image(h + w, h, w)
    ours = augment.resize_and_center_crop(image, size).numpy()
    short = min(h, w)
    nh, nw = (size, int(size * w / short)) if h <= w else (int(size * h / short), size)
    ref = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BICUBIC), np.float32)
    top, left = int(round((nh - size) / 2)), int(round((nw - size) / 2))
    ref = ref[top: top + size, left: left + size]
    assert ours.shape == (size, size, 3)
    diff = np.abs(ours - ref)
    # PIL rounds to uint8 between its horizontal and vertical passes.
    assert diff.mean() < 0.5 and diff.max() <= 3.0, (diff.mean(), diff.max())
    normalized = augment.eval_transform(image, size).numpy()
    np.testing.assert_allclose(augment.denormalize(normalized), ours, atol=1e-3)


def test_random_resized_crop_is_crop_then_pil_resize():
    image = smooth_image(3, 80, 64)
    seed = tf.constant([5, 6], tf.int64)
    top, left, bh, bw = augment.random_resized_crop_box(80, 64, (0.3, 1.0), seed=seed)
    ours = augment.random_resized_crop(image, 24, (0.3, 1.0), seed=seed).numpy()
    crop = Image.fromarray(image[top: top + bh, left: left + bw])
    ref = np.asarray(crop.resize((24, 24), Image.BICUBIC), np.float32)
    assert np.abs(ours - ref).mean() < 0.5 and np.abs(ours - ref).max() <= 3.0


def test_normalize_constants_and_inverse():
    mean_pixel = np.array(augment.OPENAI_MEAN, np.float32) * 255.0
    np.testing.assert_allclose(augment.normalize(mean_pixel), 0.0, atol=1e-6)
    x = np.random.default_rng(0).uniform(0, 255, (4, 4, 3)).astype(np.float32)
    np.testing.assert_allclose(augment.denormalize(augment.normalize(x)), x, atol=1e-3)
    assert augment.OPENAI_STD == (0.26862954, 0.26130258, 0.27577711)


def test_rotation_keeps_center_and_fills_corners():
    image = np.full((33, 33, 3), 100, np.uint8)
    image[16, 16] = 200
    for i in range(10):
        seed = tf.constant([i, 1], tf.int64)
        out = augment.random_rotate(image, 45.0, seed=seed, fill_value=255.0).numpy()
        angle = tf.random.stateless_uniform([], seed=seed, minval=-45.0, maxval=45.0)
        assert out[16, 16, 0] == pytest.approx(200.0)
        assert out[8, 16, 0] == pytest.approx(100.0)  # inside the rotated square
        if abs(float(angle)) > 10:
            assert (out[0, 0] == 255.0).all()  # a corner rotated in from outside
    unrotated = augment.random_rotate(image, 0.0, seed=[1, 2]).numpy()
    np.testing.assert_allclose(unrotated, image, atol=1e-3)


def test_train_transform_seeded_and_in_tf_data():
    image = smooth_image(1, 72, 72)
    a = augment.train_transform(image, 32, rotation=10.0, seed=[1, 2]).numpy()
    b = augment.train_transform(image, 32, rotation=10.0, seed=[1, 2]).numpy()
    c = augment.train_transform(image, 32, (0.5, 1.0), rotation=10.0, seed=[3, 4])
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c.numpy())
    assert a.dtype == np.float32 and a.shape == (32, 32, 3)
    pixels = augment.denormalize(a).numpy()
    assert pixels.min() >= -1e-3 and pixels.max() <= 255.0 + 1e-3

    ds = tf.data.Dataset.from_tensors(image).repeat(4).enumerate()
    ds = ds.map(lambda i, x: augment.train_transform(x, 16, seed=tf.stack([i, i])),
                num_parallel_calls=2)
    first, second = [np.stack(list(ds.as_numpy_iterator())) for _ in range(2)]
    np.testing.assert_array_equal(first, second)
    assert first.shape == (4, 16, 16, 3)


def test_bad_ranges_raise():
    with pytest.raises(ValueError, match="scale"):
        augment.random_resized_crop_box(10, 10, scale=(1.0, 0.5))
    with pytest.raises(ValueError, match="ratio"):
        augment.random_resized_crop_box(10, 10, ratio=(0.0, 1.0))


def test_color_jitter_against_numpy():
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, (9, 7, 3)).astype("float32")
    seed = tf.constant([3, 4])
    # Strength 0, no grayscale: the image unchanged.
    np.testing.assert_allclose(augment.color_jitter(image, 0.0, 0.0, seed).numpy(), image, atol=1e-3)
    # Grayscale with probability 1: ITU-R 601 luma in every channel.
    luma = image @ np.array([0.2989, 0.5870, 0.1140], "float32")
    gray = augment.color_jitter(image, 0.0, 1.0, seed).numpy()
    np.testing.assert_allclose(gray, np.repeat(luma[..., None], 3, -1), atol=0.05)
    # Full strength: in range, reproducible per seed, different across seeds,
    # and a brightness shift of at most 0.8 of the range on average.
    a = augment.color_jitter(image, 1.0, 0.0, seed).numpy()
    b = augment.color_jitter(image, 1.0, 0.0, seed).numpy()
    c = augment.color_jitter(image, 1.0, 0.0, tf.constant([5, 6])).numpy()
    assert a.min() >= 0 and a.max() <= 255
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1.0
    # Through train_transform, inside tf.data.
    ds = tf.data.Dataset.from_tensors(tf.constant(image)).map(
        lambda x: augment.train_transform(x, 5, seed=[1, 2], jitter=0.5, grayscale=0.5))
    assert next(iter(ds)).shape == (5, 5, 3)
    for kwargs in ({"strength": 1.5}, {"strength": 0.1, "grayscale": -0.1}):
        with pytest.raises(ValueError, match=r"Expected `(strength|grayscale)` in \[0, 1\]"):
            augment.color_jitter(image, **{"grayscale": 0.0, **kwargs})


def test_random_downscale_is_pil_bilinear_down_then_up():
    image = smooth_image(4, 32, 32).astype(np.float32)
    # scale (0.5, 0.5): every drop goes to 16 x 16 and back.
    ours = augment.random_downscale(image, 1.0, (0.5, 0.5), seed=[1, 2]).numpy()
    small = Image.fromarray(image.astype(np.uint8)).resize((16, 16), Image.BILINEAR)
    ref = np.asarray(small.resize((32, 32), Image.BILINEAR), np.float32)
    assert np.abs(ours - ref).mean() < 0.6 and np.abs(ours - ref).max() <= 3.0
    # A one-pixel checkerboard shrunk to a quarter is its mean grey.
    board = np.zeros((32, 32, 3), np.float32)
    board[::2, ::2] = board[1::2, 1::2] = 255.0
    grey = augment.random_downscale(board, 1.0, (0.25, 0.25), seed=[1, 2]).numpy()
    np.testing.assert_allclose(grey, 127.5, atol=1.0)
    # Probability 0 leaves it alone; probability 0.5 drops some seeds only.
    np.testing.assert_array_equal(augment.random_downscale(board, 0.0, seed=[1, 2]).numpy(), board)
    changed = [not np.array_equal(augment.random_downscale(board, 0.5, seed=[i, 0]).numpy(), board)
               for i in range(40)]
    assert 8 < sum(changed) < 32
    for kwargs, match in (({"probability": 1.5}, "probability"), ({"scale": (0.0, 0.5)}, "scale"),
                          ({"scale": (0.5, 1.5)}, r"scale.*\(0, 1\]")):
        with pytest.raises(ValueError, match=match):
            augment.random_downscale(board, **{"probability": 1.0, **kwargs})


def test_train_transform_downscale_keeps_the_crop_and_blurs():
    image = smooth_image(5, 72, 72)
    sharp = augment.train_transform(image, 32, rotation=10.0, seed=[7, 8]).numpy()
    again = augment.train_transform(image, 32, rotation=10.0, seed=[7, 8], downscale=1.0,
                                    downscale_range=(1.0, 1.0)).numpy()
    # At full size the drop is the identity: same crop and rotation per seed.
    np.testing.assert_allclose(again, sharp, atol=1e-4)
    blurred = augment.train_transform(image, 32, rotation=10.0, seed=[7, 8], downscale=1.0,
                                      downscale_range=(0.25, 0.25)).numpy()
    want = augment.normalize(augment.random_downscale(
        augment.denormalize(sharp), 1.0, (0.25, 0.25), seed=[0, 0])).numpy()
    np.testing.assert_allclose(blurred, want, atol=1e-3)
    # Less high-frequency energy than the sharp crop.
    assert np.abs(np.diff(blurred, axis=1)).mean() < 0.6 * np.abs(np.diff(sharp, axis=1)).mean()


@pytest.mark.parametrize("method,antialias", [("bicubic", True), ("bilinear", True),
                                              ("bilinear", False)])
def test_resize_weights_match_tf_image_resize(method, antialias):
    rng = np.random.default_rng(1)
    in_size = 40
    for out_size in (8, 24, 40, 64):
        starts = rng.integers(0, in_size - 1, 12)
        lengths = np.array([rng.integers(1, in_size - s + 1) for s in starts])
        weights = augment.resize_weights(in_size, starts, lengths, out_size, method,
                                         antialias=antialias).numpy()
        signal = rng.uniform(0, 255, (in_size, 3)).astype(np.float32)
        for b, (s, n) in enumerate(zip(starts, lengths)):
            # One axis: a column image of the stretch, resized in height only.
            ref = tf.image.resize(signal[s: s + n, None, :], [out_size, 1], method=method,
                                  antialias=antialias).numpy()[:, 0]
            np.testing.assert_allclose(weights[b] @ signal, ref, atol=2e-3, err_msg=(s, n))
            assert (weights[b][:, :s] == 0).all() and (weights[b][:, s + n:] == 0).all()
    # Rows past `out_length` stay zero; the others resize to that length.
    weights = augment.resize_weights(in_size, [0], [in_size], 16, "bilinear", out_length=[5])
    np.testing.assert_array_equal(weights.numpy()[0, 5:], 0.0)
    ref = tf.image.resize(signal[:, None, :], [5, 1], method="bilinear", antialias=True)
    np.testing.assert_allclose(weights.numpy()[0, :5] @ signal, ref.numpy()[:, 0], atol=2e-3)
    with pytest.raises(ValueError, match=r"`method` in \('bicubic', 'bilinear'\). Received: method='area'"):
        augment.resize_weights(in_size, [0], [in_size], 16, "area")


@pytest.mark.parametrize("h,w,size", [(32, 32, 32), (72, 60, 32), (20, 24, 48)])
def test_batched_transform_is_the_per_image_transform_of_its_draws(h, w, size):
    images = np.stack([smooth_image(i, h, w) for i in range(6)]).astype(np.float32)
    uniforms = tf.random.stateless_uniform([4, 6, 10], seed=[1, h])
    boxes = augment._crop_boxes(h, w, uniforms, (0.3, 1.0), (3 / 4, 4 / 3))
    for b in range(6):  # the same boxes as the per-image sampler from those uniforms
        assert list(boxes[b].numpy()) == reference_box(h, w, uniforms[:, b].numpy(),
                                                         (0.3, 1.0), (3 / 4, 4 / 3))
    angles = np.radians([0.0, 10.0, -7.0, 3.0, -10.0, 45.0]).astype(np.float32)
    sides = np.array([size, size // 4, size // 2, 1, size - 1, 3], np.int32)
    ours = augment._crop_rotate_downscale(images, size, boxes, angles, sides).numpy()
    for b in range(6):
        top, left, bh, bw = boxes[b].numpy()
        crop = tf.image.resize(images[b, top: top + bh, left: left + bw], [size, size],
                               method="bicubic", antialias=True)
        crop = tf.clip_by_value(crop, 0.0, 255.0)
        # random_rotate draws its angle from the seed: find the seed's angle.
        seed = tf.constant([b, 9], tf.int64)
        drawn = tf.random.stateless_uniform([], seed=seed, minval=-45.0, maxval=45.0)
        rotated = augment._rotate(crop[None], np.radians([float(drawn)]).astype(np.float32), 255.0)
        per_image = augment.random_rotate(crop, 45.0, seed=seed)
        np.testing.assert_allclose(rotated[0], per_image, atol=2e-3)
        want = augment._rotate(crop[None], angles[b: b + 1], 255.0)[0]
        fraction = sides[b] / size
        want = augment.random_downscale(want, 1.0, (fraction, fraction), seed=[0, 0]).numpy()
        np.testing.assert_allclose(ours[b], want, atol=2e-3, err_msg=b)


def test_train_transform_batch_draws_per_image_and_is_seeded():
    images = np.stack([smooth_image(3, 40, 40)] * 64)
    kwargs = dict(scale=(0.5, 1.0), rotation=10.0, downscale=0.5)
    a = augment.train_transform_batch(images, 24, seed=[1, 2], **kwargs).numpy()
    b = augment.train_transform_batch(images, 24, seed=[1, 2], **kwargs).numpy()
    c = augment.train_transform_batch(images, 24, seed=[3, 4], **kwargs).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert a.shape == (64, 24, 24, 3) and a.dtype == np.float32
    # One image repeated: every copy gets its own crop, angle and drop.
    distinct = {augment.denormalize(x).numpy().round().tobytes() for x in a}
    assert len(distinct) == 64
    pixels = augment.denormalize(a).numpy()
    assert pixels.min() >= -1e-3 and pixels.max() <= 255.0 + 1e-3
    # Whole-image boxes and nothing else: the bicubic resize of each image.
    plain = augment.train_transform_batch(images[:2], 24, scale=(1.0, 1.0), ratio=(1.0, 1.0),
                                          seed=[5, 6]).numpy()
    want = augment.normalize(tf.clip_by_value(tf.image.resize(
        images[0].astype(np.float32), [24, 24], method="bicubic", antialias=True), 0.0, 255.0))
    np.testing.assert_allclose(plain[0], want, atol=1e-4)
    np.testing.assert_allclose(plain[1], want, atol=1e-4)
    # About half the images drop resolution with probability 0.5.
    boards = np.zeros((200, 16, 16, 3), np.uint8)
    boards[:, ::2, ::2] = boards[:, 1::2, 1::2] = 255
    out = augment.train_transform_batch(boards, 16, scale=(1.0, 1.0), ratio=(1.0, 1.0),
                                        downscale=0.5, downscale_range=(0.25, 0.5),
                                        seed=[7, 8]).numpy()
    greyed = (np.abs(np.diff(out, axis=2)).mean(axis=(1, 2, 3)) < 1.0).sum()
    assert 70 < greyed < 130, greyed
    # Colour distortion runs image by image, each with its own draw.
    jittered = augment.train_transform_batch(images[:8], 24, scale=(1.0, 1.0), ratio=(1.0, 1.0),
                                             jitter=0.5, seed=[9, 9]).numpy()
    assert len({x.round(3).tobytes() for x in jittered}) == 8
    with pytest.raises(ValueError, match=r"\(batch, height, width, 3\)"):
        augment.train_transform_batch(images[0], 24)
    with pytest.raises(ValueError, match="downscale"):
        augment.train_transform_batch(images, 24, downscale=1.5)
