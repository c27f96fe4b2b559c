# make demo: set up, make the synthetic demo data, run the demo study to the end, export its best trial.
# make test: set up, lint, run the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
PYTHON ?= python3

.PHONY: setup demo test clean-demo constraints

setup: $(VENV)/.installed

# pyproject.toml gives version ranges; constraints.txt the exact versions this project is tested with.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev,weights]"
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
	@# three workers on any machine: the studies spend much of their time waiting on Ray, so they overlap well
	$(BIN)/pytest -q -m "not gpu and not budget" -n 3 --dist loadgroup
	@# the studies timed by a budget: after the rest, alone, so the pace their plan measures is the one they run at
	$(BIN)/pytest -q -m "budget and not gpu" tests/test_budget.py

# After upgrading packages in $(VENV): record the versions the tests then pass with.
constraints:
	@{ echo "# The exact versions this project is tested with (Python 3.11, Linux): make installs with -c constraints.txt."; \
	  echo "# Regenerate after an upgrade with: make constraints"; \
	  $(PY) -m pip freeze --exclude-editable | grep -v "^-e"; } > constraints.txt
