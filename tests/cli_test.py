"""The `keras-clip` commands end to end on a tiny generated image-caption set.

`train` on a CSV with a broken image (its output captured as in a log
file, with TensorBoard logs), a second `train` that finds the work done,
resumes that change the plan (refused), a damaged checkpoint, a NaN in the
data; `eval zeroshot | retrieval | linear-probe` and `embed`, checked
against direct library calls on the saved model; and the one-line errors
of bad input.
"""

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
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


def run_captured(*argv):
    """`run(*argv)` with stdout and stderr captured as a log file would be
    (not a terminal); returns `(status, stdout, stderr, warnings)`."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
            warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        status = run(*argv)
    return status, out.getvalue(), err.getvalue(), [str(w.message) for w in caught]


def read_json(path):
    """Strict JSON: a NaN or Infinity in the file fails."""
    def refuse(name):
        raise AssertionError(f"{path} holds {name}, which JSON does not allow")

    with open(path) as f:
        return json.load(f, parse_constant=refuse)


@pytest.fixture(scope="module")
def trained(workspace):
    root, _ = workspace
    out = root / "run"
    args = ["train", "--train-data", str(root / "pairs.csv"), "--output-dir", str(out),
            "--preset", "tiny-vit", "--tokenizer", "train", "--vocabulary-size", "600",
            "--epochs", "2", "--batch-size", "8", "--lr", "1e-3", "--warmup", "2",
            "--val-data", str(root / "pairs.csv"), "--token-multiple", "8", "--tensorboard"]
    status, stdout, stderr, caught = run_captured(*args)
    assert status == 0, stderr
    return root, out, args, (stdout, stderr, caught)


def test_train_writes_model_checkpoint_figures_and_metrics(trained):
    root, out, args, _ = trained
    for name in ("clip.keras", "checkpoint.keras", "checkpoint.prev.keras", "history.csv",
                 "training_curves.png", "similarity.png", "metrics.json", "train_state.json"):
        assert (out / name).exists(), name
    metrics = read_json(out / "metrics.json")
    # 27 rows: 24 + one extra caption + the broken image; 26 usable -> 3 steps of 8.
    assert metrics["status"] == "complete" and metrics["step"] == 6
    # Only skipped samples, per reason: the broken PNG, once per epoch.
    assert metrics["skipped_samples"] == {"unknown_image_format": 2}
    assert metrics["samples_read"] == 50
    assert metrics["final"]["epoch"] == 2  # epochs run, not the last 0-based index
    assert metrics["non_finite"] is None
    assert "val_retrieval_i2t_r1" in metrics["final"]
    # Two checkpoint generations: the newest (epoch 2) and the one before.
    for name, step in (("checkpoint.keras", 6), ("checkpoint.prev.keras", 3)):
        saved = keras.saving.load_model(out / name)
        assert int(keras.ops.convert_to_numpy(saved.optimizer.iterations)) == step, name
    assert not [p for p in os.listdir(out) if "partial" in p]
    for png in ("training_curves.png", "similarity.png"):
        with Image.open(out / png) as image:
            assert image.format == "PNG" and min(image.size) > 100
    # Running the same command again resumes, finds the work done, trains
    # nothing, and keeps what the first run counted.
    assert run(*args) == 0
    again = read_json(out / "metrics.json")
    assert again["step"] == 6 and again["skipped_samples"] == {"unknown_image_format": 2}


def test_train_output_in_a_log_file_is_plain_lines(trained):
    # Output that is not a terminal: no progress-bar redraws or colour codes,
    # a line per epoch with the step and the time left, the tokenizer's
    # shortfall said once in a line instead of a warning.
    _, _, _, (stdout, stderr, caught) = trained
    for stream in (stdout, stderr):
        assert "\x1b[" not in stream and "\r" not in stream
    epoch_lines = [line for line in stdout.splitlines() if line.startswith("epoch ")]
    assert [line.split(" - ")[:2] for line in epoch_lines] == [
        ["epoch 1/2", "step 3/6"], ["epoch 2/2", "step 6/6"]]
    assert "ETA " in epoch_lines[0] and " loss " in epoch_lines[0]
    assert "Learnt a 544-token BPE vocabulary from 26 captions (--vocabulary-size 600" in stdout
    assert not [w for w in caught if "tokens" in w], caught


def test_tensorboard_logs_hold_each_epoch_scalars(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, out, _, _ = trained

    def scalars(folder):
        events = EventAccumulator(str(out / "tensorboard" / folder))
        events.Reload()
        return {tag: [e.step for e in events.Tensors(tag)] for tag in events.Tags()["tensors"]}

    train = scalars("train")
    for tag in ("epoch_loss", "epoch_i2t_accuracy", "epoch_t2i_accuracy", "epoch_logit_scale",
                "epoch_learning_rate", "epoch_skipped_samples"):
        assert train.get(tag) == [0, 1], (tag, sorted(train))
    # The retrieval evaluation on --val-data (Keras writes val_* keys apart).
    validation = scalars("validation")
    for tag in ("epoch_retrieval_i2t_r1", "epoch_retrieval_t2i_r5"):
        assert validation.get(tag) == [0, 1], (tag, sorted(validation))


def fingerprint(folder):
    """Each file's size and modification time, to prove nothing changed."""
    return {name: (os.path.getsize(folder / name), os.path.getmtime(folder / name))
            for name in sorted(os.listdir(folder)) if (folder / name).is_file()}


