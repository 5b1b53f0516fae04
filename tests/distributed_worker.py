"""Trains tiny CLIPs for the distribution tests, one way per invocation.

    python tests/distributed_worker.py MODE OUT.npz [GLOBAL_BATCH [PRESET [SGD_LR [CHUNK [SMOOTHING]]]]]

MODE: "single" (one device, the reference), "tf" (MirroredStrategy over 2
logical CPUs), "jax" (DataParallel over 4 host devices), "torch" (2 gloo
processes), "jax_model_parallel" (2 x 2 mesh, weights sharded by
`keras_clip.distributed.layout_map`), "chunked" (one device, loss in chunks of 3 rows), "micro" (one
device, `micro_batches=2`), "remat" (one device, `CLIPConfig.remat`). The backend comes from
$KERAS_BACKEND. CHUNK > 0 computes the loss in blocks of that many rows
(`ContrastiveLoss(chunk_size=...)`) in the distributed modes; SMOOTHING is the
`label_smoothing` of every mode.
Each run trains 3 steps of one global batch per epoch and
saves the per-step loss and accuracies and the weights after steps 1 and 3.
"""

import os
import sys

MODE, OUT = sys.argv[1], sys.argv[2]
GLOBAL = int(sys.argv[3]) if len(sys.argv) > 3 else 8
PRESET = sys.argv[4] if len(sys.argv) > 4 else "tiny-vit"
LEARNING_RATE = float(sys.argv[5]) if len(sys.argv) > 5 else 0.5
CHUNK = int(sys.argv[6]) if len(sys.argv) > 6 and int(sys.argv[6]) > 0 else None
SMOOTHING = float(sys.argv[7]) if len(sys.argv) > 7 else 0.0
STEPS = 3

if MODE in ("jax", "jax_model_parallel"):
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
# The devices are simulated CPUs on every machine, also where a GPU exists
# (it would otherwise be JAX's default platform with one device, and torch /
# TF would put the tensors of both gloo ranks or replicas on it).
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["CUDA_VISIBLE_DEVICES"] = ""
os.environ.setdefault("JAX_THREEFRY_PARTITIONABLE", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def global_batches():
    import numpy as np

    rng = np.random.default_rng(0)
    images = rng.standard_normal((STEPS, GLOBAL, 32, 32, 3)).astype("float32")
    ids = rng.integers(1, 1000, (STEPS, GLOBAL, 16)).astype("int32")
    lengths = rng.integers(3, 15, (STEPS, GLOBAL))
    for s in range(STEPS):
        for i in range(GLOBAL):
            ids[s, i, lengths[s, i]] = 1023  # tiny-vit's end-of-text id
            ids[s, i, lengths[s, i] + 1 :] = 0
    return images, ids


def build(remat=False, **loss_options):
    import keras

    import keras_clip

    keras.utils.set_random_seed(0)
    if CHUNK and MODE != "single":
        loss_options.setdefault("chunk_size", CHUNK)
    loss = keras_clip.ContrastiveLoss(label_smoothing=SMOOTHING, **loss_options)
    model = keras_clip.CLIPModel.from_preset(PRESET, remat=remat)
    model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE), loss=loss)
    return model


class Recorder:
    def __init__(self):
        import keras

        self.losses, self.i2t, self.t2i, self.snapshots = [], [], [], {}
        recorder = self

        class Callback(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                recorder.losses.append(float(logs["loss"]))
                recorder.i2t.append(float(logs["i2t_accuracy"]))
                recorder.t2i.append(float(logs["t2i_accuracy"]))
                if epoch + 1 in (1, STEPS):
                    recorder.snapshots[epoch + 1] = [
                        keras.ops.convert_to_numpy(w) for w in self.model.weights
                    ]

        self.callback = Callback()

    def save(self, path):
        import numpy as np

        arrays = {
            "loss": np.asarray(self.losses),
            "i2t": np.asarray(self.i2t),
            "t2i": np.asarray(self.t2i),
        }
        for step, weights in self.snapshots.items():
            for k, w in enumerate(weights):
                arrays[f"step{step}_w{k}"] = w
        np.savez(path, **arrays)


def fit(model, images, ids, recorder, batch_size):
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices({"images": images.reshape(-1, 32, 32, 3),
                                             "token_ids": ids.reshape(-1, 16)})
    ds = ds.batch(batch_size, drop_remainder=True)
    model.fit(ds, epochs=STEPS, steps_per_epoch=1, verbose=0, shuffle=False,
              callbacks=[recorder.callback])


def local_only_loss(images, ids):
    """The loss a replica-local implementation would report at step 1 (2 shards)."""
    import keras
    import numpy as np

    from keras_clip.losses import contrastive_loss

    model = build()
    half = GLOBAL // 2
    values = []
    for shard in range(2):
        sl = slice(shard * half, (shard + 1) * half)
        out = model({"images": images[0, sl], "token_ids": ids[0, sl]})
        values.append(float(keras.ops.convert_to_numpy(contrastive_loss(out["logits_per_image"])[0])))
    return np.mean(values)


def main():
    import numpy as np

    images, ids = global_batches()
    recorder = Recorder()
    if MODE in ("single", "chunked", "micro", "remat"):
        kwargs = {"chunked": {"chunk_size": 3}, "micro": {"micro_batches": 2},
                  "remat": {"remat": True}}.get(MODE, {})
        model = build(**kwargs)
        fit(model, images, ids, recorder, GLOBAL)
        recorder.save(OUT)
        if MODE == "single":
            np.save(OUT + ".local_only.npy", local_only_loss(images, ids))
    elif MODE == "tf":
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        assert strategy.num_replicas_in_sync == 2
        with strategy.scope():
            model = build()
        fit(model, images, ids, recorder, GLOBAL)
        recorder.save(OUT)
    elif MODE == "jax":
        import keras

        devices = keras.distribution.list_devices()
        assert len(devices) == 4, devices
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        model = build()
        fit(model, images, ids, recorder, GLOBAL)
        recorder.save(OUT)
    elif MODE == "jax_model_parallel":
        import keras

        from keras_clip.distributed import layout_map

        devices = keras.distribution.list_devices()
        mesh = keras.distribution.DeviceMesh((2, 2), ["batch", "model"], devices)
        keras.distribution.set_distribution(keras.distribution.ModelParallel(
            layout_map=layout_map(mesh), batch_dim_name="batch"))
        model = build()
        sharded = [v for v in model.weights if "model" in str(getattr(v.value, "sharding", ""))]
        assert len(sharded) >= 4, "the layout map shards no weight"
        fit(model, images, ids, recorder, GLOBAL)
        recorder.save(OUT)
    elif MODE == "torch":
        import torch.multiprocessing as mp

        mp.spawn(torch_rank, args=(2, OUT), nprocs=2, join=True)
    else:
        raise SystemExit(f"unknown mode {MODE}")


def torch_rank(rank, world, out):
    import socket  # noqa: F401

    import torch
    import torch.distributed as dist

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", os.environ.get("KERAS_CLIP_TEST_PORT", "29533"))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        images, ids = global_batches()
        local = GLOBAL // world
        sl = slice(rank * local, (rank + 1) * local)
        recorder = Recorder()
        model = build()
        fit(model, images[:, sl], ids[:, sl], recorder, local)
        if rank == 0:
            recorder.save(out)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
