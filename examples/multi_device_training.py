"""
Title: Contrastive training over several devices with global-batch negatives
Author: keras_clip contributors
Date created: 2026/12/06
Last modified: 2026/12/06
Description: Global-batch contrastive training over simulated devices, on every backend.
Accelerator: None (simulated CPU devices)
"""

"""
## Introduction

CLIP's loss compares every image of a batch with every caption of the
batch: the other captions are the negatives. When a batch is split across
devices, each device holds only its share of the pairs, and a loss computed
on each share alone would see fewer negatives: a different, weaker
objective. `keras_clip` computes the loss of the *global* batch however the
batch is split:

- **JAX** (`keras.distribution.DataParallel`): arrays are global and XLA
  partitions the similarity matrix itself;
- **TensorFlow** (`tf.distribute.MirroredStrategy` and the other
  strategies): each replica gathers the embeddings of all replicas, with a
  gradient, and computes its rows of the similarity matrix;
- **PyTorch** (`torch.distributed`, one process per device, as under
  `torchrun`): the same gather across processes, and the gradients are
  averaged before each optimizer step.

This example simulates the devices on the CPU, so it runs anywhere: 4 host
devices for JAX, 2 logical CPUs for TensorFlow, 2 processes talking over
gloo for PyTorch. It trains 3 steps on the same global batches twice, once
on one device and once spread over the devices, from the same initial
weights, and checks that the losses and the final weights agree to float32
rounding. It also shows that the loss of each device's share alone would
not.

Run it with `KERAS_BACKEND=jax`, `tensorflow` or `torch`. It is as small
with or without `KERAS_CLIP_EXAMPLE_SMALL`: three steps of 16 pairs say
all there is to say.
"""

"""
## Setup

Device counts are fixed when a framework starts, so they are set before
Keras is imported. The devices are CPUs even on a machine with a GPU.
"""

import os
import sys

BACKEND = os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["CUDA_VISIBLE_DEVICES"] = ""
if BACKEND == "jax":
    NUM_DEVICES = 4
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "")
        + f" --xla_force_host_platform_device_count={NUM_DEVICES}"
    )
else:
    NUM_DEVICES = 2
if BACKEND == "tensorflow":
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * NUM_DEVICES
    )

import json
import socket
import subprocess
import tempfile

import keras
import numpy as np
import tensorflow as tf

import keras_clip
from keras_clip.data.datasets import load_twemoji

GLOBAL_BATCH = 16
STEPS = 3
LEARNING_RATE = 0.1
print(f"Keras {keras.__version__}, backend {BACKEND}, {NUM_DEVICES} simulated devices")

"""
## Training a few steps

Both runs use this function: the model starts from saved weights, and each
of the 3 epochs is one optimizer step on one batch (`steps_per_epoch=1`,
the dataset's iterator carries on from epoch to epoch), so `History` holds
the loss of every step. Plain SGD keeps the comparison simple.
"""


def train_steps(batches, weights_path):
    """Loads `weights_path` into a fresh model, trains one step per batch.

    Returns the loss of each step and the final weights.
    """
    model = keras_clip.CLIPModel.from_preset(
        "tiny-vit", vocabulary_size=VOCABULARY_SIZE
    )
    model.load_weights(weights_path)
    model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE))
    history = model.fit(batches, epochs=STEPS, steps_per_epoch=1, verbose=0)
    weights = [keras.ops.convert_to_numpy(w) for w in model.weights]
    return history.history["loss"], weights


def as_dataset(images, token_ids, batch_size):
    """`(steps * batch, ...)` arrays as a dataset of consecutive batches."""
    data = {"images": images, "token_ids": token_ids}
    return tf.data.Dataset.from_tensor_slices(data).batch(
        batch_size, drop_remainder=True
    )


"""
## PyTorch: one process per device

With PyTorch, data parallelism means one process per device, each holding a
copy of the model and reading its own part of every global batch. This is
what each worker runs; `torchrun` would start them the same way, with
`RANK`, `WORLD_SIZE`, `MASTER_ADDR` and `MASTER_PORT` in the environment.
While the process group is up, `CLIPModel` gathers embeddings across the
processes for the loss and averages gradients before every update.
"""


def torch_worker(folder):
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)  # one core per simulated device
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        data = np.load(os.path.join(folder, "batches.npz"))
        local = GLOBAL_BATCH // world
        # This process's share: rows rank * local ... of every global batch.
        starts = np.arange(STEPS)[:, None] * GLOBAL_BATCH + rank * local
        rows = (starts + np.arange(local)).ravel()  # (STEPS * local,)
        batches = as_dataset(data["images"][rows], data["token_ids"][rows], local)
        losses, weights = train_steps(
            batches, os.path.join(folder, "initial.weights.h5")
        )
        if rank == 0:
            np.savez(os.path.join(folder, "torch_weights.npz"), *weights)
            with open(os.path.join(folder, "torch_losses.json"), "w") as f:
                json.dump(losses, f)
    finally:
        dist.destroy_process_group()


"""
The same script is the worker: started with `--torch-worker FOLDER`, it runs
only the function above.
"""

if len(sys.argv) == 3 and sys.argv[1] == "--torch-worker":
    VOCABULARY_SIZE = int(os.environ["KERAS_CLIP_EXAMPLE_VOCABULARY"])
    torch_worker(sys.argv[2])
    sys.exit(0)

