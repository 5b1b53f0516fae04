"""The paper's optimiser: AdamW, linear warm-up, cosine decay."""

import math

import keras
from keras import ops

# Radford et al. 2021, Table 18 and section 2.5 (and open_clip's defaults):
# beta2 / epsilon per image tower family.
ADAM_SETTINGS = {
    "vit": {"beta_2": 0.98, "epsilon": 1e-6},
    "resnet": {"beta_2": 0.999, "epsilon": 1e-8},
}


if keras.backend.backend() == "torch":
    # Keras swaps `keras.optimizers.AdamW` for this class on torch (its
    # multi-tensor update); a subclass must derive from it to keep that path.
    from keras.src.backend.torch.optimizers.torch_adamw import AdamW as _AdamW
else:
    _AdamW = keras.optimizers.AdamW


@keras.saving.register_keras_serializable(package="keras_clip")
class AdamW(_AdamW):
    """Keras's AdamW, with its torch update done in place.

    The maths is Keras's own on every backend: `m <- b1 m + (1 - b1) g`,
    `v <- b2 v + (1 - b2) g^2`, `w <- w - lr sqrt(1 - b2^t) / (1 - b1^t) *
    m / (sqrt(v) + eps)`, after the decoupled decay `w <- w (1 - lr wd)`.
    On torch, Keras runs the update as ~11 multi-tensor passes over every
    weight, four of them into new buffers (1.1 s per step for ViT-B/32's
    151M weights on one core here). This runs it as ATen's fused AdamW
    kernel on the CPU (one pass per weight) and as 7 in-place multi-tensor
    passes with one buffer on other devices (0.6-0.8 s on that CPU). TF
    and JAX fuse the update when compiling and use Keras's code unchanged.
    """

    def _torch_fusable(self, variables):
        """Torch on the CPU: one fused AdamW kernel pass per weight group."""
        if keras.backend.backend() != "torch" or not hasattr(self, "_momentums"):
            return False
        import torch

        return hasattr(torch, "_fused_adamw_") and all(
            v.value.device.type == "cpu" and v.value.dtype == torch.float32
            for v in variables
        )

    def _apply_weight_decay(self, variables):
        if self._torch_fusable(variables):
            return  # applied inside the fused kernel, first, as Keras does
        super()._apply_weight_decay(variables)

    def _parallel_update_step(self, grads, variables, learning_rate):
        import torch  # Only reached on the torch backend.

        if self._torch_fusable(variables):
            return self._torch_fused_update(grads, variables, learning_rate)
        values = [v.value for v in variables]
        dtype = values[0].dtype
        lr = ops.cast(learning_rate, dtype)
        step = ops.cast(self.iterations + 1, dtype)
        beta_1_power = ops.power(ops.cast(self.beta_1, dtype), step)
        beta_2_power = ops.power(ops.cast(self.beta_2, dtype), step)
        alpha = lr * ops.sqrt(1 - beta_2_power) / (1 - beta_1_power)
        index = self._get_variable_index
        m = [self._momentums[index(v)].value for v in variables]
        v2 = [self._velocities[index(v)].value for v in variables]
        torch._foreach_lerp_(m, grads, 1 - self.beta_1)
        torch._foreach_mul_(v2, self.beta_2)
        torch._foreach_addcmul_(v2, grads, grads, value=1 - self.beta_2)
        if self.amsgrad:
            v_hat = [self._velocity_hats[index(v)].value for v in variables]
            torch._foreach_maximum_(v_hat, v2)
            v2 = v_hat
        denom = torch._foreach_sqrt(v2)
        torch._foreach_add_(denom, self.epsilon)
        torch._foreach_div_(denom, alpha)  # alpha m / d == m / (d / alpha)
        torch._foreach_addcdiv_(values, m, denom, value=-1.0)

    def _torch_fused_update(self, grads, variables, learning_rate):
        """Keras's AdamW step as ATen's fused CPU kernel (`_fused_adamw_`):
        one pass over each weight instead of the decay pass plus 7.

        The kernel divides by `sqrt(v) / sqrt(1 - b2^t) + eps'` where Keras
        divides by `sqrt(v) + eps`; `eps' = eps / sqrt(1 - b2^t)` makes them
        the same update. Its decoupled decay `w <- w (1 - lr wd)` comes first,
        as Keras applies it; excluded weights go in a group with none. On
        the CPU reading the step and the rate as numbers costs no sync.
        Each weight's version counter is advanced, as any in-place torch op
        advances it.
        """
        import torch

        t = int(ops.convert_to_numpy(self.iterations)) + 1
        lr = float(ops.convert_to_numpy(learning_rate))
        eps = self.epsilon / math.sqrt(1.0 - self.beta_2**t)
        step = torch.tensor(float(t))
        index = self._get_variable_index
        decay = self.weight_decay or 0.0
        groups = {}
        for g, v in zip(grads, variables):
            groups.setdefault(bool(decay) and self._use_weight_decay(v), []).append((g, v))
        for decayed, pairs in groups.items():
            vs = [v for _, v in pairs]
            weights = [v.value for v in vs]
            torch._fused_adamw_(
                weights,
                [g.contiguous() for g, _ in pairs],
                [self._momentums[index(v)].value for v in vs],
                [self._velocities[index(v)].value for v in vs],
                [self._velocity_hats[index(v)].value for v in vs] if self.amsgrad else [],
                [step] * len(vs),
                lr=lr,
                beta1=float(self.beta_1),
                beta2=float(self.beta_2),
                weight_decay=decay if decayed else 0.0,
                eps=eps,
                amsgrad=bool(self.amsgrad),
                maximize=False,
            )
            # The fused kernel writes the weights without advancing their
            # version counters (the in-place ops of Keras's optimizers do);
            # advance them, so that autograd and `layers.torch_conv_kernel`'s
            # cache see the weights changed.
            torch.autograd.graph.increment_version(weights)


