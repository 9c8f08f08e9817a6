#!/usr/bin/env bash
# make bench: the stub-provider benchmarks (workers 1 and 2; 50, 100, 200 calls; the
# largest N meeting the targets), optionally the Pipecat peer, then docs/benchmarks.md.
# Arguments go to bench/run_bench.py, e.g.:
#   bench/run_bench.sh --pipecat --profile
#   bench/run_bench.sh --workers 1 --calls 50 --no-search
#   CALLENGINE_TURN_EARLY_FINALIZE=false bench/run_bench.sh   (settings reach host and tester)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
if [ ! -x "$PY" ]; then
  echo "bench: $PY not found; run 'make setup' first" >&2
  exit 1
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" -m bench.run_bench "$@"
