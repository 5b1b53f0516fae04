"""The figures: valid PNGs, and clear errors for mismatched inputs."""

import numpy as np
import pytest
from PIL import Image

from keras_clip_app import plots


def png_size(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_training_curves_has_a_panel_per_metric_group(tmp_path):
    history = {"loss": [3.0, 2.0, 1.5], "i2t_accuracy": [0.1, 0.3, 0.5],
               "t2i_accuracy": [0.1, 0.2, 0.4], "logit_scale": [14.3, 15.0, 16.2]}
    three = png_size(plots.training_curves(history, str(tmp_path / "a.png")))
    history["heldout_top1"] = [0.1, 0.2, 0.3]
    four = png_size(plots.training_curves(history, str(tmp_path / "b.png")))
    assert four[0] > three[0]  # the evaluation panel is added beside the others
    assert [t for t, _ in plots._curve_panels(history)] == [
        "contrastive loss", "in-batch retrieval accuracy", "logit scale (1 / temperature)",
        "evaluation"]
    history["learning_rate"] = [1e-3, 5e-4, 0.0]
    assert [t for t, _ in plots._curve_panels(history)][3:] == [
        "learning rate (last step of the epoch)", "evaluation"]
    with pytest.raises(ValueError, match="at least one non-empty metric"):
        plots.training_curves({"loss": [], "epoch": [0]}, str(tmp_path / "c.png"))


def test_similarity_matrix_and_prediction_grid(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (20, 24, 3), dtype=np.uint8) for _ in range(4)]
    sim = rng.uniform(-1, 1, (4, 4))
    assert min(png_size(plots.similarity_matrix(images, list("abcd"), sim, str(tmp_path / "s.png")))) > 100
    with pytest.raises(ValueError, match=r"\(len\(captions\), len\(images\)\) = \(3, 4\)"):
        plots.similarity_matrix(images, list("abc"), sim, str(tmp_path / "x.png"))
    probs = rng.dirichlet(np.ones(5), size=4)
    path = plots.prediction_grid(images, probs, list("vwxyz"), str(tmp_path / "g.png"),
                                 true_labels=[0, 1, 2, 3], columns=2)
    assert min(png_size(path)) > 100
    with pytest.raises(ValueError, match=r"Received: \(4, 5\)"):
        plots.prediction_grid(images, probs, list("vwxy"), str(tmp_path / "y.png"))
    with pytest.raises(ValueError, match="shape"):
        plots.prediction_grid([np.zeros((4, 4))], probs[:1], list("vwxyz"), str(tmp_path / "z.png"))


def test_sparse_and_missing_values_are_drawn_where_they_were_logged(tmp_path):
    # A metric logged every 2 epochs (a shorter list) and NaN gaps from a CSV log.
    history = {"loss": [3.0, 2.0, 1.5, 1.2], "heldout_top1": [0.2, 0.4],
               "val_retrieval_i2t_r1": [float("nan"), 0.3, float("nan"), 0.5]}
    assert min(png_size(plots.training_curves(history, str(tmp_path / "s.png")))) > 100


def test_skipped_samples_and_non_finite_epochs_are_shown(tmp_path):
    history = {"loss": [3.0, float("nan")], "skipped_samples": [2.0, 2.0],
               "heldout_top1": [0.1, 0.2]}
    assert [t for t, _ in plots._curve_panels(history)] == [
        "contrastive loss", "skipped samples (per epoch)", "evaluation"]
    # The failed epoch is marked, not silently left out.
    assert plots.non_finite_epochs(history) == [2]
    assert plots.non_finite_epochs({"loss": [1.0], "val_retrieval_i2t_r1": [float("nan")]}) == []
    assert min(png_size(plots.training_curves(history, str(tmp_path / "f.png")))) > 100
