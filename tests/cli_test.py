"""The `keras-clip` commands end to end on a tiny generated image-caption set.

`train` on a CSV with a broken image, a second `train` that finds the work
done, `eval zeroshot | retrieval | linear-probe` and `embed`, checked
against direct library calls on the saved model.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

import keras_clip_app.cli
from keras_clip_app import commands as app
from keras_clip.data import image_files
from keras_clip.evaluation import retrieval
from keras_clip.evaluation import zero_shot

COLORS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220)}
SHAPES = ("square", "disc")


def draw(color, shape, jitter):
    image = np.full((40, 40, 3), 255, np.uint8)
    y, x = np.mgrid[:40, :40]
    c = 20 + jitter
    if shape == "square":
        mask = (abs(y - c) < 11) & (abs(x - c) < 11)
    else:
        mask = (y - c) ** 2 + (x - c) ** 2 < 144
    image[mask] = COLORS[color]
    return image


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    rows, classes = [], []
    for color in COLORS:
        for shape in SHAPES:
            name = f"{color} {shape}"
            classes.append(name)
            folder = root / "folders" / name.replace(" ", "_")
            folder.mkdir(parents=True)
            for k in range(4):
                path = folder / f"{k}.png"
                Image.fromarray(draw(color, shape, k - 2)).save(path)
                rows.append((os.path.relpath(path, root), f"a {name}"))
    # Two captions for one image (retrieval groups them) and a broken file.
    rows.append((rows[0][0], "a picture of a red square"))
    (root / "broken.png").write_bytes(b"\x89PNG not really")
    rows.append(("broken.png", "a broken image"))
    with open(root / "pairs.csv", "w") as f:
        f.write("filepath,title\n")
        f.writelines(f"{p},{c}\n" for p, c in rows)
    (root / "texts.txt").write_text("a red square\na blue disc\n")
    return root, classes


def run(*argv):
    return keras_clip_app.cli.main([*argv])


@pytest.fixture(scope="module")
def trained(workspace):
    root, _ = workspace
    out = root / "run"
    args = ["train", "--train-data", str(root / "pairs.csv"), "--output-dir", str(out),
            "--preset", "tiny-vit", "--tokenizer", "train", "--vocabulary-size", "600",
            "--epochs", "2", "--batch-size", "8", "--lr", "1e-3", "--warmup", "2",
            "--val-data", str(root / "pairs.csv"), "--token-multiple", "8"]
    assert run(*args) == 0
    return root, out, args


def test_train_writes_model_checkpoint_figures_and_metrics(trained):
    root, out, args = trained
    for name in ("clip.keras", "checkpoint.keras", "history.csv", "training_curves.png",
                 "similarity.png", "metrics.json", "train_state.json"):
        assert (out / name).exists(), name
    with open(out / "metrics.json") as f:
        metrics = json.load(f)
    # 27 rows: 24 + one extra caption + the broken image; 26 usable -> 3 steps of 8.
    assert metrics["status"] == "complete" and metrics["step"] == 6
    assert metrics["skipped_samples"]["unknown_image_format"] >= 1  # the broken PNG
    assert "val_retrieval_i2t_r1" in metrics["final"]
    for png in ("training_curves.png", "similarity.png"):
        with Image.open(out / png) as image:
            assert image.format == "PNG" and min(image.size) > 100
    # Running the same command again resumes, finds the work done, trains nothing.
    assert run(*args) == 0
    with open(out / "metrics.json") as f:
        assert json.load(f)["step"] == 6


def test_eval_zeroshot_matches_the_library(trained, workspace):
    root, out, _ = trained
    _, classes = workspace
    dest = root / "zs"
    assert run("eval", "zeroshot", "--model", str(out / "clip.keras"), "--data",
               str(root / "folders"), "--templates", "a {}", "--output-dir", str(dest)) == 0
    with open(dest / "metrics.json") as f:
        metrics = json.load(f)
    model = keras.saving.load_model(out / "clip.keras")
    images, labels, names, bad = image_files.image_folder(root / "folders")
    assert sorted(names) == sorted(classes) and not bad
    probs = zero_shot.classify(model, images, names, templates=["a {}"])
    assert metrics["top1"] == pytest.approx(zero_shot.accuracy(probs, labels, 1))
    assert metrics["top5"] == pytest.approx(zero_shot.accuracy(probs, labels, 5))
    assert metrics["classes"] == 6 and metrics["images"] == 24
    assert (dest / "predictions.png").exists()


def test_eval_retrieval_groups_captions_by_image(trained):
    root, out, _ = trained
    dest = root / "ret"
    assert run("eval", "retrieval", "--model", str(out / "clip.keras"), "--data",
               str(root / "pairs.csv"), "--output-dir", str(dest)) == 0
    with open(dest / "metrics.json") as f:
        metrics = json.load(f)
    # 24 distinct readable images, 25 captions (the broken image's dropped).
    assert metrics["images"] == 24 and metrics["captions"] == 25
    assert len(metrics["skipped_images"]) == 1
    model = keras.saving.load_model(out / "clip.keras")
    pairs = app.load_pairs_csv(str(root / "pairs.csv"))
    img = zero_shot.encode_images(model, pairs["images"])
    txt = zero_shot.encode_texts(model, np.asarray(model.tokenizer(pairs["captions"])))
    want = retrieval.retrieval_metrics(img, txt, pairs["text_to_image"])
    for key, value in want.items():
        assert metrics[key] == pytest.approx(value, abs=1e-6), key


def test_eval_linear_probe_runs(trained):
    root, out, _ = trained
    dest = root / "lp"
    assert run("eval", "linear-probe", "--model", str(out / "clip.keras"), "--train",
               str(root / "folders"), "--test", str(root / "folders"), "--max-iter", "200",
               "--output-dir", str(dest)) == 0
    with open(dest / "metrics.json") as f:
        metrics = json.load(f)
    assert metrics["classes"] == 6 and 0.0 <= metrics["test_accuracy"] <= 1.0


def test_embed_images_and_texts(trained):
    root, out, _ = trained
    model = keras.saving.load_model(out / "clip.keras")
    target = root / "emb" / "images.npy"
    assert run("embed", "--model", str(out / "clip.keras"), "--images",
               str(root / "folders"), str(root / "broken.png"), "--output", str(target)) == 0
    embeddings = np.load(target)
    listed = (root / "emb" / "images.txt").read_text().splitlines()
    assert embeddings.shape[0] == len(listed) == 24  # the broken file left out
    assert str(root / "broken.png") not in listed
    want = zero_shot.encode_images(model, [image_files.load_rgb(p) for p in listed[:3]])
    np.testing.assert_allclose(embeddings[:3], want, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)

    target = root / "emb" / "texts.npy"
    assert run("embed", "--model", str(out / "clip.keras"), "--texts",
               str(root / "texts.txt"), "--output", str(target)) == 0
    embeddings = np.load(target)
    want = zero_shot.encode_texts(model, np.asarray(model.tokenizer(["a red square", "a blue disc"])))
    np.testing.assert_allclose(embeddings, want, atol=1e-5)


def test_help_documents_every_option_without_importing_keras():
    code = (
        "import sys, keras_clip_app.cli\n"
        "for cmd in (['train'], ['eval', 'zeroshot'], ['eval', 'retrieval'], "
        "['eval', 'linear-probe'], ['embed'], ['demo']):\n"
        "    try:\n"
        "        keras_clip_app.cli.main(cmd + ['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('KERAS_IMPORTED', 'keras' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "KERAS_IMPORTED False" in proc.stdout
    for option in ("--train-data", "--restart", "--precision",
                   "--classnames", "--templates", "--max-iter", "--texts", "--minutes"):
        assert option in proc.stdout, option


def test_bad_arguments_name_what_was_expected(workspace, tmp_path):
    root, _ = workspace
    with pytest.raises(ValueError, match="--train-num-samples"):
        app.run_train([str(root / "x.tar")], str(tmp_path), dataset_type_name="webdataset")
    with pytest.raises(FileNotFoundError, match="saved .keras model"):
        app.load_model(str(tmp_path / "missing.keras"))
    with pytest.raises(ValueError, match="dataset type"):
        app.dataset_type(["data.parquet"])


def test_demo_command_defaults_are_the_demo_defaults():
    # `make demo` runs `keras-clip demo`: its defaults must be the recipe
    # that `demo.run` (and the README's measurements) use.
    import inspect

    from keras_clip_app import demo as demo_app

    args = vars(keras_clip_app.cli.build_parser().parse_args(["demo"]))
    defaults = inspect.signature(demo_app.run).parameters
    shared = [name for name in args if name in defaults]
    assert len(shared) >= 10
    for name in shared:
        assert args[name] == defaults[name].default, name


def test_jit_compile_option_parses_and_rejects_other_words(capsys):
    parser = keras_clip_app.cli.build_parser()
    base = ["train", "--train-data", "x.csv", "--output-dir", "out"]
    for word, value in (("auto", "auto"), ("true", True), ("False", False)):
        assert parser.parse_args([*base, "--jit-compile", word]).jit_compile == value
    assert parser.parse_args(base).jit_compile == "auto"
    assert parser.parse_args(["demo", "--jit-compile", "true"]).jit_compile is True
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--jit-compile", "yes"])
    assert "expected auto, true or false, got 'yes'" in capsys.readouterr().err


def test_token_multiple_option_parses_and_rejects_negatives(capsys):
    parser = keras_clip_app.cli.build_parser()
    base = ["train", "--train-data", "x.csv", "--output-dir", "out"]
    assert parser.parse_args(base).token_multiple == 0
    assert parser.parse_args([*base, "--token-multiple", "8"]).token_multiple == 8
    for bad in ("-1", "eight"):
        with pytest.raises(SystemExit):
            parser.parse_args([*base, "--token-multiple", bad])
        assert f"expected an integer >= 0, got '{bad}'" in capsys.readouterr().err
