#!/usr/bin/env bash
# Issue #13's GPU checks as one prepared script, for a session lent a GPU (the `device` tool: 15
# minutes of device time in all, 10 minutes a command: run it as two calls on the warm machine,
# STEPS=sampler1b,sampler8b (limits 300 s) then STEPS=update1b,anomaly (410 s)). Each step
# writes STEP.log in a work folder ($WORK, default /tmp/device_checks_work); at the end, or when the
# script is stopped, OUTDIR gets two files (the device tool brings back 8 at most): steps.log (each
# step's status and headline figures) and device_checks.tar.gz (every log, the anomaly's episodes).
#
#   bash experiments/gpu/device_checks.sh --wheelhouse        # here, with the package registry: .whl/
#   bash experiments/gpu/device_checks.sh [OUTDIR]            # there (OUTDIR: default $OUT, else /tmp/...)
#
# The GPU image has Python 3.12, jax with the CUDA plugin, torch and transformers, and no registry:
# --wheelhouse puts the rest of this checkout's .venv, at its exact versions, as Python-3.12 wheels into
# .whl/ (ignored by git); carry `.whl` in the run call, and this script installs there those the image
# does not have (no dependency resolution: the versions are the venv's working set). STEPS=a,b runs a part:
#
#   sampler1b  benchmarks/cache_layout.py at the 1B's KV shapes (keys [B,K,Dh,S] against [B,K,S,Dh] on
#              the GPU), then benchmarks/sampler.py, llama3.2-1b, bf16 params and compute: batch 1 and 64, the cache
#              just filled (769 slots) and 8192 (flat in the allocated length: item 2), with
#              transformers generate on the same shapes (items 1-2); at temperature 1, batch 64, the two
#              ways of drawing the token (sampling.draw)
#   sampler8b  the same for llama3.1-8b at batch 64 and 1 (targets: >= 8,000 and >= 200 tok/s), the
#              long cache 4096 slots (with transformers beside, ~75 GB at batch 64: an H200 is safer)
#   update1b   benchmarks/ppo_step.py, 1B policy + value at 16 x 1024, bf16 compute: einsum attention
#              against cuDNN's, then cuDNN with the remat policies (item 3: >= 45% MFU)
#   anomaly    the tiny warm start, then 4 multi-turn evaluations of it at once and one alone, with XLA's
#              autotuning on and off (item 6: BUILD_NOTES "On an NVIDIA H200"); experiments/diagnostics/
#              episode_stats.py counts timeouts and repeats in each record
#
# SMOKE=1 runs every step at toy sizes (tiny presets, few tokens) on whatever backend there is: the
# check that the script itself works, made on the CPU before a lease is spent on it.
set -uo pipefail
cd "$(dirname "$0")/../.."

# What the GPU image brings itself (jax and its numerics, torch, transformers and their stacks) and
# what these checks do not need (the real-model wheels, parquet, plots, the test tools): not carried.
IMAGE_HAS='^(jax|jaxlib|jax-cuda.*|numpy|scipy|ml[-_]dtypes|opt[-_]einsum|torch|triton|nvidia-.*|transformers'
IMAGE_HAS+='|tokenizers|huggingface[-_]hub|hf[-_]xet|safetensors|pyarrow|llama[-_]models|llm[-_]smollm2|sympy'
IMAGE_HAS+='|networkx|mpmath|pytest.*|nbformat|nbclient|ipykernel|ipython.*|jupyter.*|tiktoken|matplotlib'
IMAGE_HAS+='|pillow|fonttools|contourpy|kiwisolver|debugpy|pyzmq|tornado|lxml|cryptography|uvloop|jedi|parso'
IMAGE_HAS+='|prompt[-_]toolkit|stack[-_]data|asttokens|executing|pure[-_]eval|traitlets|comm|pexpect|ptyprocess'
IMAGE_HAS+='|google-.*|googleapis-.*|proto-plus|pyasn1.*|pycryptodomex|blobfile|sentencepiece|accelerate'
IMAGE_HAS+='|fastjsonschema|jsonschema.*|referencing|rpds-py|execnet|iniconfig|pluggy)=='

