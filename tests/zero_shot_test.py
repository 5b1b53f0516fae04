"""Zero-shot classifier weights, metrics and prompt templates.

The classifier is built from a stub text encoder whose class embeddings are
known in closed form; the metrics are checked against explicit loops.
"""

import json

import numpy as np
import pytest

from keras_clip.evaluation import prompts
from keras_clip.evaluation import zero_shot

CLASSES = ["cat", "dog", "car", "tree"]
TEMPLATES = ["a photo of a {}.", "a {} drawing", "itap of my {c}."]


class StubText:
    """Prompt (template t, class c) embeds as scale_t * (e_c + e_{C+t}).

    Per-template normalisation removes scale_t; the ensemble of class c is
    then (e_c + mean_t e_{C+t}) / sqrt(1 + 1/T).
    """

    def __init__(self, classes, templates):
        self.ids = {}
        c, t = len(classes), len(templates)
        self.table = np.zeros((c * t, c + t), "float32")
        for i, name in enumerate(classes):
            for j, template in enumerate(templates):
                row = len(self.ids)
                self.ids[prompts.fill_template(template, name)] = row
                self.table[row, i] = self.table[row, c + j] = 1.0 + 3.0 * j
        self.calls = []

    def tokenize(self, texts):
        return np.array([[self.ids[s]] for s in texts], "int32")

    def encode(self, token_ids):
        self.calls.append(len(token_ids))
        return self.table[np.asarray(token_ids)[:, 0]]


def expected_weights(num_classes, num_templates):
    w = np.zeros((num_classes, num_classes + num_templates))
    w[:, :num_classes] = np.eye(num_classes)
    w[:, num_classes:] = 1.0 / num_templates
    return w / np.sqrt(1 + 1 / num_templates)


@pytest.mark.parametrize("batch_size", [1, 3, 32])
def test_class_embeddings_match_closed_form(batch_size):
    stub = StubText(CLASSES, TEMPLATES)
    w = zero_shot.class_embeddings(
        stub.encode, stub.tokenize, CLASSES, TEMPLATES, batch_size=batch_size
    )
    assert w.shape == (4, 7) and w.dtype == np.float32
    np.testing.assert_allclose(w, expected_weights(4, 3), atol=1e-6)
    # Classes are embedded in batches of `batch_size` classes.
    assert max(stub.calls) == min(batch_size, 4) * len(TEMPLATES)


def test_class_embeddings_match_loop_reference():
    rng = np.random.default_rng(0)
    vectors = {}

    def tokenize(texts):
        return np.array([[hash(s) % 10**6] for s in texts])

    def encode(ids):
        out = []
        for (i,) in ids:
            vectors.setdefault(i, rng.standard_normal(5))
            out.append(vectors[i])
        return np.array(out)

    names = ["a", "bb", "ccc", "dddd", "e"]
    got = zero_shot.class_embeddings(encode, tokenize, names, "imagenet", 2)
    for k, name in enumerate(names):
        rows = [
            encode(tokenize([t.format(name)]))[0]
            for t in prompts.IMAGENET_TEMPLATES
        ]
        mean = np.mean([r / np.linalg.norm(r) for r in rows], axis=0)
        np.testing.assert_allclose(got[k], mean / np.linalg.norm(mean), atol=1e-5)


def test_default_template_is_a_photo_of():
    stub = StubText(["dog"], ["a photo of a {}."])
    w = zero_shot.class_embeddings(stub.encode, stub.tokenize, ["dog"])
    np.testing.assert_allclose(w, [[2**-0.5, 2**-0.5]], atol=1e-6)


def test_zero_shot_logits_and_softmax():
    stub = StubText(CLASSES, TEMPLATES)
    w = zero_shot.class_embeddings(stub.encode, stub.tokenize, CLASSES, TEMPLATES)
    images = np.eye(4, 7, dtype="float32")[[2, 0]]  # Pure class directions.
    logits = zero_shot.zero_shot_logits(images, w, logit_scale=10.0)
    np.testing.assert_allclose(logits, 10 * images @ w.T, rtol=1e-6)
    assert logits.argmax(1).tolist() == [2, 0]
    probs = zero_shot.softmax(logits)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-6)
    ref = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(probs, ref, rtol=1e-5)


