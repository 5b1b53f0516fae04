"""Linear-probe evaluation: logistic regression on frozen features.

The paper's protocol (Radford et al. 2021, appendix A.3): multinomial
logistic regression with an L2 penalty whose strength is swept on a
validation split; the best strength is refit on train + validation and
scored on the test split. Pure NumPy, with SciPy's L-BFGS when SciPy is
installed and accelerated gradient descent otherwise.
"""

import numpy as np

# The paper sweeps lambda over 1e-6 .. 1e6 (96 log-spaced values); 13 values
# on the same range keep the sweep cheap on CPU.
DEFAULT_L2_VALUES = tuple(np.logspace(-6, 6, 13))


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def logistic_loss_and_grad(params, features, onehot, l2):
    """Regularised softmax cross-entropy and its gradient.

    `loss = mean_i CE(softmax(x_i W + b), y_i) + l2 / 2 * ||W||^2`; the bias
    is not penalised.

    Args:
        params: flat float64 `(D * C + C,)`: `W` `(D, C)` row-major, then `b`.
        features: `(N, D)`.
        onehot: `(N, C)` one-hot labels.
        l2: the penalty strength.

    Returns:
        `(loss, grad)`, a float and a flat array shaped like `params`.
    """
    n, d = features.shape
    c = onehot.shape[1]
    w = params[: d * c].reshape(d, c)
    b = params[d * c :]
    logits = features @ w + b  # (N, C)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_z = np.log(np.exp(shifted).sum(axis=1))
    loss = np.mean(log_z - (shifted * onehot).sum(axis=1)) + 0.5 * l2 * np.sum(w * w)
    g = (_softmax(logits) - onehot) / n  # (N, C)
    grad_w = features.T @ g + l2 * w  # (D, C)
    return float(loss), np.concatenate([grad_w.ravel(), g.sum(axis=0)])


def _have_scipy():
    try:
        import scipy.optimize  # noqa: F401
    except ImportError:
        return False
    return True


def _gradient_descent(fun, x0, lipschitz, max_iter, tol):
    # Nesterov's accelerated gradient with step 1/L (the loss is L-smooth).
    x, y, t = x0, x0, 1.0
    for _ in range(max_iter):
        _, g = fun(y)
        x_next = y - g / lipschitz
        t_next = (1 + np.sqrt(1 + 4 * t * t)) / 2
        y = x_next + (t - 1) / t_next * (x_next - x)
        if np.max(np.abs(x_next - x)) < tol:
            return x_next
        x, t = x_next, t_next
    return x


def fit_logistic_regression(features, labels, l2=0.0, num_classes=None,
                            max_iter=1000, solver=None, init=None, tol=1e-7):
    """Fit multinomial logistic regression with an L2 penalty.

    Args:
        features: `(N, D)` float features.
        labels: `(N,)` integer labels in `[0, num_classes)`.
        l2: penalty strength (see `logistic_loss_and_grad`).
        num_classes: defaults to `labels.max() + 1`.
        max_iter: optimiser iterations.
        solver: `"lbfgs"` (needs SciPy), `"gd"` (accelerated gradient
            descent) or `None` (L-BFGS when SciPy is installed).
        init: optional `(weights, bias)` warm start.
        tol: convergence tolerance.

    Returns:
        `(weights (D, C), bias (C,))`, float64 NumPy arrays.
    """
    x = np.asarray(features, dtype="float64")
    y = np.asarray(labels).astype("int64")
    if x.ndim != 2 or y.shape != (len(x),):
        raise ValueError(
            "Expected features (N, D) and labels (N,). "
            f"Received: features.shape={x.shape}, labels.shape={y.shape}"
        )
    c = int(num_classes if num_classes is not None else y.max() + 1)
    if y.min() < 0 or y.max() >= c:
        raise ValueError(
            f"`labels` must be in [0, {c}). Received: min={y.min()}, max={y.max()}"
        )
    solver = solver or ("lbfgs" if _have_scipy() else "gd")
    if solver not in ("lbfgs", "gd"):
        raise ValueError(f"`solver` must be 'lbfgs' or 'gd'. Received: {solver!r}")
    d = x.shape[1]
    onehot = np.eye(c)[y]
    x0 = np.zeros(d * c + c)
    if init is not None:
        x0 = np.concatenate([np.ravel(init[0]), np.ravel(init[1])]).astype("float64")

    def fun(p):
        return logistic_loss_and_grad(p, x, onehot, l2)

    if solver == "lbfgs":
        import scipy.optimize

        result = scipy.optimize.minimize(
            fun, x0, jac=True, method="L-BFGS-B",
            options={"maxiter": max_iter, "gtol": tol},
        )
        params = result.x
    else:
        # Softmax cross-entropy's Hessian is bounded by 1/2 of the features'
        # (with a bias column) second moment; the penalty adds l2.
        x1 = np.concatenate([x, np.ones((len(x), 1))], axis=1)
        lipschitz = 0.5 * np.linalg.norm(x1, 2) ** 2 / len(x) + l2
        params = _gradient_descent(fun, x0, lipschitz, max_iter * 10, tol)
    return params[: d * c].reshape(d, c), params[d * c :]


