# abgate: `make run` starts the demo stack, `make test` runs the whole suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Every package CI installs, pinned with its hashes (`make lock` refreshes it on purpose).
LOCK   := requirements/lock.txt
PIP_VERSION := 26.3
SCENARIO ?= better

.PHONY: install lock lock-upgrade run demo-rollout test test-busy lint typecheck pytest test-servers bench monitoring clean compile

# Exactly the lock: hash-checked, no resolution of our own, then abgate itself (editable,
# built with the locked setuptools).
$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet 'pip==$(PIP_VERSION)'
	$(BIN)/pip install --quiet --require-hashes --no-deps -r $(LOCK)
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

COMPILE = $(BIN)/uv pip compile pyproject.toml requirements/build.in --extra test --extra dev \
		--generate-hashes --python-version 3.11 --quiet -o $(LOCK)

## After a change to pyproject.toml's dependencies: resolve what changed, keep every other pin.
lock: $(STAMP)
	$(COMPILE)

## Refresh on purpose: every dependency to its newest release pyproject.toml allows. Commit the
## new lock on its own, with the fixes the new releases ask for.
lock-upgrade: $(STAMP)
	$(COMPILE) --upgrade

## Demo: two demo agents and abgate on config/abgate.yaml (Ctrl-C stops all three).
run: $(STAMP)
	@bash scripts/run-demo.sh

## A whole staged rollout by itself, with simulated users (SCENARIO=better|worse|same).
demo-rollout: $(STAMP)
	@SCENARIO=$(SCENARIO) bash scripts/demo-rollout.sh

## Everything CI runs: lint, strict types, the full test suite on real servers.
test: $(STAMP) test-servers lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest --cov --cov-report=term --durations=20

## The suite beside a CPU hog on every core (stress-ng); RUNS=3 for three passes in a row.
test-busy: $(STAMP) test-servers
	@bash scripts/test-busy.sh

## Prometheus and the node, Redis and PostgreSQL exporters on this machine (Ctrl-C stops).
monitoring: test-servers
	@bash scripts/monitoring.sh

## Optional: the data plane's hot modules compiled with mypyc (`make compile CLEAN=1` removes
## them; without them everything is pure Python, as in CI).
compile: $(STAMP)
	$(BIN)/python scripts/compile_data_plane.py $(if $(CLEAN),--clean)

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
