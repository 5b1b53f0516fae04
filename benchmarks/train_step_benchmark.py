"""Training-step time of keras_clip on each backend (tiny presets, CPU).

Runs one subprocess per backend (a backend is fixed per process), each timing
`fit` steps with a callback: the first step (tracing + compilation) apart from
the steady-state median. Prints a Markdown table with the machine.

    python benchmarks/train_step_benchmark.py [--presets tiny-vit tiny-resnet]
        [--batch-size 64] [--steps 30] [--threads 2]

The comparison with open_clip's PyTorch model belongs to the performance
benchmark (issue 7); this script gives the per-backend baseline.
"""

import argparse
import json
import os
import platform
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKENDS = ("tensorflow", "jax", "torch")


def worker(preset, batch_size, steps, threads, image_size=None):
    import time

    import keras
    import numpy as np

    import keras_clip

    keras_clip.backends.tune_xla_cpu()  # as the CLI does (nothing is set at import)
    if keras.backend.backend() == "torch":
        import torch

        torch.set_num_threads(threads)
    elif keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)

    keras.utils.set_random_seed(0)
    overrides = {"image_size": image_size} if image_size else {}
    model = keras_clip.CLIPModel.from_preset(preset, **overrides)
    c = model.config
    rng = np.random.default_rng(0)
    images = rng.standard_normal((batch_size, c.image_size, c.image_size, 3)).astype("float32")
    ids = rng.integers(1, c.vocabulary_size - 2, (batch_size, c.context_length)).astype("int32")
    ids[:, 8] = c.eot_token_id
    model.compile(optimizer=keras_clip.make_optimizer(model, total_steps=steps + 1, warmup_steps=1))

    times = []

    class Timer(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            times.append(time.perf_counter() - self.start)

    x = {"images": np.tile(images, (steps + 1, 1, 1, 1)), "token_ids": np.tile(ids, (steps + 1, 1))}
    model.fit(x, batch_size=batch_size, epochs=1, verbose=0, shuffle=False, callbacks=[Timer()])
    steady = float(np.median(times[1:]))
    return {
        "first_step_s": times[0],
        "median_step_ms": 1000 * steady,
        "pairs_per_s": batch_size / steady,
        "params": model.count_params(),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=["tiny-vit", "tiny-resnet"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=None, help="override the presets' image size")
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS))
    parser.add_argument("--worker", nargs=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = worker(args.worker[0], args.batch_size, args.steps, args.threads, args.image_size)
        print("RESULT " + json.dumps(result))
        return
    rows = []
    for preset in args.presets:
        for backend in args.backends:
            env = dict(
                os.environ,
                KERAS_BACKEND=backend,
                TF_CPP_MIN_LOG_LEVEL="3",
                JAX_THREEFRY_PARTITIONABLE="false",
            )
            cmd = [sys.executable, __file__, "--worker", preset, "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--threads", str(args.threads)]
            if args.image_size:
                cmd += ["--image-size", str(args.image_size)]
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not line:
                rows.append((preset, backend, None))
                print(proc.stderr[-2000:], file=sys.stderr)
                continue
            rows.append((preset, backend, json.loads(line[0][7:])))
    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}; batch {args.batch_size}, {args.steps} steps, "
          f"{args.threads} threads, float32"
          + (f", {args.image_size} px" if args.image_size else ""))
    print()
    print("| preset | backend | params | first step (s) | median step (ms) | pairs/s |")
    print("|---|---|---:|---:|---:|---:|")
    for preset, backend, r in rows:
        if r is None:
            print(f"| {preset} | {backend} | failed | | | |")
        else:
            print(f"| {preset} | {backend} | {r['params']:,} | {r['first_step_s']:.1f} | "
                  f"{r['median_step_ms']:.1f} | {r['pairs_per_s']:.0f} |")


if __name__ == "__main__":
    main()
