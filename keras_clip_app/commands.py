"""What the `keras-clip` commands do, as functions of plain arguments.

The CLI (`keras_clip_app.cli`, the `keras-clip` command) parses flags into these; they are also usable
from Python. Each writes its outputs into a folder and prints where.
"""

import json
import os
import tarfile

import keras
import numpy as np

from keras_clip import data
from keras_clip.data import image_files
from keras_clip_app import plots
from keras_clip.evaluation import prompts
from keras_clip_app import training
from keras_clip.evaluation import zero_shot
from keras_clip.data.shards import expand_files
from keras_clip.evaluation.retrieval import retrieval_metrics

DATASET_TYPES = ("auto", "csv", "webdataset", "tfrecord", "twemoji")


# ---- data sources -------------------------------------------------------


def dataset_type(paths, kind="auto"):
    """The source kind of `paths` (`--dataset-type auto` guesses from names)."""
    if kind not in DATASET_TYPES:
        raise ValueError(f"Expected a dataset type in {DATASET_TYPES}. Received: {kind!r}")
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
    raise ValueError(
        "Could not tell the dataset type of "
        f"{first!r}. Expected a .csv/.tsv, .tar shards, .tfrecord files or "
        "'twemoji'; or pass --dataset-type."
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


def count_rows(kind, paths, csv_separator=None):
    if kind != "csv":
        return None
    import csv

    n = 0
    for path in paths:
        sep = data.csv_separator(path, csv_separator)
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            n += sum(1 for _ in csv.DictReader(f, delimiter=sep))
    return n


def make_source(kind, paths, tokenizer, batch_size, *, csv_img_key="filepath",
                csv_caption_key="title", csv_separator=None, twemoji=None, **options):
    """A batched training / evaluation pipeline of any supported source."""
    if kind == "csv":
        if len(paths) != 1:
            raise ValueError(f"Expected one CSV/TSV file. Received: {paths}")
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
    raise ValueError(f"Expected a dataset type in {DATASET_TYPES}. Received: {kind!r}")


# ---- train ---------------------------------------------------------------


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def write_json(path, payload):
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, default=_json_default)
    return path


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
):
    """`keras-clip train`: see `keras-clip train --help` for every argument."""
    from keras_clip.evaluation.callbacks import ZeroShotEvaluation
    from keras_clip.models.config import CLIPConfig, get_preset
    from keras_clip.models.clip_model import CLIPModel
    from keras_clip.optimizers import make_optimizer
    from keras_clip.text.tokenizer import CLIPTokenizer

    paths = [train_data] if isinstance(train_data, str) else list(train_data)
    kind = dataset_type(paths, dataset_type_name)
    twemoji = heldout = None
    if kind == "twemoji":
        from keras_clip.data.datasets import emoji

        size = image_size or (get_preset(preset).image_size if config is None else 224)
        twemoji = emoji.load_twemoji(image_size=size, split="train", seed=seed)
        heldout = emoji.load_twemoji(image_size=size, split="heldout", seed=seed)
        num_samples = len(twemoji)
    else:
        num_samples = train_num_samples or count_rows(kind, paths, csv_separator)
    if not num_samples:
        raise ValueError(
            f"Expected --train-num-samples for a {kind} source (its size is "
            "not known before reading it). Received: none"
        )
    steps_per_epoch = num_samples // batch_size
    if steps_per_epoch < 1:
        raise ValueError(
            f"Expected at least one full batch: {num_samples} samples < batch size {batch_size}."
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
            tok = CLIPTokenizer.train(
                captions, vocabulary_size=vocabulary_size,
                context_length=min(cfg.context_length, max(16, 2 * longest + 4)),
            )
            overrides.update(vocabulary_size=tok.vocabulary_size, eot_token_id=tok.eot_token_id,
                             context_length=tok.context_length)
        model = CLIPModel(cfg.replace(**overrides), tokenizer=tok)
        model.compile(optimizer=make_optimizer(
            model, total_steps=epochs * steps_per_epoch, learning_rate=learning_rate,
            warmup_steps=min(warmup_steps, epochs * steps_per_epoch - 1),
            weight_decay=weight_decay,
        ), label_smoothing=label_smoothing)
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
    model, status = training.train(
        build_model, make_dataset, output_dir, epochs, steps_per_epoch,
        callbacks=callbacks, verbose=verbose, resume=resume, jit_compile=jit_compile,
    )
    history = training.read_history(output_dir)
    outputs = {"checkpoint": os.path.join(output_dir, training.CHECKPOINT)}
    if history:
        outputs["training_curves"] = plots.training_curves(
            history, os.path.join(output_dir, "training_curves.png"))
    if status == "complete":
        outputs["model"] = os.path.join(output_dir, training.FINAL)
        if val is not None:
            outputs["similarity"] = similarity_figure(
                model, val["images"][:8], val["captions"][:8],
                os.path.join(output_dir, "similarity.png"))
    counter = getattr(holder.get("train"), "skip_counter", None)
    metrics = {
        "status": status,
        "backend": keras.backend.backend(),
        "step": training.optimizer_step(model),
        "final": training.history_summary(history),
        "skipped_samples": counter.totals() if counter is not None else None,
        "outputs": outputs,
    }
    write_json(os.path.join(output_dir, "metrics.json"), metrics)
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
    """A saved `.keras` CLIP model (with its tokenizer and preprocessing)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"Expected a saved .keras model. Received: {path!r} (not found)")
    model = keras.saving.load_model(path)
    if not hasattr(model, "encode_image"):
        raise ValueError(f"Expected a keras_clip CLIPModel in {path}. Received: {type(model).__name__}")
    return model


def encode_images_with_progress(model, images, batch_size=64, verbose=True):
    """Unit image embeddings `(N, E)`, preprocessing batch by batch, with a progress bar."""
    bar = keras.utils.Progbar(len(images), unit_name="image") if verbose else None
    out = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        out.append(zero_shot.encode_images(model, chunk, batch_size=batch_size))
        if bar is not None:
            bar.add(len(chunk))
    return np.concatenate(out, axis=0)


def encode_texts_with_progress(model, texts, batch_size=256, verbose=True):
    """Unit text embeddings `(N, E)` of strings, with a progress bar."""
    if model.tokenizer is None:
        raise ValueError("Expected a model that carries its tokenizer (model.tokenizer). Received: None")
    bar = keras.utils.Progbar(len(texts), unit_name="text") if verbose else None
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
                raise ValueError(
                    f"Expected a column named {column!r} in {path}. "
                    f"Received columns: {reader.fieldnames} (separator={sep!r})"
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
        raise ValueError(f"Expected readable images in {path}. Received: {len(bad)} unreadable, e.g. {bad[:1]}")
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
        raise ValueError(
            f"Expected one class name per class folder ({len(folder_names)}). "
            f"Received: {len(names)} class names"
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
            raise ValueError(
                f"Expected the same class folders in every split. Received: {name} has "
                f"{len(other)} classes vs train's {len(classes)}"
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


def run_embed(model_path, output, images=None, texts=None, batch_size=64, verbose=True):
    """`keras-clip embed`: unit embeddings to `.npy`, inputs listed in a `.txt` beside it."""
    if (images is None) == (texts is None):
        raise ValueError("Expected exactly one of images or texts to embed. Received: "
                         f"images={'set' if images else None}, texts={'set' if texts else None}")
    model = load_model(model_path)
    if images is not None:
        paths = image_files.list_images(images)
        decoded, kept, bad = image_files.read_images(paths)
        _report_bad(bad)
        embeddings = encode_images_with_progress(model, decoded, batch_size, verbose)
        listed = kept
    else:
        listed = prompts.read_list(texts) if os.path.exists(texts) else [texts]
        embeddings = encode_texts_with_progress(model, listed, verbose=verbose)
    if not output.endswith(".npy"):
        output += ".npy"
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    np.save(output, embeddings.astype("float32"))
    listing = output[: -len(".npy")] + ".txt"
    with open(listing, "w", encoding="utf-8") as f:
        f.writelines(item.replace("\n", " ") + "\n" for item in listed)
    print(f"Wrote {embeddings.shape[0]:,} x {embeddings.shape[1]} embeddings to {output}; "
          f"row i is line i of {listing}.")
    return output, listing


def run_convert(source_path, output, source="auto", activation=None, tokenizer=True):
    """`keras-clip convert`: a checkpoint file or folder -> `output` (.keras).

    Args:
        source_path: OpenAI `.pt`, open_clip state dict or Hugging Face folder.
        output: path of the `.keras` file to write.
        source: "auto", "open_clip" or "huggingface" (auto: a folder with
            `config.json` is Hugging Face).
        activation: MLP activation where an OpenAI / open_clip checkpoint
            cannot tell.
        tokenizer: attach OpenAI's tokenizer where the vocabulary is OpenAI's.
    """
    from keras_clip import convert

    if source == "auto":
        is_hf = os.path.isdir(source_path) and os.path.isfile(os.path.join(source_path, "config.json"))
        source = "huggingface" if is_hf else "open_clip"
    tokenizer = None if tokenizer else False
    if source == "huggingface":
        model = convert.from_huggingface(source_path, tokenizer=tokenizer)
    else:
        model = convert.from_open_clip(source_path, activation=activation, tokenizer=tokenizer)
    model.save(output)
    c = model.config
    print(
        f"Wrote {output}: {c.vision} image tower, image {c.image_size}, "
        f"embed {c.embed_dim}, activation {c.activation}, tokenizer "
        f"{'yes' if model.tokenizer is not None else 'no'}"
    )
    return model
