# Two commands do all the set-up: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install demo test compose-check lint bench clean

$(BIN)/imgrec: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $@

install: $(BIN)/imgrec

demo: install
	$(BIN)/imgrec demo --out demo-out

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
