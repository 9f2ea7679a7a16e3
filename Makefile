# `make demo` and `make test` work on a fresh machine: both install first.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH  := torch==2.13.0
export HF_HUB_OFFLINE := 1

.PHONY: install demo test test-fast test-rabbitmq test-multihost lint bench docs clean

install: $(STAMP)

# The pinned CPU torch goes in first: an unpinned torch resolved by another package would
# pull several GB of CUDA wheels.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[all,test,bench]'
	touch $(STAMP)

demo: install
	$(VENV)/bin/embedfleet run samples/celery_commits_500.jsonl --collection demo \
		--fields title,description,files_touched --db sqlite:///embedfleet.db
	$(VENV)/bin/embedfleet export --collection demo --out demo-vectors.npy --db sqlite:///embedfleet.db

# The linter and the type checker (configured in pyproject.toml), then the tests.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# Everything on Redis: real Redis, PostgreSQL and worker processes (.ci/run starts the
# services). The fault suite's run on RabbitMQ and the multi-host scenarios have lanes of
# their own (below), which CI runs after this one.
# Two test processes (pytest-xdist): each test has its own databases, and each process its
# own Redis database (tests/conftest.py), so the fleet tests' waits on default timeouts
# overlap with the other process's work. Every recovery still meets its bound.
test: lint
	$(VENV)/bin/pytest -q -n 2 -m "not multihost and not rabbitmq"

# The fault suite and the end-to-end tests again, on RabbitMQ (quorum queues).
test-rabbitmq: install
	$(VENV)/bin/pytest -q -n 2 -m "rabbitmq and not multihost"

# A cluster of network namespaces (needs root): broker, database, three worker hosts and a
# producer, each reaching the others by address; links cut, restored, slowed (~6 min).
test-multihost: install
	$(VENV)/bin/pytest -q -s -m multihost

# The fast lane, for every edit: no worker processes, no Redis (tests marked `fleet`), and
# none of the real-model runs that take seconds each (marked `slow`; make test runs them).
test-fast: lint
	$(VENV)/bin/pytest -q -n 2 -m "not fleet and not slow"

# The benchmark on a corpus of your own: make bench CORPUS=path.jsonl FIELDS=title,body
CORPUS ?= samples/celery_commits_500.jsonl
FIELDS ?= title,description,files_touched
bench: install
	$(VENV)/bin/embedfleet bench $(CORPUS) --fields $(FIELDS)

# docs/settings.md is generated from the Settings fields' descriptions (embedfleet/settings.py).
docs: install
	$(PY) -m embedfleet.settings_doc --out docs/settings.md

clean:
	rm -rf $(VENV) embedfleet.db* demo-vectors.* .pytest_cache .mypy_cache .ruff_cache
