"""What the `keras-clip` commands do, as functions of plain arguments.

The CLI (`keras_clip_app.cli`, the `keras-clip` command) parses flags into these; they are also usable
from Python. Each writes its outputs into a folder and prints where.
"""

import json
import os
import tarfile
import warnings

import keras
import numpy as np

from keras_clip import data
from keras_clip.callbacks import StopOnNonFinite
from keras_clip.callbacks import describe_value
from keras_clip.data import image_files
from keras_clip.data.shards import expand_files
from keras_clip.evaluation import prompts
from keras_clip.evaluation import zero_shot
from keras_clip.evaluation.retrieval import retrieval_metrics
from keras_clip_app import checkpoints
from keras_clip_app import plots
from keras_clip_app import progress
from keras_clip_app import training
from keras_clip_app.errors import RunError

DATASET_TYPES = ("auto", "csv", "webdataset", "tfrecord", "twemoji")


# ---- data sources -------------------------------------------------------


def dataset_type(paths, kind="auto"):
    """The source kind of `paths` (`--dataset-type auto` guesses from names)."""
    if kind not in DATASET_TYPES:
        raise RunError(f"Expected a dataset type in {DATASET_TYPES}. Received: {kind!r}. Pass one of them to --dataset-type.")
    if kind != "auto":
        return kind
    first = paths[0] if paths else ""
    if first == "twemoji":
        return "twemoji"
    if first.endswith((".csv", ".tsv")):
        return "csv"
    if first.endswith(".tar") or ("{" in first and ".tar" in first):
        return "webdataset"
    if ".tfrecord" in first or first.endswith(".tfrec"):
        return "tfrecord"
    raise RunError(
        "Expected --train-data to be a .csv/.tsv, .tar shards, .tfrecord files or "
        f"'twemoji'. Received: {first!r}, whose kind the name does not tell. Pass "
        "--dataset-type csv, webdataset or tfrecord."
    )


def read_captions(kind, paths, csv_caption_key="title", csv_separator=None, limit=None):
    """The captions of a source, for learning a vocabulary."""
    captions = []
    if kind == "csv":
        import csv

        for path in paths:
            sep = data.csv_separator(path, csv_separator)
            with open(path, newline="", encoding="utf-8", errors="replace") as f:
                captions.extend(row.get(csv_caption_key) or "" for row in csv.DictReader(f, delimiter=sep))
    elif kind == "webdataset":
        for path in expand_files(paths, "WebDataset shards"):
            try:
                with tarfile.open(path, "r|*") as tar:
                    for member in tar:
                        if member.isfile() and member.name.endswith(".txt"):
                            captions.append(tar.extractfile(member).read().decode("utf-8", "replace"))
            except (OSError, EOFError, tarfile.TarError):
                continue  # the pipeline counts unreadable shards
    elif kind == "tfrecord":
        import tensorflow as tf

        spec = {"caption": tf.io.FixedLenFeature([], tf.string, default_value="")}
        files = expand_files(paths, "TFRecord files")
        for record in tf.data.TFRecordDataset(files):
            captions.append(tf.io.parse_single_example(record, spec)["caption"].numpy().decode("utf-8", "replace"))
            if limit and len(captions) >= limit:
                break
    else:
        raise ValueError(f"Expected a csv, webdataset or tfrecord source. Received: {kind!r}")
    return [c for c in captions if c.strip()][:limit]


# The library's argument names, as the CLI spells them.
CSV_FLAGS = {"separator=": "--csv-separator ", "image_column=": "--csv-img-key ",
             "caption_column=": "--csv-caption-key "}


