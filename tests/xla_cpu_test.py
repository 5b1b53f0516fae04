"""`keras_clip.backends.xla_cpu`: the one XLA flag `tune_xla_cpu()` sets under JAX,
and that `import keras_clip` sets nothing."""

import json
import os
import re
import subprocess
import sys

import keras
import pytest

from keras_clip.backends import xla_cpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
    "environ,backend,jaxlib,expected",
    [
        ({}, "jax", "0.10.2", xla_cpu.FLAG),
        ({"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}, "jax", "0.10.2",
         xla_cpu.FLAG + " --xla_force_host_platform_device_count=4"),
        # First, ahead of a stray non-flag token (XLA stops reading there).
        ({"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"},
         "jax", "0.10.2",
         xla_cpu.FLAG + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"),
        # A value not starting with "--" names a flags file: left alone.
        ({"XLA_FLAGS": "/etc/xla_flags"}, "jax", "0.10.2", None),
        # The user's own choice of YNNPACK fusion types wins.
        ({"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT"},
         "jax", "0.10.2", None),
        ({"KERAS_CLIP_XLA_CPU_DEFAULTS": "0"}, "jax", "0.10.2", None),
        ({}, "tensorflow", "0.10.2", None),
        ({}, "torch", "0.10.2", None),
        # A jaxlib where the flag was not measured (XLA aborts on unknown flags).
        ({}, "jax", "0.9.0", None),
        ({}, "jax", "0.11.0", None),
    ],
)
def test_flags_to_add(environ, backend, jaxlib, expected):
    assert xla_cpu.flags_to_add(environ, backend, jaxlib) == expected


def _compiled_convolution_hlo(extra_env):
    # A fresh process: XLA reads XLA_FLAGS once, when JAX's CPU client starts.
    # (Big enough a convolution: XLA keeps small ones out of YNNPACK anyway.)
    code = (
        "import keras_clip, jax, jax.numpy as jnp, os\n"
        "keras_clip.backends.tune_xla_cpu()\n"
        "f = jax.jit(lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), 'VALID',"
        " dimension_numbers=('NHWC', 'HWIO', 'NHWC')))\n"
        "print(os.environ.get('XLA_FLAGS', ''))\n"
        "print(f.lower(jnp.ones((8, 30, 30, 64)), jnp.ones((3, 3, 64, 64))).compile().as_text())\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "KERAS_CLIP_XLA_CPU_DEFAULTS")}
    env.update(KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", **extra_env)
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def _convolution_in_ynn_fusion(hlo):
    """Whether the convolution sits in a computation called by a YNNPACK fusion."""
    bodies = dict(re.findall(r"^(%[\w.\-]+) (\(.*?^\})", hlo, re.M | re.S))
    assert " convolution(" in hlo, hlo
    ynn_called = re.findall(r"calls=(%[\w.\-]+).*__ynn_fusion", hlo)
    return any(" convolution(" in bodies.get(name, "") for name in ynn_called)


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="a JAX-backend behaviour; "
                    "the other backends check that no flag is added (test_flags_to_add)")
def test_tuning_takes_convolutions_off_ynnpack_on_jax_cpu():
    import jaxlib

    if not jaxlib.__version__.startswith(xla_cpu._MEASURED_JAXLIB):
        pytest.skip(f"jaxlib {jaxlib.__version__}: the flag is only set on 0.10.x")
    default = _compiled_convolution_hlo({})
    assert xla_cpu.FLAG in default.splitlines()[0]
    assert not _convolution_in_ynn_fusion(default)
    # Read even behind a token XLA stops at, as in a common threads recipe.
    stray = _compiled_convolution_hlo(
        {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads=2"})
    assert not _convolution_in_ynn_fusion(stray)
    # The opt-out leaves XLA's default, where YNNPACK runs the convolution:
    # what the flag changes, so this test can tell.
    opted_out = _compiled_convolution_hlo({"KERAS_CLIP_XLA_CPU_DEFAULTS": "0"})
    assert xla_cpu.FLAG not in opted_out.splitlines()[0]
    assert _convolution_in_ynn_fusion(opted_out)


def test_import_changes_no_environment_variable():
    # `import keras_clip` (and its subpackages) leaves the environment as it
    # was on every backend; XLA tuning is the explicit `tune_xla_cpu()`.
    code = (
        "import os, json\n"
        "before = dict(os.environ)\n"
        "import keras_clip, keras_clip.models, keras_clip.evaluation, keras_clip.text\n"
        "after = dict(os.environ)\n"
        "print(json.dumps({k: [before.get(k), after.get(k)] for k in set(before) | set(after)"
        " if before.get(k) != after.get(k)}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    changed = json.loads(out.stdout.strip().splitlines()[-1])
    # Keras itself may note its backend; nothing else may change.
    changed.pop("KERAS_BACKEND", None)
    assert changed == {}
