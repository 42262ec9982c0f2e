# Two commands on a fresh machine:  `make demo` (the main job) and `make test`.
# Each creates .venv on first use: torch pinned first (a CPU wheel where one is at hand),
# then this package with its test extras. No torchvision is needed or installed.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0

.PHONY: install demo test lint clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/python -m captum_tokenlrp.demo --out outputs/demo

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache
