# abgate: `make run` starts the demo stack, `make test` runs the whole suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test lint typecheck pytest test-servers bench monitoring clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test,dev]'
	touch $(STAMP)

install: $(STAMP)

## Demo: two demo agents and abgate on config/abgate.yaml (Ctrl-C stops all three).
run: $(STAMP)
	@bash scripts/run-demo.sh

## Everything CI runs: lint, strict types, the full test suite on real servers.
test: $(STAMP) test-servers lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest --cov --cov-report=term

## Prometheus and the node, Redis and PostgreSQL exporters on this machine (Ctrl-C stops).
monitoring: test-servers
	@bash scripts/monitoring.sh

## Servers the tests and benchmarks start themselves (redis-server, prometheus, wrk, nginx).
test-servers:
	@bash scripts/install-test-servers.sh

## wrk against the upstream directly, abgate and nginx; writes benchmarks/RESULTS.md.
bench: $(STAMP) test-servers
	$(BIN)/python -m benchmarks.run
	$(BIN)/python -m benchmarks.propagation
	$(BIN)/python -m benchmarks.resilience
	$(BIN)/python -m benchmarks.statistics
	$(BIN)/python -m benchmarks.robustness
	$(BIN)/python -m benchmarks.sequential_rates
	$(BIN)/python -m benchmarks.users

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info