if [[ "${1:-}" == "--wheelhouse" ]]; then
  # The exact versions of this checkout's .venv (scripts/setup.sh --tests made it), as Python 3.12
  # wheels for x86-64 Linux; the few published only as source are built into wheels here.
  [[ -x .venv/bin/python ]] || { echo "--wheelhouse needs .venv: run scripts/setup.sh first"; exit 1; }
  mkdir -p .whl
  .venv/bin/python -m pip freeze --exclude-editable | grep -E '^[A-Za-z0-9_.-]+==' \
    | grep -ivE "$IMAGE_HAS" > .whl/requirements.txt
  while read -r pin; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      --platform any -d .whl "$pin" 2>/dev/null \
    || .venv/bin/python -m pip wheel -q --no-deps -w .whl "$pin" \
    || { echo "no wheel for $pin"; exit 1; }
  done < .whl/requirements.txt
  du -sh .whl
  exit 0
fi

OUTDIR="${1:-${OUT:-/tmp/device_checks}}"
WORK="${WORK:-/tmp/device_checks_work}"
mkdir -p "$OUTDIR" "$WORK"
STEP_PID=""
pack() {  # on any exit: stop the step in flight (its process group), then leave the two files
  [[ -n "$STEP_PID" ]] && kill -TERM -- "-$STEP_PID" 2>/dev/null
  cp "$WORK/steps.log" "$OUTDIR/" 2>/dev/null
  tar -czf "$OUTDIR/device_checks.tar.gz" --exclude=checkpoints --exclude=reference_params -C "$WORK" .
}
trap pack EXIT
PY="${PYTHON:-python3}"
if [[ -d .whl ]]; then  # the carried wheels of what the image lacks, nothing it has replaced
  missing=$("$PY" - <<'PY'
import glob, importlib.metadata as md, os
for wheel in sorted(glob.glob(".whl/*.whl")):
  name = os.path.basename(wheel).split("-")[0]
  try:
    md.version(name)
  except md.PackageNotFoundError:
    print(wheel)
PY
)
  if [[ -n "$missing" ]]; then
    # shellcheck disable=SC2086
    "$PY" -m pip install -q --no-index --no-deps $missing > "$WORK/install.log" 2>&1 \
      || { echo "installing .whl failed: see install.log in $OUTDIR/device_checks.tar.gz"; exit 1; }
  fi
fi
"$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . >> "$WORK/install.log" 2>&1 \
  || export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export PYTHONUNBUFFERED=1  # a step stopped at its limit keeps the figures it printed
shopt -s nullglob
STEPS="${STEPS:-sampler1b,sampler8b,update1b,anomaly}"
SMOKE="${SMOKE:-0}"
"$PY" -c "import jax; print('jax', jax.__version__, jax.devices())" | tee "$WORK/devices.log"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$WORK/gpu.txt" 2>/dev/null

run_step() {  # NAME LIMIT_S COMMAND...: one step (a function too), output in WORK/NAME.log, status on stdout
  local name="$1" limit="$2"; shift 2
  [[ ",$STEPS," == *",$name,"* ]] || return 0
  local t0=$SECONDS
  set -m  # the step in a process group of its own, so that its time limit stops all it started
  ( set +m; "$@" ) > "$WORK/$name.log" 2>&1 &
  local pid=$!
  STEP_PID=$pid
  set +m
  ( exec >/dev/null 2>&1; sleep "$limit" & wait $!; kill -TERM -- "-$pid" ) &
  local watchdog=$!
  wait "$pid"
  local rc=$?
  STEP_PID=""
  pkill -P "$watchdog" sleep 2>/dev/null; kill "$watchdog" 2>/dev/null
  echo "step $name: rc $rc in $((SECONDS - t0)) s (limit $limit s)" | tee -a "$WORK/steps.log"
  grep -E "tok/s|s/step|MFU|transformers|GB/s of cache|MT 1@3|^multi_turn|timeouts|episodes" "$WORK/$name.log" | tail -20 \
    | tee -a "$WORK/steps.log"
}

if ((SMOKE)); then
  size1b=(--preset=tiny --vocab_size=491); size8b=(--preset=tiny --vocab_size=491)
  tokens=(--prompt=16 --new=8); big_cache=128; big_cache8b=128; small_cache=25; reps=1; layout_batch=4
  update=(--config=configs/tiny.py --batch=8 --length=64 --steps=1 --set model.dtype=bfloat16)
else
  size1b=(--preset=llama3.2-1b); size8b=(--preset=llama3.1-8b)
  # 8B at batch 64: an 8192-slot bf16 KV cache would be 68.7 GB beside 16 GB of weights (over an H100's
  # memory), so the long cache is 4096 slots there (34.4 GB); on an H200 8192 fits.
  tokens=(--prompt=512 --new=256); big_cache=8192; big_cache8b=4096; small_cache=769; reps=2; layout_batch=64
  update=(--config=configs/llama8b.py --set model.preset=llama3.2-1b --batch=16 --length=1024 --steps=3
          --set model.dtype=bfloat16 --set rl.num_microbatches=1 --set mesh.fsdp=1 --set mesh.tensor=1)