def count_rows(kind, paths, csv_img_key="filepath", csv_caption_key="title", csv_separator=None):
    """The pairs of a CSV source (`None` for other kinds), its layout checked:
    a missing, empty or header-only file, or absent columns, is a `RunError`
    naming the flag that fixes it."""
    if kind != "csv":
        return None
    n = 0
    for path in paths:
        if not os.path.isfile(path):
            raise RunError(
                f"Expected a CSV/TSV file of image paths and captions at --train-data {path}. "
                "Received: no such file. Check the path."
            )
        try:
            rows, _ = data.read_csv_pairs(path, csv_img_key, csv_caption_key, csv_separator)
        except ValueError as error:
            message = str(error)
            for name, flag in CSV_FLAGS.items():
                message = message.replace(name, flag)
            raise RunError(message) from error
        n += len(rows)
    return n


def make_source(kind, paths, tokenizer, batch_size, *, csv_img_key="filepath",
                csv_caption_key="title", csv_separator=None, twemoji=None, **options):
    """A batched training / evaluation pipeline of any supported source."""
    if kind == "csv":
        if len(paths) != 1:
            raise RunError(f"Expected one CSV/TSV file. Received: {len(paths)} files, {paths}. "
                           "Merge them into one file, or pass one.")
        return data.from_csv(paths[0], tokenizer, batch_size, image_column=csv_img_key,
                             caption_column=csv_caption_key, separator=csv_separator, **options)
    if kind == "webdataset":
        from keras_clip.data.shards import from_webdataset

        return from_webdataset(paths, tokenizer, batch_size, **options)
    if kind == "tfrecord":
        from keras_clip.data.shards import from_tfrecord

        return from_tfrecord(paths, tokenizer, batch_size, **options)
    if kind == "twemoji":
        return data.from_arrays(twemoji.images, twemoji.captions, tokenizer, batch_size, **options)
    raise RunError(f"Expected a dataset type in {DATASET_TYPES}. Received: {kind!r}. Pass one of them to --dataset-type.")


