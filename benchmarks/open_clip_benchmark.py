"""keras_clip on each backend vs open_clip, same architecture, same run.

For each case (a tiny CPU model, ViT-B/32 and RN50 at 224 px; small batches
on CPU) measures, each implementation in its own process with the same
number of threads:

- training: one optimiser step (forward, backward, AdamW update) on random
  pairs; median step time after warm-up, pairs/s, first-step time
  (tracing + compilation) separately;
- inference: `encode_image` and `encode_text` at batch 1 and 32 (32 only for
  the tiny model's text, all on CPU); median over 5 rounds of as many calls
  as fill 0.1 s;
- achieved FLOP/s: the training step's FLOPs (counted once with
  `torch.utils.flop_counter` on open_clip's model; the architectures are
  the same) over the median step time, as a fraction of this machine's
  float32 matmul ceiling measured in the same run (NumPy, same threads).

The open_clip side is `open_clip.model.CLIP` built from the same config
(`keras_clip.convert.open_clip_model_config`) with open_clip's `ClipLoss`.
keras-hub's `CLIPBackbone` (ViT cases, inference only: keras-hub has no
CLIP training step or ResNet tower) is built with the same shapes on each
backend. Inference runs without gradients (`torch.no_grad()` for open_clip
and keras_clip's torch backend, compiled programs on TF / JAX).
Prints a Markdown table with the ratio to open_clip. On a machine with a
GPU, `--device gpu` runs the same cases in bfloat16 (torch autocast for
open_clip, `mixed_bfloat16` for keras_clip).

    python benchmarks/open_clip_benchmark.py [--cases tiny-vit ViT-B/32 RN50] [--threads 2]
        [--implementations open_clip tensorflow xla:tensorflow jax torch]
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# preset -> training batch on CPU, on GPU.
CASES = {"tiny-vit": (64, 512), "ViT-B/32": (8, 256), "RN50": (8, 128)}


def batch_size(preset, device):
    return CASES.get(preset, (8, 128))[device == "gpu"]
IMPLEMENTATIONS = ("open_clip", "tensorflow", "jax", "torch",
                   "keras_hub:tensorflow", "keras_hub:jax", "keras_hub:torch")
# Also accepted: "xla:tensorflow", keras_clip compiled with jit_compile=True
# (Keras's "auto" leaves TF's training step without XLA on CPUs).


def set_threads(threads, backend):
    if backend == "torch" or backend == "open_clip":
        import torch

        torch.set_num_threads(threads)
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)


def random_pairs(config, batch, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch, config.image_size, config.image_size, 3)).astype("float32")
    ids = rng.integers(1, config.vocabulary_size - 2, (batch, config.context_length)).astype("int32")
    ids[:, 10] = config.vocabulary_size - 1
    ids[:, 11:] = 0
    return images, ids


def timed(fn, steps):
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def alternating_rounds(jobs, rounds, calls):
    """Per-call times of each job in `jobs` (key -> function), `rounds`
    rounds with the jobs taking turns, `calls(key)` calls per job and round
    (a machine's slow spell then hits every side alike). Returns key -> list
    of seconds per call, one entry per round."""
    times = {key: [] for key in jobs}
    for _ in range(rounds):
        for key, fn in jobs.items():
            n = calls(key)
            start = time.perf_counter()
            for _ in range(n):
                fn()
            times[key].append((time.perf_counter() - start) / n)
    return times


def per_call(fn, rounds=5, round_s=0.1):
    """Median time per call over `rounds` rounds, each of as many calls as
    fill about `round_s` seconds: a single call of a small model takes a
    few milliseconds, where one scheduler hiccup on a shared machine is as
    long."""
    start = time.perf_counter()
    fn()
    calls = max(1, int(round_s / max(time.perf_counter() - start, 1e-6)))
    return statistics.median(t / calls for t in timed(lambda: [fn() for _ in range(calls)], rounds))


def open_clip_worker(preset, batch, steps, device):
    import types

    # PyPI's torchvision is a CUDA build that fails to import beside the CPU
    # torch; an empty `_meta_registrations` lets open_clip import (as in the
    # tests' conftest.py). Only torchvision's C kernels stay unavailable.
    sys.modules.setdefault("torchvision._meta_registrations",
                           types.ModuleType("torchvision._meta_registrations"))
    import open_clip
    import torch
    from open_clip.loss import ClipLoss

    from keras_clip.models import config as configs
    from keras_clip.convert import open_clip_model_config

    config = configs.get_preset(preset)
    torch.manual_seed(0)
    model = open_clip.model.CLIP(**open_clip_model_config(config))
    dev = "cuda" if device == "gpu" else "cpu"
    model.to(dev)
    images, ids = random_pairs(config, batch)
    images = torch.tensor(images).permute(0, 3, 1, 2).contiguous().to(dev)
    ids = torch.tensor(ids, dtype=torch.long).to(dev)
    loss_fn = ClipLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.2)
    autocast = torch.autocast(dev, dtype=torch.bfloat16, enabled=device == "gpu")

    def sync():
        if dev == "cuda":
            torch.cuda.synchronize()

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            image, text, scale = model(images, ids)
            loss = loss_fn(image, text, scale)
        loss.backward()
        optimizer.step()
        sync()

    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    flops = counter.get_total_flops()
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = timed(step, steps + 1)
    out = {"first_step_s": times[0], "step_s": statistics.median(times[1:]), "flops": flops,
           "peak_mib": peak_memory_mib(device)}
    model.eval()
    with torch.no_grad(), autocast:
        for n in (1, 32):
            x = images[:1].repeat(n, 1, 1, 1)
            t = ids[:1].repeat(n, 1)
            model.encode_image(x)
            sync()
            out[f"image_{n}_s"] = per_call(lambda: (model.encode_image(x), sync()))
            model.encode_text(t)
            out[f"text_{n}_s"] = per_call(lambda: (model.encode_text(t), sync()))
    return out


def keras_worker(preset, batch, steps, device, jit_compile="auto"):
    import keras
    import numpy as np

    import keras_clip

    if device == "gpu":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    keras.utils.set_random_seed(0)
    model = keras_clip.CLIPModel.from_preset(preset)
    config = model.config
    images, ids = random_pairs(config, batch)
    model.compile(optimizer=keras_clip.make_optimizer(model, total_steps=10_000, warmup_steps=1),
                  jit_compile=jit_compile)
    times = []

    class Timer(keras.callbacks.Callback):
        def on_train_batch_begin(self, b, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, b, logs=None):
            times.append(time.perf_counter() - self.start)

    x = {"images": np.tile(images, (steps + 1, 1, 1, 1)), "token_ids": np.tile(ids, (steps + 1, 1))}
    model.fit(x, batch_size=batch, epochs=1, verbose=0, shuffle=False, callbacks=[Timer()])
    out = {"first_step_s": times[0], "step_s": statistics.median(times[1:]),
           "peak_mib": peak_memory_mib(device)}
    out.update(time_inference(model.encode_image, model.encode_text, images, ids))
    return out


def peak_memory_mib(device):
    """Peak memory of this worker so far: the process's resident set on CPU
    (framework and compiler included), the accelerator's peak allocation on
    GPU (torch's caching allocator / JAX's `peak_bytes_in_use`)."""
    if device == "cpu":
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    backend = os.environ.get("KERAS_BACKEND", "torch")
    if backend == "jax":
        import jax

        stats = jax.devices()[0].memory_stats() or {}
        return stats.get("peak_bytes_in_use", float("nan")) / 2**20
    if backend == "torch":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return float("nan")


def time_inference(encode_image, encode_text, images, ids):
    """Median latency of both encoders at batch 1 and 32, outputs as NumPy.

    The inputs are converted to the backend's tensors (on its device) before
    timing, as open_clip's inputs are torch tensors already on its device;
    the embeddings come back as NumPy, which also waits for the device.
    Under torch, inside `torch.no_grad()` as open_clip is timed (Keras's
    `predict` does the same); TF and JAX run compiled programs.
    """
    import contextlib

    import keras
    import numpy as np

    no_grad = contextlib.nullcontext()
    if keras.backend.backend() == "torch":
        import torch

        no_grad = torch.no_grad()
    out = {}
    with no_grad:
        for n in (1, 32):
            xi = keras.ops.convert_to_tensor(np.repeat(images[:1], n, axis=0))
            xt = keras.ops.convert_to_tensor(np.repeat(ids[:1], n, axis=0))
            run_image = lambda: keras.ops.convert_to_numpy(encode_image(xi))
            run_text = lambda: keras.ops.convert_to_numpy(encode_text(xt))
            run_image(), run_text()
            out[f"image_{n}_s"] = per_call(run_image)
            out[f"text_{n}_s"] = per_call(run_text)
    return out


def keras_hub_worker(preset, batch, steps, device):
    """keras-hub's `CLIPBackbone` with the same architecture (inference only:
    keras-hub has no CLIP training step and no ResNet tower).

    Random weights: the timing depends on shapes, not values. Its embeddings
    are timed through `predict_on_batch` of functional sub-models (the
    compiled route Keras offers; calling `get_vision_embeddings` on arrays
    runs eagerly).
    """
    import keras
    import keras_hub

    from keras_clip.models import config as configs

    config = configs.get_preset(preset)
    if config.vision != "vit":
        raise SystemExit("keras-hub has no ResNet CLIP tower")
    if device == "gpu":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    keras.utils.set_random_seed(0)
    size = config.image_size
    vision = keras_hub.models.CLIPVisionEncoder(
        patch_size=config.patch_size, hidden_dim=config.vision_width,
        num_layers=config.vision_layers, num_heads=config.vision_heads,
        intermediate_dim=4 * config.vision_width, image_shape=(size, size, 3))
    text = keras_hub.models.CLIPTextEncoder(
        vocabulary_size=config.vocabulary_size, embedding_dim=config.text_width,
        hidden_dim=config.text_width, num_layers=config.text_layers,
        num_heads=config.text_heads, intermediate_dim=4 * config.text_width,
        max_sequence_length=config.context_length)
    backbone = keras_hub.models.CLIPBackbone(vision, text, projection_dim=config.embed_dim)
    image_in = keras.Input((size, size, 3))
    ids_in = keras.Input((config.context_length,), dtype="int32")
    image_model = keras.Model(image_in, backbone.get_vision_embeddings(image_in))
    text_model = keras.Model(ids_in, backbone.get_text_embeddings(ids_in))
    images, ids = random_pairs(config, 1)
    out = {"first_step_s": None, "step_s": None, "peak_mib": None}
    out.update(time_inference(image_model.predict_on_batch, text_model.predict_on_batch,
                              images, ids))
    return out


def matmul_ceiling(threads):
    """Measured float32 GFLOP/s of a large NumPy matmul with `threads` threads."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads))
    code = (
        "import numpy as np, time\n"
        "a = np.random.rand(2048, 2048).astype('float32'); b = a.copy(); a @ b\n"
        "ts = []\n"
        "for _ in range(5):\n"
        "    s = time.perf_counter(); a @ b; ts.append(time.perf_counter() - s)\n"
        "print(2 * 2048**3 / sorted(ts)[2] / 1e9)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    return float(proc.stdout.strip())


def bf16_matmul_ceiling():
    """Measured bfloat16 TFLOP/s of an 8192^3 torch matmul on the GPU."""
    code = (
        "import torch, time\n"
        "a = torch.randn(8192, 8192, device='cuda', dtype=torch.bfloat16); b = a.clone()\n"
        "for _ in range(3): a @ b\n"
        "torch.cuda.synchronize(); s = time.perf_counter()\n"
        "for _ in range(10): a @ b\n"
        "torch.cuda.synchronize(); print(10 * 2 * 8192**3 / (time.perf_counter() - s) / 1e9)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return float(proc.stdout.strip())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES))
    parser.add_argument("--implementations", nargs="+", default=list(IMPLEMENTATIONS))
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        impl, preset = args.worker
        set_threads(args.threads, impl if impl == "open_clip" else os.environ["KERAS_BACKEND"])
        if impl != "open_clip":
            # What the CLI does before any JAX computation (nothing is set at import).
            from keras_clip import backends

            backends.tune_xla_cpu()
        workers = {"open_clip": open_clip_worker, "keras_hub": keras_hub_worker,
                   "xla": lambda *a: keras_worker(*a, jit_compile=True)}
        fn = workers.get(impl.split(":")[0], keras_worker)
        print("RESULT " + json.dumps(fn(preset, batch_size(preset, args.device), args.steps,
                                        args.device)))
        return
    from keras_clip.models import config as configs

    if args.device == "cpu":
        ceiling = matmul_ceiling(args.threads)
        ceiling_text = f"float32 matmul ceiling {ceiling:.0f} GFLOP/s"
    else:
        ceiling = bf16_matmul_ceiling()
        ceiling_text = f"bfloat16 (mixed), bf16 matmul ceiling {ceiling / 1000:.0f} TFLOP/s"
    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{args.threads} threads each, device {args.device} ({device_name(args.device)}), "
          f"{ceiling_text}; median of {args.steps} steps after the first.")
    print("Peak memory: the worker's resident set on CPU (framework and compiler included), "
          "the accelerator's peak allocation on GPU.")
    print()
    unit = "GFLOP/s" if args.device == "cpu" else "TFLOP/s"
    print("| case (batch) | implementation | first step (s) | train step (ms) | pairs/s | vs open_clip "
          f"| achieved {unit} (of ceiling) | peak memory (MiB) "
          "| image b1 / b32 (ms) (b32 vs open_clip) | text b1 / b32 (ms) (b32 vs open_clip) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|", flush=True)
    # Each row is printed as soon as its worker ends (open_clip first, the
    # reference of the ratios), so a run cut short keeps what it measured.
    scale = 1e9 if args.device == "cpu" else 1e12
    for preset in args.cases:
        base = None
        batch = batch_size(preset, args.device)
        for impl in args.implementations:
            if impl.startswith("keras_hub") and configs.get_preset(preset).vision != "vit":
                continue  # keras-hub has no ResNet tower.
            r = run_worker(impl, preset, args)
            if impl == "open_clip":
                base = r
            print(table_row(preset, batch, impl, r, base, ceiling, scale), flush=True)


def run_worker(impl, preset, args):
    """One implementation and case in a fresh process; its result dict or None."""
    backend = "torch" if impl == "open_clip" else impl.split(":")[-1]
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3",
               JAX_THREEFRY_PARTITIONABLE="false", HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])),
               OMP_NUM_THREADS=str(args.threads),
               XLA_FLAGS="--xla_cpu_multi_thread_eigen=true")
    cmd = [sys.executable, __file__, "--worker", impl, preset, "--steps", str(args.steps),
           "--threads", str(args.threads), "--device", args.device]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not line:
        print(f"{preset} / {impl} failed:\n{proc.stderr[-1500:]}", file=sys.stderr)
        return None
    return json.loads(line[0][7:])


