"""Hugging Face `transformers` CLIP checkpoints -> `keras_clip.CLIPModel`.

A Hugging Face CLIP folder holds `config.json`, `model.safetensors` (or
`pytorch_model.bin`, or shards listed in an index) and usually
`preprocessor_config.json`. Its ViT differs from OpenAI's only in names
and in separate q/k/v projections, which become slices of keras_clip's
fused `qkv` kernel.
"""

import json
import os

import numpy as np

from keras_clip.models import config as configs
from keras_clip.convert import checkpoint_io
from keras_clip.convert import common
from keras_clip.convert.weight_map import BIAS_PART
from keras_clip.convert.weight_map import CONSTANT
from keras_clip.convert.weight_map import CONV
from keras_clip.convert.weight_map import LINEAR
from keras_clip.convert.weight_map import LINEAR_PART
from keras_clip.convert.weight_map import Entry

_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
# transformers' defaults (CLIPTextConfig / CLIPVisionConfig), used when a
# config.json leaves a field out.
_TEXT_DEFAULTS = dict(
    vocab_size=49408, hidden_size=512, intermediate_size=2048,
    num_hidden_layers=12, num_attention_heads=8, max_position_embeddings=77,
    hidden_act="quick_gelu", layer_norm_eps=1e-5, eos_token_id=49407,
)
_VISION_DEFAULTS = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
    num_attention_heads=12, num_channels=3, image_size=224, patch_size=32,
    hidden_act="quick_gelu", layer_norm_eps=1e-5,
)
_ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu"}
# Before transformers PR #24773 CLIP configs said eos_token_id=2 and the
# text model pools at argmax(input_ids), i.e. at the largest id.
_LEGACY_EOS_TOKEN_ID = 2


def config_fields(hf_config):
    """`CLIPConfig` fields of a Hugging Face CLIP `config.json` dict."""
    if hf_config.get("model_type", "clip") != "clip":
        raise ValueError(
            "Expected a Hugging Face CLIPModel config (model_type 'clip'). "
            f"Received: model_type={hf_config.get('model_type')!r}"
        )
    text = {**_TEXT_DEFAULTS, **(hf_config.get("text_config") or {})}
    vision = {**_VISION_DEFAULTS, **(hf_config.get("vision_config") or {})}
    acts = {text["hidden_act"], vision["hidden_act"]}
    if len(acts) != 1 or not acts <= set(_ACTIVATIONS):
        raise ValueError(
            "Expected one hidden_act, 'quick_gelu' or 'gelu', for both "
            f"towers. Received: text {text['hidden_act']!r}, vision "
            f"{vision['hidden_act']!r}"
        )
    for name, tower in (("text", text), ("vision", vision)):
        if abs(tower["layer_norm_eps"] - 1e-5) > 1e-12:
            raise ValueError(
                "Expected layer_norm_eps=1e-05 (keras_clip's LayerNorms "
                f"use PyTorch's default). Received: {tower['layer_norm_eps']} "
                f"in the {name} config"
            )
    ratios = (
        text["intermediate_size"] / text["hidden_size"],
        vision["intermediate_size"] / vision["hidden_size"],
    )
    if ratios[0] != ratios[1]:
        raise ValueError(
            "Expected one MLP ratio for both towers (CLIPConfig has one). "
            f"Received: text {ratios[0]}, vision {ratios[1]}"
        )
    eos = text["eos_token_id"]
    if isinstance(eos, (list, tuple)):
        eos = eos[0]
    if eos == _LEGACY_EOS_TOKEN_ID:
        eos = text["vocab_size"] - 1
    return dict(
        embed_dim=hf_config.get("projection_dim", 512),
        vision="vit",
        image_size=vision["image_size"],
        vision_width=vision["hidden_size"],
        vision_layers=vision["num_hidden_layers"],
        vision_heads=vision["num_attention_heads"],
        patch_size=vision["patch_size"],
        context_length=text["max_position_embeddings"],
        vocabulary_size=text["vocab_size"],
        text_width=text["hidden_size"],
        text_heads=text["num_attention_heads"],
        text_layers=text["num_hidden_layers"],
        eot_token_id=eos,
        activation=_ACTIVATIONS[text["hidden_act"]],
        mlp_ratio=ratios[0],
    )


