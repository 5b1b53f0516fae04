"""CLIP configurations, keyed by the names used in the paper.

Numbers come from Radford et al. 2021 ("Learning Transferable Visual Models
From Natural Language Supervision"), Tables 19 and 20, and the released
OpenAI checkpoints. See docs/design.md ("The paper's numbers") for the parameter
counts each configuration must reproduce.
"""

import dataclasses
import math

# OpenAI's image normalisation (computed on their training set).
OPENAI_IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)

VISION_TYPES = ("vit", "resnet")
ACTIVATIONS = ("quick_gelu", "gelu")
INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "lanczos")


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
    """Hyper-parameters of a CLIP model: both towers and the joint space.

    The fields are flat, like the arguments of OpenAI's `CLIP` module, so a
    config reads like a row of the paper's tables and converts to and from
    JSON without nesting.
    """

    # Joint embedding space.
    embed_dim: int = 512
    # Vision tower: "vit" or "resnet" (the paper's modified ResNet).
    vision: str = "vit"
    image_size: int = 224
    # ViT: transformer width. ResNet: width of the stem (64 for RN50).
    vision_width: int = 768
    # ViT: number of blocks (int). ResNet: blocks per stage (4-tuple).
    vision_layers: object = 12
    # None means the paper's rule: width // 64 (ViT), width * 32 // 64 (ResNet).
    vision_heads: object = None
    patch_size: int = 32  # ViT only.
    # Text tower (63M parameters in the base configuration).
    context_length: int = 77  # 76 BPE tokens + start/end of text.
    vocabulary_size: int = 49408  # 256 + 256 bytes, 48,894 merges, 2 specials.
    text_width: int = 512
    text_heads: int = 8
    text_layers: int = 12
    # Token id that ends a caption; pooling reads the first one found.
    # None means the last id of the vocabulary (OpenAI's <|endoftext|>).
    eot_token_id: object = None
    # "quick_gelu" (x * sigmoid(1.702 x)) as in OpenAI's weights, or "gelu".
    activation: str = "quick_gelu"
    mlp_ratio: float = 4.0
    # Temperature, stored as a log: init ln(1 / 0.07), clamp at ln(100).
    logit_scale_init: float = math.log(1 / 0.07)
    logit_scale_max: float = math.log(100.0)
    # Preprocessing the model expects (carried so a saved model is complete).
    image_mean: tuple = OPENAI_IMAGE_MEAN
    image_std: tuple = OPENAI_IMAGE_STD
    # Resize filter of the evaluation transform (OpenAI and open_clip: bicubic).
    image_interpolation: str = "bicubic"
    # Rematerialise each tower block (transformer block / ResNet bottleneck)
    # in the backward pass: activation memory of one block, ~1/3 more compute.
    remat: bool = False

    def __post_init__(self):
        if self.vision not in VISION_TYPES:
            raise ValueError(
                f"`vision` must be one of {VISION_TYPES}. "
                f"Received: vision={self.vision!r}"
            )
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"`activation` must be one of {ACTIVATIONS}. "
                f"Received: activation={self.activation!r}"
            )
        if self.image_interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"`image_interpolation` must be one of {INTERPOLATIONS}. "
                f"Received: image_interpolation={self.image_interpolation!r}"
            )
        if self.vision == "vit":
            if not isinstance(self.vision_layers, int):
                raise ValueError(
                    "A ViT needs an integer `vision_layers`. "
                    f"Received: vision_layers={self.vision_layers!r}"
                )
            if self.image_size % self.patch_size:
                raise ValueError(
                    "`image_size` must be divisible by `patch_size`. "
                    f"Received: image_size={self.image_size}, "
                    f"patch_size={self.patch_size}"
                )
        else:
            layers = self.vision_layers
            if not (
                isinstance(layers, (tuple, list))
                and len(layers) == 4
                and all(isinstance(n, int) and n > 0 for n in layers)
            ):
                raise ValueError(
                    "A ResNet needs `vision_layers` as 4 positive block counts. "
                    f"Received: vision_layers={layers!r}"
                )
            object.__setattr__(self, "vision_layers", tuple(layers))
            if self.image_size % 32:
                raise ValueError(
                    "The modified ResNet downsamples by 32: `image_size` must "
                    f"be divisible by 32. Received: image_size={self.image_size}"
                )
        if self.context_length < 2:
            raise ValueError(
                "`context_length` must be at least 2 (start and end tokens). "
                f"Received: context_length={self.context_length}"
            )
        if self.text_width % self.text_heads:
            raise ValueError(
                "`text_width` must be divisible by `text_heads`. "
                f"Received: text_width={self.text_width}, "
                f"text_heads={self.text_heads}"
            )
        if self.vision_heads is None:
            object.__setattr__(self, "vision_heads", self._default_heads())
        if self.eot_token_id is None:
            object.__setattr__(self, "eot_token_id", self.vocabulary_size - 1)
        if not 0 <= self.eot_token_id < self.vocabulary_size:
            raise ValueError(
                "`eot_token_id` must be a valid token id (below "
                f"vocabulary_size={self.vocabulary_size}). "
                f"Received: eot_token_id={self.eot_token_id}"
            )
        object.__setattr__(self, "image_mean", tuple(self.image_mean))
        object.__setattr__(self, "image_std", tuple(self.image_std))

    @property
    def vision_output_width(self):
        """Width of the vision features before the joint projection."""
        if self.vision == "vit":
            return self.vision_width
        return self.vision_width * 32

    def to_dict(self):
        out = dataclasses.asdict(self)
        for key in ("vision_layers", "image_mean", "image_std"):
            if isinstance(out[key], tuple):
                out[key] = list(out[key])
        return out

    @classmethod
    def from_dict(cls, config):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(config) - names)
        if unknown:
            raise ValueError(
                f"Unknown CLIP config keys {unknown}. Expected keys among "
                f"{sorted(names)}."
            )
        config = dict(config)
        if isinstance(config.get("vision_layers"), list):
            config["vision_layers"] = tuple(config["vision_layers"])
        return cls(**config)

    def _default_heads(self):
        if self.vision == "vit":
            return max(1, self.vision_width // 64)
        return max(1, self.vision_width * 32 // 64)

    def replace(self, **overrides):
        """A copy with fields changed; derived defaults are derived again.

        `eot_token_id` and `vision_heads` that followed the default rule
        (last id of the vocabulary, width // 64) follow it again after
        `vocabulary_size` or `vision_width` change.
        """
        base = self.to_dict()
        if self.eot_token_id == self.vocabulary_size - 1:
            base["eot_token_id"] = None
        if self.vision_heads == self._default_heads():
            base["vision_heads"] = None
        return self.from_dict({**base, **overrides})


def _resnet(embed_dim, image_size, layers, width, text_width, text_heads):
    return CLIPConfig(
        embed_dim=embed_dim,
        vision="resnet",
        image_size=image_size,
        vision_layers=layers,
        vision_width=width,
        text_width=text_width,
        text_heads=text_heads,
    )


def _vit(embed_dim, image_size, layers, width, patch, text_width, text_heads):
    return CLIPConfig(
        embed_dim=embed_dim,
        vision="vit",
        image_size=image_size,
        vision_layers=layers,
        vision_width=width,
        patch_size=patch,
        text_width=text_width,
        text_heads=text_heads,
    )


# The paper's models (Radford et al. 2021, Tables 19-20). Parameter counts
# in millions as published: RN50 102.01, RN101 119.69, RN50x4 178.30,
# RN50x16 290.98, RN50x64 623.26, ViT-B/32 151.28, ViT-B/16 149.62,
# ViT-L/14 427.62, ViT-L/14@336px 427.94.
PRESETS = {
    "RN50": _resnet(1024, 224, (3, 4, 6, 3), 64, 512, 8),
    "RN101": _resnet(512, 224, (3, 4, 23, 3), 64, 512, 8),
    "RN50x4": _resnet(640, 288, (4, 6, 10, 6), 80, 640, 10),
    "RN50x16": _resnet(768, 384, (6, 8, 18, 8), 96, 768, 12),
    "RN50x64": _resnet(1024, 448, (3, 15, 36, 10), 128, 1024, 16),
    "ViT-B/32": _vit(512, 224, 12, 768, 32, 512, 8),
    "ViT-B/16": _vit(512, 224, 12, 768, 16, 512, 8),
    "ViT-L/14": _vit(768, 224, 24, 1024, 14, 768, 12),
    "ViT-L/14@336px": _vit(768, 336, 24, 1024, 14, 768, 12),
    # Tiny models for tests and CPU demos (not from the paper). The
    # vocabulary fits a tokenizer trained on a small caption set.
    "tiny-vit": CLIPConfig(
        embed_dim=32,
        vision="vit",
        image_size=32,
        vision_width=64,
        vision_layers=2,
        vision_heads=2,
        patch_size=8,
        context_length=16,
        vocabulary_size=1024,
        text_width=64,
        text_heads=2,
        text_layers=2,
    ),
    # The demo's model: a small modified ResNet (2x2 final map at 64 px)
    # and a 2-layer text transformer; vocabulary from the training captions.
    "demo-resnet": CLIPConfig(
        embed_dim=128,
        vision="resnet",
        image_size=64,
        vision_width=16,
        vision_layers=(1, 1, 1, 1),
        vision_heads=4,
        context_length=32,
        vocabulary_size=2000,
        text_width=128,
        text_heads=4,
        text_layers=2,
    ),
    "tiny-resnet": CLIPConfig(
        embed_dim=32,
        vision="resnet",
        image_size=32,
        vision_width=8,
        vision_layers=(1, 1, 1, 1),
        vision_heads=2,
        context_length=16,
        vocabulary_size=1024,
        text_width=64,
        text_heads=2,
        text_layers=2,
    ),
}


# open_clip's names for the same architectures: its model config of each
# name, with `quick_gelu` (OpenAI's activation) only in "-quickgelu" names
# and GELU otherwise. open_clip's plain "RN50"-style names are the one clash:
# here they stay OpenAI's presets (QuickGELU); open_clip's GELU variant of
# those is `get_preset("RN50", activation="gelu")`.
_OPEN_CLIP_VITS = (("ViT-B-32", "ViT-B/32"), ("ViT-B-16", "ViT-B/16"),
                   ("ViT-L-14", "ViT-L/14"), ("ViT-L-14-336", "ViT-L/14@336px"))
OPEN_CLIP_NAMES = {
    **{f"{rn}-quickgelu": (rn, "quick_gelu")
       for rn in ("RN50", "RN101", "RN50x4", "RN50x16", "RN50x64")},
    **{oc: (preset, "gelu") for oc, preset in _OPEN_CLIP_VITS},
    **{f"{oc}-quickgelu": (preset, "quick_gelu") for oc, preset in _OPEN_CLIP_VITS},
}


def list_presets(include_open_clip_names=False):
    """Names accepted by `CLIPModel.from_preset`.

    Args:
        include_open_clip_names: bool, also list open_clip's names for the
            same architectures ("ViT-B-32", "RN50-quickgelu", ...).
    """
    names = list(PRESETS)
    return names + list(OPEN_CLIP_NAMES) if include_open_clip_names else names


def get_preset(name, **overrides):
    """The `CLIPConfig` of a named preset, with fields overridden.

    `name` is one of `list_presets()` (OpenAI's names: "ViT-B/32", "RN50",
    ...; and our small ones) or an open_clip name of the same architecture
    ("ViT-B-32", "ViT-B-32-quickgelu", "RN50-quickgelu"; see
    `OPEN_CLIP_NAMES`), which also sets open_clip's activation.
    """
    if name in OPEN_CLIP_NAMES:
        preset, activation = OPEN_CLIP_NAMES[name]
        overrides = {"activation": activation, **overrides}
        name = preset
    if name not in PRESETS:
        raise ValueError(
            f"Unknown preset {name!r}. Expected one of {list_presets()}, "
            f"or an open_clip name: {list(OPEN_CLIP_NAMES)}."
        )
    config = PRESETS[name]
    return config.replace(**overrides) if overrides else config
