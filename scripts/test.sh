#!/usr/bin/env bash
# The tests: lint, types, unit, integration (local and docker backends), quality.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check harness harness_events worker examples tests benchmarks locustfiles scripts
mypy  # the packages (pyproject.toml)
# Tests and benchmarks too, a folder at a time: two conftest.py would clash as one module.
for d in tests/conftest.py tests/helpers tests/unit tests/worker tests/integration tests/quality benchmarks locustfiles examples scripts/readme_mutants.py; do mypy --strict "$d"; done
# With arguments, one session of what they select (the swarm tests beside docker
# runs may then find the swarm kept, see below).
if [ "$#" -gt 0 ]; then
    exec pytest -n 2 --dist loadgroup --durations=15 "$@"
fi
# The swarm backend's tests after the rest, on their own: Docker's `swarm leave`
# drops the DNS names of every container running then, so the harness keeps its
# swarm while another run's containers are up, and these tests check it left.
SWARM_TESTS=tests/integration/test_swarm.py
rc=0
pytest -n 2 --dist loadgroup --durations=15 --ignore="$SWARM_TESTS" || rc=$?
if [ "$rc" -eq 2 ]; then exit 2; fi  # interrupted (Ctrl-C): no second session
pytest -n 2 --durations=5 "$SWARM_TESTS" || rc=$?
exit "$rc"
