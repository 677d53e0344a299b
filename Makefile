# Two commands do all the set-up: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# CPU-only torch (constraints.txt pins the version): a torch wheel at hand locally (pip's find-links),
# else from PyTorch's CPU index alone, never from PyPI (whose Linux torch is the multi-GB CUDA build).
# `make install TORCH_INDEX_URL=...` for a mirror of that index.
TORCH_INDEX_URL ?= https://download.pytorch.org/whl/cpu

.PHONY: install demo test compose-check lint bench clean

$(BIN)/imgrec: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --no-index --no-deps -c constraints.txt torch 2>/dev/null \
	  || $(BIN)/python -m pip install --quiet --index-url $(TORCH_INDEX_URL) --no-deps -c constraints.txt torch
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $@

install: $(BIN)/imgrec

demo: install
	$(BIN)/imgrec demo --out demo-out
	@echo
	@echo "Next steps (imgrec is in $(VENV)/bin, not on PATH: run it as $(BIN)/imgrec, or first: source $(BIN)/activate)"
	@echo "  $(BIN)/imgrec serve --index demo-out/index       # then open http://127.0.0.1:8000/"
	@echo "  $(BIN)/imgrec serve --index demo-out/index --host 0.0.0.0   # phones on this network: http://<this machine's address>:8000/"
	@echo "  $(BIN)/imgrec query demo-out/catalog/queries --index demo-out/index"
	@echo "  $(BIN)/imgrec --help"

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# The real docker compose run (needs a Docker engine; docs/deployment.md). Images are kept for a
# warm next run; COMPOSE_CHECK_ARGS=--remove-images removes them.
compose-check: install
	$(BIN)/python scripts/compose_check.py $(COMPOSE_CHECK_ARGS)

bench: install
	$(BIN)/python bench/index_throughput.py
	$(BIN)/python bench/search_throughput.py
	$(BIN)/python bench/serve_memory.py
	$(BIN)/python bench/ann_recall.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache
