"""`keras-clip` command line.

`keras-clip demo`: an interim main job that trains a tiny CLIP on synthetic
image-caption pairs and checks it on caption combinations it never saw.
`keras-clip convert`: an OpenAI / open_clip / Hugging Face checkpoint into a
`.keras` file. The Twemoji demo, `train`, `eval` and `embed` arrive with
their issues.
"""

import argparse
import os
import sys
import time


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


def synthetic_pairs(n, image_size, context_length, eot_id, seed, words=8):
    """Compositional pairs: 3 words -> 3 coloured bands (plus noise).

    Returns images, token ids and the word triples. Every triple is
    distinct, so held-out triples are combinations the model never saw.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    palette = rng.standard_normal((words + 1, 3)).astype("float32")
    codes = rng.permutation(words**3)[:n]
    triples = np.stack([codes // words**2, (codes // words) % words, codes % words], 1) + 1
    images = 0.3 * rng.standard_normal((n, image_size, image_size, 3)).astype("float32")
    for j, rows in enumerate(np.array_split(np.arange(image_size), 3)):
        images[:, rows] += palette[triples[:, j]][:, None, None, :]
    ids = np.zeros((n, context_length), "int32")
    ids[:, 0] = eot_id - 1
    ids[:, 1:4] = triples
    ids[:, 4] = eot_id
    return images, ids, triples


def demo(args):
    import keras
    import numpy as np
    import tensorflow as tf

    import keras_clip

    keras.utils.set_random_seed(args.seed)
    model = keras_clip.CLIPModel.from_preset(args.preset)
    c = model.config
    images, ids, _ = synthetic_pairs(
        512, c.image_size, c.context_length, c.eot_token_id, args.seed
    )
    train, held_out = slice(0, 448), slice(448, 512)
    ds = (
        tf.data.Dataset.from_tensor_slices(
            {"images": images[train], "token_ids": ids[train]}
        )
        .shuffle(448, seed=args.seed)
        .repeat()
        .batch(args.batch_size, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
    )
    steps_per_epoch = 448 // args.batch_size
    model.compile(
        optimizer=keras_clip.make_optimizer(
            model,
            total_steps=args.epochs * steps_per_epoch,
            learning_rate=args.learning_rate,
            warmup_steps=steps_per_epoch,
            weight_decay=0.1,
        )
    )
    print(
        f"keras_clip demo (interim: synthetic data) on {keras.backend.backend()}: "
        f"{args.preset}, {model.count_params():,} parameters, "
        f"{args.epochs} epochs x {steps_per_epoch} steps of {args.batch_size} pairs"
    )
    start = time.time()
    model.fit(ds, epochs=args.epochs, steps_per_epoch=steps_per_epoch, verbose=2)
    seconds = time.time() - start
    # Zero-shot retrieval among the 64 held-out combinations.
    img = keras.ops.convert_to_numpy(model.encode_image(images[held_out]))
    txt = keras.ops.convert_to_numpy(model.encode_text(ids[held_out]))
    top1 = float(np.mean((img @ txt.T).argmax(1) == np.arange(len(img))))
    os.makedirs(args.output_dir, exist_ok=True)
    path = os.path.join(args.output_dir, "clip.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    again = keras.ops.convert_to_numpy(reloaded.encode_image(images[held_out]))
    assert np.allclose(again, img, atol=1e-5), "reloaded model differs"
    print(
        f"trained in {seconds:.0f} s ({args.epochs * steps_per_epoch * args.batch_size / seconds:.0f} pairs/s); "
        f"held-out combinations image->text top-1: {top1:.3f} (chance {1 / len(img):.3f})"
    )
    print(f"saved {path}")
    return 0


def build_parser():
    parser = argparse.ArgumentParser(prog="keras-clip", description=__doc__)
    parser.add_argument(
        "--backend",
        choices=["tensorflow", "jax", "torch"],
        help="Keras backend (default: $KERAS_BACKEND, else tensorflow).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="Train and check a tiny CLIP (interim, synthetic data).")
    p.add_argument("--preset", default="tiny-vit", help="Model preset (default: tiny-vit).")
    p.add_argument("--epochs", type=int, default=6, help="Training epochs (default: 6).")
    p.add_argument("--batch-size", type=int, default=64, help="Pairs per batch (default: 64).")
    p.add_argument("--learning-rate", type=float, default=2e-3, help="Peak learning rate (default: 2e-3).")
    p.add_argument("--seed", type=int, default=0, help="Random seed (default: 0).")
    p.add_argument("--output-dir", default="outputs/demo", help="Where clip.keras goes (default: outputs/demo).")
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
