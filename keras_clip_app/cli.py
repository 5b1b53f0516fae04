"""`keras-clip`: train, evaluate and use CLIP models on any Keras backend.

commands:
  train      train a CLIP on image-caption data; resumes from its output folder
  eval       zero-shot classification, retrieval or linear-probe evaluation
  embed      images or texts -> .npy embeddings (inputs listed beside them)
  demo       the main job: train on Twemoji, test zero-shot on unseen concepts
             and on the unseen Noto art style
  convert    an OpenAI / open_clip / Hugging Face checkpoint -> .keras

`--backend` (before the command) or $KERAS_BACKEND picks the backend.
`keras-clip COMMAND --help` documents every option of a command.

A mistake in the input (a flag, a file, a damaged model) is one line on
stderr that says what was expected, what arrived and the fix, and a non-zero
exit status; `--debug` shows the traceback instead.
"""

# Outside the `keras_clip` package: parsing (and `--help`) must not import
# Keras, and the backend must be chosen before it is.

import argparse
import os
import sys


def _configure_environment(backend, argv):
    """Sets the backend and quiet, offline defaults for this process.

    Keras fixes its backend when first imported; if it already was (`main`
    called from Python), a different `--backend` re-executes the command.
    """
    if backend and os.environ.get("KERAS_BACKEND") != backend:
        os.environ["KERAS_BACKEND"] = backend
        if "keras" in sys.modules:
            os.execv(sys.executable, [sys.executable, "-m", "keras_clip_app.cli", *argv])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # JAX on CPU: the partitionable threefry kernels take seconds each to
    # compile (one per weight shape); see README "JAX on CPU".
    if "JAX_THREEFRY_PARTITIONABLE" not in os.environ:
        os.environ["JAX_THREEFRY_PARTITIONABLE"] = "false"
        if "jax" in sys.modules:
            sys.modules["jax"].config.update("jax_threefry_partitionable", False)


def demo(args):
    from keras_clip_app import demo as demo_app

    metrics = demo_app.run(
        output_dir=args.output_dir,
        minutes=args.minutes,
        epochs=args.epochs,
        batch_size=args.batch_size,
        image_size=args.image_size,
        vocabulary_size=args.vocabulary_size,
        learning_rate=args.learning_rate,
        label_smoothing=args.label_smoothing,
        alias_probability=args.alias_probability,
        preset=args.preset,
        seed=args.seed,
        jit_compile=args.jit_compile,
    )
    return _exit_status("demo", metrics)


def _exit_status(command, metrics):
    """0 for a finished run; 130 (as after Ctrl-C) for an interrupted one;
    1, with the reason on stderr, for a failed one."""
    status = metrics.get("status", "complete")
    if status == "complete":
        return 0
    if status == "interrupted":
        return 130
    failure = metrics.get("non_finite") or {}
    print(f"keras-clip {command}: error: training failed: the {failure.get('metric', 'loss')} "
          f"was {failure.get('value')} at step {failure.get('step')}; see above for what was "
          "kept and what to change.", file=sys.stderr)
    return 1


def _jit_compile(text):
    values = {"auto": "auto", "true": True, "false": False}
    if text.lower() not in values:
        raise argparse.ArgumentTypeError(f"expected auto, true or false, got {text!r}")
    return values[text.lower()]


JIT_COMPILE_HELP = (
    "Compile the training step with XLA (TF, JAX) or torch.compile: auto is Keras's choice (XLA on "
    "JAX; on TF only with a GPU/TPU; never on torch); true on TF with only CPUs made steps faster "
    "in the README's measurements, after more compilation (README, Performance); on torch it was "
    "slower (default: auto)."
)


def _int_at_least(minimum, why=""):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}{why}, got {text!r}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


_non_negative_int = _int_at_least(0)
_positive_int = _int_at_least(1)
_batch_size = _int_at_least(2, " (a batch of one pair has no negatives to learn from)")


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def _floats(text):
    return tuple(float(v) for v in text.split(","))


