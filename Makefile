# `make train` sets up and runs the main job; `make test` runs the tests (CI calls it);
# `make docs` builds the API reference into site/ with --strict (CI calls it too).
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[cpu,dev,cluster]"
	touch $@

# The docs extra only for `make docs`: training and testing do not need mkdocs.
$(VENV)/.docs-installed: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[docs]"
	touch $@

.PHONY: setup train test bench docs
setup: $(VENV)/.installed

train: setup
	$(PY) scripts/train.py $(ARGS)

test: setup
	$(PY) -m pytest -q $(ARGS)

bench: setup
	$(PY) scripts/bench.py $(ARGS)

docs: $(VENV)/.docs-installed
	# NO_MKDOCS_2_WARNING: silences mkdocs-material's notice about its successor on every build.
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict $(ARGS)
