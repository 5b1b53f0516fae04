"""The files of a training folder: checkpoints in two generations, the
run's plan, and the checks a resumed run passes before it trains.

- `checkpoint.keras` is the newest checkpoint and `checkpoint.prev.keras`
  the one before it. Each is written to a temporary file first and renamed
  into place, so neither is ever half-written, and one damaged file costs
  at most one checkpoint interval: the run resumes from the previous one.
- `train_state.json` holds the run's plan (epochs, steps per epoch) and the
  settings a resumed run must share with it (`--batch-size`, `--lr`, ...):
  a resumed run whose plan or settings differ is refused, naming what
  changed, instead of training on a schedule that no longer fits (steps at
  learning rate 0, or a run that ends before its schedule does).
"""

import json
import os
import shutil
import zipfile
import zlib

import keras

from keras_clip_app.errors import RunError

CHECKPOINT = "checkpoint.keras"
PREVIOUS = "checkpoint.prev.keras"
DAMAGED = "checkpoint.damaged.keras"
FINAL = "clip.keras"
HISTORY = "history.csv"
STATE = "train_state.json"
TENSORBOARD = "tensorboard"

# What a restarted run removes: every file a run writes that a later run
# would otherwise mistake for its own (a stale checkpoint as its previous
# generation, another run's clip.keras beside an unfinished one).
RUN_FILES = (
    CHECKPOINT,
    PREVIOUS,
    DAMAGED,
    STATE,
    HISTORY,
    FINAL,
    TENSORBOARD,
    "metrics.json",
    "training_curves.png",
    "similarity.png",
)
RESTART = "start over with --restart (or train into a new --output-dir)"


