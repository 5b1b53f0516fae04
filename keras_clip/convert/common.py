"""Helpers shared by the OpenAI / open_clip and Hugging Face converters."""

import dataclasses

import keras

from keras_clip.models import config as configs
from keras_clip.convert import weight_map
from keras_clip.convert.weight_map import LINEAR
from keras_clip.convert.weight_map import Entry

# Fields no checkpoint shape reveals: a caller may set them freely.
FREE_FIELDS = (
    "vision_heads",
    "text_heads",
    "eot_token_id",
    "image_mean",
    "image_std",
    "image_interpolation",
    "logit_scale_init",
    "logit_scale_max",
    "activation",
)
OPENAI_VOCABULARY_SIZE = 49408


def count_blocks(state_dict, prefix):
    """Number of blocks `prefix{i}.*` in a state dict (indices 0..n-1)."""
    found = set()
    for key in state_dict:
        if key.startswith(prefix):
            head = key[len(prefix):].split(".", 1)[0]
            if head.isdigit():
                found.add(int(head))
    if not found or found != set(range(len(found))):
        raise ValueError(
            f"Expected blocks {prefix}0, {prefix}1, ... numbered from 0 "
            f"without gaps. Received: indices {sorted(found)}"
        )
    return len(found)


def layer_norm_entries(prefix, layer):
    return [
        Entry(f"{prefix}.weight", layer.gamma),
        Entry(f"{prefix}.bias", layer.beta),
    ]


def dense_entries(prefix, layer):
    return [
        Entry(f"{prefix}.weight", layer.kernel, LINEAR),
        Entry(f"{prefix}.bias", layer.bias),
    ]


def _same(a, b):
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return abs(float(a) - float(b)) <= 1e-6 * max(1.0, abs(float(a)))
    return a == b


def cross_check(inferred, stated, where):
    """Copies `stated` fields into `inferred`, failing where shapes disagree."""
    wrong = [
        f"{key}: {stated[key]!r} there, {inferred[key]!r} from the weights"
        for key in stated
        if key in inferred and key not in FREE_FIELDS
        and not _same(inferred[key], stated[key])
    ]
    if wrong:
        raise ValueError(
            f"Expected {where} to agree with the checkpoint's shapes. "
            "Received: " + "; ".join(wrong)
        )
    inferred.update(stated)
    return inferred


def apply_overrides(fields, overrides):
    """Caller's `CLIPConfig` fields: free ones set, others cross-checked."""
    names = {f.name for f in dataclasses.fields(configs.CLIPConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(
            f"Expected `CLIPConfig` field names as options. Received: "
            f"{unknown}; valid names are {sorted(names)}"
        )
    return cross_check(dict(fields), dict(overrides), "the options")


def describe(config):
    """A few words naming an inferred architecture, for error messages."""
    if config.vision == "vit":
        vision = (
            f"ViT (width {config.vision_width}, {config.vision_layers} "
            f"layers, patch {config.patch_size}, image {config.image_size})"
        )
    else:
        vision = (
            f"modified ResNet (width {config.vision_width}, blocks "
            f"{config.vision_layers}, image {config.image_size})"
        )
    return (
        f"a CLIP {vision} with a text transformer (width "
        f"{config.text_width}, {config.text_layers} layers, context "
        f"{config.context_length}, vocabulary {config.vocabulary_size}), "
        f"embedding {config.embed_dim}"
    )


def openai_tokenizer(config):
    """OpenAI's BPE tokenizer when it fits `config` and is installed."""
    if config.vocabulary_size != OPENAI_VOCABULARY_SIZE:
        return None
    try:
        from keras_clip.text.tokenizer import CLIPTokenizer
    except ImportError:  # pragma: no cover - tokenizer module missing.
        return None
    try:
        return CLIPTokenizer.from_openai_vocab(
            context_length=config.context_length
        )
    except FileNotFoundError:
        return None


def check_tokenizer(tokenizer, config):
    """Fails when a tokenizer's vocabulary cannot drive `config`'s model."""
    size = getattr(tokenizer, "vocabulary_size", None)
    if size is not None and size != config.vocabulary_size:
        raise ValueError(
            f"Expected a tokenizer with {config.vocabulary_size} tokens. "
            f"Received: one with {size}"
        )
    eot = getattr(tokenizer, "eot_token_id", None)
    if eot is not None and eot != config.eot_token_id:
        raise ValueError(
            f"Expected the tokenizer's end-of-text id to be the model's "
            f"{config.eot_token_id}. Received: {eot}"
        )
    length = getattr(tokenizer, "context_length", None)
    if length is not None and length > config.context_length:
        raise ValueError(
            f"Expected a tokenizer context length <= {config.context_length}. "
            f"Received: {length}"
        )


def build_model(config, tokenizer=None):
    """An untrained `CLIPModel` of `config`, with its tokenizer attached.

    Args:
        config: `CLIPConfig`.
        tokenizer: a tokenizer, `None` (OpenAI's when it fits) or `False`.
    """
    from keras_clip.models.clip_model import CLIPModel

    if tokenizer is None:
        tokenizer = openai_tokenizer(config)
    elif tokenizer is False:
        tokenizer = None
    else:
        check_tokenizer(tokenizer, config)
    # Variables stay uninitialised until `load_model_weights` gives them the
    # checkpoint's values: no random initializer runs.
    with keras.StatelessScope(initialize_variables=False):
        return CLIPModel(config, tokenizer=tokenizer)


def load_model_weights(model, entries, state_dict, source):
    """`weight_map.load_weights` for a model from `build_model`."""
    try:
        weight_map.load_weights(
            entries, state_dict, describe(model.config), source
        )
    except Exception:
        weight_map.abandon_deferred(model.weights)
        raise
