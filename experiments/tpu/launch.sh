#!/usr/bin/env bash
# Launch rlef_jax training on every worker of a Cloud TPU pod slice (see experiments/tpu/README.md).
#
#   experiments/tpu/launch.sh [options] STEP [-- extra train flags]
#
# STEP: create | setup | train | tail | status | metrics | exec | stop | delete | all (= [create] setup train)
#   metrics copies worker 0's ~/rlef_metrics (metrics.jsonl + TensorBoard events) to --dest.
#   exec runs the command after `--` on every worker (e.g. copy a tokenizer from a bucket).
# Options:
#   --name NAME            TPU VM name (default $TPU_NAME)
#   --zone ZONE            zone (default $TPU_ZONE)
#   --project PROJECT      GCP project (default: gcloud's configured project)
#   --accelerator-type T   for create, e.g. v5p-32, v4-64, v5litepod-16 (default v5p-32)
#   --version V            TPU VM runtime image for create (default tpu-ubuntu2204-base)
#   --spot                 create a Spot TPU VM
#   --create               with `all`: create the TPU VM first
#   --repo URL             setup clones URL on every worker (default: copy this checkout)
#   --branch B             branch or tag to clone with --repo (default main)
#   --config PATH          trainer config (default configs/llama8b.py)
#   --workdir DIR          run directory every worker reaches: gs://BUCKET/PATH, or the same path on
#                          every worker (NFS share, mounted bucket); required by train and all
#   --worker N             worker whose log `tail` shows (default 0)
#   --dest DIR             local directory for `metrics` (default tpu_metrics/NAME)
#   --dry-run              print every command instead of running it
# For train/all, everything after `--` is passed to `python -m rlef_jax.train` unchanged
# (e.g. --config.rl.kl_coef=0.1); for exec it is the command.
set -euo pipefail

cd "$(dirname "$0")/../.."

name="${TPU_NAME:-}"
zone="${TPU_ZONE:-}"
project=""
accelerator="v5p-32"
version="tpu-ubuntu2204-base"
spot=0
create=0
repo=""
branch="main"
config="configs/llama8b.py"
workdir=""
tail_worker=0
dest=""
dry_run=0
step=""
train_args=()

die() { echo "launch.sh: $*" >&2; exit 2; }

need_value() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value"; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) need_value "$@"; name="$2"; shift 2 ;;
    --zone) need_value "$@"; zone="$2"; shift 2 ;;
    --project) need_value "$@"; project="$2"; shift 2 ;;
    --accelerator-type) need_value "$@"; accelerator="$2"; shift 2 ;;
    --version) need_value "$@"; version="$2"; shift 2 ;;
    --spot) spot=1; shift ;;
    --create) create=1; shift ;;
    --repo) need_value "$@"; repo="$2"; shift 2 ;;
    --branch) need_value "$@"; branch="$2"; shift 2 ;;
    --config) need_value "$@"; config="$2"; shift 2 ;;
    --workdir) need_value "$@"; workdir="$2"; shift 2 ;;
    --worker) need_value "$@"; tail_worker="$2"; shift 2 ;;
    --dest) need_value "$@"; dest="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    --) shift; train_args=("$@"); break ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) [[ -z "$step" ]] || die "one STEP only, got '$step' and '$1'"; step="$1"; shift ;;
  esac
done

case "$step" in
  create|setup|train|tail|status|metrics|exec|stop|delete|all) ;;
  "") die "missing STEP: create | setup | train | tail | status | metrics | exec | stop | delete | all" ;;
  *) die "unknown STEP '$step': use create | setup | train | tail | status | metrics | exec | stop | delete | all" ;;
