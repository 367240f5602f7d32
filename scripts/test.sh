#!/usr/bin/env bash
# Command 2: set up .venv if needed and run the test suite (CI runs exactly this).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup_env.sh
export TF_CPP_MIN_LOG_LEVEL=2 MPLBACKEND=Agg
# Lint and format first (pyproject.toml): a style slip fails CI like a failing test.
.venv/bin/ruff check --quiet .
.venv/bin/ruff format --check --quiet .
exec .venv/bin/python -m pytest -q "$@"