# ---- train ---------------------------------------------------------------


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _finite_or_text(value):
    """`value` with every non-finite float as "nan" / "inf" / "-inf" (JSON has no NaN)."""
    if isinstance(value, dict):
        return {k: _finite_or_text(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_text(v) for v in value]
    if isinstance(value, (float, np.floating)) and not np.isfinite(value):
        return describe_value(value)
    return value


def _read_json(path):
    """A JSON object from `path`, or `{}` when there is none (or it is unreadable)."""
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def write_json(path, payload):
    """`payload` as strict JSON (non-finite numbers as strings)."""
    with open(path, "w") as f:
        json.dump(_finite_or_text(payload), f, indent=2, default=_json_default, allow_nan=False)
    return path


def _check_count(flag, value, minimum, why=""):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise RunError(
            f"Expected {flag} to be an integer >= {minimum}{why}. Received: {value!r}. "
            f"Pass {flag} {minimum} or more."
        )


def train_tokenizer(captions, vocabulary_size, context_length):
    """A BPE tokenizer learnt from `captions`, reported in one line (not as warnings)."""
    from keras_clip.text.tokenizer import CLIPTokenizer

    with warnings.catch_warnings():
        # The one warning (fewer tokens than asked) is said in the line below.
        warnings.simplefilter("ignore", UserWarning)
        tok = CLIPTokenizer.train(captions, vocabulary_size=vocabulary_size,
                                  context_length=context_length)
    line = (f"Learnt a {tok.vocabulary_size:,}-token BPE vocabulary from "
            f"{len(captions):,} captions")
    if tok.vocabulary_size < vocabulary_size:
        line += (f" (--vocabulary-size {vocabulary_size:,} asks for more: these "
                 "captions hold no more pairs to merge)")
    print(line + ".")
    return tok


def run_train(
    train_data,
    output_dir,
    preset="tiny-vit",
    config=None,
    dataset_type_name="auto",
    epochs=10,
    batch_size=128,
    learning_rate=5e-4,
    warmup_steps=100,
    weight_decay=0.2,
    label_smoothing=0.0,
    precision="float32",
    image_size=None,
    tokenizer="auto",
    vocabulary_size=8192,
    train_num_samples=None,
    crop_scale=(0.9, 1.0),
    rotation=0.0,
    downscale=0.0,
    token_multiple=0,
    csv_img_key="filepath",
    csv_caption_key="title",
    csv_separator=None,
    val_data=None,
    val_every=1,
    seed=0,
    resume=True,
    verbose="auto",
    jit_compile="auto",
    tensorboard=False,
):
    """`keras-clip train`: see `keras-clip train --help` for every argument.

    Returns the metrics written to `metrics.json`; its `status` is
    "complete", "interrupted" or "failed" (a non-finite loss, recorded
    under `non_finite`).
    """
    from keras_clip.evaluation.callbacks import ZeroShotEvaluation
    from keras_clip.losses import ContrastiveLoss
    from keras_clip.models.clip_model import tokenizer_fields
    from keras_clip.models.config import CLIPConfig, get_preset
    from keras_clip.models.clip_model import CLIPModel
    from keras_clip.optimizers import make_optimizer
    from keras_clip.text.tokenizer import CLIPTokenizer

    _check_count("--batch-size", batch_size, 2, " (a batch of one pair has no negatives to learn from)")
    _check_count("--epochs", epochs, 1)
    _check_count("--val-every", val_every, 1)
    if image_size is not None:
        _check_count("--image-size", image_size, 1, " (the side of the square model input, in pixels)")
    paths = [train_data] if isinstance(train_data, str) else list(train_data)
    kind = dataset_type(paths, dataset_type_name)
    if train_num_samples is not None:
        _check_count("--train-num-samples", train_num_samples, 1)
    twemoji = heldout = None
    if kind == "twemoji":
        from keras_clip.data.datasets import emoji

        size = image_size or (get_preset(preset).image_size if config is None else 224)
        twemoji = emoji.load_twemoji(image_size=size, split="train", seed=seed)
        heldout = emoji.load_twemoji(image_size=size, split="heldout", seed=seed)
        num_samples = len(twemoji)
    else:
        num_samples = train_num_samples or count_rows(
            kind, paths, csv_img_key, csv_caption_key, csv_separator)
    if not num_samples:
        raise RunError(
            f"Expected --train-num-samples for a {kind} source (its size is "
            "not known before reading it). Received: none. Pass the number of "
            "training pairs, e.g. --train-num-samples 100000."
        )
    steps_per_epoch = num_samples // batch_size
    if steps_per_epoch < 1:
        raise RunError(
            f"Expected at least one full batch of --batch-size {batch_size} pairs. "
            f"Received: {num_samples:,} pairs in {', '.join(paths)}. Lower --batch-size "
            f"to {max(2, num_samples)} or less, or add data."
        )
    if precision != "float32":
        keras.mixed_precision.set_global_policy(precision)

    def build_model():
        keras.utils.set_random_seed(seed)
        if config is not None:
            with open(config) as f:
                cfg = CLIPConfig.from_dict(json.load(f))
        else:
            cfg = get_preset(preset)
        overrides = {"image_size": image_size} if image_size else {}
        use_openai = tokenizer == "openai" or (tokenizer == "auto" and cfg.vocabulary_size == 49408)
        if use_openai:
            tok = CLIPTokenizer.from_openai_vocab(context_length=cfg.context_length)
        else:
            captions = twemoji.captions if twemoji is not None else read_captions(
                kind, paths, csv_caption_key, csv_separator)
            longest = max(len(c.split()) for c in captions)
            tok = train_tokenizer(captions, vocabulary_size,
                                  min(cfg.context_length, max(16, 2 * longest + 4)))
        # The model takes its vocabulary, end-of-text id and context length
        # from the tokenizer, as `CLIPModel.from_preset(..., tokenizer=)` does.
        overrides.update(tokenizer_fields(tok))
        model = CLIPModel(cfg.replace(**overrides), tokenizer=tok)
        model.compile(optimizer=make_optimizer(
            model, total_steps=epochs * steps_per_epoch, learning_rate=learning_rate,
            warmup_steps=min(warmup_steps, epochs * steps_per_epoch - 1),
            weight_decay=weight_decay,
        ), loss=ContrastiveLoss(label_smoothing=label_smoothing))
        print(f"Built {cfg.vision} CLIP: {model.count_params():,} parameters, "
              f"vocabulary {tok.vocabulary_size:,}, {model.config.image_size} px.")
        return model

    holder = {}

    def make_dataset(model, epoch):
        ds = make_source(
            kind, paths, model.tokenizer, batch_size, csv_img_key=csv_img_key,
            csv_caption_key=csv_caption_key, csv_separator=csv_separator, twemoji=twemoji,
            image_size=model.config.image_size, training=True, crop_scale=crop_scale,
            rotation=rotation, downscale=downscale, seed=seed + 1000 * epoch,
            token_multiple=token_multiple or None,
        )
        holder["train"] = ds
        return ds

    callbacks = []
    if heldout is not None:
        callbacks.append(ZeroShotEvaluation(
            heldout.images, np.arange(len(heldout)), heldout.captions, templates=["{}"],
            every_n_epochs=val_every, name="heldout_zeroshot"))
    val = None
    if val_data is not None:
        val = load_pairs_csv(val_data, csv_img_key, csv_caption_key, csv_separator, limit=2000)
        callbacks.append(_RetrievalWithModelTokenizer(val, every_n_epochs=val_every))
    # What a resumed run must share with the saved one: the step plan and
    # what the checkpoint's model and optimizer hold (they would ignore a
    # new value). Augmentation, seed, evaluation and compilation may change.
    settings = {
        "--batch-size": batch_size, "--preset": preset, "--config": config,
        "--image-size": image_size, "--tokenizer": tokenizer,
        "--vocabulary-size": vocabulary_size, "--lr": learning_rate,
        "--warmup": warmup_steps, "--wd": weight_decay,
        "--label-smoothing": label_smoothing, "--precision": precision,
    }
    guard = StopOnNonFinite()
    metrics_path = os.path.join(output_dir, "metrics.json")
    resuming = resume and any(os.path.exists(os.path.join(output_dir, name))
                              for name in (checkpoints.CHECKPOINT, checkpoints.PREVIOUS))
    earlier = _read_json(metrics_path) if resuming else {}
    model, status = training.train(
        build_model, make_dataset, output_dir, epochs, steps_per_epoch,
        callbacks=callbacks, verbose=verbose, resume=resume, jit_compile=jit_compile,
        settings=settings, guard=guard, tensorboard=tensorboard,
    )
    history = training.read_history(output_dir)
    outputs = {}
    for name in (checkpoints.CHECKPOINT, checkpoints.PREVIOUS):
        path = os.path.join(output_dir, name)
        if os.path.exists(path):
            outputs["checkpoint" if name == checkpoints.CHECKPOINT else "previous_checkpoint"] = path
    if history:
        outputs["training_curves"] = plots.training_curves(
            history, os.path.join(output_dir, "training_curves.png"))
    if tensorboard and os.path.isdir(os.path.join(output_dir, checkpoints.TENSORBOARD)):
        outputs["tensorboard"] = os.path.join(output_dir, checkpoints.TENSORBOARD)
    if status == "complete":
        outputs["model"] = os.path.join(output_dir, training.FINAL)
        if val is not None:
            outputs["similarity"] = similarity_figure(
                model, val["images"][:8], val["captions"][:8],
                os.path.join(output_dir, "similarity.png"))
    # Samples left out, per reason, over the passes of this run and the
    # runs it resumes (read ones are `samples_read`).
    counter = getattr(holder.get("train"), "skip_counter", None)
    totals = counter.totals() if counter is not None else {}
    skipped = dict(earlier.get("skipped_samples") or {})
    for reason, n in totals.items():
        if reason != "ok" and n:
            skipped[reason] = skipped.get(reason, 0) + int(n)
    read = (earlier.get("samples_read") or 0) + int(totals.get("ok", 0))
    metrics = {
        "status": status,
        "backend": keras.backend.backend(),
        "step": training.optimizer_step(model) if status != "failed" else guard.step,
        "total_steps": epochs * steps_per_epoch,
        "final": training.history_summary(training.read_history(output_dir, missing=None)),
        "non_finite": guard.as_dict(),
        "skipped_samples": skipped,
        "samples_read": read,
        "outputs": outputs,
    }
    write_json(metrics_path, metrics)
    for name, path in outputs.items():
        print(f"{name}: {path}")
    return metrics


class _RetrievalWithModelTokenizer(keras.callbacks.Callback):
    """Retrieval on validation pairs, tokenised with the model's own tokenizer."""

    def __init__(self, val, every_n_epochs=1):
        super().__init__()
        self.val = val
        self.every = every_n_epochs
        self.inner = None

    def on_train_begin(self, logs=None):
        from keras_clip.evaluation.callbacks import RetrievalEvaluation

        ids = np.asarray(self.model.tokenizer(self.val["captions"]))
        self.inner = RetrievalEvaluation(self.val["images"], ids, self.val["text_to_image"],
                                         every_n_epochs=self.every, name="val_retrieval")
        self.inner.set_model(self.model)
        self.inner.on_train_begin(logs)

    def on_epoch_end(self, epoch, logs=None):
        self.inner.on_epoch_end(epoch, logs)


# ---- shared helpers -------------------------------------------------------


def load_model(path):
    """A saved `.keras` CLIP model (with its tokenizer and preprocessing).

    A missing, truncated or non-zip file is a one-line error naming it
    (Keras would call any of them "File not found").
    """
    checkpoints.check_keras_file(path, flag="--model")
    model = keras.saving.load_model(path)
    if not hasattr(model, "encode_image"):
        raise RunError(
            f"Expected a keras_clip CLIPModel in --model {path}. Received: a "
            f"{type(model).__name__}. Pass a model saved by keras-clip (train, demo or convert)."
        )
    return model


def encode_images_with_progress(model, images, batch_size=64, verbose=True):
    """Unit image embeddings `(N, E)`, preprocessing batch by batch, with progress output."""
    bar = progress.counter(len(images), "image") if verbose else None
    out = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        out.append(zero_shot.encode_images(model, chunk, batch_size=batch_size))
        if bar is not None:
            bar.add(len(chunk))
    return np.concatenate(out, axis=0)


def encode_texts_with_progress(model, texts, batch_size=256, verbose=True):
    """Unit text embeddings `(N, E)` of strings, with progress output."""
    if model.tokenizer is None:
        raise RunError("Expected a model that carries its tokenizer (model.tokenizer). Received: None. "
                       "Use a model saved by keras-clip train or convert (with its tokenizer).")
    bar = progress.counter(len(texts), "text") if verbose else None
    out = []
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start : start + batch_size])
        out.append(zero_shot.encode_texts(model, np.asarray(model.tokenizer(chunk))))
        if bar is not None:
            bar.add(len(chunk))
    return np.concatenate(out, axis=0)


