"""Linear probe: loss/gradient vs a loop reference, blobs, the sweep."""

import numpy as np
import pytest

from keras_clip.evaluation import linear_probe as lp


def loop_loss(w, b, x, y, l2):
    total = 0.0
    for xi, yi in zip(x, y):
        z = [sum(xi[d] * w[d, c] for d in range(len(xi))) + b[c] for c in range(len(b))]
        m = max(z)
        total += m + np.log(sum(np.exp(v - m) for v in z)) - z[yi]
    return total / len(x) + 0.5 * l2 * float((w**2).sum())


def blobs(n_per_class, num_classes=3, dim=4, spread=0.3, seed=0):
    rng = np.random.default_rng(seed)
    centres = 3.0 * rng.standard_normal((num_classes, dim))
    y = np.repeat(np.arange(num_classes), n_per_class)
    x = centres[y] + spread * rng.standard_normal((len(y), dim))
    return x, y


def test_loss_and_gradient_match_reference():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 3))
    y = rng.integers(0, 4, 7)
    params = rng.standard_normal(3 * 4 + 4)
    onehot = np.eye(4)[y]
    loss, grad = lp.logistic_loss_and_grad(params, x, onehot, 0.3)
    w, b = params[:12].reshape(3, 4), params[12:]
    assert loss == pytest.approx(loop_loss(w, b, x, y, 0.3), rel=1e-10)
    eps = 1e-6
    numeric = np.array([
        (lp.logistic_loss_and_grad(params + eps * e, x, onehot, 0.3)[0]
         - lp.logistic_loss_and_grad(params - eps * e, x, onehot, 0.3)[0])
        / (2 * eps)
        for e in np.eye(len(params))
    ])
    np.testing.assert_allclose(grad, numeric, atol=1e-7)


def test_zero_weights_give_log_c():
    x, y = blobs(5)
    loss, _ = lp.logistic_loss_and_grad(np.zeros(4 * 3 + 3), x, np.eye(3)[y], 1.0)
    assert loss == pytest.approx(np.log(3))


@pytest.mark.parametrize("solver", ["lbfgs", "gd"])
def test_separable_blobs_reach_full_accuracy(solver):
    if solver == "lbfgs":
        pytest.importorskip("scipy")
    x, y = blobs(30)
    w, b = lp.fit_logistic_regression(x, y, l2=1e-3, solver=solver, max_iter=300)
    assert np.mean(lp.predict_logits(w, b, x).argmax(1) == y) == 1.0
    # At the optimum the gradient vanishes.
    params = np.concatenate([w.ravel(), b])
    _, grad = lp.logistic_loss_and_grad(params, x, np.eye(3)[y], 1e-3)
    assert np.abs(grad).max() < (1e-4 if solver == "lbfgs" else 1e-3)


def test_solvers_agree():
    pytest.importorskip("scipy")
    x, y = blobs(20, spread=2.0)
    a = lp.fit_logistic_regression(x, y, l2=0.1, solver="lbfgs")
    g = lp.fit_logistic_regression(x, y, l2=0.1, solver="gd")
    np.testing.assert_allclose(a[0], g[0], atol=1e-3)
    np.testing.assert_allclose(a[1], g[1], atol=1e-3)


def test_probe_protocol_on_blobs():
    x, y = blobs(40, num_classes=4, dim=6, spread=0.5, seed=1)
    xt, yt = blobs(20, num_classes=4, dim=6, spread=0.5, seed=1)
    result = lp.linear_probe(x, y, xt, yt, max_iter=200)
    assert result["test_accuracy"] == 1.0
    assert set(result["val_accuracy"]) == set(lp.DEFAULT_L2_VALUES)
    # Huge penalties shrink W to 0 (chance); the pick reaches the best score
    # and, among ties, is the largest such strength.
    assert result["val_accuracy"][1e6] < 0.5
    best = max(result["val_accuracy"].values())
    assert result["val_accuracy"][result["l2"]] == best == 1.0
    assert result["l2"] == max(k for k, v in result["val_accuracy"].items() if v == best)
    assert result["l2"] < 1e6


def test_sweep_prefers_regularisation_when_overfitting():
    # Few samples, many noise dimensions: the weakest penalty overfits.
    rng = np.random.default_rng(3)
    def make(n):
        y = rng.integers(0, 2, n)
        x = rng.standard_normal((n, 60))
        x[:, 0] += 1.2 * (2 * y - 1)
        return x, y
    x, y = make(30)
    xv, yv = make(300)
    xt, yt = make(300)
    result = lp.linear_probe(x, y, xt, yt, xv, yv, l2_values=[1e-6, 1e-2, 1.0, 1e6])
    assert result["l2"] in (1e-2, 1.0)
    assert result["val_accuracy"][result["l2"]] > result["val_accuracy"][1e-6]
    # The same sweep as a NumPy array (np.logspace) gives the same result.
    as_array = lp.linear_probe(x, y, xt, yt, xv, yv, l2_values=np.array([1e-6, 1e-2, 1.0, 1e6]))
    assert as_array["l2"] == result["l2"]
    assert as_array["test_accuracy"] == result["test_accuracy"]


def test_split_and_errors():
    x, y = blobs(10)
    tx, ty, vx, vy = lp.split_validation(x, y, 0.2, seed=0)
    assert len(vx) == 6 and len(tx) == 24
    assert sorted(np.concatenate([ty, vy]).tolist()) == sorted(y.tolist())
    with pytest.raises(ValueError, match="val_fraction"):
        lp.split_validation(x, y, 1.5)
    with pytest.raises(ValueError, match="labels.shape"):
        lp.fit_logistic_regression(x, y[:-1])
    with pytest.raises(ValueError, match="solver"):
        lp.fit_logistic_regression(x, y, solver="sgd")
