#!/usr/bin/env bash
# Every check of the project, fastest failure first: lint, format, types (mypy --strict), layering
# (import-linter contracts in pyproject.toml), then the test suite. Run after scripts/setup.sh.
# The tests run in one process per core (pytest-xdist, -n auto). Extra arguments go to pytest, e.g.
# `bash scripts/check.sh tests/core -q` (add `-n 0` to run in this process, e.g. with a debugger).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy --strict src
.venv/bin/lint-imports
.venv/bin/python -m pytest -n auto "$@"