def train(args):
    from keras_clip_app import commands as app

    metrics = app.run_train(
        args.train_data,
        args.output_dir,
        preset=args.preset,
        config=args.config,
        dataset_type_name=args.dataset_type,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        warmup_steps=args.warmup,
        weight_decay=args.wd,
        label_smoothing=args.label_smoothing,
        precision=args.precision,
        image_size=args.image_size,
        tokenizer=args.tokenizer,
        vocabulary_size=args.vocabulary_size,
        train_num_samples=args.train_num_samples,
        crop_scale=args.crop_scale,
        rotation=args.rotation,
        downscale=args.downscale,
        token_multiple=args.token_multiple,
        csv_img_key=args.csv_img_key,
        csv_caption_key=args.csv_caption_key,
        csv_separator=args.csv_separator,
        val_data=args.val_data,
        val_every=args.val_every,
        seed=args.seed,
        resume=not args.restart,
        verbose="auto",  # Keras's bar on a terminal, plain lines in a log
        jit_compile=args.jit_compile,
        tensorboard=args.tensorboard,
    )
    return _exit_status("train", metrics)


def eval_zeroshot(args):
    from keras_clip_app import commands as app

    app.run_eval_zeroshot(args.model, args.data, args.output_dir, classnames=args.classnames,
                          templates=args.templates, batch_size=args.batch_size)
    return 0


def eval_retrieval(args):
    from keras_clip_app import commands as app

    app.run_eval_retrieval(args.model, args.data, args.output_dir, csv_img_key=args.csv_img_key,
                           csv_caption_key=args.csv_caption_key, csv_separator=args.csv_separator,
                           batch_size=args.batch_size)
    return 0


def eval_linear_probe(args):
    from keras_clip_app import commands as app

    app.run_eval_linear_probe(args.model, args.train, args.test, args.output_dir, val_dir=args.val,
                              batch_size=args.batch_size, max_iter=args.max_iter)
    return 0


def embed(args):
    from keras_clip_app import commands as app

    app.run_embed(args.model, args.output, images=args.images, texts=args.texts,
                  batch_size=args.batch_size)
    return 0


def _csv_options(p):
    p.add_argument("--csv-img-key", default="filepath", help="CSV column of image paths, relative to the CSV's folder (default: filepath).")
    p.add_argument("--csv-caption-key", default="title", help="CSV column of captions (default: title).")
    p.add_argument("--csv-separator", default=None, help="CSV separator (default: tab for .tsv/.txt, else comma).")


DEBUG_HELP = "On an error, show the Python traceback instead of the one-line message."


def _debug_option(p):
    # Also after the command; SUPPRESS keeps a value given before it.
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)


