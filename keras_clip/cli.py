"""`keras-clip` command line.

`keras-clip demo`: the main job: trains a small CLIP on Twemoji and tests it
zero-shot on held-out concepts and on the unseen Noto art style.
`keras-clip convert`: an OpenAI / open_clip / Hugging Face checkpoint into a
`.keras` file. `train`, `eval` and `embed` arrive with their issue.
"""

import argparse
import os
import sys


def _configure_environment(backend, argv):
    """Sets the backend and quiet, offline defaults for this process.

    Keras fixes its backend when first imported, and importing this module
    (part of `keras_clip`) already imported it: a different `--backend`
    re-executes the command with `KERAS_BACKEND` set.
    """
    if backend and os.environ.get("KERAS_BACKEND") != backend:
        os.environ["KERAS_BACKEND"] = backend
        if "keras" in sys.modules:
            os.execv(sys.executable, [sys.executable, "-m", "keras_clip.cli", *argv])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # JAX on CPU: the partitionable threefry kernels take seconds each to
    # compile (one per weight shape); see README "JAX on CPU".
    if "JAX_THREEFRY_PARTITIONABLE" not in os.environ:
        os.environ["JAX_THREEFRY_PARTITIONABLE"] = "false"
        if "jax" in sys.modules:
            sys.modules["jax"].config.update("jax_threefry_partitionable", False)


def demo(args):
    from keras_clip import demo as demo_app

    demo_app.run(
        output_dir=args.output_dir,
        minutes=args.minutes,
        epochs=args.epochs,
        batch_size=args.batch_size,
        image_size=args.image_size,
        vocabulary_size=args.vocabulary_size,
        learning_rate=args.learning_rate,
        preset=args.preset,
        seed=args.seed,
    )
    return 0


def build_parser():
    parser = argparse.ArgumentParser(prog="keras-clip", description=__doc__)
    parser.add_argument(
        "--backend",
        choices=["tensorflow", "jax", "torch"],
        help="Keras backend (default: $KERAS_BACKEND, else tensorflow).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "demo",
        help="Train a small CLIP on Twemoji and test it zero-shot on held-out "
        "concepts and the unseen Noto style.",
    )
    p.add_argument("--preset", default="demo-resnet", help="Model preset (default: demo-resnet).")
    p.add_argument("--minutes", type=float, default=8.0, help="Training time cap in minutes; stops early if reached (default: 8).")
    p.add_argument("--epochs", type=int, default=12, help="Epochs of warm-up + cosine schedule (default: 12, about 5 min on 2 cores).")
    p.add_argument("--batch-size", type=int, default=128, help="Pairs per batch (default: 128).")
    p.add_argument("--image-size", type=int, default=64, help="Image resolution (default: 64).")
    p.add_argument("--vocabulary-size", type=int, default=2000, help="BPE vocabulary learnt from the training captions (default: 2000).")
    p.add_argument("--learning-rate", type=float, default=2e-3, help="Peak learning rate (default: 2e-3).")
    p.add_argument("--seed", type=int, default=0, help="Random seed, also of the concept hold-out (default: 0).")
    p.add_argument("--output-dir", default="outputs/demo", help="Where clip.keras and metrics.json go (default: outputs/demo).")
    p.set_defaults(func=demo)
    p = sub.add_parser(
        "convert",
        add_help=False,
        help="Convert an OpenAI / open_clip / Hugging Face checkpoint to .keras "
        "(`keras-clip convert --help` lists its options).",
    )
    p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(func=convert)
    return parser


def convert(args):
    from keras_clip.convert import convert_main

    return convert_main(args.args)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if args.command == "convert":
        # `convert` parses its own options (and its own --help).
        args.args = unknown + args.args
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    _configure_environment(args.backend, argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
