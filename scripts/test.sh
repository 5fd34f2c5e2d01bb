#!/usr/bin/env bash
# Installs, lints and runs the test suite (the README's second command).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/ruff check src tests benchmarks
.venv/bin/python -m pytest -q "$@"
