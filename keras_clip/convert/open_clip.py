"""OpenAI / open_clip checkpoints <-> `keras_clip.CLIPModel`.

OpenAI's released `.pt` files (TorchScript archives) and open_clip's state
dicts share one key layout (`visual.*`, `transformer.resblocks.*`,
`token_embedding.weight`, ...). The architecture is read from the shapes,
the way OpenAI's `build_model` does; the few numbers shapes cannot tell
(attention heads, activation) come from the caller, from an open_clip
config, or from OpenAI's conventions.
"""

import json
import os
import warnings

import numpy as np

from keras_clip.models import config as configs
from keras_clip.convert import checkpoint_io
from keras_clip.convert import common
from keras_clip.convert.open_clip_config import fields_from_open_clip_config
from keras_clip.convert.open_clip_config import infer_config_fields
from keras_clip.convert.open_clip_config import open_clip_model_config  # noqa: F401
from keras_clip.convert.weight_map import CONSTANT
from keras_clip.convert.weight_map import CONV
from keras_clip.convert.weight_map import COUNTER
from keras_clip.convert.weight_map import LINEAR
from keras_clip.convert.weight_map import Entry
from keras_clip.convert.weight_map import export_state_dict

# Hub layout of open_clip checkpoints (`open_clip.push_to_hf_hub`).
_HUB_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
_HUB_CONFIG = "open_clip_config.json"


# ---- the key map ------------------------------------------------------


def _block_entries(prefix, block):
    return (
        common.layer_norm_entries(f"{prefix}ln_1", block.ln_1)
        + [
            Entry(f"{prefix}attn.in_proj_weight", block.attn.qkv.kernel, LINEAR),
            Entry(f"{prefix}attn.in_proj_bias", block.attn.qkv.bias),
            Entry(f"{prefix}attn.out_proj.weight", block.attn.out_proj.kernel, LINEAR),
            Entry(f"{prefix}attn.out_proj.bias", block.attn.out_proj.bias),
        ]
        + common.layer_norm_entries(f"{prefix}ln_2", block.ln_2)
        + common.dense_entries(f"{prefix}mlp.c_fc", block.mlp_fc)
        + common.dense_entries(f"{prefix}mlp.c_proj", block.mlp_proj)
    )


def _transformer_entries(prefix, transformer):
    entries = []
    for i, block in enumerate(transformer.blocks):
        entries += _block_entries(f"{prefix}resblocks.{i}.", block)
    return entries


def _batch_norm_entries(prefix, layer):
    return [
        Entry(f"{prefix}.weight", layer.gamma),
        Entry(f"{prefix}.bias", layer.beta),
        Entry(f"{prefix}.running_mean", layer.moving_mean),
        Entry(f"{prefix}.running_var", layer.moving_variance),
        Entry(f"{prefix}.num_batches_tracked", kind=COUNTER, optional=True),
    ]


def _conv_bn_entries(prefix, conv_name, bn_name, conv, bn):
    return [Entry(f"{prefix}{conv_name}.weight", conv.kernel, CONV)] + (
        _batch_norm_entries(f"{prefix}{bn_name}", bn)
    )


def _resnet_entries(encoder):
    stem = {layer.name: layer for layer in encoder.stem}
    entries = []
    for i in (1, 2, 3):
        entries += _conv_bn_entries(
            "visual.", f"conv{i}", f"bn{i}", stem[f"stem_conv{i}"], stem[f"stem_bn{i}"]
        )
    counters = {}
    for block in encoder.blocks:  # named layer{stage}_{i}
        stage = block.name.split("_")[0]
        index = counters[stage] = counters.get(stage, -1) + 1
        prefix = f"visual.{stage}.{index}."
        for i in (1, 2, 3):
            entries += _conv_bn_entries(
                prefix, f"conv{i}", f"bn{i}",
                getattr(block, f"conv{i}"), getattr(block, f"bn{i}"),
            )
        if block.downsample_conv is not None:
            entries += _conv_bn_entries(
                prefix, "downsample.0", "downsample.1",
                block.downsample_conv, block.downsample_bn,
            )
    pool = encoder.attnpool
    entries.append(
        Entry("visual.attnpool.positional_embedding", pool.positional_embedding)
    )
    for name in ("q_proj", "k_proj", "v_proj", "c_proj"):
        entries += common.dense_entries(f"visual.attnpool.{name}", getattr(pool, name))
    return entries


