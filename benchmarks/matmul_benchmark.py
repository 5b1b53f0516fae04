"""TF's CPU matmul against torch's at the shapes of ViT-B/32 inference.

ViT-B/32 at 224 px has 50 tokens per image (49 patches + the class token),
so each block's matmuls have 50 rows per image. This times `relu(a @ b)` at
those shapes on TF with XLA, TF without XLA and torch, in one process,
rounds alternating, with the same number of threads, to tell the library's
matmul apart from keras_clip's own code when TF's encoder is slower than
open_clip's (`encoder_benchmark.py`).

Prints a Markdown table: median ms per call and each side's speed against
torch (> 1: faster).

    python benchmarks/matmul_benchmark.py [--threads 2] [--rounds 5] [--repeats 50]
"""

import argparse
import os
import platform
import statistics
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import torch  # noqa: E402

from benchmarks.open_clip_benchmark import alternating_rounds  # noqa: E402

SHAPES = (
    ((50, 768, 2304), "attention in-projection, batch 1"),
    ((50, 768, 3072), "MLP up, batch 1"),
    ((50, 3072, 768), "MLP down, batch 1"),
    ((400, 768, 3072), "MLP up, batch 8"),
)
SIDES = ("torch", "TF, XLA", "TF, no XLA")


def sides_for(m, k, n, rng):
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    ta, tb = tf.constant(a), tf.constant(b)
    pa, pb = torch.from_numpy(a), torch.from_numpy(b)
    xla = tf.function(lambda x, y: tf.nn.relu(x @ y), jit_compile=True)
    plain = tf.function(lambda x, y: tf.nn.relu(x @ y), jit_compile=False)
    fns = {
        "torch": lambda: torch.relu(pa @ pb).numpy(),
        "TF, XLA": lambda: xla(ta, tb).numpy(),
        "TF, no XLA": lambda: plain(ta, tb).numpy(),
    }
    reference = fns["torch"]()
    for name in SIDES[1:]:  # the sides compute the same thing
        np.testing.assert_allclose(fns[name](), reference, rtol=1e-3, atol=1e-2)
    return fns


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=50, help="calls per round and side")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    rng = np.random.default_rng(0)
    rows = []
    for (m, k, n), what in SHAPES:
        fns = sides_for(m, k, n, rng)
        times = alternating_rounds(fns, args.rounds, lambda name: args.repeats)
        ms = {name: 1e3 * statistics.median(times[name]) for name in SIDES}
        cells = " | ".join(f"{ms[name]:.2f} ({ms['torch'] / ms[name]:.2f}x)" for name in SIDES)
        gflops = 2 * m * k * n / 1e9
        rows.append(f"| ({m}, {k}, {n}) | {what} | {gflops:.2f} | {cells} |")
    print(f"\nMachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{args.threads} threads; tensorflow {tf.__version__}, torch {torch.__version__}; "
          f"median of {args.rounds} rounds of {args.repeats} calls, sides alternating; "
          "ms (speed vs torch).\n")
    print("| (M, K, N) | what | GFLOP | " + " | ".join(SIDES) + " |")
    print("|---|---|---:|" + "---:|" * len(SIDES))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
