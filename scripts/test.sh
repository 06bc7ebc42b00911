#!/usr/bin/env bash
# Run the rlef_jax test suite on a fresh or prepared machine (sets up .venv first).
#   scripts/test.sh            the default suite (everything not marked slow; < 15 min on 2 cores)
#   scripts/test.sh --slow     only the slow tests (e.g. all 164 HumanEval+ canonical solutions)
#   scripts/test.sh --all      both
# Extra arguments go to pytest, e.g. scripts/test.sh tests/model_test.py -k decode
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --tests

marker=(-m "not slow")
case "${1:-}" in
  --slow) marker=(-m slow); shift ;;
  --all) marker=(-m "slow or not slow"); shift ;;
esac
exec .venv/bin/python -m pytest "${marker[@]}" -q -ra "$@"