def _vit_entries(model):
    encoder = model.image_encoder
    return (
        [
            Entry("visual.class_embedding", encoder.class_embedding),
            Entry("visual.positional_embedding", encoder.positional_embedding),
            Entry("visual.proj", model.image_projection.kernel),
            Entry("visual.conv1.weight", encoder.patch_embedding.kernel, CONV),
        ]
        + common.layer_norm_entries("visual.ln_pre", encoder.ln_pre)
        + _transformer_entries("visual.transformer.", encoder.transformer)
        + common.layer_norm_entries("visual.ln_post", encoder.ln_post)
    )


def open_clip_entries(model):
    """The open_clip key map of a `CLIPModel` (list of `Entry`)."""
    config, text = model.config, model.text_encoder
    size, length = config.image_size, config.context_length
    mask = np.triu(np.full((length, length), -np.inf, np.float32), 1)
    entries = [
        Entry("positional_embedding", text.positional_embedding),
        Entry("text_projection", model.text_projection.kernel),
        Entry("logit_scale", model.logit_scale),
        # Buffers with one valid value: open_clip's causal mask (saved by
        # TorchScript) and the sizes OpenAI's archives record.
        Entry("attn_mask", kind=CONSTANT, value=mask, optional=True, export=False),
    ]
    for key, value in (
        ("input_resolution", size),
        ("context_length", length),
        ("vocab_size", config.vocabulary_size),
    ):
        entries.append(
            Entry(key, kind=CONSTANT, value=np.array(value), optional=True, export=False)
        )
    if config.vision == "vit":
        entries += _vit_entries(model)
    else:
        entries += _resnet_entries(model.image_encoder)
    entries += _transformer_entries("transformer.", text.transformer)
    entries.append(Entry("token_embedding.weight", text.token_embedding.embeddings))
    entries += common.layer_norm_entries("ln_final", text.ln_final)
    return entries


# ---- public API -------------------------------------------------------------


def _resolve_source(checkpoint, config):
    """`(state_dict, info, open_clip_config, source name)`."""
    if isinstance(checkpoint, dict):
        return checkpoint_io.unwrap_state_dict(checkpoint), {}, config, "a state dict"
    path = os.fspath(checkpoint)
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    if os.path.isdir(path):
        found = [n for n in _HUB_WEIGHTS if os.path.isfile(os.path.join(path, n))]
        if not found:
            raise FileNotFoundError(
                f"Expected one of {list(_HUB_WEIGHTS)} in the folder. "
                f"Received: {path}"
            )
        path = os.path.join(path, found[0])
    hub_config = os.path.join(folder, _HUB_CONFIG)
    if config is None and os.path.isfile(hub_config):
        config = hub_config
    state_dict, info = checkpoint_io.load_state_dict(path)
    return state_dict, info, config, path


def _warn_assumed_heads(fields, assumed, source):
    said = " and ".join(f"{name}={fields[name]}" for name in assumed)
    how = " and ".join(f"`{name}=`" for name in assumed)
    warnings.warn(
        f"Assumed {said} for {source} by OpenAI's rule (width / 64; the "
        "ResNet attention pool: width * 32 / 64): a bare state dict does not "
        "record head counts, and weights trained with other head counts "
        "convert without error but compute different embeddings. Pass "
        f"{how} to `from_open_clip` (or `config=`, the model's open_clip "
        "config) to set them.",
        UserWarning,
        stacklevel=3,
    )