fi
bf16=(--dtype=bfloat16 --param_dtype=bfloat16 --reps=$reps)

sampler_cases() {  # LONG_CACHE SIZE...: batch 64 then 1, the cache just filled and allocated long,
  local long="$1"; shift  # transformers generate beside (on the GPU too)
  "$PY" benchmarks/sampler.py "$@" "${tokens[@]}" "${bf16[@]}" --batch=64 \
    --cache=$small_cache,$long --transformers
  "$PY" benchmarks/sampler.py "$@" "${tokens[@]}" "${bf16[@]}" --batch=1 \
    --cache=$small_cache,$long --transformers
}
sampler1b_cases() {  # the attention products by KV-cache layout at the 1B's shapes (keys [B,K,Dh,S] were
  # chosen on the CPU: BUILD_NOTES "The keys' layout"), then the sampler cases
  "$PY" benchmarks/cache_layout.py --batch=$layout_batch --kv_heads=8 --group=4 --slots="$1" --head_dim=64 \
    --dtype=bfloat16 --reps=3
  sampler_cases "$@"
  # As the trainer samples (temperature 1): the token drawn by one Gumbel-max over the vocabulary
  # against the two-level draw (sampling.draw; ~25% of a CPU step at 49k tokens: BUILD_NOTES)
  "$PY" benchmarks/sampler.py "${@:2}" "${tokens[@]}" "${bf16[@]}" --batch=64 --cache=$small_cache \
    --temperature=1 --draw=gumbel,blocked
}
run_step sampler1b 150 sampler1b_cases "$big_cache" "${size1b[@]}"
run_step sampler8b 150 sampler_cases "$big_cache8b" "${size8b[@]}"

update_cases() {
  for case in "--set model.attention=einsum" "--set model.attention=cudnn" \
              "--set model.attention=cudnn --set model.remat_policy=dots_with_no_batch_dims_saveable" \
              "--set model.attention=cudnn --set model.remat_policy=dots_saveable"; do
    ((SMOKE)) && case="${case//cudnn/dot_product}"  # cuDNN's kernel needs a GPU
    echo "=== $case"
    # shellcheck disable=SC2086
    "$PY" benchmarks/ppo_step.py "${update[@]}" $case 2>&1 | tail -3
  done
}
run_step update1b 170 update_cases

anomaly() {  # the tiny warm start, then 4 evaluations at once and one alone, autotuning on and off
  local w="$WORK/anomaly_run"
  local small=(--config.eval.max_problems=32 --config.eval.single_turn=False)
  ((SMOKE)) && small=(--config.eval.max_problems=2 --config.eval.num_rollouts_per_problem=2
                      --config.eval.single_turn=False)
  local ws=(); ((SMOKE)) && ws=(--config.warmstart.steps=2)
  "$PY" -m rlef_jax.warmstart --config=configs/tiny.py --workdir="$w/warm" "${ws[@]}" || return 1
  evaluate() {  # NAME [XLA_FLAGS]: one evaluation of the warm start in a workdir of its own
    cp -r "$w/warm" "$w/$1"
    XLA_FLAGS="${2:-}" "$PY" -m rlef_jax.evaluate --config=configs/tiny.py --workdir="$w/$1" \
      --checkpoint=warmstart --split=valid --feedback=true "${small[@]}" > "$WORK/anomaly_$1.log" 2>&1
  }
  for flags in "" "--xla_gpu_autotune_level=0"; do
    local tag=autotune_default; [[ -n "$flags" ]] && tag=autotune_0
    for i in 0 1 2 3; do evaluate "${tag}_together$i" "$flags" & done
    wait
    evaluate "${tag}_alone" "$flags"
  done
  for d in "$w"/autotune_*; do
    echo "=== $(basename "$d"): $(grep -h "MT 1@3" "$WORK/anomaly_$(basename "$d").log" | tail -1)"
    for f in "$d"/eval/*.episodes.jsonl; do
      "$PY" experiments/diagnostics/episode_stats.py "$f"
      # one model, one key: every record should be the same, bit for bit
      cmp -s "$f" "$w/autotune_default_alone/eval/$(basename "$f")" \
        && echo "  episodes identical to autotune_default_alone's" \
        || echo "  episodes DIFFER from autotune_default_alone's"
    done
  done
}
run_step anomaly 240 anomaly
echo "device checks done: $OUTDIR/steps.log, $OUTDIR/device_checks.tar.gz" | tee -a "$WORK/steps.log"