def build_parser():
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="keras-clip", description=__doc__, formatter_class=formatter)
    parser.add_argument(
        "--backend",
        choices=["tensorflow", "jax", "torch"],
        help="Keras backend (default: $KERAS_BACKEND, else Keras's configured default).",
    )
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "train",
        help="Train a CLIP on image-caption data; resumes from --output-dir.",
        description="Train a CLIP with the symmetric contrastive loss. Writes checkpoint.keras "
        "(every epoch and on Ctrl-C / SIGTERM; the one before is kept as checkpoint.prev.keras), "
        "history.csv, training_curves.png, metrics.json and, when done, clip.keras into "
        "--output-dir. Running the same command again resumes at the saved optimizer step (from "
        "checkpoint.prev.keras if checkpoint.keras is damaged); a resume that changes --epochs, "
        "--batch-size or a model / optimizer setting is refused; --restart starts over. A NaN or "
        "infinite loss stops the run with a non-zero exit status, keeping the last good checkpoint.",
    )
    p.add_argument("--train-data", required=True, nargs="+", help="A CSV/TSV (image path + caption), WebDataset .tar shards (list or {000..009} brace pattern), TFRecord files, or 'twemoji' (the embedded emoji set's training split).")
    p.add_argument("--dataset-type", default="auto", choices=["auto", "csv", "webdataset", "tfrecord", "twemoji"], help="Source kind (default: guessed from the file names).")
    _csv_options(p)
    p.add_argument("--train-num-samples", type=_positive_int, default=None, help="Samples per epoch; required for WebDataset / TFRecord sources, whose size is unknown up front.")
    p.add_argument("--output-dir", required=True, help="Folder for checkpoints, logs, figures and the final model.")
    p.add_argument("--preset", default="tiny-vit", help="Model preset, e.g. tiny-vit, demo-resnet, RN50, ViT-B/32 (default: tiny-vit).")
    p.add_argument("--config", default=None, help="JSON file of CLIPConfig fields; overrides --preset.")
    p.add_argument("--image-size", type=_positive_int, default=None, help="Image resolution (default: the preset's).")
    p.add_argument("--tokenizer", default="auto", choices=["auto", "openai", "train"], help="openai: OpenAI's 49,408-token BPE (from an installed open_clip / clip package); train: learn a BPE vocabulary from the training captions; auto: openai for presets with 49,408 tokens, else train.")
    p.add_argument("--vocabulary-size", type=_positive_int, default=8192, help="Vocabulary size with --tokenizer train (default: 8192).")
    p.add_argument("--epochs", type=_positive_int, default=10, help="Total epochs, across resumptions; fixed for a run, as its learning-rate schedule is (default: 10).")
    p.add_argument("--batch-size", type=_batch_size, default=128, help="Pairs per step; every pair's negatives are the other pairs of the batch (default: 128).")
    p.add_argument("--lr", type=float, default=5e-4, help="Peak learning rate of AdamW (default: 5e-4).")
    p.add_argument("--warmup", type=_non_negative_int, default=100, help="Linear warm-up steps before the cosine decay (default: 100).")
    p.add_argument("--wd", type=float, default=0.2, help="Decoupled weight decay; not on gains, biases, embeddings or the temperature (default: 0.2).")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="Label smoothing of both contrastive cross-entropies, in [0, 1): each target keeps 1 - eps on its pair and spreads eps over the batch (default: 0, the paper's loss).")
    p.add_argument("--precision", default="float32", choices=["float32", "mixed_bfloat16", "mixed_float16"], help="Keras dtype policy; the loss and temperature stay float32 (default: float32).")
    p.add_argument("--crop-scale", type=_floats, default=(0.9, 1.0), help="Random-resized-crop area range, as 'low,high' (default: 0.9,1.0).")
    p.add_argument("--rotation", type=float, default=0.0, help="Largest random rotation in degrees (default: 0).")
    p.add_argument("--downscale", type=float, default=0.0, help="Probability of a random drop in resolution (each side to 0.25-1 of its pixels, then back), which blurs away fine detail (default: 0).")
    p.add_argument("--token-multiple", type=_non_negative_int, default=0, help="Cut each batch's token ids after its longest caption, rounded up to a multiple of N: the cut columns are padding, so the text features are the same at less cost when captions are much shorter than the context length. Each batch length is one more compilation on JAX or with --jit-compile true, so 8 or 16 keeps their number small (default: 0, off).")
    p.add_argument("--val-data", default=None, help="A CSV of validation pairs: image-text retrieval every --val-every epochs.")
    p.add_argument("--val-every", type=_positive_int, default=1, help="Evaluate every N epochs (default: 1).")
    p.add_argument("--seed", type=int, default=0, help="Seed of initialisation, shuffling and augmentation (default: 0).")
    p.add_argument("--restart", action="store_true", help="Start over: remove the earlier run's checkpoints, history, TensorBoard logs and clip.keras from --output-dir first.")
    p.add_argument("--tensorboard", action="store_true", help="Also write TensorBoard logs into OUTPUT_DIR/tensorboard: loss, accuracies, logit scale, learning rate, skipped samples and evaluation metrics per epoch (view with: tensorboard --logdir OUTPUT_DIR/tensorboard).")
    p.add_argument("--jit-compile", type=_jit_compile, default="auto", help=JIT_COMPILE_HELP + " A resumed run takes this value too.")
    _debug_option(p)
    p.set_defaults(func=train)

    p = sub.add_parser("eval", help="Zero-shot, retrieval or linear-probe evaluation of a .keras model.",
                       description="Evaluate a saved .keras CLIP model. Each task writes metrics.json (and a figure) into --output-dir.")
    tasks = p.add_subparsers(dest="task", required=True, metavar="TASK")
    t = tasks.add_parser("zeroshot", help="Zero-shot classification of a class-per-folder image set.",
                         description="Zero-shot classification: class names -> prompt templates -> text embeddings "
                         "-> a classifier with no training images. Images come as DATA/<class name>/<image files>. "
                         "Writes metrics.json (top-1/top-5, per-class accuracy, most confused pairs) and predictions.png.")
    t.add_argument("--model", required=True, help="A saved .keras CLIP model.")
    t.add_argument("--data", required=True, help="Folder of class subfolders (folder names are class names, '_' read as space).")
    t.add_argument("--classnames", default=None, help="Class names instead of the folder names, in sorted-folder order: a .json / .txt file or a clip-benchmark dataset name (e.g. cifar10).")
    t.add_argument("--templates", default=None, help="simple ('a photo of a {}.', default), imagenet (OpenAI's 80), bare ('{}'), one template with {}, a .json / .txt file, or a clip-benchmark dataset name.")
    t.add_argument("--batch-size", type=_positive_int, default=64, help="Images per encoder call (default: 64).")
    t.add_argument("--output-dir", default="outputs/eval", help="Where metrics.json and predictions.png go (default: outputs/eval).")
    _debug_option(t)
    t.set_defaults(func=eval_zeroshot)
    t = tasks.add_parser("retrieval", help="Image-text retrieval recall@1/5/10 on a CSV of pairs.",
                         description="Image->text and text->image recall@1/5/10 and mean / median rank. Rows sharing "
                         "an image path are several captions of one image. Writes metrics.json and similarity.png.")
    t.add_argument("--model", required=True, help="A saved .keras CLIP model.")
    t.add_argument("--data", required=True, help="CSV/TSV of image paths and captions.")
    _csv_options(t)
    t.add_argument("--batch-size", type=_positive_int, default=64, help="Images per encoder call (default: 64).")
    t.add_argument("--output-dir", default="outputs/eval", help="Where metrics.json and similarity.png go (default: outputs/eval).")
    _debug_option(t)
    t.set_defaults(func=eval_retrieval)
    t = tasks.add_parser("linear-probe", help="Logistic regression on frozen image features.",
                         description="The paper's linear-probe protocol: L2-regularised logistic regression on frozen "
                         "image embeddings, the L2 strength swept on a validation split, then refit on train + validation "
                         "and scored on test. Each split is a class-per-folder image set with the same classes.")
    t.add_argument("--model", required=True, help="A saved .keras CLIP model.")
    t.add_argument("--train", required=True, help="Training images, DATA/<class>/<images>.")
    t.add_argument("--test", required=True, help="Test images, same classes.")
    t.add_argument("--val", default=None, help="Validation images (default: 20%% of --train, split with a fixed seed).")
    t.add_argument("--max-iter", type=_positive_int, default=1000, help="Optimiser iterations per fit (default: 1000).")
    t.add_argument("--batch-size", type=_positive_int, default=64, help="Images per encoder call (default: 64).")
    t.add_argument("--output-dir", default="outputs/eval", help="Where metrics.json goes (default: outputs/eval).")
    _debug_option(t)
    t.set_defaults(func=eval_linear_probe)

    p = sub.add_parser("embed", help="Images or texts -> .npy unit embeddings.",
                       description="Embed images (files or folders, searched recursively) or texts (a file with one text "
                       "per line, a .json list, or one literal string) with a saved model. Writes OUTPUT.npy (float32, "
                       "L2-normalised, one row per input) and OUTPUT.txt listing the inputs in row order; unreadable "
                       "images are reported and left out of both.")
    p.add_argument("--model", required=True, help="A saved .keras CLIP model.")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--images", nargs="+", help="Image files and / or folders.")
    what.add_argument("--texts", help="A text file (one per line), a .json list, or a literal string.")
    p.add_argument("--output", required=True, help="Output .npy path; the inputs, in row order, go beside it as OUTPUT.rows.txt (out.npy -> out.rows.txt). An output that would replace an input is refused.")
    p.add_argument("--batch-size", type=_positive_int, default=64, help="Inputs per encoder call (default: 64).")
    _debug_option(p)
    p.set_defaults(func=embed)

    p = sub.add_parser(
        "demo",
        help="Train a small CLIP on Twemoji and test it zero-shot on held-out "
        "concepts and the unseen Noto style.",
    )
    p.add_argument("--preset", default="demo-resnet", help="Model preset (default: demo-resnet).")
    p.add_argument("--minutes", type=_positive_float, default=9.5, help="Training time in minutes: warm-up, then the learning rate's cosine decay over this wall-clock time, so a faster machine trains more epochs (default: 9.5).")
    p.add_argument("--epochs", type=_positive_int, default=None, help="Instead, a fixed warm-up + cosine schedule of this many epochs, reproducible from run to run, still stopped after --minutes (default: none, the schedule follows the clock).")
    p.add_argument("--batch-size", type=_batch_size, default=128, help="Pairs per batch (default: 128).")
    p.add_argument("--image-size", type=_positive_int, default=32, help="Image resolution, a multiple of 32 (default: 32).")
    p.add_argument("--vocabulary-size", type=_positive_int, default=2000, help="BPE vocabulary learnt from the training captions (default: 2000).")
    p.add_argument("--learning-rate", type=float, default=2e-3, help="Peak learning rate (default: 2e-3).")
    p.add_argument("--label-smoothing", type=float, default=0.2, help="Label smoothing of both contrastive cross-entropies, in [0, 1) (default: 0.2, which lifted the unseen-style score in the README's tries).")
    p.add_argument("--alias-probability", type=float, default=0.0, help="How often a training emoji with aliases (short codes such as 'joy' for 'face with tears of joy') is paired with one instead of its name (default: 0, the names only; 0.25 moved neither test beyond one run's spread in the README's tries).")
    p.add_argument("--seed", type=int, default=0, help="Random seed, also of the concept hold-out (default: 0).")
    p.add_argument("--output-dir", default="outputs/demo", help="Where clip.keras, metrics.json and the figures go (default: outputs/demo).")
    p.add_argument("--jit-compile", type=_jit_compile, default="auto", help=JIT_COMPILE_HELP)
    _debug_option(p)
    p.set_defaults(func=demo)
    p = sub.add_parser(
        "convert",
        help="Convert an OpenAI / open_clip / Hugging Face checkpoint to .keras.",
        description="Convert an OpenAI / open_clip checkpoint or a Hugging Face folder into a .keras "
        "file carrying the model, its tokenizer (when the vocabulary is OpenAI's and open_clip is "
        "installed) and its preprocessing settings.",
    )
    p.add_argument("input", help="Checkpoint file or folder.")
    p.add_argument("output", help="Path of the .keras file to write.")
    p.add_argument("--source", choices=("auto", "open_clip", "huggingface"), default="auto",
                   help="Checkpoint family (auto: a folder with config.json is Hugging Face, anything "
                   "else OpenAI / open_clip).")
    p.add_argument("--activation", choices=("quick_gelu", "gelu"), default=None,
                   help="MLP activation when the checkpoint cannot tell (OpenAI and '-quickgelu' "
                   "models: quick_gelu; other open_clip models: gelu).")
    p.add_argument("--no-tokenizer", action="store_true", help="Do not attach OpenAI's tokenizer.")
    p.add_argument("--vision-heads", type=int, default=None, help="Attention heads of the image tower, "
                   "where a bare state dict cannot tell (default: OpenAI's width / 64 rule, with a warning).")
    p.add_argument("--text-heads", type=int, default=None, help="Attention heads of the text tower, "
                   "where a bare state dict cannot tell (default: as --vision-heads).")
    _debug_option(p)
    p.set_defaults(func=convert)
    return parser


