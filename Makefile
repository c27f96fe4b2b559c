# make demo: set up, make the synthetic demo data, run the demo study to the end, export its best trial.
# make test: set up, lint, run the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
PYTHON ?= python3

.PHONY: setup demo test clean-demo

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	@# Ray installs a `tune` script too: ours must be the one in $(BIN).
	@$(BIN)/tune --help | grep -q "mask/gender/age" || $(PY) -m pip install --quiet --no-deps --force-reinstall -e .
	touch $@

data/demo/train/train.csv: | setup
	$(BIN)/tune data demo data/demo

demo: setup data/demo/train/train.csv
	@name=demo-$$(date +%Y%m%d-%H%M%S); \
	$(BIN)/tune run search_spaces/demo.yaml --name $$name && $(BIN)/tune export $$name

test: setup
	$(BIN)/ruff check .
	$(BIN)/pytest -q -m "not gpu"
