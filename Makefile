# Two commands on a fresh machine:  `make demo` (the main job) and `make test`.
# Each creates .venv on first use: torch pinned first (a CPU wheel where one is at hand),
# then this package with its test extras. No torchvision is needed or installed.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
# The second test environment: the last transformers 4.x release (the 4.x module layout).
TRANSFORMERS4_VERSION ?= 4.57.6
VENV4 ?= .venv-tf4

.PHONY: install demo test test-transformers4 lint bench bench-quick quality quality-quick docs-install tutorials docs clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/tokenlrp explain --model bundled --out outputs/demo

test: install
	$(BIN)/python -m pytest

$(VENV4)/bin/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV4)
	$(VENV4)/bin/python -m pip install --quiet --upgrade pip
	$(VENV4)/bin/python -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(VENV4)/bin/python -m pip install --quiet "transformers==$(TRANSFORMERS4_VERSION)" -e ".[test]"
	touch $@

test-transformers4: $(VENV4)/bin/.installed
	$(VENV4)/bin/python -m pytest -p no:cacheprovider

bench: install
	$(BIN)/python benchmarks/bench_speed.py

bench-quick: install
	$(BIN)/python benchmarks/bench_speed.py --quick > /dev/null

# Explanation quality of every method on the bundled model: writes benchmarks/RESULTS.md (~15 min).
quality: install
	$(BIN)/python benchmarks/bench_quality.py

quality-quick: install
	$(BIN)/python benchmarks/bench_quality.py --quick > /dev/null

# Tutorials and documentation site (extra tools: nbclient, ipykernel, mkdocs).
$(BIN)/.docs-installed: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet -e ".[test,docs]"
	touch $@

docs-install: $(BIN)/.docs-installed

tutorials: $(BIN)/.docs-installed
	$(BIN)/python scripts/run_tutorials.py

docs: tutorials
	mkdir -p docs/benchmarks
	cp benchmarks/RESULTS.md benchmarks/SPEED.md benchmarks/*.png docs/benchmarks/
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(VENV4) outputs .pytest_cache .ruff_cache site docs/tutorials docs/benchmarks
