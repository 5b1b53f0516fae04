"""The paper's optimiser: AdamW, linear warm-up, cosine decay."""

import math

import keras
from keras import ops

from keras_clip import backends

# Radford et al. 2021, Table 18 and section 2.5 (and open_clip's defaults):
# beta2 / epsilon per image tower family.
ADAM_SETTINGS = {
    "vit": {"beta_2": 0.98, "epsilon": 1e-6},
    "resnet": {"beta_2": 0.999, "epsilon": 1e-8},
}


@keras.saving.register_keras_serializable(package="keras_clip")
class AdamW(backends.adamw_base()):
    """Keras's AdamW, with its torch update done in place.

    The maths is Keras's own on every backend: `m <- b1 m + (1 - b1) g`,
    `v <- b2 v + (1 - b2) g^2`, `w <- w - lr sqrt(1 - b2^t) / (1 - b1^t) *
    m / (sqrt(v) + eps)`, after the decoupled decay `w <- w (1 - lr wd)`.
    Its base class comes from the active backend
    (`keras_clip.backends.adamw_base()`): on torch, the update runs in place,
    as ATen's fused AdamW kernel for float32 CPU weights
    (`keras_clip.backends.settings.torch_fused_adamw`); TF and JAX fuse the
    update when compiling and use Keras's AdamW unchanged.
    """


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
