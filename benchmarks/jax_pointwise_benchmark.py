"""JAX on the CPU: ResNet 1x1 convolutions as XLA convolutions or as matmuls.

`keras_clip.modified_resnet.JAX_POINTWISE_MATMUL` (on by default) runs the
bottlenecks' 1x1 convolutions as matrix products on JAX. This A/B builds the
same model twice in one process, one traced with the switch off and one
with it on, then times their training steps in alternating rounds (the
machine is shared and noisy: compare the two columns of a row, not rows of
different runs). Prints a Markdown table with medians and the machine.

    KERAS_BACKEND=jax python benchmarks/jax_pointwise_benchmark.py \
        [--cases demo-resnet:32:128 RN50:224:8] [--rounds 3] [--steps 3]
"""

import argparse
import os
import platform
import sys
import time

os.environ["KERAS_BACKEND"] = "jax"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_clip import make_optimizer, modified_resnet  # noqa: E402
from keras_clip.model import CLIPModel  # noqa: E402


def build(preset, image_size, batch, matmul):
    modified_resnet.JAX_POINTWISE_MATMUL = matmul  # read when fit traces
    model = CLIPModel.from_preset(preset, image_size=image_size)
    model.compile(optimizer=make_optimizer(model, total_steps=1000, warmup_steps=10))
    rng = np.random.default_rng(0)
    x = {
        "images": rng.standard_normal((batch, image_size, image_size, 3)).astype("float32"),
        "token_ids": rng.integers(1, 400, (batch, model.config.context_length)).astype("int32"),
    }
    start = time.perf_counter()
    model.train_on_batch(x)
    return model, x, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", default=["demo-resnet:32:128", "RN50:224:8"],
                        help="preset:image_size:batch")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="steps per round and side")
    args = parser.parse_args()
    rows = []
    for case in args.cases:
        preset, size, batch = case.split(":")
        size, batch = int(size), int(batch)
        sides = {name: build(preset, size, batch, matmul)
                 for name, matmul in (("conv", False), ("matmul", True))}
        times = {name: [] for name in sides}
        for _ in range(args.rounds):
            for name, (model, x, _) in sides.items():
                for _ in range(args.steps):
                    start = time.perf_counter()
                    model.train_on_batch(x)
                    times[name].append(time.perf_counter() - start)
        conv, matmul = (1e3 * np.median(times[n]) for n in ("conv", "matmul"))
        rows.append(f"| {preset} {size} px (batch {batch}) | {sides['conv'][2]:.1f} / "
                    f"{sides['matmul'][2]:.1f} | {conv:.0f} | {matmul:.0f} | {conv / matmul:.2f}x |")
    print(f"\nMachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"keras {keras.__version__}, JAX CPU; median of {args.rounds} x {args.steps} steps per side, "
          "sides alternating.\n")
    print("| case | first step s (conv / matmul) | train step ms, XLA conv | train step ms, matmul | speed-up |")
    print("|---|---:|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