def infer_config_fields(state_dict):
    """`CLIPConfig` fields read from a Hugging Face CLIP state dict's shapes."""
    sd = state_dict
    needed = (
        "vision_model.embeddings.patch_embedding.weight",
        "vision_model.embeddings.position_embedding.weight",
        "text_model.embeddings.token_embedding.weight",
        "text_model.embeddings.position_embedding.weight",
        "text_projection.weight",
    )
    absent = [k for k in needed if k not in sd]
    if absent:
        raise ValueError(
            f"Expected a Hugging Face CLIPModel state dict. Received: one "
            f"without {absent}"
        )
    width, channels, patch, _ = sd[needed[0]].shape
    if channels != 3:
        raise ValueError(
            f"Expected RGB input (3 channels). Received: {channels} channels"
        )
    positions = sd[needed[1]].shape[0] - 1
    grid = int(round(positions**0.5))
    if grid * grid != positions:
        raise ValueError(
            f"Expected a square number of image patches. Received: {positions}"
        )
    vocabulary, text_width = sd[needed[2]].shape
    return dict(
        embed_dim=sd["text_projection.weight"].shape[0],
        image_size=grid * patch,
        vision_width=width,
        vision_layers=common.count_blocks(sd, "vision_model.encoder.layers."),
        patch_size=patch,
        context_length=sd[needed[3]].shape[0],
        vocabulary_size=vocabulary,
        text_width=text_width,
        text_layers=common.count_blocks(sd, "text_model.encoder.layers."),
    )


def _layer_entries(prefix, block):
    entries = common.layer_norm_entries(f"{prefix}layer_norm1", block.ln_1)
    qkv = block.attn.qkv
    for index, name in enumerate(("q_proj", "k_proj", "v_proj")):
        entries += [
            Entry(f"{prefix}self_attn.{name}.weight", qkv.kernel, LINEAR_PART, (index, 3)),
            Entry(f"{prefix}self_attn.{name}.bias", qkv.bias, BIAS_PART, (index, 3)),
        ]
    return (
        entries
        + common.dense_entries(f"{prefix}self_attn.out_proj", block.attn.out_proj)
        + common.layer_norm_entries(f"{prefix}layer_norm2", block.ln_2)
        + common.dense_entries(f"{prefix}mlp.fc1", block.mlp_fc)
        + common.dense_entries(f"{prefix}mlp.fc2", block.mlp_proj)
    )


def _encoder_entries(prefix, transformer):
    entries = []
    for i, block in enumerate(transformer.blocks):
        entries += _layer_entries(f"{prefix}encoder.layers.{i}.", block)
    return entries


