#!/usr/bin/env bash
# Command 2: set up .venv if needed and run the test suite (CI runs exactly this).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup_env.sh
export TF_CPP_MIN_LOG_LEVEL=2 MPLBACKEND=Agg
# Lint and format first (pyproject.toml): a style slip fails CI like a failing test.
.venv/bin/ruff check --quiet .
.venv/bin/ruff format --check --quiet .
# One worker per core, at most 4 (each holds its own TensorFlow), CAE_TEST_WORKERS to choose:
# every file runs whole in one worker (its module fixtures built once), longest files first
# (tests/conftest.py), the others and every file's tests in random order.
workers=${CAE_TEST_WORKERS:-$(nproc 2>/dev/null || echo 2)}
[ "$workers" -gt 4 ] && [ -z "${CAE_TEST_WORKERS:-}" ] && workers=4
# One TensorFlow thread per worker (a user's setting wins): with a worker per core, TensorFlow's
# default pools (a thread per core in every worker and every process a test starts) only contend
# for the same cores. What it buys is within this machine's drift (bench/README.md, "Test suite time").
if [ "$workers" -gt 1 ]; then
  export TF_NUM_INTRAOP_THREADS=${TF_NUM_INTRAOP_THREADS:-1} TF_NUM_INTEROP_THREADS=${TF_NUM_INTEROP_THREADS:-1}
fi
exec .venv/bin/python -m pytest -q -n "$workers" --dist loadfile --no-loadscope-reorder "$@"
