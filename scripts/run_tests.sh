#!/usr/bin/env bash
# README command 2: set up (once) and run the whole test suite. Extra arguments go to pytest,
# e.g. `bash scripts/run_tests.sh -m "not slow"` for the quick part only. One pytest worker per core
# up to 4 (TEST_WORKERS=N to choose; pytest-xdist, a test file stays on one worker so its module
# fixtures are built once): the runs the tests launch use one thread each (OMP_NUM_THREADS=1), so
# a serial suite left a core idle.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
cores=$(nproc)
exec python -m pytest -n "${TEST_WORKERS:-$(( cores < 4 ? cores : 4 ))}" --dist loadfile "$@"
