# Two entry points: `make demo` (the main job) and `make test` (the suite on
# every backend). Both create .venv with the pinned stack when it is missing.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
BACKENDS := tensorflow jax torch
# pytest-xdist workers; whole files go to one worker (module fixtures reused).
PYTEST_WORKERS ?= 2

.PHONY: demo test install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Re-install when the dependency list changes.
# clip-benchmark is data only for us (class names, prompt templates) and a
# test reference; its own requirements (scikit-learn, pycocoevalcap, ...)
# are not needed, hence --no-deps.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m pip install --quiet --no-deps clip-benchmark==1.6.2
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

clean:
	rm -rf $(VENV) build *.egg-info