def cosine_decay(peak, end, progress, cos=ops.cos):
    """Half a cosine from `peak` (progress 0) to `end` (progress 1).

    `cos` is `ops.cos` for tensors (`WarmupCosineDecay`) or `math.cos` for
    floats (`TimeBudgetCosineDecay`, which sets the rate from the host).
    """
    return end + 0.5 * (peak - end) * (1.0 + cos(math.pi * progress))


@keras.saving.register_keras_serializable(package="keras_clip")
class WarmupCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `learning_rate`, then cosine decay to `end_learning_rate`.

    The warm-up starts at `learning_rate / warmup_steps` at step 0 (no wasted
    step at zero), as open_clip's `cosine_lr` does; from `warmup_steps` to
    `total_steps` the rate follows half a cosine, and stays at the end value
    afterwards.

    Args:
        learning_rate: peak learning rate.
        total_steps: steps of the whole run, warm-up included.
        warmup_steps: steps of linear warm-up.
        end_learning_rate: value reached at `total_steps`.
    """

    def __init__(
        self, learning_rate, total_steps, warmup_steps=0, end_learning_rate=0.0
    ):
        if total_steps <= 0 or warmup_steps < 0 or warmup_steps > total_steps:
            raise ValueError(
                "Expected 0 <= warmup_steps <= total_steps and total_steps > 0. "
                f"Received: warmup_steps={warmup_steps}, "
                f"total_steps={total_steps}"
            )
        self.learning_rate = float(learning_rate)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.end_learning_rate = float(end_learning_rate)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        peak, end = self.learning_rate, self.end_learning_rate
        warm = max(self.warmup_steps, 1)
        warmup = peak * (step + 1.0) / warm
        decay_steps = max(self.total_steps - self.warmup_steps, 1)
        progress = ops.clip((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
        cosine = cosine_decay(peak, end, progress)
        return ops.where(step < self.warmup_steps, warmup, cosine)

    def get_config(self):
        return {
            "learning_rate": self.learning_rate,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "end_learning_rate": self.end_learning_rate,
        }


def make_optimizer(
    model,
    total_steps,
    learning_rate=5e-4,
    warmup_steps=2000,
    weight_decay=0.2,
    beta_1=0.9,
    beta_2=None,
    epsilon=None,
    end_learning_rate=0.0,
    clipnorm=None,
):
    """AdamW with the paper's defaults for `model`'s image tower family.

    Decoupled weight decay 0.2; beta2 / epsilon 0.98 / 1e-6 for a ViT and
    0.999 / 1e-8 for a ResNet; linear warm-up then cosine decay. Gains,
    biases, embeddings and the temperature are excluded from weight decay
    when the model is compiled (`CLIPModel.compile`).

    Args:
        model: a `CLIPModel` (its `config.vision` picks beta2 / epsilon).
        total_steps: optimiser steps of the run (epochs x steps per epoch).
            `None`: no schedule; the rate is a plain value starting at
            `learning_rate`, for a callback to set during `fit`
            (`keras_clip.TimeBudgetCosineDecay`, which then owns warm-up
            and decay; `warmup_steps` and `end_learning_rate` are unused).
        learning_rate: peak rate; 5e-4 for B/32, B/16 and RN50 in the paper.
        warmup_steps: linear warm-up steps (2,000 in the paper); clipped to
            `total_steps`.
        weight_decay: decoupled weight decay.
        beta_1, beta_2, epsilon: Adam settings; `None` = the paper's value.
        end_learning_rate: rate at the end of the cosine.
        clipnorm: optional per-variable gradient norm clip.

    Returns:
        A `keras_clip.optimizers.AdamW` (Keras's AdamW, updated in place on
        torch).

    Example:

    ```python
    model.compile(optimizer=keras_clip.make_optimizer(model, total_steps=1000))
    ```
    """
    family = model.config.vision
    defaults = ADAM_SETTINGS[family]
    if total_steps is None:
        schedule = float(learning_rate)
    else:
        schedule = WarmupCosineDecay(
            learning_rate,
            total_steps,
            warmup_steps=min(warmup_steps, total_steps),
            end_learning_rate=end_learning_rate,
        )
    return AdamW(
        learning_rate=schedule,
        weight_decay=weight_decay,
        beta_1=beta_1,
        beta_2=defaults["beta_2"] if beta_2 is None else beta_2,
        epsilon=defaults["epsilon"] if epsilon is None else epsilon,
        clipnorm=clipnorm,
    )
