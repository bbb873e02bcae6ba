#!/usr/bin/env bash
# The tests: lint, types, unit, integration (local and docker backends), quality.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check harness worker tests benchmarks
mypy
exec pytest -n 2 --dist loadgroup --durations=15 "$@"
