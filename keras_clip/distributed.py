"""Global-batch negatives across replicas, one code path per backend.

The contrastive loss is right only when every image meets every caption of
the *global* batch. Each replica computes its own rows (its images against
all gathered captions, its captions against all gathered images), so the
similarity matrix is sharded: `O(local_B x global_B)` per replica.

- **JAX** (`keras.distribution.DataParallel` / `ModelParallel`): arrays are
  global and XLA partitions the `B x B` logits itself; nothing to gather
  here (`replica_context()` reports one replica).
- **TensorFlow** (`tf.distribute.MirroredStrategy`, `MultiWorkerMirrored...`,
  `TPUStrategy`): the loss runs per replica; embeddings are all-gathered
  with a gradient, and the loss is divided by the number of replicas
  because the strategy sums gradients.
- **PyTorch** (`torch.distributed`, e.g. under `torchrun`): the loss runs per
  process; embeddings are all-gathered with a gradient, and
  `CLIPModel.train_step` averages the gradients over processes before the
  optimizer step, so every rank applies the same update.

`keras_clip.losses.ContrastiveLoss` walks a batch through these once:
`global_batch` before its maths, `replica_loss` after.
"""

import keras
from keras import ops


class ReplicaContext:
    """Where this replica stands: `num_replicas` and its `index`."""

    def __init__(self, num_replicas=1, index=0, backend=None):
        self.num_replicas = num_replicas
        self.index = index
        self.backend = backend

    @property
    def active(self):
        return self.num_replicas > 1


def _torch_initialized():
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        return False
    return dist.is_available() and dist.is_initialized()


def replica_context():
    """The `ReplicaContext` of the running step (one replica when undistributed)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        ctx = tf.distribute.get_replica_context()
        if ctx is not None and ctx.num_replicas_in_sync > 1:
            return ReplicaContext(ctx.num_replicas_in_sync, ctx.replica_id_in_sync_group, backend)
    elif backend == "torch" and _torch_initialized():
        import torch.distributed as dist

        if dist.get_world_size() > 1:
            return ReplicaContext(dist.get_world_size(), dist.get_rank(), backend)
    return ReplicaContext()


def all_gather(x, context):
    """Concatenates `x` `(b, ...)` of every replica along axis 0, with a gradient.

    The gradient of the gathered tensor flows back to the replica that owns
    each row (summed over the replicas that used it), so a loss computed on
    any replica trains every replica's towers.
    """
    if not context.active:
        return x
    if context.backend == "tensorflow":
        return _tf_all_gather(x)
    if context.backend == "torch":
        return _TorchAllGather.apply(x)
    raise ValueError(f"Expected a TensorFlow or torch replica context. Received: {context.backend}")


def _tf_all_gather(x):
    import tensorflow as tf

    ctx = tf.distribute.get_replica_context()

    @tf.custom_gradient
    def gather(value):
        gathered = ctx.all_gather(value, axis=0)

        def grad(upstream):
            # Every replica's loss sent gradient to every row: sum them, keep ours.
            total = ctx.all_reduce(tf.distribute.ReduceOp.SUM, upstream)
            size = tf.shape(value)[0]
            start = tf.cast(ctx.replica_id_in_sync_group, tf.int32) * size
            return total[start : start + size]

        return gathered, grad

    return gather(x)


def _torch_function():
    import torch
    import torch.distributed as dist

    class AllGather(torch.autograd.Function):
        @staticmethod
        def forward(ctx, value):
            parts = [torch.empty_like(value) for _ in range(dist.get_world_size())]
            dist.all_gather(parts, value.contiguous())
            ctx.rows = value.shape[0]
            return torch.cat(parts, dim=0)

        @staticmethod
        def backward(ctx, upstream):
            total = upstream.contiguous().clone()
            dist.all_reduce(total, op=dist.ReduceOp.SUM)
            start = dist.get_rank() * ctx.rows
            return total[start : start + ctx.rows]

    return AllGather


class _LazyAutogradFunction:
    """A torch autograd Function defined on first use (torch imports lazily)."""

    def __init__(self, factory):
        self.factory = factory
        self.fn = None

    def apply(self, *args):
        if self.fn is None:
            self.fn = self.factory()
        return self.fn.apply(*args)


_TorchAllGather = _LazyAutogradFunction(_torch_function)


def global_batch(image, text, context):
    """Every replica's rows of `image` and `text`, and where this replica's sit.

    Args:
        image: `(b, E)` this replica's image embeddings.
        text: `(b, E)` this replica's text embeddings.
        context: the step's `ReplicaContext`.

    Returns:
        `(all_image, all_text, labels)`: the `(B, E)` gathered embeddings
        (with a gradient back to each row's replica; `image` and `text`
        themselves on one replica, and under JAX's global arrays) and the
        `(b,)` int32 positions of this replica's rows among them.
    """
    local = ops.shape(image)[0]
    labels = context.index * local + ops.arange(local, dtype="int32")
    return all_gather(image, context), all_gather(text, context), labels


def replica_loss(loss, metrics, context):
    """The loss to differentiate on this replica, and metrics of the global batch.

    - TensorFlow: `loss / num_replicas`, because `tf.distribute` sums the
      replicas' gradients (Keras logs the value multiplied back, and its
      metrics add up the replicas' states themselves).
    - torch: the value is the mean of the processes' losses while the
      gradient stays this process's own (`CLIPModel.train_step` averages
      the gradients), so every rank logs the global batch's loss; the
      metrics are averaged over processes, in the same all-reduce.

    Args:
        loss: float32 scalar, the loss of this replica's rows.
        metrics: dict of float32 scalars of this replica's rows.
        context: the step's `ReplicaContext`.

    Returns:
        `(loss, metrics)`.
    """
    if not context.active:
        return loss, metrics
    if context.backend == "tensorflow":
        return loss / context.num_replicas, metrics
    names = list(metrics)
    values = ops.stop_gradient(ops.stack([loss, *(metrics[k] for k in names)]))
    means = all_reduce_mean([values], context)[0]
    loss = loss + ops.stop_gradient(means[0] - loss)
    return loss, {k: means[i + 1] for i, k in enumerate(names)}


def all_reduce_mean(values, context):
    """Averages a list of torch tensors over processes in place (torch only)."""
    if not (context.active and context.backend == "torch"):
        return values
    import torch.distributed as dist

    for value in values:
        if value is not None:
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
            value.div_(context.num_replicas)
    return values


def average_gradients(variables, context):
    """The gradients of `variables` after `backward()`, averaged over processes.

    torch only: one all-reduce of all of them, flattened; a variable that
    got no gradient on this process counts as zeros.
    """
    import torch

    grads = [
        v.value.grad if v.value.grad is not None else torch.zeros_like(v.value)
        for v in variables
    ]
    if not grads:
        return grads
    flat = all_reduce_mean([torch.cat([g.reshape(-1) for g in grads])], context)[0]
    sizes = [g.numel() for g in grads]
    return [
        part.view_as(g) for part, g in zip(torch.split(flat, sizes), grads)
    ]


def sharded_logits(image, text, all_image, all_text, scale):
    """This replica's rows: its images x all texts and its texts x all images."""
    logits_per_image = scale * ops.matmul(image, ops.transpose(all_text))
    logits_per_text = scale * ops.matmul(text, ops.transpose(all_image))
    return logits_per_image, logits_per_text


