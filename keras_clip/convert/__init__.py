"""Checkpoint conversion: OpenAI / open_clip / Hugging Face <-> `CLIPModel`.

- `from_open_clip(checkpoint, activation=None, tokenizer=None, **options)`:
  OpenAI `.pt` (TorchScript, read without running it), open_clip state
  dicts (`.safetensors`, `.pt`, `.bin`, hub folders), ViT or ResNet.
- `from_huggingface(path_or_model)`: a `transformers` CLIP folder or model.
- `to_open_clip(model, path=None)`: back to an open_clip state dict /
  `.safetensors`; `open_clip_model_config(config)` gives its `model_cfg`.
- `convert_main(argv)`: the `keras-clip convert` command.

torch is imported only to read `torch.save` files.
"""

import argparse
import os

from keras_clip.convert.checkpoint_io import UnsafeCheckpointError
from keras_clip.convert.checkpoint_io import load_state_dict
from keras_clip.convert.huggingface import from_huggingface
from keras_clip.convert.open_clip import from_open_clip
from keras_clip.convert.open_clip import open_clip_model_config
from keras_clip.convert.open_clip import to_open_clip

__all__ = [
    "UnsafeCheckpointError",
    "convert_main",
    "from_huggingface",
    "from_open_clip",
    "load_state_dict",
    "open_clip_model_config",
    "to_open_clip",
]


def _is_huggingface_folder(path):
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json"))


def convert_main(argv=None):
    """`keras-clip convert INPUT OUTPUT.keras [--activation ...]`.

    Converts an OpenAI / open_clip checkpoint or a Hugging Face folder into
    a `.keras` file carrying the model, its tokenizer (when the vocabulary
    is OpenAI's and open_clip is installed) and its preprocessing settings.

    Args:
        argv: command-line arguments without the program name.

    Returns:
        0 on success (errors raise).
    """
    parser = argparse.ArgumentParser(
        prog="keras-clip convert",
        description="Convert a CLIP checkpoint into a .keras model.",
    )
    parser.add_argument("input", help="checkpoint file or folder")
    parser.add_argument("output", help="path of the .keras file to write")
    parser.add_argument(
        "--source",
        choices=("auto", "open_clip", "huggingface"),
        default="auto",
        help="checkpoint family (auto: a folder with config.json is "
        "Hugging Face, anything else OpenAI / open_clip)",
    )
    parser.add_argument(
        "--activation",
        choices=("quick_gelu", "gelu"),
        default=None,
        help="MLP activation when the checkpoint cannot tell (OpenAI and "
        "'-quickgelu' models: quick_gelu; other open_clip models: gelu)",
    )
    parser.add_argument(
        "--no-tokenizer",
        action="store_true",
        help="do not attach OpenAI's tokenizer",
    )
    args = parser.parse_args(argv)
    if not args.output.endswith(".keras"):
        parser.error(f"OUTPUT must end in .keras. Received: {args.output}")
    tokenizer = False if args.no_tokenizer else None
    source = args.source
    if source == "auto":
        source = "huggingface" if _is_huggingface_folder(args.input) else "open_clip"
    if source == "huggingface":
        if args.activation:
            parser.error("--activation applies to OpenAI / open_clip checkpoints")
        model = from_huggingface(args.input, tokenizer=tokenizer)
    else:
        model = from_open_clip(
            args.input, activation=args.activation, tokenizer=tokenizer
        )
    model.save(args.output)
    c = model.config
    print(
        f"Wrote {args.output}: {c.vision} image tower, image {c.image_size}, "
        f"embed {c.embed_dim}, activation {c.activation}, tokenizer "
        f"{'yes' if model.tokenizer is not None else 'no'}"
    )
    return 0