def test_class_embedding_errors():
    stub = StubText(CLASSES, TEMPLATES)
    with pytest.raises(ValueError, match="must not be empty"):
        zero_shot.class_embeddings(stub.encode, stub.tokenize, [])
    with pytest.raises(ValueError, match="slot"):
        zero_shot.class_embeddings(stub.encode, stub.tokenize, CLASSES, ["no slot"])


# ---- metrics -------------------------------------------------------------


def loop_topk(logits, labels, k):
    hits = 0
    for row, y in zip(logits, labels):
        above = sum(1 for j in range(len(row)) if j != y and row[j] >= row[y])
        hits += above < k
    return hits / len(labels)


def test_accuracy_matches_loops():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((50, 8))
    labels = rng.integers(0, 8, 50)
    for k in (1, 3, 5, 8):
        assert zero_shot.accuracy(logits, labels, k) == pytest.approx(
            loop_topk(logits, labels, k)
        )
    assert zero_shot.accuracy(logits, labels, 8) == 1.0
    # Ties count against the true class: a constant classifier scores 0.
    assert zero_shot.accuracy(np.zeros((4, 3)), [0, 1, 2, 0], 1) == 0.0


def test_per_class_confusion_and_summary():
    logits = np.array(
        [[3, 1, 0], [3, 1, 0], [0, 3, 1], [2, 1, 0], [0, 0, 5.0]]
    )  # argmax: 0 0 1 0 2
    labels = np.array([0, 1, 1, 1, 2])
    per_class = zero_shot.per_class_accuracy(logits, labels)
    np.testing.assert_allclose(per_class, [1.0, 1 / 3, 1.0])
    cm = zero_shot.confusion_matrix(logits, labels)
    np.testing.assert_array_equal(cm, [[1, 0, 0], [2, 1, 0], [0, 0, 1]])
    pairs = zero_shot.most_confused(logits, labels, ["a", "b", "c"])
    assert pairs == [("b", "a", 2)]
    summary = zero_shot.evaluate_logits(logits, labels, ["a", "b", "c"])
    assert summary["top1"] == pytest.approx(0.6)
    assert summary["top5"] == 1.0
    assert summary["mean_per_class"] == pytest.approx((2 + 1 / 3) / 3)
    # A class without samples is NaN and left out of the mean.
    per_class = zero_shot.per_class_accuracy(np.eye(4)[:2], [0, 1])
    assert np.isnan(per_class[2:]).all()


def test_metric_errors():
    with pytest.raises(ValueError, match="labels"):
        zero_shot.accuracy(np.zeros((3, 2)), [0, 1])
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        zero_shot.accuracy(np.zeros((2, 2)), [0, 2])


# ---- prompts --------------------------------------------------------------


def test_templates():
    assert prompts.get_templates() == ("a photo of a {}.",)
    assert len(prompts.IMAGENET_TEMPLATES) == 80
    assert len(set(prompts.IMAGENET_TEMPLATES)) == 80
    assert prompts.get_templates("imagenet") is prompts.IMAGENET_TEMPLATES
    assert prompts.get_templates("a {} x") == ("a {} x",)
    assert prompts.fill_template("itap of my {c}.", "dog") == "itap of my dog."
    assert prompts.fill_template(lambda c: c.upper(), "dog") == "DOG"
    with pytest.raises(ValueError, match="must not be empty"):
        prompts.get_templates([])


def test_clip_benchmark_files():
    pytest.importorskip("clip_benchmark")
    assert prompts.load_templates("imagenet1k") == prompts.IMAGENET_TEMPLATES
    assert len(prompts.load_templates("cifar10")) == 18
    names = prompts.load_classnames("imagenet1k")
    assert len(names) == 1000 and all(isinstance(n, str) for n in names)
    with pytest.raises(ValueError, match="Expected one of"):
        prompts.load_classnames("no-such-dataset")


def test_missing_clip_benchmark_names_the_package(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "clip_benchmark", None)
    with pytest.raises(ImportError, match="clip-benchmark"):
        prompts.load_classnames("mnist")


def test_read_list(tmp_path):
    assert prompts.read_list(("a", "b")) == ["a", "b"]
    (tmp_path / "names.txt").write_text("cat\n\n dog \n")
    assert prompts.read_list(tmp_path / "names.txt") == ["cat", "dog"]
    (tmp_path / "l.json").write_text(json.dumps(["x", "y"]))
    assert prompts.read_list(str(tmp_path / "l.json")) == ["x", "y"]
    (tmp_path / "d.json").write_text(json.dumps({"pets": ["p"]}))
    assert prompts.read_list(tmp_path / "d.json", key="pets") == ["p"]
    with pytest.raises(ValueError, match="pass `key`"):
        prompts.read_list(tmp_path / "d.json")


