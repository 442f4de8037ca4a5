#!/usr/bin/env bash
# README command 2: set up (once) and run the whole test suite. Extra arguments go to pytest,
# e.g. `bash scripts/run_tests.sh -m "not slow"` for the quick part only.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
exec python -m pytest "$@"
