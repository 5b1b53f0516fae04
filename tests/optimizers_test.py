"""The paper's optimiser: what is decayed, the schedule, Adam settings."""

import math

import keras
import numpy as np
import pytest

import keras_clip
from keras_clip.optimizers import WarmupCosineDecay


def to_np(x):
    return keras.ops.convert_to_numpy(x)


def expected_decayed(model):
    """Kernels of dense / convolution layers only (open_clip's rule)."""
    names = set()
    for v in model.trainable_variables:
        is_kernel = v.path.endswith("/kernel")
        if is_kernel and len(v.shape) >= 2:
            names.add(v.path)
    return names


def decayed_by_one_step(model, optimizer=None):
    """Variables changed by an AdamW step with zero gradients.

    With zero gradients Adam's update is exactly zero, so only decoupled
    weight decay can move a variable: this observes behaviour, not a
    private list.
    """
    before = {v.path: np.array(to_np(v)) for v in model.trainable_variables}
    zeros = [keras.ops.zeros(v.shape, dtype=v.dtype) for v in model.trainable_variables]
    (optimizer or model.optimizer).apply(zeros, model.trainable_variables)
    changed = set()
    for v in model.trainable_variables:
        after = to_np(v)
        if not np.array_equal(after, before[v.path]):
            changed.add(v.path)
            # Decoupled decay multiplies by (1 - lr * wd), nothing else.
            np.testing.assert_allclose(after, before[v.path] * (1 - 0.1 * 0.5), rtol=1e-5, atol=1e-7)
    return changed


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-resnet"])
def test_weight_decay_only_on_kernels(name):
    model = keras_clip.CLIPModel.from_preset(name)
    # A constant learning rate of 0.1 makes the decay factor known.
    model.compile(optimizer=keras.optimizers.AdamW(learning_rate=0.1, weight_decay=0.5))
    expected = expected_decayed(model)
    assert expected, "the model has kernels"
    # Never decayed: gains, biases, embeddings, class token, temperature.
    for v in model.trainable_variables:
        if v.path not in expected:
            assert len(v.shape) < 2 or "embedding" in v.path
    assert decayed_by_one_step(model) == expected


def test_exclusions_survive_load_model(tmp_path):
    model = keras_clip.CLIPModel.from_preset("tiny-vit")
    model.compile(optimizer=keras.optimizers.AdamW(learning_rate=0.1, weight_decay=0.5))
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert decayed_by_one_step(loaded) == expected_decayed(loaded)


def open_clip_cosine_lr(step, base_lr, warmup, total):
    # open_clip's `cosine_lr` schedule, written out.
    if step < warmup:
        return base_lr * (step + 1) / warmup
    e, es = step - warmup, total - warmup
    return 0.5 * (1 + math.cos(math.pi * e / es)) * base_lr


def test_schedule_matches_open_clip_cosine():
    schedule = WarmupCosineDecay(5e-4, total_steps=100, warmup_steps=10)
    for step in [0, 1, 5, 9, 10, 11, 50, 99, 100]:
        got = float(to_np(schedule(step)))
        assert got == pytest.approx(open_clip_cosine_lr(step, 5e-4, 10, 100), abs=1e-9)
    assert float(to_np(schedule(1000))) == pytest.approx(0.0, abs=1e-12)
    restored = WarmupCosineDecay.from_config(schedule.get_config())
    assert float(to_np(restored(37))) == float(to_np(schedule(37)))
    with pytest.raises(ValueError, match="warmup_steps <= total_steps"):
        WarmupCosineDecay(1e-3, total_steps=5, warmup_steps=10)


@pytest.mark.parametrize("name,beta_2,epsilon", [("tiny-vit", 0.98, 1e-6), ("tiny-resnet", 0.999, 1e-8)])
def test_make_optimizer_uses_paper_settings(name, beta_2, epsilon):
    model = keras_clip.CLIPModel.from_preset(name)
    opt = keras_clip.make_optimizer(model, total_steps=10_000)
    assert isinstance(opt, keras.optimizers.AdamW)
    assert opt.beta_2 == beta_2 and opt.epsilon == epsilon
    assert opt.weight_decay == pytest.approx(0.2)
    assert float(to_np(opt.learning_rate)) == pytest.approx(5e-4 / 2000)  # first warm-up step
    # No schedule: a settable rate (for TimeBudgetCosineDecay), same settings.
    plain = keras_clip.make_optimizer(model, total_steps=None, learning_rate=3e-3)
    assert plain.beta_2 == beta_2 and plain.epsilon == epsilon
    assert float(to_np(plain.learning_rate)) == pytest.approx(3e-3)
    plain.learning_rate = 1e-3
    assert float(to_np(plain.learning_rate)) == pytest.approx(1e-3)