def huggingface_entries(model):
    """The Hugging Face key map of a ViT `CLIPModel` (list of `Entry`)."""
    vision, text = model.image_encoder, model.text_encoder
    config = model.config
    if config.vision != "vit":
        raise ValueError(
            "Expected a ViT CLIPModel (Hugging Face CLIP has no ResNet). "
            f"Received: vision={config.vision!r}"
        )
    v, t = "vision_model.", "text_model."
    entries = [
        Entry(f"{v}embeddings.class_embedding", vision.class_embedding),
        Entry(f"{v}embeddings.patch_embedding.weight", vision.patch_embedding.kernel, CONV),
        Entry(f"{v}embeddings.position_embedding.weight", vision.positional_embedding),
    ]
    entries += common.layer_norm_entries(f"{v}pre_layrnorm", vision.ln_pre)
    entries += _encoder_entries(v, vision.transformer)
    entries += common.layer_norm_entries(f"{v}post_layernorm", vision.ln_post)
    entries += [
        Entry("visual_projection.weight", model.image_projection.kernel, LINEAR),
        Entry(f"{t}embeddings.token_embedding.weight", text.token_embedding.embeddings),
        Entry(f"{t}embeddings.position_embedding.weight", text.positional_embedding),
    ]
    entries += _encoder_entries(t, text.transformer)
    entries += common.layer_norm_entries(f"{t}final_layer_norm", text.ln_final)
    entries += [
        Entry("text_projection.weight", model.text_projection.kernel, LINEAR),
        Entry("logit_scale", model.logit_scale),
    ]
    # Older checkpoints save the position-id buffers (always 0..n-1).
    for prefix, count in (
        (v, (config.image_size // config.patch_size) ** 2 + 1),
        (t, config.context_length),
    ):
        entries.append(Entry(
            f"{prefix}embeddings.position_ids", kind=CONSTANT,
            value=np.arange(count, dtype=np.int64)[None], optional=True,
            export=False,
        ))
    return entries


def _read_folder(path):
    """`(config, state_dict, preprocessor config or {})` of a HF folder."""
    with open(os.path.join(path, "config.json")) as f:
        hf_config = json.load(f)
    files = [n for n in _WEIGHTS if os.path.isfile(os.path.join(path, n))]
    if not files:
        for index in _INDEXES:
            if os.path.isfile(os.path.join(path, index)):
                with open(os.path.join(path, index)) as f:
                    files = sorted(set(json.load(f)["weight_map"].values()))
                break
    if not files:
        raise FileNotFoundError(
            f"Expected one of {list(_WEIGHTS + _INDEXES)} in {path}. "
            "Received: none"
        )
    state_dict = {}
    for name in files[:1] if files[0] in _WEIGHTS else files:
        state_dict.update(
            checkpoint_io.load_state_dict(os.path.join(path, name))[0]
        )
    preprocess = {}
    preprocess_path = os.path.join(path, "preprocessor_config.json")
    if os.path.isfile(preprocess_path):
        with open(preprocess_path) as f:
            preprocess = json.load(f)
    return hf_config, state_dict, preprocess


def from_huggingface(path_or_model, tokenizer=None, **overrides):
    """Builds a `CLIPModel` from a Hugging Face `transformers` CLIP model.

    The config (`hidden_act`, `layer_norm_eps`, heads, `eos_token_id`,
    `projection_dim`) is cross-checked against the weights' shapes; every
    key must be used and every shape must match. Legacy configs with
    `eos_token_id=2` pool at the largest token id, as transformers does;
    keras_clip then pools at the first `vocab_size - 1` (OpenAI's
    `<|endoftext|>`), which is the same position for OpenAI's tokenizer.

    Args:
        path_or_model: a folder with `config.json` and `model.safetensors`
            / `pytorch_model.bin` (+ optional `preprocessor_config.json`,
            whose `image_mean` / `image_std` are kept), or a
            `transformers.CLIPModel` instance.
        tokenizer: a tokenizer to attach; `None` attaches OpenAI's BPE
            tokenizer when the vocabulary has 49,408 tokens and its file is
            installed; `False` attaches none.
        **overrides: `CLIPConfig` fields (e.g. `image_mean`), cross-checked
            against the checkpoint where the checkpoint states them.

    Returns:
        A `keras_clip.CLIPModel` on the current Keras backend, float32.

    Example:

    ```python
    model = keras_clip.convert.from_huggingface("clip-vit-base-patch32/")
    ```
    """
    if hasattr(path_or_model, "state_dict") and hasattr(path_or_model, "config"):
        hf_config = path_or_model.config.to_dict()
        state_dict = checkpoint_io.unwrap_state_dict(path_or_model.state_dict())
        preprocess, source = {}, type(path_or_model).__name__
    else:
        source = os.fspath(path_or_model)
        if not os.path.isdir(source):
            raise ValueError(
                "Expected a Hugging Face model folder or a transformers "
                f"CLIPModel. Received: {path_or_model!r}"
            )
        hf_config, state_dict, preprocess = _read_folder(source)
    fields = common.cross_check(
        infer_config_fields(state_dict), config_fields(hf_config), "config.json"
    )
    for key in ("mean", "std"):
        if preprocess.get(f"image_{key}"):
            fields[f"image_{key}"] = tuple(preprocess[f"image_{key}"])
    # PIL resampling codes, as transformers' image processors store them.
    resample = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}
    if preprocess.get("resample") in resample:
        fields["image_interpolation"] = resample[preprocess["resample"]]
    fields = common.apply_overrides(fields, overrides)
    config = configs.CLIPConfig(**fields)
    model = common.build_model(config, tokenizer)
    common.load_model_weights(
        model, huggingface_entries(model), state_dict, source
    )
    return model
