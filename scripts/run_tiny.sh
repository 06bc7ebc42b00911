#!/usr/bin/env bash
# The main job on the tiny embedded config, on a CPU: supervised warm start, evaluation, RLEF, evaluation.
# Sets up .venv first. Output (checkpoints, TensorBoard events, metrics.jsonl, eval JSON) goes to
# ${WORKDIR:-runs/tiny}; an existing workdir is resumed. Extra arguments go to rlef_jax.train.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m rlef_jax.train --config=configs/tiny.py --workdir="${WORKDIR:-runs/tiny}" "$@"
