# Two commands on a fresh machine: `make demo` (set up + the full pipeline on Catch) and
# `make test` (set up + the default test suite). Everything the project needs is installed here.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RUN ?= runs/demo

.PHONY: setup browser demo doom test test-slow lint bench clean

# torch is pinned here (not in pyproject) because a CPU wheel of 2.13.0 lies on this machine's
# disk; an unpinned torch would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test,ray,dev,doom]'
	touch $@

setup: $(VENV)/.installed

# Debian's chromium + chromedriver for the play page's browser test (says why when it cannot)
browser:
	@sh scripts/install-browser.sh

demo: setup
	$(VENV)/bin/dreamlab pipeline --preset catch --run $(RUN)

# The paper's DoomTakeCover experiment sized for a 2-core CPU (BENCHMARKS.md, "DoomTakeCover")
DOOM_RUN ?= runs/doom
doom: setup
	$(VENV)/bin/dreamlab pipeline --preset doom-takecover --run $(DOOM_RUN)

test: setup browser
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m slow

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

bench: setup
	$(PY) benchmarks/bench_catch.py
	$(PY) benchmarks/bench_store.py
	$(PY) benchmarks/bench_models.py
	$(PY) benchmarks/bench_dream.py
	$(PY) benchmarks/bench_plan.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