def from_open_clip(
    checkpoint,
    activation=None,
    tokenizer=None,
    config=None,
    vision_heads=None,
    text_heads=None,
    **overrides,
):
    """Builds a `CLIPModel` from an OpenAI or open_clip checkpoint.

    The architecture (ViT or modified ResNet, widths, depths, patch and
    image size, context length, vocabulary, embedding size) is read from
    the weights' shapes; every key must be used, every shape must match
    and every weight must be finite, otherwise a `ValueError` names the
    offending keys. A file that is no checkpoint is a `ValueError` naming
    the formats read and what the file holds. Torch files are read with
    `weights_only=True` and OpenAI's TorchScript archives without running
    their code; torch is needed only for `torch.save` files.

    Attention head counts are not in the weights: they come from
    `vision_heads` / `text_heads`, or an open_clip `config`, or else
    OpenAI's rule (width / 64), which is exact for OpenAI's checkpoints
    (those carrying `input_resolution`) and is announced by a
    `UserWarning` for any other.

    Args:
        checkpoint: a state dict (torch tensors or NumPy arrays), a
            `.safetensors` / `.pt` / `.bin` file, an OpenAI TorchScript
            `.pt`, or an open_clip hub folder (`open_clip_config.json` +
            `open_clip_model.safetensors`).
        activation: "quick_gelu" (OpenAI weights, open_clip `-quickgelu`
            models) or "gelu" (other open_clip models). `None` takes it from
            the config, or from a TorchScript archive's classes, or QuickGELU
            when the checkpoint carries OpenAI's `input_resolution` key;
            otherwise it is an error, since the weights cannot tell.
        tokenizer: a tokenizer to attach; `None` attaches OpenAI's BPE
            tokenizer when the vocabulary has 49,408 tokens and its file is
            installed (open_clip ships it); `False` attaches none.
        config: an open_clip model config (dict or path to JSON, the
            `model_cfg` of `open_clip_config.json` or the whole file),
            cross-checked against the shapes; supplies heads, activation,
            mean / std. A hub folder's config is found automatically.
        vision_heads: int, attention heads of the image tower (a ViT's
            blocks, or a ResNet's attention pool); e.g. open_clip's
            `width // head_width` (`32 * width // head_width` for a ResNet).
        text_heads: int, attention heads of the text tower.
        **overrides: other `CLIPConfig` fields: those the shapes cannot tell
            (`eot_token_id`, `image_mean`, `image_std`, `logit_scale_max`)
            or, as a cross-check, others.

    Returns:
        A `keras_clip.CLIPModel` on the current Keras backend, float32.

    Example:

    ```python
    model = keras_clip.convert.from_open_clip("ViT-B-32.pt")  # OpenAI's file
    model.save("vit_b32.keras")
    ```
    """
    for name, value in (("vision_heads", vision_heads), ("text_heads", text_heads)):
        if value is not None:
            overrides[name] = value
    state_dict, info, config, source = _resolve_source(checkpoint, config)
    fields = infer_config_fields(state_dict, source)
    preprocess = {}
    from_config = {}
    if config is not None:
        if not isinstance(config, dict):
            with open(os.fspath(config)) as f:
                config = json.load(f)
        preprocess = config.get("preprocess_cfg") or {}
        config = config.get("model_cfg", config)
        from_config = fields_from_open_clip_config(config)
        common.cross_check(fields, from_config, "the open_clip config")
        for key in ("mean", "std"):
            if preprocess.get(key):
                fields[f"image_{key}"] = tuple(preprocess[key])
        if preprocess.get("interpolation") in configs.INTERPOLATIONS:
            fields["image_interpolation"] = preprocess["interpolation"]
    config_activation = None
    if config is not None and "quick_gelu" in config:
        config_activation = "quick_gelu" if config["quick_gelu"] else "gelu"
    names = info.get("class_names", set())
    archive_activation = (
        "quick_gelu" if "QuickGELU" in names else "gelu" if "GELU" in names else None
    )
    if activation is None:
        activation = config_activation or archive_activation
        if activation is None and "input_resolution" in state_dict:
            activation = "quick_gelu"  # OpenAI's own state dicts.
    elif config_activation not in (None, activation):
        raise ValueError(
            f"Expected activation={activation!r} to agree with the open_clip "
            f"config. Received: quick_gelu={config['quick_gelu']} there"
        )
    if activation is None:
        raise ValueError(
            "Could not tell the activation from this checkpoint. Pass "
            "activation='quick_gelu' (OpenAI weights, open_clip "
            "'-quickgelu' models) or activation='gelu' (other open_clip "
            f"models). Received: {source}"
        )
    fields["activation"] = activation
    assumed = [
        name for name in ("vision_heads", "text_heads")
        if name not in from_config and name not in overrides
    ]
    if assumed and "input_resolution" not in state_dict:
        _warn_assumed_heads(fields, assumed, source)
    fields = common.apply_overrides(fields, overrides)
    clip_config = configs.CLIPConfig(**fields)
    model = common.build_model(clip_config, tokenizer)
    common.load_model_weights(
        model, open_clip_entries(model), state_dict, source
    )
    return model


def to_open_clip(model, path=None):
    """Exports a `CLIPModel` as an open_clip / OpenAI state dict.

    The keys and layouts are those of `open_clip.model.CLIP.state_dict()`
    (BatchNorm `num_batches_tracked` counters are written as 0), so
    `to_open_clip(from_open_clip(sd))` reproduces every array of `sd`.
    Build the PyTorch model from `open_clip_model_config(model.config)`.

    Args:
        model: a `keras_clip.CLIPModel`.
        path: optional `.safetensors` file to write (no torch needed).

    Returns:
        dict of key -> NumPy array (float32; counters int64).
    """
    state_dict = export_state_dict(open_clip_entries(model))
    if path is not None:
        from safetensors.numpy import save_file

        save_file(state_dict, os.fspath(path), metadata={"format": "pt"})
    return state_dict