esac
[[ -n "$name" ]] || die "--name (or \$TPU_NAME) is required"
[[ -n "$zone" ]] || die "--zone (or \$TPU_ZONE) is required"
[[ "$tail_worker" =~ ^[0-9]+$ ]] || die "--worker must be a worker number, got '$tail_worker'"
if [[ "$step" == exec && ${#train_args[@]} -eq 0 ]]; then
  die "exec needs a command after --, e.g. exec -- gsutil -m cp -r gs://BUCKET/tokenizer tokenizer"
fi
if [[ "$step" == train || "$step" == all ]]; then
  [[ -n "$workdir" ]] || die "--workdir is required for $step (a path every worker sees and can write)"
  [[ "$workdir" != *://* || "$workdir" == gs://?* ]] || die "--workdir $workdir: a URL workdir must be gs://BUCKET/PATH (or a path every worker sees)"
  [[ -f "$config" ]] || die "--config $config does not exist in this checkout"
fi

# POSIX shell quoting of one word: safe words stay bare, others get single quotes.
q() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# A command line from words, each quoted.
join_quoted() {
  local out="" word
  for word in "$@"; do out+="${out:+ }$(q "$word")"; done
  printf '%s' "$out"
}

run() {
  if ((dry_run)); then
    join_quoted "$@"
    echo
  else
    "$@"
  fi
}

gcloud_tpu=(gcloud compute tpus tpu-vm)
scope=(--zone="$zone")
[[ -n "$project" ]] && scope+=(--project="$project")

on_workers() {  # on_workers WORKER REMOTE_COMMAND
  run "${gcloud_tpu[@]}" ssh "$name" "${scope[@]}" --worker="$1" --command="$2"
}

remote_dir="rlef_jax"  # relative to the remote home directory
# The checkout's tracked and new files, without weights and run outputs (those live in buckets).
code_paths=(. ':!checkpoints' ':!runs' ':!workdir' ':!tpu_metrics')
log_file="rlef_train.log"
pid_file="rlef_train.pid"
jax_version="$(sed -n 's/^jax==//p' requirements.txt)"
[[ -n "$jax_version" ]] || die "requirements.txt has no jax== pin"

step_create() {
  local args=("${gcloud_tpu[@]}" create "$name" "${scope[@]}" --accelerator-type="$accelerator"
              --version="$version")
  ((spot)) && args+=(--spot)
  run "${args[@]}"
}

step_setup() {
  if [[ -n "$repo" ]]; then
    on_workers all "if [ -d $remote_dir/.git ]; then git -C $remote_dir fetch --depth 1 origin $(q "$branch") && git -C $remote_dir checkout -f FETCH_HEAD; else git clone --depth 1 --branch $(q "$branch") $(q "$repo") $remote_dir; fi"
  else
    archive="${TMPDIR:-/tmp}/rlef_jax_code.$$.tar.gz"
    ((dry_run)) || trap 'rm -f "$archive"' EXIT
    if ((dry_run)); then
      echo "git ls-files -z --cached --others --exclude-standard -- $(join_quoted "${code_paths[@]}") | tar --null -T - -czf $(q "$archive")"
    else
      git ls-files -z --cached --others --exclude-standard -- "${code_paths[@]}" | tar --null -T - -czf "$archive"
    fi
    run "${gcloud_tpu[@]}" scp "$archive" "$name:rlef_jax_code.tar.gz" "${scope[@]}" --worker=all
    on_workers all "mkdir -p $remote_dir && tar -xzf rlef_jax_code.tar.gz -C $remote_dir && rm rlef_jax_code.tar.gz"
  fi
  # Python 3.11 for the pinned requirements, then JAX's TPU build (libtpu) of the same version.
  on_workers all "set -e; command -v python3.11 >/dev/null || { sudo apt-get update -q && sudo apt-get install -y -q python3.11 python3.11-venv; }; cd $remote_dir && PYTHON=python3.11 scripts/setup.sh && .venv/bin/python -m pip install -q -r requirements-gcs.txt $(q "jax[tpu]==$jax_version")"
}

step_train() {
  local train=(.venv/bin/python -m rlef_jax.train --config="$config" --workdir="$workdir"
               "${train_args[@]+"${train_args[@]}"}")
  # nohup + </dev/null: the run outlives the ssh session; every worker logs to ~/$log_file.
  on_workers all "cd $remote_dir || exit 1; nohup $(join_quoted "${train[@]}") > ../$log_file 2>&1 < /dev/null & echo \$! > $pid_file; echo started rlef_jax.train on \$(hostname), pid \$(cat $pid_file)"
}

step_tail() {
  on_workers "$tail_worker" "tail -n 200 -F $log_file"
}

step_status() {
  on_workers all "if [ -f $remote_dir/$pid_file ] && kill -0 \$(cat $remote_dir/$pid_file) 2>/dev/null; then echo \$(hostname): running; else echo \$(hostname): not running; fi; tail -n 3 $log_file 2>/dev/null || true"
}

step_metrics() {
  local to="${dest:-tpu_metrics/$name}"
  run mkdir -p "$to"
  run "${gcloud_tpu[@]}" scp --recurse "$name:rlef_metrics" "$to" "${scope[@]}" --worker=0
}

step_exec() {
  on_workers all "$(join_quoted "${train_args[@]}")"
}

step_stop() {
  on_workers all "if [ -f $remote_dir/$pid_file ]; then kill \$(cat $remote_dir/$pid_file) 2>/dev/null || true; rm -f $remote_dir/$pid_file; fi"
}

step_delete() {
  run "${gcloud_tpu[@]}" delete "$name" "${scope[@]}" --quiet
}

case "$step" in
  all)
    ((create)) && step_create
    step_setup
    step_train
    echo "# follow worker 0's log: $(join_quoted "$0" tail --name "$name" --zone "$zone")" ;;
  *) "step_$step" ;;
esac
