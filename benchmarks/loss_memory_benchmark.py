"""Peak memory of the contrastive loss + its gradient vs batch size.

Three ways to compute the same loss over a global batch of N pairs:

- plain: the whole N x N similarity matrix (`CLIPModel` on one device);
- chunked: `losses.chunked_contrastive_loss` with blocks of 256 rows in a
  loop primitive and a blockwise hand-written gradient
  (`compile(loss_chunk_size=256)`);
- sharded: one replica's share with 8 replicas (N/8 local rows against the
  N gathered columns), which is what each device holds under distribution.

Each case runs in a fresh process (loss and gradient with respect to both
embedding matrices, embedding width 512, float32) and reports the growth of
the process's peak resident memory over the inputs alone, on every backend
(JAX compiles before the measurement, so its number is the run alone; TF's
XLA compilation happens inside the measured call). For JAX it also reports
XLA's own account of the compiled program's temporary buffers
(`memory_analysis().temp_size_in_bytes`), which no allocator noise affects.
Medians of `--repeats` processes. The rows to compare are within a backend.

    python benchmarks/loss_memory_benchmark.py [--sizes 1024 4096 8192]
"""

import argparse
import json
import os
import platform
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKENDS = ("tensorflow", "jax", "torch")
MODES = ("plain", "chunked", "sharded")
WIDTH = 512
REPLICAS = 8
CHUNK = 256


def peak_rss_mib():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker(mode, n):
    import numpy as np

    import keras
    from keras import ops

    from keras_clip import losses
    from keras_clip.distributed import sharded_logits

    rng = np.random.default_rng(0)
    image = rng.standard_normal((n, WIDTH)).astype("float32")
    text = rng.standard_normal((n, WIDTH)).astype("float32")
    image /= np.linalg.norm(image, axis=1, keepdims=True)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    scale = np.float32(14.3)

    def loss_fn(img, txt):
        if mode == "plain":
            return losses.contrastive_loss(scale * ops.matmul(img, ops.transpose(txt)))[0]
        if mode == "chunked":
            return losses.chunked_contrastive_loss(img, txt, scale, CHUNK)[0]
        local = n // REPLICAS
        labels = ops.arange(local, dtype="int32")
        return losses.contrastive_loss(
            *sharded_logits(img[:local], txt[:local], img, txt, scale), labels=labels
        )[0]

    backend = keras.backend.backend()
    temp_mib = None
    if backend == "jax":
        import jax

        img, txt = jax.numpy.asarray(image), jax.numpy.asarray(text)
        compiled = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1))).lower(img, txt).compile()
        temp_mib = compiled.memory_analysis().temp_size_in_bytes / 2**20
        before = peak_rss_mib()
        value, grads = compiled(img, txt)
        jax.block_until_ready(grads)
    elif backend == "tensorflow":
        import tensorflow as tf

        img, txt = tf.constant(image), tf.constant(text)

        @tf.function(jit_compile=True)
        def step(img, txt):
            with tf.GradientTape() as tape:
                tape.watch([img, txt])
                value = loss_fn(img, txt)
            return value, tape.gradient(value, [img, txt])

        before = peak_rss_mib()
        value, grads = step(img, txt)
    else:
        import torch

        img = torch.tensor(image, requires_grad=True)
        txt = torch.tensor(text, requires_grad=True)
        before = peak_rss_mib()
        value = loss_fn(img, txt)
        value.backward()
    return {"peak_growth_mib": peak_rss_mib() - before, "xla_temp_mib": temp_mib, "loss": float(np.asarray(ops.convert_to_numpy(value)))}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 8192])
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker[0], int(args.worker[1]))))
        return
    import statistics

    rows = []
    for backend in args.backends:
        for n in args.sizes:
            cells = {}
            for mode in MODES:
                values, loss, temp = [], None, None
                for _ in range(args.repeats):
                    path = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
                    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3",
                               JAX_THREEFRY_PARTITIONABLE="false", PYTHONPATH=path)
                    proc = subprocess.run([sys.executable, __file__, "--worker", mode, str(n)],
                                          env=env, capture_output=True, text=True)
                    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
                    if not line:
                        print(proc.stderr[-1500:], file=sys.stderr)
                        continue
                    result = json.loads(line[0][7:])
                    values.append(result["peak_growth_mib"])
                    loss, temp = result["loss"], result["xla_temp_mib"]
                cells[mode] = (statistics.median(values) if values else None, loss, temp)
            rows.append((backend, n, cells))
    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"embedding width {WIDTH}, float32, loss + gradient; chunk {CHUNK} rows; sharded = one of "
          f"{REPLICAS} replicas; peak RSS growth in MiB (median of {args.repeats}).")
    print()
    print("| backend | global batch | plain | chunked | sharded (per replica) | N x N logits alone | same loss |"
          " XLA temp MiB plain / chunked / sharded |")
    print("|---|---:|---:|---:|---:|---:|---|---|")
    for backend, n, cells in rows:
        fmt = lambda v: "failed" if v[0] is None else f"{v[0]:,.0f}"
        losses_seen = [c[1] for m, c in cells.items() if c[1] is not None and m != "sharded"]
        temps = " / ".join("-" if c[2] is None else f"{c[2]:,.0f}" for c in cells.values())
        same = "yes" if len(losses_seen) == 2 and abs(losses_seen[0] - losses_seen[1]) < 1e-4 else "n/a"
        print(f"| {backend} | {n:,} | {fmt(cells['plain'])} | {fmt(cells['chunked'])} | "
              f"{fmt(cells['sharded'])} | {n * n * 4 / 2**20:,.0f} | {same} | {temps} |")


if __name__ == "__main__":
    main()
