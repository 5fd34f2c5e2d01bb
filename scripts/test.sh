#!/usr/bin/env bash
# Installs, lints and runs the test suite (the README's second command).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/ruff check src tests benchmarks
# the documentation site (mkdocs.yml, docs/): any broken link or docstring reference fails the build
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict -q -d site
.venv/bin/python -m pytest -q "$@"