def with_option(args, flag, value):
    args = list(args)
    args[args.index(flag) + 1] = value
    return args


@pytest.mark.parametrize("flag, value, said, original", [
    # Another batch size changes the step plan (it did print "Training
    # already complete (41 of 20 steps)" and name a clip.keras it never wrote).
    ("--batch-size", "4", "--batch-size changed from 8 to 4", "8"),
    # More epochs would run past the end of the schedule at learning rate 0.
    ("--epochs", "4", "--epochs changed from 2 to 4", "2"),
    # The checkpoint's optimizer would ignore another peak rate.
    ("--lr", "0.01", "--lr changed from 0.001 to 0.01", "0.001"),
])
def test_a_resume_that_changes_the_plan_is_refused_and_changes_nothing(
        trained, capsys, flag, value, said, original):
    _, out, args, _ = trained
    before = fingerprint(out)
    capsys.readouterr()
    assert run(*with_option(args, flag, value)) == 1
    captured = capsys.readouterr()
    line = captured.err.strip()
    assert "\n" not in line and "Traceback" not in line
    assert line.startswith("keras-clip train: error: Cannot resume the run in")
    assert said in line and "--restart" in line
    assert f"resume with the original {flag} {original}" in line
    if flag != "--lr":
        assert "learning rate 0" in line
    assert fingerprint(out) == before