def test_exclusions_reach_the_optimizer_inside_loss_scaling():
    # mixed_float16 wraps the optimizer in a LossScaleOptimizer at compile;
    # the exclusions must reach the AdamW inside it.
    model = keras_clip.CLIPModel.from_preset("tiny-vit", dtype="mixed_float16")
    model.compile(optimizer=keras.optimizers.AdamW(learning_rate=0.1, weight_decay=0.5))
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    # The wrapped AdamW is the one that decays (the wrapper's stateful apply
    # cannot run eagerly on JAX, so step the inner optimizer directly).
    inner = model.optimizer.inner_optimizer
    assert decayed_by_one_step(model, inner) == expected_decayed(model)


def adamw_four_steps(amsgrad):
    """Four AdamW steps on three weights (the second excluded from weight
    decay): `(run, reference)`, where `run(optimizer)` gives the weights
    after the steps and `reference` the textbook update in float64 NumPy
    (Keras's epsilon placement)."""
    rng = np.random.default_rng(4)
    shapes = [(3, 5), (5,), (2, 2, 3)]
    init = [rng.standard_normal(s).astype("float32") for s in shapes]
    grads = [[rng.standard_normal(s).astype("float32") for s in shapes] for _ in range(4)]

    def run(optimizer):
        variables = [keras.Variable(w, name=n) for w, n in zip(init, ["kernel", "bias", "gain"])]
        optimizer.exclude_from_weight_decay(var_names=["bias"])
        optimizer.build(variables)
        for g in grads:
            optimizer.apply_gradients(zip([keras.ops.convert_to_tensor(x) for x in g], variables))
        return [to_np(v) for v in variables]

    w = [x.astype("float64") for x in init]
    m = [np.zeros_like(x) for x in w]
    v = [np.zeros_like(x) for x in w]
    v_hat = [np.zeros_like(x) for x in w]
    for t, g in enumerate(grads, start=1):
        alpha = 0.01 * np.sqrt(1 - 0.9**t) / (1 - 0.8**t)
        for i, gi in enumerate(g):
            if i != 1:
                w[i] = w[i] * (1 - 0.01 * 0.1)
            m[i] = 0.8 * m[i] + 0.2 * gi
            v[i] = 0.9 * v[i] + 0.1 * gi.astype("float64") ** 2
            v_hat[i] = np.maximum(v_hat[i], v[i])
            w[i] = w[i] - alpha * m[i] / (np.sqrt(v_hat[i] if amsgrad else v[i]) + 1e-3)
    return run, w


ADAMW_KWARGS = dict(learning_rate=0.01, weight_decay=0.1, beta_1=0.8, beta_2=0.9, epsilon=1e-3)


@pytest.mark.parametrize("amsgrad", [False, True])
def test_adamw_update_matches_numpy_and_keras(amsgrad):
    # keras_clip.optimizers.AdamW replaces only Keras's torch update (in
    # place on the GPU, ATen's fused kernel on the CPU); on every backend,
    # four steps must equal the textbook update (NumPy, Keras's epsilon
    # placement, one weight excluded from decay) and Keras's own AdamW.
    # (Each torch update against the other: tests/backends_test.py.)
    from keras_clip.optimizers import AdamW

    kwargs = dict(ADAMW_KWARGS, amsgrad=amsgrad)
    run, w = adamw_four_steps(amsgrad)
    ours = run(AdamW(**kwargs))
    stock = run(keras.optimizers.AdamW(**kwargs))
    for a, b, ref in zip(ours, stock, w):
        np.testing.assert_allclose(a, ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # Saved and restored as itself, settings kept.
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(AdamW(**kwargs)))
    assert type(restored) is type(AdamW(**kwargs)) and restored.amsgrad == amsgrad
