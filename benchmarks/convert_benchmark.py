"""Conversion time and peak memory for a ViT-L/14-sized open_clip checkpoint.

Writes randomly initialised ViT-L/14 weights (open_clip's "ViT-L-14-quickgelu",
428M parameters, 1.7 GB in float32) as `.safetensors` and as a `torch.save`
`.pt` once, then converts each in a fresh process per Keras backend and
reports wall time and peak resident memory (`ru_maxrss`) above the
process's peak after imports. Prints a Markdown table.

Usage:
    python benchmarks/convert_benchmark.py [--model ViT-L-14-quickgelu]
        [--backends tensorflow,jax,torch] [--workdir /tmp/keras_clip_bench]
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

GIB = 1024**3


def _peak_rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _write_checkpoints(model_name, workdir):
    paths = {
        "safetensors": os.path.join(workdir, f"{model_name}.safetensors"),
        "torch .pt": os.path.join(workdir, f"{model_name}.pt"),
    }
    if all(os.path.isfile(p) for p in paths.values()):
        return paths
    import types

    # PyPI's torchvision is a CUDA build beside the CPU torch here; an empty
    # `_meta_registrations` lets open_clip import (see docs/testing.md).
    sys.modules.setdefault(
        "torchvision._meta_registrations",
        types.ModuleType("torchvision._meta_registrations"),
    )
    import open_clip
    from safetensors.torch import save_file
    import torch

    os.makedirs(workdir, exist_ok=True)
    model = open_clip.create_model(model_name, pretrained=None)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, paths["safetensors"])
    torch.save(state, paths["torch .pt"])
    return paths


def _child(path, activation):
    import keras  # noqa: F401  (backend import counts as baseline)
    import torch  # noqa: F401

    from keras_clip import convert

    baseline = _peak_rss_bytes()
    start = time.perf_counter()
    model = convert.from_open_clip(path, activation=activation, tokenizer=False)
    seconds = time.perf_counter() - start
    peak = _peak_rss_bytes()
    print(json.dumps({
        "seconds": seconds,
        "peak_gib": peak / GIB,
        "above_baseline_gib": (peak - baseline) / GIB,
        "params": model.count_params(),
    }))


def _machine():
    try:
        with open("/proc/meminfo") as f:
            total = int(f.readline().split()[1]) * 1024 / GIB
    except OSError:
        total = float("nan")
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, {total:.0f} GiB RAM, Python "
        f"{platform.python_version()}, {platform.system()}"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="ViT-L-14-quickgelu")
    parser.add_argument("--backends", default="tensorflow,jax,torch")
    parser.add_argument("--workdir", default="/tmp/keras_clip_bench")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    activation = "quick_gelu" if args.model.endswith("-quickgelu") else "gelu"
    if args.child:
        return _child(args.child, activation)
    paths = _write_checkpoints(args.model, args.workdir)
    rows = []
    for backend in args.backends.split(","):
        for fmt, path in paths.items():
            env = dict(os.environ, KERAS_BACKEND=backend, HF_HUB_OFFLINE="1",
                       TF_CPP_MIN_LOG_LEVEL="3")
            out = subprocess.run(
                [sys.executable, __file__, "--model", args.model, "--child", path],
                env=env, capture_output=True, text=True, check=False,
            )
            if out.returncode:
                raise RuntimeError(f"{backend} / {fmt} failed:\n{out.stderr[-3000:]}")
            result = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append((backend, fmt, result))
    size = os.path.getsize(paths["safetensors"]) / GIB
    print(f"Machine: {_machine()}")
    print(f"Checkpoint: open_clip {args.model}, random init, "
          f"{rows[0][2]['params'] / 1e6:.1f}M parameters, {size:.2f} GiB float32\n")
    print("| backend | format | conversion (s) | peak RSS (GiB) | above post-import peak (GiB) |")
    print("|---|---|---|---|---|")
    for backend, fmt, r in rows:
        print(f"| {backend} | {fmt} | {r['seconds']:.1f} | {r['peak_gib']:.2f} | "
              f"{r['above_baseline_gib']:.2f} |")


if __name__ == "__main__":
    main()