def convert(args):
    from keras_clip_app import commands as app
    from keras_clip_app.errors import RunError

    if not args.output.endswith(".keras"):
        raise RunError(f"Expected OUTPUT to end in .keras. Received: {args.output}. Name it e.g. model.keras.")
    if args.activation and args.source == "huggingface":
        raise RunError("Expected --activation only for OpenAI / open_clip checkpoints. Received: it "
                       "with --source huggingface, whose config.json names the activation. Drop --activation.")
    if (args.vision_heads or args.text_heads) and args.source == "huggingface":
        raise RunError("Expected --vision-heads / --text-heads only for OpenAI / open_clip checkpoints. "
                       "Received: them with --source huggingface, whose config.json names the heads. Drop them.")
    app.run_convert(args.input, args.output, source=args.source, activation=args.activation,
                    tokenizer=not args.no_tokenizer, vision_heads=args.vision_heads,
                    text_heads=args.text_heads)
    return 0


# Errors that describe the user's input, printed as one line: the
# application's `RunError` (a ValueError) and the library's ValueErrors and
# missing or unreadable files.
USER_ERRORS = (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError,
               PermissionError)


def _command_name(args):
    return " ".join(filter(None, (args.command, getattr(args, "task", None))))


def main(argv=None):
    """Runs `keras-clip ARGV`; returns the exit status.

    An error of the input (`USER_ERRORS`) prints one line on stderr and
    returns 1; with `--debug` it propagates, traceback and all.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_environment(args.backend, argv)
    try:
        # The library's XLA CPU tuning, before JAX creates its CPU client.
        from keras_clip import backends

        backends.tune_xla_cpu()
        return args.func(args)
    except USER_ERRORS as error:
        if args.debug:
            raise
        from keras_clip_app.errors import RunError

        message = " ".join(str(error).split("\n")).strip() or type(error).__name__
        if not isinstance(error, RunError):
            message += " (--debug shows the traceback)"
        print(f"keras-clip {_command_name(args)}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
