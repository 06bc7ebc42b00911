#!/usr/bin/env bash
# Run the rlef_jax test suite on a fresh or prepared machine (sets up .venv first).
#   scripts/test.sh              the ablation notebooks in QUICK mode (~5 min on 2 cores), then the
#                                default suite (everything not marked slow or notebooks; < 15 min)
#   scripts/test.sh --slow       only the slow tests (e.g. all 164 HumanEval+ canonical solutions)
#   scripts/test.sh --notebooks  only the notebooks and the claims study in QUICK mode (-m notebooks)
#   scripts/test.sh --all        everything, in one pytest run
# Extra arguments go to pytest (and skip the notebooks step), e.g. scripts/test.sh tests/model_test.py -k decode
# RLEF_TEST_NOTEBOOKS=0 skips the notebooks step of the plain command.
# The default suite runs on pytest-xdist workers, one per core up to 4, each test file on one worker
# (--dist loadfile: a file's module fixtures are built once); RLEF_TEST_WORKERS=1 runs it in one process.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --tests

# One JAX compilation cache for this run, shared by pytest workers and the commands tests start (the
# tiny models' programs compile once instead of once per process); removed at exit. An outside
# JAX_COMPILATION_CACHE_DIR is kept as is.
if [[ -z "${JAX_COMPILATION_CACHE_DIR:-}" ]]; then
  JAX_COMPILATION_CACHE_DIR="$(mktemp -d "${TMPDIR:-/tmp}/rlef_test_jax_cache.XXXXXX")"
  export JAX_COMPILATION_CACHE_DIR
  trap 'rm -rf "$JAX_COMPILATION_CACHE_DIR"' EXIT
fi

marker=(-m "not slow and not notebooks")
notebooks=0
workers="${RLEF_TEST_WORKERS:-auto}"
parallel=(-n "$workers" --maxprocesses=4 --dist loadfile)
[[ "$workers" == 1 ]] && parallel=()
case "${1:-}" in
  --slow) marker=(-m slow); parallel=(); shift ;;  # big models: one at a time (memory)
  --notebooks) marker=(-m notebooks); parallel=(); shift
               set -- tests/notebooks_test.py tests/claims_test.py "$@" ;;
  --all) marker=(-m "slow or not slow"); parallel=(); shift ;;
  "") if [[ "${RLEF_TEST_NOTEBOOKS:-1}" != "0" ]]; then notebooks=1; fi ;;
  *) parallel=() ;;  # a chosen file or -k selection: one process
esac
if ((notebooks)); then
  # A step of its own, so that the default suite stays under 15 minutes (experiments/notebooks/README.md).
  nb_rc=0
  .venv/bin/python -m pytest -m notebooks -q -ra --durations=5 tests/notebooks_test.py \
    tests/claims_test.py || nb_rc=$?
  rc=0
  .venv/bin/python -m pytest "${marker[@]}" "${parallel[@]}" -q -ra || rc=$?
  if ((nb_rc)); then
    echo "scripts/test.sh: the notebooks step failed (pytest exit $nb_rc); see its output above"
    exit "$nb_rc"
  fi
  exit "$rc"
fi
rc=0
.venv/bin/python -m pytest "${marker[@]}" "${parallel[@]}" -q -ra "$@" || rc=$?
exit "$rc"
