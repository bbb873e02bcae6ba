#!/usr/bin/env bash
# The main job: run the guide's three tests against the reference worker and
# print the verdicts. Extra arguments go to `harness run` (e.g. --backend local).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/harness run scenarios/no-duplicates.yaml scenarios/crash-recovery.yaml \
  scenarios/load-balancing.yaml "$@"