"""
## The data

`GLOBAL_BATCH * STEPS` Twemoji pairs: images normalised for the model,
captions tokenized with a vocabulary learnt from the training captions.
"""

pairs = load_twemoji(32, split="train", seed=0)
tokenizer = keras_clip.CLIPTokenizer.train(
    pairs.captions, vocabulary_size=1024, context_length=16
)
VOCABULARY_SIZE = tokenizer.vocabulary_size
chosen = np.random.default_rng(0).permutation(len(pairs))[: GLOBAL_BATCH * STEPS]
token_ids = tokenizer([pairs.captions[i] for i in chosen])
folder = tempfile.mkdtemp()

"""
## The reference: one device, whole global batches

The initial weights are saved so that the distributed run starts from the
very same model. Before training, we also compute what a loss over each
device's share alone would be on the first batch.
"""

keras.utils.set_random_seed(0)
reference = keras_clip.CLIPModel.from_preset(
    "tiny-vit", vocabulary_size=VOCABULARY_SIZE
)
images = reference.preprocess(pairs.images[chosen])
initial_weights = os.path.join(folder, "initial.weights.h5")
reference.save_weights(initial_weights)


def loss_of(batch):
    """The contrastive loss of `reference` on one batch, as a float."""
    logits = reference(batch)["logits_per_image"]  # (B, B)
    return float(keras.ops.convert_to_numpy(keras_clip.contrastive_loss(logits)[0]))


first = {"images": images[:GLOBAL_BATCH], "token_ids": token_ids[:GLOBAL_BATCH]}
global_loss = loss_of(first)
local = GLOBAL_BATCH // NUM_DEVICES
share_losses = []
for d in range(NUM_DEVICES):
    share = {name: value[d * local : (d + 1) * local] for name, value in first.items()}
    share_losses.append(loss_of(share))
print(
    f"First batch: global-batch loss {global_loss:.5f}; mean over the devices of "
    f"a loss with each device's own negatives only: {np.mean(share_losses):.5f}"
)

single_losses, single_weights = train_steps(
    as_dataset(images, token_ids, GLOBAL_BATCH), initial_weights
)
print("One device, losses per step:", np.round(single_losses, 5).tolist())
assert np.all(np.isfinite(single_losses)), single_losses
np.testing.assert_allclose(single_losses[0], global_loss, atol=1e-5)

"""
## The same training over several devices

- JAX: `DataParallel` over every device replicates the weights and splits
  each batch along its first axis; nothing else changes.
- TensorFlow: the model is built and compiled inside the strategy's scope;
  `fit` splits each global batch between the replicas.
- PyTorch: the global batches go to a file, and two worker processes
  (this script with `--torch-worker`) train on their halves.
"""

if BACKEND == "jax":
    devices = keras.distribution.list_devices()
    assert len(devices) == NUM_DEVICES, devices
    keras.distribution.set_distribution(
        keras.distribution.DataParallel(devices=devices)
    )
    losses, weights = train_steps(
        as_dataset(images, token_ids, GLOBAL_BATCH), initial_weights
    )
elif BACKEND == "tensorflow":
    strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(NUM_DEVICES)])
    assert strategy.num_replicas_in_sync == NUM_DEVICES
    with strategy.scope():
        losses, weights = train_steps(
            as_dataset(images, token_ids, GLOBAL_BATCH), initial_weights
        )
else:
    np.savez(os.path.join(folder, "batches.npz"), images=images, token_ids=token_ids)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workers = [
        subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--torch-worker", folder],
            env=dict(
                os.environ,
                RANK=str(rank),
                WORLD_SIZE=str(NUM_DEVICES),
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(port),
                KERAS_CLIP_EXAMPLE_VOCABULARY=str(VOCABULARY_SIZE),
            ),
        )
        for rank in range(NUM_DEVICES)
    ]
    codes = [worker.wait(timeout=600) for worker in workers]
    assert codes == [0] * NUM_DEVICES, f"A torch worker failed: exit codes {codes}"
    with open(os.path.join(folder, "torch_losses.json")) as f:
        losses = json.load(f)
    saved = np.load(os.path.join(folder, "torch_weights.npz"))
    weights = [saved[f"arr_{i}"] for i in range(len(saved.files))]

print(f"{NUM_DEVICES} devices, losses per step:", np.round(losses, 5).tolist())

"""
## Same numbers

The losses of every step and all the weights after 3 steps agree with the
single-device run to float32 rounding, while the mean of the per-device
losses with local negatives differs from the first step's loss.
"""

np.testing.assert_allclose(losses, single_losses, atol=1e-5)
assert len(weights) == len(single_weights)
largest = max(float(np.max(np.abs(a - b))) for a, b in zip(weights, single_weights))
print(f"Largest weight difference after {STEPS} steps: {largest:.2e}")
assert largest < 1e-5, largest
assert abs(np.mean(share_losses) - global_loss) > 1e-3
print("Training over the devices equals training on one device with the global batch.")

"""
## Conclusion

Spreading a CLIP batch over devices changes where the work runs, not what
is computed: each device still sees every negative of the global batch.
On real hardware the same code applies: `DataParallel` over the GPUs or TPU
cores of a JAX machine, a `MirroredStrategy` (or `MultiWorkerMirrored...`,
`TPUStrategy`) with TensorFlow, and `torchrun` with PyTorch.
"""
