"""Architecture of OpenAI / open_clip checkpoints, as `CLIPConfig` fields.

`infer_config_fields` reads them from a state dict's shapes, the way
OpenAI's `build_model` does; `fields_from_open_clip_config` reads what an
open_clip model config states, for cross-checking; `open_clip_model_config`
goes the other way, for exporting.
"""

import difflib
import math

from keras_clip.convert import common

# Settings of open_clip configs this converter cannot honour when truthy.
_UNSUPPORTED_VISION = (
    "timm_model_name", "ls_init_value", "attentional_pool", "no_ln_pre",
    "final_ln_after_pool",
)
_UNSUPPORTED_TEXT = (
    "hf_model_name", "ls_init_value", "embed_cls", "no_causal_mask",
    "proj_bias", "attn_pooler_heads",
)


# ---- architecture from shapes ---------------------------------------------


def _square_root(n, what):
    root = math.isqrt(n)
    if root * root != n:
        raise ValueError(
            f"Expected a square number of {what}. Received: {n}"
        )
    return root


def nearby_keys(keys, key, limit=8):
    """Up to `limit` of `keys` closest to `key`: those sharing the longest
    dotted prefix with it, else the most similar names."""
    keys = list(keys)
    parts = key.split(".")
    for depth in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:depth]) + "."
        found = [k for k in keys if k.startswith(prefix)]
        if found:  # most similar first
            similarity = lambda k: difflib.SequenceMatcher(None, key, k).ratio()
            return sorted(found, key=similarity, reverse=True)[:limit]
    return difflib.get_close_matches(key, keys, n=limit, cutoff=0.4) or keys[:limit]


class _Keys:
    """Reads a state dict's shapes; a missing key is one clear `ValueError`."""

    def __init__(self, state_dict, source):
        self.sd = state_dict
        self.source = source

    def __contains__(self, key):
        return key in self.sd

    def __iter__(self):
        return iter(self.sd)

    def __getitem__(self, key):
        if key not in self.sd:
            raise ValueError(
                f"Expected the key {key!r} in {self.source}, as in every "
                "OpenAI / open_clip CLIP checkpoint of this layout. Received: "
                f"no such key among its {len(self.sd)} keys; keys found "
                f"nearby: {nearby_keys(self.sd, key)}. Check that it is a "
                "complete CLIP checkpoint (not one tower or a fine-tuned "
                "head alone)."
            )
        return self.sd[key]


def _mlp_ratio(state_dict, prefix, width):
    return state_dict[f"{prefix}resblocks.0.mlp.c_fc.weight"].shape[0] / width