@pytest.mark.slow  # Importing open_clip takes ~10 s here.
def test_agrees_with_open_clip():
    torch = pytest.importorskip("torch")
    import sys
    import types

    # See conftest.py: torchvision's C kernels are absent beside CPU torch.
    sys.modules.setdefault(
        "torchvision._meta_registrations",
        types.ModuleType("torchvision._meta_registrations"),
    )
    reference = pytest.importorskip("open_clip.zero_shot_classifier")
    rng = np.random.default_rng(5)
    names = ["ant", "bee", "cow", "doe", "elk"]
    templates = prompts.IMAGENET_TEMPLATES[:7]
    texts = [t.format(c) for c in names for t in templates]
    table = rng.standard_normal((len(texts), 6))
    ids = {s: i for i, s in enumerate(texts)}

    def tokenize(batch):
        return np.array([[ids[s]] for s in batch])

    def encode(token_ids):
        return table[np.asarray(token_ids)[:, 0]]

    class TorchStub:
        def encode_text(self, token_ids, normalize=True):
            out = torch.from_numpy(encode(token_ids.numpy()))
            return out / out.norm(dim=-1, keepdim=True) if normalize else out

    theirs = reference.build_zero_shot_classifier(
        TorchStub(), lambda b: torch.from_numpy(tokenize(b)), names, templates,
        num_classes_per_batch=2,
    )
    ours = zero_shot.class_embeddings(encode, tokenize, names, templates, 2)
    np.testing.assert_allclose(ours, theirs.numpy().T, atol=1e-6)


class StubModel:
    """A CLIP-like stub: images are unit class directions, the text side is
    `StubText`, the logit scale is exp(0) = 1 (so probabilities are softmaxes
    of cosine similarities, computable by hand)."""

    def __init__(self, classes, templates, prompt_templates=None):
        self.text = StubText(classes, templates)
        self.tokenizer = self.text.tokenize
        self.logit_scale = np.float32(0.0)
        self.prompt_templates = prompt_templates

    def encode_text(self, token_ids):
        return self.text.encode(token_ids)

    def encode_image(self, images):
        return np.asarray(images, "float32")


def _reference_probabilities(images, classes, templates):
    weights = expected_weights(len(classes), len(templates))
    logits = images @ weights.T
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_predict_pairs_labels_with_probabilities_best_first():
    model = StubModel(CLASSES, TEMPLATES)
    images = np.eye(4, 7, dtype="float32")[[2, 0, 3]]
    result = zero_shot.predict(model, images, CLASSES, top_k=2, templates=TEMPLATES)
    probs = _reference_probabilities(images, CLASSES, TEMPLATES)
    order = np.argsort(-probs, axis=1, kind="stable")[:, :2]
    assert result.labels == [[CLASSES[j] for j in row] for row in order]
    assert [row[0] for row in result.labels] == ["car", "cat", "tree"]
    np.testing.assert_array_equal(result.indices, order)
    np.testing.assert_allclose(result.scores, np.take_along_axis(probs, order, 1), atol=1e-6)
    with pytest.raises(ValueError, match="top_k"):
        zero_shot.predict(model, images, CLASSES, top_k=5, templates=TEMPLATES)


def test_a_model_s_own_templates_are_the_default():
    # The model carries one template; no templates argument uses it (the stub
    # knows only these prompts, so the default "a photo of a {}." alone would
    # fail to tokenize), and an explicit argument still wins.
    own = ["a {} drawing"]
    model = StubModel(CLASSES, own, prompt_templates=own)
    images = np.eye(4, 5, dtype="float32")[[1, 3]]
    probs = zero_shot.classify(model, images, CLASSES)
    np.testing.assert_allclose(probs, _reference_probabilities(images, CLASSES, own), atol=1e-6)
    assert zero_shot.model_templates(model) == own
    assert zero_shot.model_templates(model, ["{}"]) == ["{}"]
    assert zero_shot.model_templates(StubModel(CLASSES, own)) is None
    with pytest.raises(KeyError):
        zero_shot.classify(StubModel(CLASSES, own), images, CLASSES)