def is_chief():
    """Whether this process writes checkpoints and logs (rank / process 0)."""
    backend = keras.backend.backend()
    if backend == "torch" and _torch_initialized():
        import torch.distributed as dist

        return dist.get_rank() == 0
    if backend == "tensorflow":
        import tensorflow as tf

        if tf.distribute.has_strategy():
            return bool(getattr(tf.distribute.get_strategy().extended, "should_checkpoint", True))
    if backend == "jax":
        import jax

        return jax.process_index() == 0
    return True


def all_reduce_sum(x, context):
    """Sum of `x` over replicas, with a gradient (torch and TensorFlow)."""
    if not context.active:
        return x
    if context.backend == "tensorflow":
        import tensorflow as tf

        # ReplicaContext.all_reduce is differentiable (its gradient is an
        # all-reduce of the upstream gradients).
        return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, x)
    return _TorchAllReduce.apply(x)


def _torch_all_reduce_function():
    import torch
    import torch.distributed as dist

    class AllReduceSum(torch.autograd.Function):
        @staticmethod
        def forward(ctx, value):
            out = value.contiguous().clone()
            dist.all_reduce(out, op=dist.ReduceOp.SUM)
            return out

        @staticmethod
        def backward(ctx, upstream):
            # Every replica's output depends on every input: sum the grads.
            total = upstream.contiguous().clone()
            dist.all_reduce(total, op=dist.ReduceOp.SUM)
            return total

    return AllReduceSum


_TorchAllReduce = _LazyAutogradFunction(_torch_all_reduce_function)


def global_moments(x, axes, context):
    """Mean and variance of `x` over `axes` and over every replica's batch."""
    x32 = ops.cast(x, "float32")
    count = 1.0
    for axis in axes:
        count = count * x32.shape[axis]
    sums = ops.sum(x32, axis=axes)
    squares = ops.sum(ops.square(x32), axis=axes)
    stacked = all_reduce_sum(ops.stack([sums, squares]), context)
    total = count * context.num_replicas
    mean = stacked[0] / total
    variance = ops.maximum(stacked[1] / total - ops.square(mean), 0.0)
    return ops.cast(mean, x.dtype), ops.cast(variance, x.dtype)


def layout_map(device_mesh, model_axis="model"):
    """A `keras.distribution.LayoutMap` sharding the towers' large weights (JAX).

    Transformer blocks are split Megatron-style along `model_axis`: the
    fused query-key-value and first MLP kernels by output columns, the
    attention output and second MLP kernels by input rows; the token
    embedding by vocabulary rows; ResNet bottleneck convolutions by output
    channels. Everything else is replicated. Use with
    `keras.distribution.ModelParallel(layout_map=..., batch_dim_name=...)`.

    Example:

    ```python
    mesh = keras.distribution.DeviceMesh((2, 4), ["batch", "model"], devices)
    keras.distribution.set_distribution(keras.distribution.ModelParallel(
        layout_map=keras_clip.distributed.layout_map(mesh), batch_dim_name="batch"))
    model = keras_clip.CLIPModel.from_preset("ViT-B/16")  # built sharded
    ```
    """
    m = model_axis
    layouts = keras.distribution.LayoutMap(device_mesh)
    layouts[r".*/attn/qkv/kernel$"] = (None, m)
    layouts[r".*/attn/qkv/bias$"] = (m,)
    layouts[r".*/attn/out_proj/kernel$"] = (m, None)
    layouts[r".*/mlp_fc/kernel$"] = (None, m)
    layouts[r".*/mlp_fc/bias$"] = (m,)
    layouts[r".*/mlp_proj/kernel$"] = (m, None)
    layouts[r".*/token_embedding/embeddings$"] = (m, None)
    layouts[r".*/layer\d+_\d+/conv\d/kernel$"] = (None, None, None, m)
    return layouts