def optimizer_step(model):
    """The optimizer's step count (0 for a model not yet trained)."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        return 0
    return int(keras.ops.convert_to_numpy(optimizer.iterations))


def save_atomically(model, path):
    """`model.save(path)` through a temporary file, so `path` is never half-written."""
    tmp = path[: -len(".keras")] + ".partial.keras"
    model.save(tmp)
    os.replace(tmp, path)
    return path


def save_checkpoint(model, output_dir):
    """Writes `checkpoint.keras`; the file it replaces becomes `checkpoint.prev.keras`."""
    path = os.path.join(output_dir, CHECKPOINT)
    tmp = path[: -len(".keras")] + ".partial.keras"
    model.save(tmp)
    if os.path.exists(path):
        os.replace(path, os.path.join(output_dir, PREVIOUS))
    os.replace(tmp, path)
    return path


def write_json_atomically(path, payload):
    tmp = path + ".partial"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2)
    os.replace(tmp, path)
    return path


def damage_reason(path):
    """Why `path` is not a readable `.keras` archive, or `None` when it is.

    Checks the zip structure and every member's checksum, so a file cut
    short or altered anywhere is caught before Keras reads it (Keras calls
    any non-zip file "File not found").
    """
    size = os.path.getsize(path)
    if size == 0:
        return "an empty file"
    if not zipfile.is_zipfile(path):
        return f"not a zip archive ({size:,} bytes): cut short, or not a .keras file"
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error, RuntimeError) as error:
        return f"an unreadable zip archive ({error})"
    if bad is not None:
        return f"a zip archive whose member {bad} fails its checksum"
    return None


def check_keras_file(path, flag="--model"):
    """Raises a one-line error unless `path` is a readable `.keras` archive."""
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"Expected a saved .keras model at {flag} {path}. Received: no such "
            "file. Check the path."
        )
    if os.path.isdir(path):
        raise RunError(
            f"Expected a saved .keras model file at {flag} {path}. Received: a "
            "folder. Name the .keras file inside it."
        )
    reason = damage_reason(path)
    if reason is not None:
        raise RunError(
            f"Expected a saved .keras model (a zip archive) at {flag} {path}. "
            f"Received: {reason}. Save or copy the model again, or pass "
            "another file."
        )


def _load(path):
    """`(model, None)`, or `(None, why it cannot be loaded)`."""
    reason = damage_reason(path)
    if reason is not None:
        return None, reason
    try:
        return keras.saving.load_model(path), None
    except Exception as error:  # any failure makes the file useless to resume
        first_line = (str(error).strip().splitlines() or [""])[0]
        return None, f"Keras cannot load it ({type(error).__name__}: {first_line})"


def load_checkpoint(output_dir, chief=True):
    """The newest loadable checkpoint of `output_dir`, and its path.

    A damaged (or missing) `checkpoint.keras` falls back to
    `checkpoint.prev.keras`, saying so; the chief process moves the damaged
    file aside as `checkpoint.damaged.keras` (the next save would otherwise
    rotate it over the good previous one). Raises `RunError` when neither
    loads.
    """
    newest = os.path.join(output_dir, CHECKPOINT)
    previous = os.path.join(output_dir, PREVIOUS)
    problems = []
    for path in (newest, previous):
        if not os.path.exists(path):
            if path == newest:
                problems.append(f"{path} is missing")
            continue
        model, reason = _load(path)
        if model is not None:
            if problems:
                print(
                    f"The newest checkpoint cannot be used: {problems[0]}. "
                    f"Resuming from the previous one, {path} (step "
                    f"{optimizer_step(model):,}), so the last checkpoint "
                    "interval runs again."
                )
                if chief and os.path.exists(newest):
                    os.replace(newest, os.path.join(output_dir, DAMAGED))
                    print(
                        f"The damaged file is kept as {os.path.join(output_dir, DAMAGED)}."
                    )
            return model, path
        problems.append(f"{path} is damaged: {reason}")
    raise RunError(
        f"Expected a readable checkpoint in {output_dir} to resume from. "
        f"Received: {'; '.join(problems)}. To train anyway, {RESTART}."
    )


def read_state(output_dir):
    """The saved `train_state.json` as a dict, or `None` (none, or unreadable)."""
    path = os.path.join(output_dir, STATE)
    try:
        with open(path) as f:
            state = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        print(f"Ignoring {path}, which cannot be read ({error}).")
        return None
    return state if isinstance(state, dict) else None


def check_plan(state, output_dir, epochs, steps_per_epoch, settings):
    """Refuses to resume a run whose plan or settings differ from the saved ones.

    Args:
        state: the saved `train_state.json` (`None`: nothing to compare).
        epochs, steps_per_epoch: this command's plan.
        settings: `{flag: value}` of this command, each compared with the
            saved value (flags the saved run did not record are not).

    Raises:
        RunError: naming each changed flag, its saved and new values, what
            it would do, and how to resume or restart.
    """
    if not state:
        return
    changed = []
    saved_settings = state.get("settings") or {}
    for flag, value in settings.items():
        if flag in saved_settings and saved_settings[flag] != _jsonable(value):
            changed.append((flag, saved_settings[flag], value))
    saved_epochs = state.get("epochs")
    saved_steps = state.get("steps_per_epoch")
    if saved_epochs is not None and saved_epochs != epochs:
        changed.append(("--epochs", saved_epochs, epochs))
    if not changed and saved_steps is not None and saved_steps != steps_per_epoch:
        # Same flags, different data: the number of samples changed.
        changed.append(
            (
                "samples per epoch (the training data or --train-num-samples)",
                f"{saved_steps} steps",
                f"{steps_per_epoch} steps",
            )
        )
    if not changed:
        return
    what = ", ".join(
        f"{flag} changed from {old} to {new}" for flag, old, new in changed
    )
    if saved_epochs is not None and saved_steps is not None:
        saved_total = saved_epochs * saved_steps
        effect = (
            f"the checkpoint's learning-rate schedule was planned for {saved_total:,} "
            f"steps ({saved_epochs} epochs of {saved_steps}), and this command "
            f"plans {epochs * steps_per_epoch:,} ({epochs} of {steps_per_epoch})"
        )
        if epochs * steps_per_epoch > saved_total:
            effect += f", so the steps after step {saved_total:,} would run at learning rate 0"
        if (saved_epochs, saved_steps) == (epochs, steps_per_epoch):
            effect = "the checkpoint keeps its own model and optimizer settings and would ignore the new ones"
    else:
        effect = "the checkpoint keeps its own settings and would ignore the new ones"
    original = " ".join(
        f"{flag} {old}" for flag, old, _ in changed if flag.startswith("--")
    )
    resume = f"resume with the original {original}, or " if original else ""
    raise RunError(
        f"Cannot resume the run in {output_dir}: {what}; {effect}. "
        f"To continue it, {resume}{RESTART}."
    )


def _jsonable(value):
    """`value` as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(value))


def clear_previous_run(output_dir):
    """Removes the files of an earlier run in `output_dir` (see `RUN_FILES`)."""
    removed = []
    for name in RUN_FILES:
        path = os.path.join(output_dir, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
        else:
            continue
        removed.append(name)
    if removed:
        print(
            f"Starting over: removed the previous run's {', '.join(removed)} from {output_dir}."
        )
    return removed
