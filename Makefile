# Two entry points: `make demo` (the main job) and `make test` (the suite on
# every backend). Both create .venv when it is missing, with every extra at
# the exact versions CI tests (constraints.txt; ranges in pyproject.toml).
# Also: `make lint` (ruff check), `make no-tf-check` (the library in a
# second, light venv without TensorFlow), `make format-check` (not yet in CI).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
CONSTRAINTS := constraints.txt
BACKENDS := tensorflow jax torch
# pytest-xdist workers; whole files go to one worker (module fixtures reused).
PYTEST_WORKERS ?= 2
# The light venv of `make no-tf-check` (under build/: git-ignored, and
# `make clean` removes it).
NOTF_VENV ?= build/venv-notf

.PHONY: demo test install lint format-check no-tf-env no-tf-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Re-install when the dependency list or the tested versions change.
# clip-benchmark is data only for us (class names, prompt templates) and a
# test reference; its own requirements (scikit-learn, pycocoevalcap, ...)
# are not needed, hence --no-deps (its version comes from constraints.txt).
$(VENV)/.installed: pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[all,test]' -c $(CONSTRAINTS)
	$(BIN)/python -m pip install --quiet --no-deps -c $(CONSTRAINTS) clip-benchmark
	touch $@

install: $(VENV)/.installed

# The unseen-style test renders Noto Color Emoji (Debian package); install it
# where we can (root + apt), and run without it (a note says so) elsewhere.
NOTO := /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf
demo: $(VENV)/.installed
	@[ -f $(NOTO) ] || [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null \
		|| (apt-get update -qq && apt-get install -y -qq fonts-noto-color-emoji) >/dev/null 2>&1 \
		|| echo "note: fonts-noto-color-emoji not installed; the Noto test will be skipped"
	$(BIN)/keras-clip demo $(DEMO_ARGS)

# One pytest run per backend; every backend runs even if one fails, and
# the target fails if any did.
test: $(VENV)/.installed
	@status=0; \
	for backend in $(BACKENDS); do \
		echo "=== KERAS_BACKEND=$$backend ==="; \
		KERAS_BACKEND=$$backend $(BIN)/python -m pytest -q -p no:cacheprovider \
			-n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS) \
			|| { echo "=== $$backend FAILED ==="; status=1; }; \
	done; \
	exit $$status

lint: $(VENV)/.installed
	$(BIN)/ruff check .

# The tree is not formatted yet: not part of CI until it is.
format-check: $(VENV)/.installed
	$(BIN)/ruff format --check .

# The base dependencies alone (no extras) plus torch as the backend: what a
# machine without TensorFlow gets. Reused when present; re-installed when
# pyproject.toml or constraints.txt change.
$(NOTF_VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	[ -x $(NOTF_VENV)/bin/python ] || $(PYTHON) -m venv $(NOTF_VENV)
	$(NOTF_VENV)/bin/python -m pip install --quiet -e . torch -c $(CONSTRAINTS)
	touch $@

no-tf-env: $(NOTF_VENV)/.installed

no-tf-check: $(NOTF_VENV)/.installed
	HF_HUB_OFFLINE=1 KERAS_BACKEND=torch $(NOTF_VENV)/bin/python .ci/no_tensorflow_check.py

clean:
	rm -rf $(VENV) build *.egg-info
