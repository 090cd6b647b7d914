# The two commands of the README: `make demo` (set up + run the bridge on a simulated fleet) and
# `make test` (set up + lint + type-check + the whole test suite against real servers).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: demo test setup servers lint bench addon clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/bitaxe-bridge demo

servers:
	bash scripts/install-servers

lint: setup
	$(BIN)/ruff check bridge analyzer simulator tests bench dashboards
	$(BIN)/mypy

test: servers setup lint
	$(BIN)/python -m pytest -q -n 4 --maxschedchunk 2

bench: setup
	$(BIN)/python bench/poll.py --write
	$(BIN)/python bench/mqtt.py --write
	$(BIN)/python bench/live.py --write
	$(BIN)/python -m bench.store
	$(BIN)/python -m bench.analyze --write-docs
	$(BIN)/python -m bench.scaling --write-docs
	$(BIN)/python -m bench.prometheus --write
	$(BIN)/python -m bench.tune --write

# The wheel the Home Assistant add-on's image installs (addon/Dockerfile); rebuild it for every release. A fixed
# SOURCE_DATE_EPOCH makes the same sources give the same bytes, so the wheel only changes when the code does.
addon: setup
	rm -f addon/bitaxe_bridge-*.whl
	SOURCE_DATE_EPOCH=315532800 $(BIN)/pip wheel -q --no-deps -w addon .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
