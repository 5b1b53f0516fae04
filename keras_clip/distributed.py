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


class _LazyTorchAllGather:
    _fn = None

    def apply(self, x):
        if self._fn is None:
            type(self)._fn = _torch_function()
        return self._fn.apply(x)


_TorchAllGather = _LazyTorchAllGather()


def scale_loss(loss, context):
    """The loss to differentiate on this replica.

    `tf.distribute` sums replica gradients, so the TF loss is divided by the
    replica count; torch gradients are averaged in `train_step` instead.
    """
    if context.active and context.backend == "tensorflow":
        return loss / context.num_replicas
    return loss


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