def predict_logits(weights, bias, features):
    """Logits `features @ weights + bias`, `(N, C)`."""
    return np.asarray(features, dtype="float64") @ weights + bias


def _accuracy(weights, bias, features, labels):
    predicted = predict_logits(weights, bias, features).argmax(axis=1)
    return float(np.mean(predicted == np.asarray(labels)))


def split_validation(features, labels, val_fraction=0.2, seed=0):
    """A deterministic random split `(train_x, train_y, val_x, val_y)`."""
    if not 0 < val_fraction < 1:
        raise ValueError(
            f"`val_fraction` must be in (0, 1). Received: {val_fraction}"
        )
    n = len(features)
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(n * val_fraction)))
    val, train = order[:n_val], order[n_val:]
    features, labels = np.asarray(features), np.asarray(labels)
    return features[train], labels[train], features[val], labels[val]


def linear_probe(train_features, train_labels, test_features, test_labels,
                 val_features=None, val_labels=None, l2_values=None,
                 val_fraction=0.2, seed=0, max_iter=1000, solver=None):
    """The paper's linear-probe protocol on precomputed features.

    Sweeps the L2 strength on the validation split (from the largest
    strength down, warm-starting each fit from the previous), picks the
    strength with the best validation accuracy (ties go to the larger,
    simpler model), refits on train + validation and scores the test split.

    Args:
        train_features, train_labels: `(N, D)` and `(N,)`.
        test_features, test_labels: the held-out split to report.
        val_features, val_labels: the validation split; `None` splits off
            `val_fraction` of the training split with `seed`.
        l2_values: strengths to sweep; defaults to `DEFAULT_L2_VALUES`.
        max_iter: optimiser iterations per fit.
        solver: see `fit_logistic_regression`.

    Returns:
        dict with `"l2"` (the chosen strength), `"val_accuracy"` (dict
        strength → accuracy), `"test_accuracy"`, `"weights"`, `"bias"`.

    Example:

    ```python
    feats = lambda x: keras_clip.evaluation.zero_shot.encode_images(model, x)
    result = linear_probe(feats(x_train), y_train, feats(x_test), y_test)
    result["test_accuracy"], result["l2"]
    ```
    """
    if val_features is None:
        train_features, train_labels, val_features, val_labels = split_validation(
            train_features, train_labels, val_fraction, seed
        )
    all_labels = np.concatenate(
        [np.asarray(train_labels), np.asarray(val_labels), np.asarray(test_labels)]
    )
    num_classes = int(all_labels.max()) + 1
    # `None` means the default sweep; any sequence or array of values is
    # taken as given (a NumPy array has no truth value).
    values = DEFAULT_L2_VALUES if l2_values is None else np.ravel(l2_values)
    if len(values) == 0:
        raise ValueError("Expected at least one value in `l2_values`. Received: none")
    l2_values = sorted((float(v) for v in values), reverse=True)
    scores, init = {}, None
    for l2 in l2_values:
        init = fit_logistic_regression(
            train_features, train_labels, l2, num_classes, max_iter, solver, init
        )
        scores[l2] = _accuracy(*init, val_features, val_labels)
    best = max(l2_values, key=lambda v: (scores[v], v))
    weights, bias = fit_logistic_regression(
        np.concatenate([train_features, val_features]),
        np.concatenate([train_labels, val_labels]),
        best, num_classes, max_iter, solver,
    )
    return {
        "l2": best,
        "val_accuracy": scores,
        "test_accuracy": _accuracy(weights, bias, test_features, test_labels),
        "weights": weights,
        "bias": bias,
    }
