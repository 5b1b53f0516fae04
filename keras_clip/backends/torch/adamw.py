"""Keras's AdamW update on torch, done in place (and fused on the CPU)."""

import math

import torch
from keras import ops

from keras_clip import backends
from keras_clip.backends.keras_internals import torch_adamw_base


class AdamW(torch_adamw_base()):
    """Keras's torch AdamW with its update done in place.

    Keras substitutes its multi-tensor torch AdamW for `keras.optimizers.AdamW`
    on torch; this derives from that class to keep its path. Keras runs the
    update as ~11 multi-tensor passes over every weight, four of them into new
    buffers. This runs it as ATen's fused AdamW kernel for float32 CPU weights
    (one pass per weight; `settings.torch_fused_adamw`) and as 7 in-place
    multi-tensor passes with one buffer otherwise. The maths is Keras's:
    `m <- b1 m + (1 - b1) g`, `v <- b2 v + (1 - b2) g^2`,
    `w <- w - lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)`, after the
    decoupled decay `w <- w (1 - lr wd)`.
    """

    def _torch_fusable(self, variables):
        """Torch on the CPU: one fused AdamW kernel pass per weight group."""
        return (
            backends.settings.torch_fused_adamw
            and hasattr(self, "_momentums")
            and hasattr(torch, "_fused_adamw_")
            and all(
                v.value.device.type == "cpu" and v.value.dtype == torch.float32
                for v in variables
            )
        )

    def _apply_weight_decay(self, variables):
        if self._torch_fusable(variables):
            return  # applied inside the fused kernel, first, as Keras does
        super()._apply_weight_decay(variables)

    def _parallel_update_step(self, grads, variables, learning_rate):
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
        """
        backends.note("torch.fused_adamw")
        t = int(ops.convert_to_numpy(self.iterations)) + 1
        lr = float(ops.convert_to_numpy(learning_rate))
        eps = self.epsilon / math.sqrt(1.0 - self.beta_2**t)
        step = torch.tensor(float(t))
        index = self._get_variable_index
        decay = self.weight_decay or 0.0
        groups = {}
        for g, v in zip(grads, variables):
            groups.setdefault(bool(decay) and self._use_weight_decay(v), []).append(
                (g, v)
            )
        for decayed, pairs in groups.items():
            vs = [v for _, v in pairs]
            weights = [v.value for v in vs]
            torch._fused_adamw_(
                weights,
                [g.contiguous() for g, _ in pairs],
                [self._momentums[index(v)].value for v in vs],
                [self._velocities[index(v)].value for v in vs],
                [self._velocity_hats[index(v)].value for v in vs]
                if self.amsgrad
                else [],
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
            # advance them, so that autograd and the convolution-kernel cache
            # (`functional.conv_kernel`) see the weights changed.
            torch.autograd.graph.increment_version(weights)