def resolve_list(value, loader):
    """A list from: None, a file (JSON / one per line) or a clip-benchmark name."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return list(value)
    if os.path.exists(value):
        return prompts.read_list(value)
    return list(loader(value))


def resolve_templates(value):
    """Templates from a set name (simple, imagenet), a file, a dataset name or one template."""
    if value is None or value in ("simple", "imagenet") or "{}" in value:
        return list(prompts.get_templates(value))
    if value == "bare":
        return ["{}"]
    return resolve_list(value, prompts.load_templates)


def load_pairs_csv(path, image_key="filepath", caption_key="title", separator=None, limit=None):
    """Image-caption pairs of a CSV/TSV, captions grouped by image.

    Returns a dict: `images` (uint8 arrays, one per distinct readable image),
    `image_paths`, `captions`, `text_to_image` (image index per caption) and
    `bad` ((path, reason) of unreadable images, whose captions are dropped).
    """
    import csv

    sep = data.csv_separator(path, separator)
    root = os.path.dirname(os.path.abspath(path))
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.DictReader(f, delimiter=sep)
        for column in (image_key, caption_key):
            if column not in (reader.fieldnames or []):
                raise RunError(
                    f"Expected a column named {column!r} in {path}. "
                    f"Received columns: {reader.fieldnames} (separator {sep!r}). Name the "
                    "columns with --csv-img-key and --csv-caption-key, or the separator "
                    "with --csv-separator."
                )
        rows = [(r[image_key], r[caption_key]) for r in reader if r[image_key] and r[caption_key]]
    index, order = {}, []
    for rel, _ in rows:
        full = os.path.join(root, rel)
        if full not in index:
            if limit and len(order) >= limit:
                continue
            index[full] = len(order)
            order.append(full)
    images, kept, bad = image_files.decode_all(order)
    if not images:
        raise RunError(f"Expected readable images in {path}. Received: {len(bad)} unreadable, "
                       f"e.g. {bad[:1]}. Check the image paths (relative to the CSV's folder).")
    new_index = {p: i for i, p in enumerate(kept)}
    captions, text_to_image = [], []
    for rel, caption in rows:
        full = os.path.join(root, rel)
        if full in new_index:
            captions.append(caption)
            text_to_image.append(new_index[full])
    return {"images": images, "image_paths": kept, "captions": captions,
            "text_to_image": np.asarray(text_to_image, np.int64), "bad": bad}


def similarity_figure(model, images, captions, path,
                      title="cosine similarity, captions x images"):
    """The similarity-matrix PNG of `images` against `captions`."""
    img = zero_shot.encode_images(model, list(images))
    txt = encode_texts_with_progress(model, list(captions), verbose=False)
    return plots.similarity_matrix(images, list(captions), txt @ img.T, path, title=title)


def _report_bad(bad):
    if bad:
        print(f"Skipped {len(bad)} unreadable image(s), e.g. {bad[0][0]}: {bad[0][1]}")


# ---- eval ---------------------------------------------------------------


def run_eval_zeroshot(model_path, data_dir, output_dir, classnames=None, templates=None,
                      batch_size=64, grid_size=24, verbose=True):
    """`keras-clip eval zeroshot`: accuracy on a class-per-folder image set."""
    model = load_model(model_path)
    images, labels, folder_names, bad = image_files.image_folder(data_dir)
    _report_bad(bad)
    names = resolve_list(classnames, prompts.load_classnames) or folder_names
    if len(names) != len(folder_names):
        raise RunError(
            f"Expected one class name per class folder ({len(folder_names)}). "
            f"Received: {len(names)} class names. Pass --classnames with one name per "
            "folder, in sorted-folder order."
        )
    templates = resolve_templates(templates)
    print(f"Zero-shot: {len(images):,} images, {len(names):,} classes, {len(templates)} template(s).")
    weights = zero_shot.class_embeddings(
        model.encode_text, lambda t: np.asarray(model.tokenizer(t)), names, templates)
    features = encode_images_with_progress(model, images, batch_size, verbose)
    scale = float(np.exp(keras.ops.convert_to_numpy(model.logit_scale)))
    logits = zero_shot.zero_shot_logits(features, weights, scale)
    summary = zero_shot.evaluate_logits(logits, labels, names)
    os.makedirs(output_dir, exist_ok=True)
    probs = zero_shot.softmax(logits)
    pick = np.linspace(0, len(images) - 1, min(grid_size, len(images))).astype(int)
    grid = plots.prediction_grid([images[i] for i in pick], probs[pick], names,
                                 os.path.join(output_dir, "predictions.png"), true_labels=labels[pick])
    metrics = {
        "task": "zeroshot", "model": model_path, "data": data_dir, "images": len(images),
        "classes": len(names), "templates": len(templates), "chance_top1": 1.0 / len(names),
        "top1": summary["top1"], "top5": summary["top5"], "mean_per_class": summary["mean_per_class"],
        "per_class": dict(zip(names, summary["per_class"])),
        "most_confused": summary["most_confused"], "skipped_images": [b[0] for b in bad],
    }
    write_json(os.path.join(output_dir, "metrics.json"), metrics)
    print(f"top-1 {summary['top1']:.4f}  top-5 {summary['top5']:.4f}  "
          f"mean per class {summary['mean_per_class']:.4f}  (chance {1 / len(names):.4f})")
    print(f"Wrote {os.path.join(output_dir, 'metrics.json')} and {grid}")
    return metrics


def run_eval_retrieval(model_path, data, output_dir, csv_img_key="filepath", csv_caption_key="title",
                       csv_separator=None, batch_size=64, verbose=True):
    """`keras-clip eval retrieval`: recall@K on a CSV of image-caption pairs."""
    model = load_model(model_path)
    pairs = load_pairs_csv(data, csv_img_key, csv_caption_key, csv_separator)
    _report_bad(pairs["bad"])
    print(f"Retrieval: {len(pairs['images']):,} images, {len(pairs['captions']):,} captions.")
    img = encode_images_with_progress(model, pairs["images"], batch_size, verbose)
    txt = encode_texts_with_progress(model, pairs["captions"], verbose=verbose)
    metrics = retrieval_metrics(img, txt, pairs["text_to_image"])
    os.makedirs(output_dir, exist_ok=True)
    # The first eight images against their first captions, from the
    # embeddings already computed.
    first = [int(np.flatnonzero(pairs["text_to_image"] == i)[0]) for i in range(min(8, len(img)))]
    figure = plots.similarity_matrix(
        [pairs["images"][i] for i in range(len(first))], [pairs["captions"][t] for t in first],
        txt[first] @ img[: len(first)].T, os.path.join(output_dir, "similarity.png"),
        title="cosine similarity, captions x images")
    out = {"task": "retrieval", "model": model_path, "data": data, "images": len(img),
           "captions": len(txt), **metrics, "skipped_images": [b[0] for b in pairs["bad"]]}
    write_json(os.path.join(output_dir, "metrics.json"), out)
    print("  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    print(f"Wrote {os.path.join(output_dir, 'metrics.json')} and {figure}")
    return out


def run_eval_linear_probe(model_path, train_dir, test_dir, output_dir, val_dir=None,
                          batch_size=64, max_iter=1000, verbose=True):
    """`keras-clip eval linear-probe`: logistic regression on frozen image features."""
    from keras_clip.evaluation.linear_probe import linear_probe

    model = load_model(model_path)
    splits = {}
    for name, folder in (("train", train_dir), ("val", val_dir), ("test", test_dir)):
        if folder is None:
            continue
        images, labels, classes, bad = image_files.image_folder(folder)
        _report_bad(bad)
        splits[name] = (images, labels, classes)
    classes = splits["train"][2]
    for name, (_, _, other) in splits.items():
        if other != classes:
            raise RunError(
                f"Expected the same class folders in every split. Received: {name} has "
                f"{len(other)} classes vs train's {len(classes)}. Give every split the "
                "same class subfolders."
            )
    features = {}
    for name, (images, labels, _) in splits.items():
        print(f"Encoding {name}: {len(images):,} images")
        features[name] = (encode_images_with_progress(model, images, batch_size, verbose), labels)
    val = features.get("val", (None, None))
    result = linear_probe(*features["train"], *features["test"], val_features=val[0],
                          val_labels=val[1], max_iter=max_iter)
    os.makedirs(output_dir, exist_ok=True)
    out = {"task": "linear-probe", "model": model_path, "classes": len(classes),
           "test_accuracy": result["test_accuracy"], "l2": result["l2"],
           "val_accuracy": {str(k): v for k, v in result["val_accuracy"].items()}}
    write_json(os.path.join(output_dir, "metrics.json"), out)
    print(f"test accuracy {result['test_accuracy']:.4f} (L2 {result['l2']:g} chosen on validation)")
    print(f"Wrote {os.path.join(output_dir, 'metrics.json')}")
    return out


# ---- embed --------------------------------------------------------------


def listing_path(output):
    """The row-order file of an embedding file: `caps.npy` -> `caps.rows.txt`."""
    return output[: -len(".npy")] + ".rows.txt"


def refuse_overwriting_inputs(outputs, inputs):
    """Raises a `RunError` when any output path is one of the input paths."""
    def same(a, b):
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
        return os.path.realpath(a) == os.path.realpath(b)

    for flag, out in outputs:
        for in_flag, path in inputs:
            if path and same(out, path):
                raise RunError(
                    f"Expected outputs that replace no input. Received: {flag} would write "
                    f"{out}, which is the {in_flag} input {path}. Choose another --output."
                )


def run_embed(model_path, output, images=None, texts=None, batch_size=64, verbose=True):
    """`keras-clip embed`: unit embeddings to `.npy`, the inputs in row order in
    `.rows.txt` beside it (`caps.npy` -> `caps.rows.txt`). No output may be an input."""
    if (images is None) == (texts is None):
        raise RunError("Expected exactly one of images or texts to embed. Received: "
                       f"images={'set' if images else None}, texts={'set' if texts else None}")
    if not output.endswith(".npy"):
        output += ".npy"
    listing = listing_path(output)
    inputs = [("--model", model_path)]
    if texts is not None and os.path.exists(texts):
        inputs.append(("--texts", texts))
    for path in images or ():
        inputs.append(("--images", path))
    refuse_overwriting_inputs([("--output", output), ("the row-order file", listing)], inputs)
    model = load_model(model_path)
    if images is not None:
        paths = image_files.list_images(images)
        refuse_overwriting_inputs([("--output", output), ("the row-order file", listing)],
                                  [("--images", p) for p in paths])
        decoded, kept, bad = image_files.read_images(paths)
        _report_bad(bad)
        embeddings = encode_images_with_progress(model, decoded, batch_size, verbose)
        listed = kept
    else:
        listed = prompts.read_list(texts) if os.path.exists(texts) else [texts]
        embeddings = encode_texts_with_progress(model, listed, verbose=verbose)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    np.save(output, embeddings.astype("float32"))
    with open(listing, "w", encoding="utf-8") as f:
        f.writelines(item.replace("\n", " ") + "\n" for item in listed)
    print(f"Wrote {embeddings.shape[0]:,} x {embeddings.shape[1]} embeddings to {output}; "
          f"row i is line i of {listing}.")
    return output, listing


def run_convert(source_path, output, source="auto", activation=None, tokenizer=True,
                vision_heads=None, text_heads=None):
    """`keras-clip convert`: a checkpoint file or folder -> `output` (.keras).

    Args:
        source_path: OpenAI `.pt`, open_clip state dict or Hugging Face folder.
        output: path of the `.keras` file to write.
        source: "auto", "open_clip" or "huggingface" (auto: a folder with
            `config.json` is Hugging Face).
        activation: MLP activation where an OpenAI / open_clip checkpoint
            cannot tell.
        tokenizer: attach OpenAI's tokenizer where the vocabulary is OpenAI's.
        vision_heads, text_heads: attention heads where a bare open_clip
            state dict cannot tell.
    """
    from keras_clip import convert

    refuse_overwriting_inputs([("OUTPUT", output)], [("INPUT", source_path)])
    if source == "auto":
        is_hf = os.path.isdir(source_path) and os.path.isfile(os.path.join(source_path, "config.json"))
        source = "huggingface" if is_hf else "open_clip"
    tokenizer = None if tokenizer else False
    if source == "huggingface":
        model = convert.from_huggingface(source_path, tokenizer=tokenizer)
    else:
        model = convert.from_open_clip(source_path, activation=activation, tokenizer=tokenizer,
                                       vision_heads=vision_heads, text_heads=text_heads)
    model.save(output)
    c = model.config
    print(
        f"Wrote {output}: {c.vision} image tower, image {c.image_size}, "
        f"embed {c.embed_dim}, activation {c.activation}, tokenizer "
        f"{'yes' if model.tokenizer is not None else 'no'}"
    )
    return model