def infer_config_fields(state_dict, source="the state dict"):
    """`CLIPConfig` fields read from the shapes of an open_clip state dict.

    Heads follow OpenAI's rule (`width // 64` for a ViT and the text
    tower, `32 * width // 64` for the ResNet attention pool).

    Args:
        state_dict: mapping of keys to arrays.
        source: names where it came from, in errors.
    """
    sd = _Keys(state_dict, source)
    for key in ("positional_embedding", "token_embedding.weight",
                "ln_final.weight", "text_projection"):
        if key not in sd:
            raise ValueError(
                "Expected an OpenAI / open_clip CLIP state dict (keys such "
                f"as {key!r}). Received: {source} with keys "
                f"{list(state_dict)[:8]}..."
            )
    text_width = sd["ln_final.weight"].shape[0]
    fields = dict(
        embed_dim=sd["text_projection"].shape[1],
        context_length=sd["positional_embedding"].shape[0],
        vocabulary_size=sd["token_embedding.weight"].shape[0],
        text_width=text_width,
        text_layers=common.count_blocks(sd, "transformer.resblocks."),
        text_heads=max(1, text_width // 64),
        mlp_ratio=_mlp_ratio(sd, "transformer.", text_width),
    )
    if "visual.proj" in sd:
        width, channels, patch, _ = sd["visual.conv1.weight"].shape
        grid = _square_root(
            sd["visual.positional_embedding"].shape[0] - 1, "image patches"
        )
        vision_ratio = _mlp_ratio(sd, "visual.transformer.", width)
        fields.update(
            vision="vit",
            vision_width=width,
            vision_layers=common.count_blocks(
                sd, "visual.transformer.resblocks."
            ),
            vision_heads=max(1, width // 64),
            patch_size=patch,
            image_size=grid * patch,
        )
        vision_embed = sd["visual.proj"].shape[1]
    elif "visual.attnpool.positional_embedding" in sd:
        width = sd["visual.layer1.0.conv1.weight"].shape[0]
        channels = sd["visual.conv1.weight"].shape[1]
        grid = _square_root(
            sd["visual.attnpool.positional_embedding"].shape[0] - 1,
            "attention-pool positions",
        )
        vision_ratio = fields["mlp_ratio"]
        fields.update(
            vision="resnet",
            vision_width=width,
            vision_layers=tuple(
                common.count_blocks(sd, f"visual.layer{stage}.")
                for stage in (1, 2, 3, 4)
            ),
            vision_heads=max(1, width * 32 // 64),
            image_size=grid * 32,
        )
        vision_embed = sd["visual.attnpool.c_proj.weight"].shape[0]
    else:
        raise ValueError(
            "Expected a ViT (`visual.proj`) or a modified ResNet "
            f"(`visual.attnpool.*`) image tower. Received: {source} with "
            f"visual keys {[k for k in sd if k.startswith('visual.')][:8]}"
        )
    if channels != 3:
        raise ValueError(
            f"Expected RGB input (3 channels). Received: {channels} channels"
        )
    if vision_embed != fields["embed_dim"]:
        raise ValueError(
            "Expected both towers to project to one embedding size. "
            f"Received: image {vision_embed}, text {fields['embed_dim']}"
        )
    if not math.isclose(vision_ratio, fields["mlp_ratio"]):
        raise ValueError(
            "Expected one MLP ratio for both towers (CLIPConfig has one). "
            f"Received: vision {vision_ratio}, text {fields['mlp_ratio']}"
        )
    return fields


def fields_from_open_clip_config(model_cfg):
    """`CLIPConfig` fields an open_clip model config states explicitly."""
    vision = dict(model_cfg.get("vision_cfg") or {})
    text = dict(model_cfg.get("text_cfg") or {})
    bad = [f"vision_cfg.{k}" for k in _UNSUPPORTED_VISION if vision.get(k)]
    bad += [f"text_cfg.{k}" for k in _UNSUPPORTED_TEXT if text.get(k)]
    if vision.get("pool_type", "tok") != "tok":
        bad.append(f"vision_cfg.pool_type={vision['pool_type']!r}")
    if text.get("pool_type", "argmax") != "argmax":
        bad.append(f"text_cfg.pool_type={text['pool_type']!r}")
    if model_cfg.get("init_logit_bias") is not None:
        bad.append("init_logit_bias")
    if bad:
        raise ValueError(
            "Expected an OpenAI-style CLIP config. Received: open_clip "
            f"settings keras_clip does not implement: {bad}"
        )
    fields = {"embed_dim": model_cfg.get("embed_dim")}
    layers = vision.get("layers")
    if isinstance(layers, (list, tuple)):
        fields.update(vision="resnet", vision_layers=tuple(layers))
        if "width" in vision:  # open_clip: heads = 32 * width // head_width.
            fields["vision_heads"] = vision["width"] * 32 // vision.get(
                "head_width", 64
            )
    elif layers is not None:
        fields.update(vision="vit", vision_layers=layers)
        if "width" in vision:
            fields["vision_heads"] = vision["width"] // vision.get(
                "head_width", 64
            )
        fields["patch_size"] = vision.get("patch_size")
    image_size = vision.get("image_size")
    if isinstance(image_size, (list, tuple)):
        if len(set(image_size)) != 1:
            raise ValueError(
                f"Expected a square image size. Received: {image_size}"
            )
        image_size = image_size[0]
    fields.update(
        image_size=image_size,
        vision_width=vision.get("width"),
        context_length=text.get("context_length"),
        vocabulary_size=text.get("vocab_size"),
        text_width=text.get("width"),
        # open_clip's `CLIPTextCfg` default when the config omits it.
        text_heads=text.get("heads", 8) if text else None,
        text_layers=text.get("layers"),
    )
    return {k: v for k, v in fields.items() if v is not None}


def open_clip_model_config(config):
    """The open_clip `model_cfg` dict of a `CLIPConfig` (for `open_clip`)."""
    vision = dict(
        layers=config.vision_layers if config.vision == "vit" else list(config.vision_layers),
        width=config.vision_width,
        image_size=config.image_size,
        mlp_ratio=config.mlp_ratio,
    )
    if config.vision == "vit":
        vision.update(
            patch_size=config.patch_size,
            head_width=config.vision_width // config.vision_heads,
        )
    else:  # open_clip: attention-pool heads = 32 * width // head_width.
        vision["head_width"] = 32 * config.vision_width // config.vision_heads
    return dict(
        embed_dim=config.embed_dim,
        quick_gelu=config.activation == "quick_gelu",
        vision_cfg=vision,
        text_cfg=dict(
            context_length=config.context_length,
            vocab_size=config.vocabulary_size,
            width=config.text_width,
            heads=config.text_heads,
            layers=config.text_layers,
            mlp_ratio=config.mlp_ratio,
        ),
    )