def test_a_damaged_checkpoint_resumes_from_the_previous_one(trained, tmp_path, capsys):
    _, out, args, _ = trained
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    os.remove(copy / "clip.keras")
    # Cut short, as a full disk or a killed copy leaves it.
    data = (copy / "checkpoint.keras").read_bytes()
    (copy / "checkpoint.keras").write_bytes(data[: len(data) // 3])
    args = [a for a in with_option(args, "--output-dir", str(copy)) if a != "--tensorboard"]
    capsys.readouterr()
    assert run(*args) == 0
    said = capsys.readouterr().out
    assert f"{copy / 'checkpoint.keras'} is damaged: not a zip archive" in said
    assert f"Resuming from the previous one, {copy / 'checkpoint.prev.keras'} (step 3)" in said
    assert (copy / "checkpoint.damaged.keras").read_bytes() == data[: len(data) // 3]
    assert read_json(copy / "metrics.json")["step"] == 6
    final = keras.saving.load_model(copy / "clip.keras")
    assert int(keras.ops.convert_to_numpy(final.optimizer.iterations)) == 6

    # Both generations damaged: one line naming both files and the fix.
    (copy / "checkpoint.keras").write_bytes(b"not a zip")
    (copy / "checkpoint.prev.keras").write_bytes(b"")
    os.remove(copy / "clip.keras")
    assert run(*args) == 1
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and "Traceback" not in line
    assert f"{copy / 'checkpoint.keras'} is damaged" in line
    assert f"{copy / 'checkpoint.prev.keras'} is damaged: an empty file" in line
    assert "--restart" in line


def test_a_nan_in_the_data_stops_training_and_keeps_the_last_good_checkpoint(
        workspace, tmp_path, monkeypatch, capsys):
    root, _ = workspace
    real = app.make_source

    def nan_images_after_epoch_1(*args, **kwargs):
        # Batches 4 on (epoch 2 of 3 steps) carry NaN images.
        clean = real(*args, **kwargs)
        poisoned = clean.repeat().enumerate().map(
            lambda i, batch: {**batch, "images": tf.where(i >= 3, np.nan, batch["images"])})
        poisoned.skip_counter = clean.skip_counter
        return poisoned

    monkeypatch.setattr(app, "make_source", nan_images_after_epoch_1)
    out = tmp_path / "run"
    capsys.readouterr()
    status = run("train", "--train-data", str(root / "pairs.csv"), "--output-dir", str(out),
                 "--preset", "tiny-vit", "--tokenizer", "train", "--vocabulary-size", "600",
                 "--epochs", "2", "--batch-size", "8", "--warmup", "2")
    captured = capsys.readouterr()
    assert status == 1
    assert "Stopped: the loss is nan at step 4 (epoch 2)" in captured.out
    assert "keras-clip train: error: training failed: the loss was nan at step 4" in captured.err
    # No final model from NaN weights; the epoch-1 checkpoint is kept, finite.
    assert not (out / "clip.keras").exists()
    saved = keras.saving.load_model(out / "checkpoint.keras")
    assert int(keras.ops.convert_to_numpy(saved.optimizer.iterations)) == 3
    assert all(np.isfinite(keras.ops.convert_to_numpy(w)).all() for w in saved.weights)
    # metrics.json records the value (as text: JSON has no NaN).
    metrics = read_json(out / "metrics.json")
    assert metrics["status"] == "failed"
    assert metrics["non_finite"] == {"metric": "loss", "value": "nan", "step": 4, "epoch": 2}
    assert metrics["final"]["loss"] == "nan" and metrics["final"]["epoch"] == 2
    assert "model" not in metrics["outputs"]


def test_eval_zeroshot_matches_the_library(trained, workspace, capsys):
    root, out, _, _ = trained
    _, classes = workspace
    dest = root / "zs"
    capsys.readouterr()
    assert run("eval", "zeroshot", "--model", str(out / "clip.keras"), "--data",
               str(root / "folders"), "--templates", "a {}", "--output-dir", str(dest)) == 0
    # Off a terminal, a line instead of Keras's progress bar.
    said = capsys.readouterr().out
    assert "\x1b[" not in said and "\r" not in said and "24/24 images" in said
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
    root, out, _, _ = trained
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
    root, out, _, _ = trained
    dest = root / "lp"
    assert run("eval", "linear-probe", "--model", str(out / "clip.keras"), "--train",
               str(root / "folders"), "--test", str(root / "folders"), "--max-iter", "200",
               "--output-dir", str(dest)) == 0
    with open(dest / "metrics.json") as f:
        metrics = json.load(f)
    assert metrics["classes"] == 6 and 0.0 <= metrics["test_accuracy"] <= 1.0


def test_embed_images_and_texts(trained):
    root, out, _, _ = trained
    model = keras.saving.load_model(out / "clip.keras")
    target = root / "emb" / "images.npy"
    assert run("embed", "--model", str(out / "clip.keras"), "--images",
               str(root / "folders"), str(root / "broken.png"), "--output", str(target)) == 0
    embeddings = np.load(target)
    listed = (root / "emb" / "images.rows.txt").read_text().splitlines()
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


def test_embed_never_replaces_its_input(trained, tmp_path, capsys):
    _, out, _, _ = trained
    model = str(out / "clip.keras")
    # `--texts caps.txt --output caps.npy` wrote its row order over caps.txt.
    captions = "a red square\na blue disc\n"
    (tmp_path / "caps.txt").write_text(captions)
    assert run("embed", "--model", model, "--texts", str(tmp_path / "caps.txt"),
               "--output", str(tmp_path / "caps.npy")) == 0
    assert (tmp_path / "caps.txt").read_text() == captions
    assert (tmp_path / "caps.rows.txt").read_text() == captions
    assert np.load(tmp_path / "caps.npy").shape[0] == 2
    # An output that is an input is refused, and the input kept.
    capsys.readouterr()
    assert run("embed", "--model", model, "--texts", str(tmp_path / "caps.rows.txt"),
               "--output", str(tmp_path / "caps.npy")) == 1
    line = capsys.readouterr().err.strip()
    assert line.startswith("keras-clip embed: error: Expected outputs that replace no input.")
    assert f"which is the --texts input {tmp_path / 'caps.rows.txt'}" in line
    assert (tmp_path / "caps.rows.txt").read_text() == captions


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
    for option in ("--train-data", "--restart", "--precision", "--tensorboard", "--debug",
                   "--classnames", "--templates", "--max-iter", "--texts", "--minutes"):
        assert option in proc.stdout, option


def test_bad_arguments_name_what_was_expected(workspace, tmp_path):
    root, _ = workspace
    with pytest.raises(ValueError, match="--train-num-samples"):
        app.run_train([str(root / "x.tar")], str(tmp_path), dataset_type_name="webdataset")
    with pytest.raises(FileNotFoundError, match="saved .keras model"):
        app.load_model(str(tmp_path / "missing.keras"))
    with pytest.raises(ValueError, match="--dataset-type"):
        app.dataset_type(["data.parquet"])


@pytest.fixture
def bad_inputs(workspace, tmp_path):
    root, _ = workspace
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "header.csv").write_text("filepath,title\n")
    (tmp_path / "notzip.keras").write_text("hello")
    (tmp_path / "texts.json").write_text('{"a": ["a cat"]}')
    return root, tmp_path


def train_args(csv, out, *extra):
    return ["train", "--train-data", str(csv), "--output-dir", str(out), "--tokenizer", "train",
            "--vocabulary-size", "600", *extra]


@pytest.mark.parametrize("case", [
    "fewer samples than a batch", "empty csv", "header-only csv", "missing csv",
    "non-zip model", "truncated model", "convert over its input", "library error",
])
def test_input_errors_are_one_line_without_a_traceback(case, bad_inputs, trained, capsys):
    root, tmp = bad_inputs
    _, out, _, _ = trained
    model = out / "clip.keras"
    truncated = tmp / "truncated.keras"
    truncated.write_bytes(model.read_bytes()[:5000])
    argv, said = {
        # Was a full traceback.
        "fewer samples than a batch": (train_args(root / "pairs.csv", tmp / "o", "--batch-size", "64"),
                                       ["at least one full batch of --batch-size 64",
                                        "Received: 26 pairs", "Lower --batch-size to 26"]),
        # Were "Expected --train-num-samples".
        "empty csv": (train_args(tmp / "empty.csv", tmp / "o"), ["an empty file"]),
        "header-only csv": (train_args(tmp / "header.csv", tmp / "o"), ["only the header"]),
        "missing csv": (train_args(tmp / "nowhere.csv", tmp / "o"),
                        ["--train-data", "no such file"]),
        # Were Keras's "File not found" for a file that exists.
        "non-zip model": (["eval", "zeroshot", "--model", str(tmp / "notzip.keras"), "--data",
                           str(root / "folders")], ["not a zip archive (5 bytes)", "--model"]),
        "truncated model": (["embed", "--model", str(truncated), "--texts", "a cat", "--output",
                             str(tmp / "e.npy")], ["not a zip archive (5,000 bytes)"]),
        "convert over its input": (["convert", str(truncated), str(truncated)],
                                   ["replace no input"]),
        # An error the library raises gets the same treatment.
        "library error": (["embed", "--model", str(model), "--texts", str(tmp / "texts.json"),
                           "--output", str(tmp / "e.npy")],
                          ["holds a dict", "--debug shows the traceback"]),
    }[case]
    capsys.readouterr()
    assert run(*argv) == 1
    captured = capsys.readouterr()
    line = captured.err.strip()
    assert "\n" not in line and "Traceback" not in line, captured.err
    for words in said:
        assert words in line, (words, line)
    # --debug shows the traceback instead: the error propagates.
    with pytest.raises(ValueError):
        run("--debug", *argv)
    assert not (tmp / "o").exists() or not os.listdir(tmp / "o")


@pytest.mark.parametrize("option, value, said", [
    ("--batch-size", "0", "argument --batch-size: expected an integer >= 2"),  # was ZeroDivisionError
    ("--image-size", "-8", "argument --image-size: expected an integer >= 1, got '-8'"),
    ("--epochs", "0", "argument --epochs: expected an integer >= 1, got '0'"),
])
def test_bad_numbers_are_refused_when_parsed(option, value, said, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run("train", "--train-data", "x.csv", "--output-dir", "out", option, value)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err


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