def table_row(preset, batch, impl, r, base, ceiling, scale):
    if r is None:
        return f"| {preset} ({batch}) | {impl} | failed | | | | | | | |"
    flops = base.get("flops") if base else None
    name = {"open_clip": "open_clip (torch)"}.get(impl, f"keras_clip {impl}")
    if impl.startswith("keras_hub"):
        name = f"keras-hub CLIPBackbone {impl.split(':')[1]} (inference only)"
    if impl.startswith("xla:"):
        name = f"keras_clip {impl.split(':')[1]}, jit_compile=True"
    train = "| | | | | | "
    if r["step_s"] is not None:
        ratio = f"{base['step_s'] / r['step_s']:.2f}x" if base else "n/a"
        achieved = ""
        if flops and ceiling:
            g = flops / r["step_s"] / scale
            achieved = f"{g:.1f} ({g * scale / 1e9 / ceiling:.0%})"
        train = (f"| {r['first_step_s']:.1f} | {1000 * r['step_s']:.0f} | "
                 f"{batch / r['step_s']:.0f} | {ratio} | {achieved} | {r['peak_mib']:.0f} ")
    inference = ""
    for key in ("image", "text"):
        b1, b32 = r[f"{key}_1_s"], r[f"{key}_32_s"]
        rel = f" ({base[f'{key}_32_s'] / b32:.2f}x)" if base else ""
        inference += f"| {1000 * b1:.1f} / {1000 * b32:.1f}{rel} "
    return f"| {preset} ({batch}) | {name} {train}{inference}|"


def device_name(device):
    if device == "cpu":
        return "CPU"
    proc = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                          capture_output=True, text=True)
    return proc.stdout.strip() or "GPU"


if __name__ == "__main__":
    main()
