"""Every script in examples/ runs to the end on this backend, in its small setting.

Each example is a program (STYLE.md, habit 13): it checks its own results and
exits non-zero when one is wrong. Here it runs in a subprocess under the
current $KERAS_BACKEND with `KERAS_CLIP_EXAMPLE_SMALL=1` (its CI size), from
an empty temporary folder (also its TMPDIR), without network access. New
examples are picked up by the glob.
"""

import glob
import os
import subprocess
import sys

import keras
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = sorted(glob.glob(os.path.join(ROOT, "examples", "*.py")))
# A small example takes under a minute on a quiet 2-core CPU; the margin
# covers a machine shared with other test workers and cold caches.
TIMEOUT_S = 600


def test_examples_are_found():
    assert len(EXAMPLES) >= 5, EXAMPLES


@pytest.mark.slow
@pytest.mark.parametrize(
    "path", EXAMPLES, ids=[os.path.basename(p)[: -len(".py")] for p in EXAMPLES]
)
def test_example_runs_in_its_small_setting(path, tmp_path):
    python_path = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    env = dict(
        os.environ,
        KERAS_BACKEND=keras.backend.backend(),
        KERAS_CLIP_EXAMPLE_SMALL="1",
        HF_HUB_OFFLINE="1",
        PYTHONPATH=python_path,
        TMPDIR=str(tmp_path),  # the examples' temporary folders go here too
    )
    try:
        proc = subprocess.run(
            [sys.executable, path],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as error:
        # TimeoutExpired may hold bytes even with text=True.
        output = error.stdout or ""
        if isinstance(output, bytes):
            output = output.decode(errors="replace")
        pytest.fail(
            f"{os.path.basename(path)} ran past {TIMEOUT_S} s:\n{output[-3000:]}"
        )
    assert proc.returncode == 0, (
        f"{os.path.basename(path)} exited with {proc.returncode}\n"
        f"--- stdout (end) ---\n{proc.stdout[-3000:]}\n"
        f"--- stderr (end) ---\n{proc.stderr[-5000:]}"
    )
