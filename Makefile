# The targets are the commands the README shows.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck format bench bench-quick explain soak clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# An embedded PostgreSQL in .pgdata unless GEN_DURABLE_DSN/DATABASE_URL is set;
# e.g. make demo DEMO_ARGS="--size 200".
demo: $(STAMP)
	$(VENV)/bin/gen-durable demo $(DEMO_ARGS)

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

typecheck: $(STAMP)
	$(PY) -m mypy src/gen_durable

bench: $(STAMP)
	$(PY) bench/run.py $(BENCH_ARGS)

bench-quick: $(STAMP)
	$(PY) bench/run.py --quick $(BENCH_ARGS)

explain: $(STAMP)
	$(PY) bench/explain.py

soak: $(STAMP)
	$(PY) bench/soak.py $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .pgdata .pgdata-bench build dist src/*.egg-info
