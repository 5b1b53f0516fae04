"""JAX on the CPU: A/B of the two switches keras_clip sets for XLA's CPU backend.

- `pointwise`: `keras_clip.backends.settings.jax_pointwise_matmul` runs the
  ResNet bottlenecks' 1x1 convolutions as matrix products.
- `boundaries`: `keras_clip.backends.settings.jax_cpu_gradient_boundaries`
  passes the residual stream's gradient through a tiny identity matmul
  between transformer blocks, so XLA's fusion stops re-adding it in every
  block.

Both are on by default. For each case this builds the same model twice in
one process, one traced with the switch off and one with it on, then times
their training steps in alternating rounds (the machine is shared and noisy:
compare the two columns of a row, not rows of different runs). Prints a
Markdown table with medians and the machine.

    KERAS_BACKEND=jax python benchmarks/jax_cpu_benchmark.py --switch boundaries \
        [--cases RN50:224:8 ViT-B/32:224:8] [--rounds 3] [--steps 3]
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

from keras_clip import backends  # noqa: E402
from keras_clip import make_optimizer  # noqa: E402
from keras_clip.models.clip_model import CLIPModel  # noqa: E402

# As the CLI does before any JAX computation (nothing is set at import).
__import__("keras_clip").backends.tune_xla_cpu()

# switch -> (`keras_clip.backends.settings` field, off / on names, default cases)
SWITCHES = {
    "pointwise": ("jax_pointwise_matmul", "XLA conv", "matmul",
                  ["demo-resnet:32:128", "RN50:224:8"]),
    "boundaries": ("jax_cpu_gradient_boundaries", "no boundaries", "boundaries",
                   ["RN50:224:8", "ViT-B/32:224:8"]),
}


def build(preset, image_size, batch, field, on):
    model = CLIPModel.from_preset(preset, image_size=image_size)
    model.compile(optimizer=make_optimizer(model, total_steps=1000, warmup_steps=10))
    rng = np.random.default_rng(0)
    x = {
        "images": rng.standard_normal((batch, image_size, image_size, 3)).astype("float32"),
        "token_ids": rng.integers(1, 400, (batch, model.config.context_length)).astype("int32"),
    }
    start = time.perf_counter()
    with backends.fast_paths(**{field: on}):  # read when the first step traces
        model.train_on_batch(x)
    return model, x, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--switch", choices=sorted(SWITCHES), default="boundaries")
    parser.add_argument("--cases", nargs="+", default=None,
                        help="preset:image_size:batch (default: per switch)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="steps per round and side")
    args = parser.parse_args()
    field, off_name, on_name, default_cases = SWITCHES[args.switch]
    rows = []
    for case in args.cases or default_cases:
        preset, size, batch = case.split(":")
        size, batch = int(size), int(batch)
        sides = {name: build(preset, size, batch, field, on)
                 for name, on in ((off_name, False), (on_name, True))}
        times = {name: [] for name in sides}
        for _ in range(args.rounds):
            for name, (model, x, _) in sides.items():
                for _ in range(args.steps):
                    start = time.perf_counter()
                    model.train_on_batch(x)
                    times[name].append(time.perf_counter() - start)
        off, on = (1e3 * np.median(times[n]) for n in (off_name, on_name))
        rows.append(f"| {preset} {size} px (batch {batch}) | {sides[off_name][2]:.1f} / "
                    f"{sides[on_name][2]:.1f} | {off:,.0f} | {on:,.0f} | {off / on:.2f}x |")
    print(f"\nMachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"keras {keras.__version__}, JAX CPU; `keras_clip.backends.settings.{field}`; median of "
          f"{args.rounds} x {args.steps} steps per side, sides alternating.\n")
    print(f"| case | first step s ({off_name} / {on_name}) | train step ms, {off_name} | "
          f"train step ms, {on_name} | speed-up |")
    print("|---|---:|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
