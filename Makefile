# saelab: `make run` runs the main job on the embedded storyworld default; `make test` runs the tests;
# `make lab` starts JupyterLab on the notebooks; `make reference` regenerates outputs/reference/ and the
# results tables of README.md, docs/ and papers/ from them, and `make check-reference` fails while
# any reference run's notebook changed since it ran (docs/reference_runs.md; the project's lab
# tooling, lib/saelab_lab, not part of the library).
# Both create .venv and install the project first if needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch is pinned and installed first: here it is a local CPU wheel; an unpinned torch pulls CUDA.
TORCH ?= torch==2.13.0

.PHONY: install run test lint format notebooks lab reference check-reference clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

install: $(STAMP)

notebooks: $(STAMP)
	cd notebooks && ../$(BIN)/jupytext --sync *.py

# JupyterLab from the repository root (the .ipynb pairs exist first); a notebook opened from
# notebooks/ resolves its paths against the root and writes to outputs/<notebook>/interactive-<time>.
# root (a container) must say so to Jupyter; other users need nothing
LAB_ARGS ?= $(if $(filter 0,$(shell id -u)),--allow-root)
lab: notebooks
	$(BIN)/jupyter lab $(LAB_ARGS)

run: notebooks
	$(BIN)/python -m saelab.runs main

# Every reference run from the current source, then the generated tables (saelab_lab).
# Refused on a dirty tree (outputs/ aside: an interrupted regeneration resumes); completed fresh
# runs under outputs/reference/<nb>/ref are kept, stale completed ones refused, never replaced.
reference: notebooks
	@test -z "$$(git status --porcelain -- . ':(exclude)outputs')" || { \
		echo "make reference: the git tree is dirty; commit first (each run records its commit)"; \
		git status --short -- . ':(exclude)outputs'; exit 1; }
	$(BIN)/python -m saelab_lab regenerate

# Before a result is published: every reference run made from the notebook as it is now.
check-reference: notebooks
	$(BIN)/python -m saelab_lab check --strict

test: notebooks
	$(BIN)/python -m pytest -q tests

lint: $(STAMP)
	$(BIN)/ruff check lib tests notebooks benchmarks
	$(BIN)/ruff format --check lib tests notebooks benchmarks

format: $(STAMP)
	$(BIN)/ruff format lib tests notebooks benchmarks
	$(BIN)/ruff check --fix lib tests notebooks benchmarks

clean:
	rm -rf $(VENV) notebooks/*.ipynb .pytest_cache
