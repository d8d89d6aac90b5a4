# Set-up and checks. Needs only Python 3.11 and pip on the machine.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
export RAY_AUTH_MODE ?= disabled

.PHONY: demo test lint venv clean

$(BIN)/wbc-ray: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH (or make PYTHON=python3)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	touch $(BIN)/wbc-ray

venv: $(BIN)/wbc-ray
	sh scripts/install-browser.sh  # chromium + chromedriver for the review browser test

## 1. Create .venv, install, and run the whole product on the embedded synthetic data.
demo: venv
	$(BIN)/wbc-ray demo --output runs/demo

## 2. Create/update .venv and run the test suite (what CI runs).
test: venv
	$(BIN)/python -m pytest -q --durations=15

lint: venv
	$(BIN)/ruff check wbc_ray tests jobs bench

clean:
	rm -rf runs .pytest_cache
