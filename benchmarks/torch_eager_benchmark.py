"""PyTorch eager: keras_clip's fused torch paths, its Keras-ops path and
open_clip, in one process, rounds alternating.

On torch every op of keras_clip runs eagerly, as open_clip's do, so at a
small model's size Python-side dispatch (Keras's op wrappers, `Layer.__call__`,
variable reads) rather than arithmetic decides the speed.
`keras_clip.backends.settings.torch_fused_blocks` (on by default) runs the
built towers, blocks and projections as direct `torch.nn.functional` calls
(`keras_clip/backends/torch/`); switching it off gives the plain Keras-ops
code of the same model. This script times both sides and open_clip's `CLIP`
built from the same config, alternating rounds in one process (this machine
is shared and noisy: compare columns of a row, not rows of different runs):

- inference: `encode_image` / `encode_text` at batch 1 and 32 (`--batches`)
  under `torch.no_grad()`, embeddings back as NumPy;
- training: one optimiser step (forward, backward, AdamW), keras_clip's
  `train_on_batch` against open_clip's model, `ClipLoss` and
  `torch.optim.AdamW`.

`--sides` picks keras_clip's columns, each a set of
`keras_clip.backends.settings` switches: "Keras ops" runs with
`torch_fused_blocks` off (the plain model code; the towers' and the blocks'
`Layer.__call__` still skipped, a block's own sublayers called through
theirs), "conv kernels uncached" the fused path with
`torch_conv_kernel_cache` off (each convolution reads its kernel as a
permuted view, as before the cache), "towers through __call__" inference
through each tower's `Layer.__call__` (`torch_skip_tower_call` off).
`--no-train` skips the training step (ViT-B/32,
RN50 inference). `--dtype mixed_bfloat16` runs keras_clip under that policy
and open_clip under `torch.autocast(bfloat16)`: on the CPU, a stand-in for
the GPU's small calls, which Python-side dispatch bounds.

Prints a Markdown table of medians and the ratio to open_clip (> 1: faster).

    python benchmarks/torch_eager_benchmark.py [--cases tiny-vit:64] [--rounds 5]
"""

import argparse
import os
import platform
import statistics
import sys
import types

os.environ["KERAS_BACKEND"] = "torch"
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
from keras_clip import backends  # noqa: E402
from keras_clip import make_optimizer  # noqa: E402
from keras_clip.models.clip_model import CLIPModel  # noqa: E402

# keras_clip's sides: the `keras_clip.backends.settings` switches each runs
# with (set for its calls only); `--sides` picks which run beside open_clip.
KERAS_SIDES = {
    "keras_clip fused": {},
    "keras_clip Keras ops": {"torch_fused_blocks": False},
    "keras_clip fused, conv kernels uncached": {"torch_conv_kernel_cache": False},
    "keras_clip fused, towers through __call__": {"torch_skip_tower_call": False},
}


def open_clip_side(config, images, ids, dtype="float32"):
    import open_clip
    from open_clip.loss import ClipLoss

    from keras_clip.convert import open_clip_model_config

    torch.manual_seed(0)
    model = open_clip.model.CLIP(**open_clip_model_config(config))
    x = torch.tensor(images).permute(0, 3, 1, 2).contiguous()
    t = torch.tensor(ids, dtype=torch.long)
    loss_fn = ClipLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.2)
    # open_clip's mixed precision: autocast around the model (`--precision amp_bf16`).
    bf16 = dtype == "mixed_bfloat16"

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)

    def train():
        model.train()
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            image, text, scale = model(x, t)
            loss = loss_fn(image, text, scale)
        loss.backward()
        optimizer.step()

    def encoders(n):
        xi, xt = x[:1].repeat(n, 1, 1, 1), t[:1].repeat(n, 1)

        def image():
            model.eval()
            with torch.no_grad(), autocast():
                return model.encode_image(xi, normalize=True).float().numpy()

        def text():
            model.eval()
            with torch.no_grad(), autocast():
                return model.encode_text(xt, normalize=True).float().numpy()

        return image, text

    return train, encoders


def keras_side(preset, images, ids, switches, dtype):
    keras.utils.set_random_seed(0)
    model = CLIPModel.from_preset(preset, dtype=dtype)
    model.compile(optimizer=make_optimizer(model, total_steps=10_000, warmup_steps=1))
    batch = {"images": images, "token_ids": ids}

    def switched(fn):
        def run():
            with backends.fast_paths(**switches):
                return fn()
        return run

    def encoders(n):
        xi = keras.ops.convert_to_tensor(np.repeat(images[:1], n, axis=0))
        xt = keras.ops.convert_to_tensor(np.repeat(ids[:1], n, axis=0))

        def image():
            with torch.no_grad():
                return keras.ops.convert_to_numpy(model.encode_image(xi))

        def text():
            with torch.no_grad():
                return keras.ops.convert_to_numpy(model.encode_text(xt))

        return switched(image), switched(text)

    return switched(lambda: model.train_on_batch(batch)), encoders


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", default=["tiny-vit:64", "demo-resnet:128"],
                        help="preset:training batch")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20,
                        help="inference calls per round and side (training: a fifth)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32],
                        help="inference batch sizes")
    parser.add_argument("--no-train", action="store_true",
                        help="time inference only (large models)")
    parser.add_argument("--dtype", choices=["float32", "mixed_bfloat16"], default="float32",
                        help="keras_clip's dtype policy; open_clip runs under "
                             "torch.autocast(bfloat16) for mixed_bfloat16")
    parser.add_argument("--sides", nargs="+", choices=list(KERAS_SIDES),
                        default=["keras_clip fused", "keras_clip Keras ops"],
                        help="keras_clip sides to time beside open_clip")
    args = parser.parse_args()
    names = ["open_clip"] + args.sides
    torch.set_num_threads(args.threads)
    rows = []
    for case in args.cases:
        preset, batch = case.split(":")
        config = CLIPModel.from_preset(preset).config
        images, ids = random_pairs(config, int(batch))
        sides = {"open_clip": open_clip_side(config, images, ids, args.dtype)}
        for name in args.sides:
            sides[name] = keras_side(preset, images, ids, KERAS_SIDES[name], args.dtype)
        jobs = {}
        for name, (train, encoders) in sides.items():
            if not args.no_train:
                jobs[name, "train"] = train
            for n in args.batches:
                jobs[name, f"image b{n}"], jobs[name, f"text b{n}"] = encoders(n)
        for fn in jobs.values():  # warm-up: first calls build and allocate
            fn(), fn()
        times = alternating_rounds(
            jobs, args.rounds,
            lambda key: max(1, args.repeats // 5) if key[1] == "train" else args.repeats)
        whats = [] if args.no_train else ["train"]
        whats += [f"{tower} b{n}" for tower in ("image", "text") for n in args.batches]
        for what in whats:
            ms = {name: 1e3 * statistics.median(times[name, what]) for name in names}
            ref = ms["open_clip"]
            cells = " | ".join(f"{ms[name]:.2f} ({ref / ms[name]:.2f}x)" for name in names)
            label = f"train step (batch {batch})" if what == "train" else what
            rows.append(f"| {preset} | {label} | {cells} |")
    print(f"\nMachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{args.threads} torch threads; {args.dtype}; torch {torch.__version__}, keras {keras.__version__}; "
          f"median of {args.rounds} rounds, sides alternating; ms (speed vs open_clip).\n")
    print("| case | what | " + " | ".join(names) + " |")
    print("|---|---|" + "---:|" * len(names))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
