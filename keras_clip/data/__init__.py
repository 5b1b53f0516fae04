"""`tf.data` input pipelines for image-caption pairs.

Four sources, one output: batches `{"images": float32 (B, H, W, 3),
"token_ids": int32 (B, L)}` that `model.fit` consumes on every Keras backend.

- `from_csv`: a CSV/TSV of image paths and captions (open_clip's layout).
- `from_webdataset`: tar shards as written by img2dataset.
- `from_tfrecord`: TFRecord files of encoded images and captions
  (`write_tfrecord` writes them).
- `from_arrays`: in-memory `uint8` images or encoded bytes, and captions.

Every source accepts the pipeline options of
`keras_clip.data.pipeline.build_pipeline` as keyword arguments: `image_size`,
`training`, `crop_scale`, `crop_ratio`, `rotation`, `color_jitter`,
`grayscale`, `downscale`, `seed`, `deterministic`,
`drop_remainder`, `keep_captions`, `token_multiple`, `counter`. Shuffling (training only) and
sharding (`num_shards`, `shard_index`: e.g. `jax.process_count()` /
`jax.process_index()`, or a `tf.distribute.InputContext`'s
`num_input_pipelines` / `input_pipeline_id`) happen in the source.

Bad samples never stop an epoch: missing, empty, truncated or corrupt images,
missing, non-UTF-8 or empty captions, unreadable shards and damaged or
invalid TFRecord records are skipped and counted per reason in
`dataset.skip_counter` (a `SkipCounter`), logged after each pass, and a pass
in which every sample was bad raises an error. `batch_size` must be at least
2, and a pass's last batch of a single pair is dropped and counted as
`batch_of_one`: a contrastive batch of one has no negatives to learn from.
`SkipCountLogger` reports the counts from `model.fit`.

Example:

```python
ds = keras_clip.data.from_csv(
    "train.csv", tokenizer, batch_size=128, image_size=224, training=True,
    image_column="filepath", caption_column="title", seed=0,
)
model.fit(ds, epochs=10, callbacks=[SkipCountLogger(ds.skip_counter)])
```
"""

import importlib

# The sources need TensorFlow (`tf.data`); the eager preprocessing and the
# embedded datasets do not. So the names below load `sources` on first use,
# and `import keras_clip.data` works without TensorFlow installed.
_FROM_SOURCES = (
    "IMAGE_EXTENSIONS",
    "REASONS",
    "SkipCountLogger",
    "SkipCounter",
    "build_pipeline",
    "csv_separator",
    "decode_image",
    "expand_braces",
    "from_arrays",
    "from_csv",
    "from_tfrecord",
    "from_webdataset",
    "pretokenized",
    "read_csv_pairs",
    "with_model",
    "write_tfrecord",
)
_SUBMODULES = (
    "augment",
    "datasets",
    "decode",
    "image_files",
    "pipeline",
    "preprocess",
    "shards",
    "skips",
    "sources",
    "tfrecord",
)

__all__ = list(_FROM_SOURCES)


def __getattr__(name):
    if name in _FROM_SOURCES:
        return getattr(importlib.import_module("keras_clip.data.sources"), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"keras_clip.data.{name}")
    raise AttributeError(f"module 'keras_clip.data' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_FROM_SOURCES) | set(_SUBMODULES))
