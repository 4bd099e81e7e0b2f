#!/usr/bin/env bash
# The project's checks, as CI runs them: lint, format, types, then the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
"$PY" -m ruff check model service bench tests scripts
"$PY" -m ruff format --check model service bench tests scripts
"$PY" -m mypy model service
"$PY" -m pytest -q "$@"
