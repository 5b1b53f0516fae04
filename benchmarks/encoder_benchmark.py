"""Inference on TensorFlow or JAX: keras_clip's compiled encoders against
open_clip, in one process, rounds alternating.

`encode_image` / `encode_text` run as one compiled program: `jax.jit` on
JAX, a `tf.function` on TF. Keras's `jit_compile="auto"` keeps XLA off on
TF when there are only CPUs; keras_clip's encoders use XLA there anyway
unless `jit_compile=False` is asked for
(`keras_clip.backends.compiled_encoders_use_xla`), so
under TF the script times both programs of the same model (the second
copy set to `jit_compile = False`). open_clip's `CLIP`, built from the same
config, runs under `torch.no_grad()` in the same process, rounds
alternating (this machine is shared and noisy: compare columns of a row,
not rows of different runs). Embeddings come back as NumPy on every side.
(Torch's own eager paths: `torch_eager_benchmark.py`.)

Prints a Markdown table: the first call of each input shape (tracing and
compilation; open_clip has none), then the median per call and the speed
against open_clip (> 1: faster).

`--train B` adds a training-step row per case (batch B; forward, backward
and AdamW; open_clip's model, `ClipLoss` and `torch.optim.AdamW` against
keras_clip's `train_on_batch`), in the same alternating rounds, a fifth as
many calls as inference. On TF the first model is compiled with
`jit_compile=True` and the second with `jit_compile=False` (Keras's choice
on CPUs), so that both columns keep their meaning for training too.

    KERAS_BACKEND=tensorflow python benchmarks/encoder_benchmark.py [--cases tiny-vit:32 demo-resnet:32] [--rounds 5] [--train 64]
    KERAS_BACKEND=jax python benchmarks/encoder_benchmark.py
"""

import argparse
import os
import platform
import statistics
import sys
import time
import types

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
if os.environ["KERAS_BACKEND"] not in ("tensorflow", "jax"):
    sys.exit("encoder_benchmark.py runs under KERAS_BACKEND=tensorflow or jax "
             f"(got {os.environ['KERAS_BACKEND']!r}; torch: torch_eager_benchmark.py)")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# PyPI's torchvision is a CUDA build that fails to import beside the CPU
# torch; an empty `_meta_registrations` lets open_clip import (as in the
# tests' conftest.py).
sys.modules.setdefault("torchvision._meta_registrations",
                       types.ModuleType("torchvision._meta_registrations"))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.open_clip_benchmark import alternating_rounds, random_pairs  # noqa: E402
from benchmarks.torch_eager_benchmark import open_clip_side  # noqa: E402
from keras_clip import make_optimizer  # noqa: E402
from keras_clip.models.clip_model import CLIPModel  # noqa: E402

# As the CLI does before any JAX computation (nothing is set at import).
__import__("keras_clip").backends.tune_xla_cpu()

BACKEND = keras.backend.backend()
if BACKEND == "tensorflow":
    SIDES = ("open_clip", "keras_clip TF, XLA (default)", "keras_clip TF, no XLA")
else:
    SIDES = ("open_clip", "keras_clip JAX")


def keras_encoders(model, images, ids):
    def encoders(n):
        xi = keras.ops.convert_to_tensor(np.repeat(images[:1], n, axis=0))
        xt = keras.ops.convert_to_tensor(np.repeat(ids[:1], n, axis=0))

        def image():
            return keras.ops.convert_to_numpy(model.encode_image(xi))

        def text():
            return keras.ops.convert_to_numpy(model.encode_text(xt))

        return image, text

    return encoders


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", default=["tiny-vit:32", "demo-resnet:32"],
                        help="preset:larger batch (the smaller is 1)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20, help="calls per round and side")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train", type=int, default=0, metavar="B",
                        help="also time a training step at batch B (0: no)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
        versions = f"tensorflow {tf.__version__}"
    else:
        import jax

        versions = f"jax {jax.__version__} (all cores: {os.cpu_count()})"
    rows = []
    for case in args.cases:
        preset, batch = case.split(":")
        batch = int(batch)
        keras.utils.set_random_seed(0)
        model = CLIPModel.from_preset(preset)
        images, ids = random_pairs(model.config, batch)
        # keras_clip's model of each column, with the `jit_compile` it trains
        # with under --train (TF: XLA / Keras's CPU choice, as the columns say).
        models = {SIDES[1]: (model, True if BACKEND == "tensorflow" else "auto")}
        if BACKEND == "tensorflow":
            # The same weights in a second model whose encoders run without XLA.
            plain = CLIPModel.from_preset(preset)
            plain.set_weights(model.get_weights())
            plain.jit_compile = False
            models[SIDES[2]] = (plain, False)
        sides = {SIDES[0]: open_clip_side(model.config, images, ids)[1]}
        for name, (m, _) in models.items():
            sides[name] = keras_encoders(m, images, ids)
        jobs, first = {}, {}
        if args.train:
            train_images, train_ids = random_pairs(model.config, args.train)
            jobs[SIDES[0], "train"] = open_clip_side(model.config, train_images, train_ids)[0]
            train_batch = {"images": train_images, "token_ids": train_ids}
            for name, (m, jit_compile) in models.items():
                m.compile(optimizer=make_optimizer(m, total_steps=10_000, warmup_steps=1),
                          jit_compile=jit_compile)
                jobs[name, "train"] = lambda m=m: m.train_on_batch(train_batch)
        for name, encoders in sides.items():
            for n in (1, batch):
                jobs[name, f"image b{n}"], jobs[name, f"text b{n}"] = encoders(n)
        for key, fn in jobs.items():  # first call: tracing and compilation
            start = time.perf_counter()
            fn()
            first[key] = time.perf_counter() - start
            fn()
        times = alternating_rounds(
            jobs, args.rounds,
            lambda key: max(1, args.repeats // 5) if key[1] == "train" else args.repeats)
        whats = ["train"] if args.train else []
        for what in whats + ["image b1", f"image b{batch}", "text b1", f"text b{batch}"]:
            ms = {name: 1e3 * statistics.median(times[name, what]) for name in SIDES}
            ref = ms["open_clip"]
            cells = " | ".join(f"{ms[name]:.2f} ({ref / ms[name]:.2f}x)" for name in SIDES)
            firsts = " / ".join(f"{first[name, what]:.2f}" for name in SIDES[1:])
            label = f"train step (batch {args.train})" if what == "train" else what
            rows.append(f"| {preset} | {label} | {firsts} | {cells} |")
    print(f"\nMachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{args.threads} threads for torch and TF; {versions}, "
          f"torch {torch.__version__}, keras {keras.__version__}; median of {args.rounds} "
          f"rounds of {args.repeats} calls, sides alternating; ms (speed vs open_clip).\n")
    first_label = "first call s (XLA / no XLA)" if BACKEND == "tensorflow" else "first call s"
    print(f"| case | what | {first_label} | " + " | ".join(SIDES) + " |")
    print("|---|---|---:|" + "---:|" * len(SIDES))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
