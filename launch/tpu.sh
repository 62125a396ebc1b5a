#!/usr/bin/env bash
# Create, set up, train on, sample from and delete Cloud TPU VM slices.
#
# TPU VMs are requested as queued resources; every remote command runs on all
# workers of the slice (`gcloud compute tpus tpu-vm ssh --worker=all`).
# Walk-through: docs/TPU.md. Reference: `launch/tpu.sh --help`.
#
# Portable to bash 3.2 (macOS): no associative arrays, and empty arrays are
# expanded as ${a[@]+"${a[@]}"} because of `set -u`.
set -euo pipefail

readonly PROG="launch/tpu.sh"
_src="${BASH_SOURCE[0]}"
if [[ "$_src" == */* ]]; then _dir="${_src%/*}"; else _dir="."; fi
ROOT="$(cd "$_dir/.." && pwd)"
readonly ROOT

# ---------------------------------------------------------------------------
# Settings. Flags override these environment variables.
TPU_NAME="${TPU_NAME:-}"
PROJECT="${PROJECT:-${CLOUDSDK_CORE_PROJECT:-}}"
ZONE="${ZONE:-${CLOUDSDK_COMPUTE_ZONE:-}}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-}"
RUNTIME_VERSION="${RUNTIME_VERSION:-}"
SPOT="${SPOT:-0}"
RESERVED="${RESERVED:-0}"
DRY_RUN="${DRY_RUN:-0}"
REMOTE_DIR="${REMOTE_DIR:-musiclm_jax}"
REPO="${REPO:-}"
REF="${REF:-HEAD}"
POLL_SECONDS="${POLL_SECONDS:-30}"
MAX_POLLS="${MAX_POLLS:-240}"
WATCH_SECONDS="${WATCH_SECONDS:-300}"
MAX_RESTARTS="${MAX_RESTARTS:-20}"

# Per-invocation state filled by the flag parser.
NO_WAIT=0
NO_LIBTPU=0
ALLOW_LOCAL=0
WATCH=0
NO_LAUNCH=0
YES=0
ASYNC=0
GIN_SEARCH_PATHS=""
MODEL_DIR=""
TRAIN_STEPS=""
LOG_NAME=""
BUNDLE=""
PROMPTS_FILE=""
OUT=""
WORKER=""
LINES="100"
GIN_FILES=()
GIN_OVERRIDES=()
ENV_VARS=()
EXTRA_ARGS=()
WORK_TMP=""
TARBALL=""

readonly REMOTE_TARBALL="musiclm_jax_src.tar.gz"
readonly COMMANDS="create setup train stop sample logs status delete run"
readonly COMMON_FLAGS="name project zone remote_dir dry_run help"
readonly CREATE_FLAGS="accelerator_type runtime_version spot reserved no_wait poll_seconds max_polls"
readonly SETUP_FLAGS="repo ref no_libtpu"
readonly BOOLEAN_FLAGS=" dry_run help spot reserved no_wait no_libtpu allow_local watch no_launch yes async "

# ---------------------------------------------------------------------------
# Output helpers.

# Usage error: one line, exit 2.
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 2; }
# Runtime failure: one line, exit 1.
fail() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }
log() { printf '[tpu.sh] %s\n' "$*" >&2; }
is_true() { case "${1:-0}" in 1|true|TRUE|yes|YES|on) return 0 ;; *) return 1 ;; esac; }

# Prints stdin (here-documents) without external programs.
print_doc() {
  local line
  while IFS= read -r line; do printf '%s\n' "$line"; done
}

# Joins the arguments into one string that a POSIX/bash shell splits back into
# exactly these arguments.
qa() {
  local out="" a
  for a in "$@"; do out+="$(printf '%q' "$a") "; done
  printf '%s' "${out% }"
}

# Like qa, but in single quotes: easier to read in logs and --dry_run output.
qdisplay() {
  local out="" a
  for a in "$@"; do
    if [[ "$a" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
      out+="$a "
    else
      out+="'${a//\'/\'\\\'\'}' "
    fi
  done
  printf '%s' "${out% }"
}

# ---------------------------------------------------------------------------
# Help.

usage_main() {
  print_doc <<EOF
Usage: $PROG <command> [flags] [-- extra arguments]

Cloud TPU VM slices (queued resources) for musiclm_jax; every remote command
runs on all workers. Walk-through: docs/TPU.md.

Commands:
  create   request a TPU slice as a queued resource and wait until ACTIVE
  setup    copy this project to every worker and run 'make setup' there
  train    start 'python -m musiclm_jax.train' on every worker (background);
           --watch recreates a preempted slice and relaunches (resumes)
  stop     send SIGTERM to training on every worker (it checkpoints, exits 0)
  sample   run 'python -m musiclm_jax.sample' on every worker
  logs     follow the training log of one worker (default worker 0)
  status   show the queued resource and the jobs on every worker
  delete   delete the queued resource and its TPU VMs
  run      run any command in the project folder on the workers

Common flags (each also read from the environment variable in brackets):
  --name NAME        queued resource and TPU VM name          [TPU_NAME]
  --project ID       Google Cloud project                     [PROJECT]
  --zone ZONE        zone, e.g. us-central2-b                 [ZONE]
  --remote_dir DIR   project folder on the workers, relative
                     to the home folder (default musiclm_jax)  [REMOTE_DIR]
  --dry_run          print every gcloud command, run none      [DRY_RUN=1]
  -h, --help         help; '$PROG <command> --help' for a command

Flags take '--flag=value' or '--flag value'; dashes and underscores are
interchangeable in flag names.
EOF
}

usage_create() {
  print_doc <<EOF
Usage: $PROG create [common flags] --accelerator_type TYPE
                    [--runtime_version V] [--spot | --reserved]
                    [--no_wait] [--poll_seconds S] [--max_polls N]

Runs 'gcloud compute tpus queued-resources create NAME --node-id=NAME
--accelerator-type=TYPE --runtime-version=V [--spot|--reserved]' and polls
'queued-resources describe' until the state is ACTIVE.

  --accelerator_type TYPE  e.g. v4-32, v4-128, v5litepod-64, v5litepod-256,
                           v5p-64, v5p-128                  [ACCELERATOR_TYPE]
  --runtime_version V      TPU software version; default by type: v4
                           tpu-ubuntu2204-base, v5litepod v2-alpha-tpuv5-lite,
                           v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e
                                                            [RUNTIME_VERSION]
  --spot                   Spot capacity (cheap, preemptible)  [SPOT=1]
  --reserved               your reservation's capacity        [RESERVED=1]
                           (neither: on-demand quota)
  --no_wait                return once the request is queued
  --poll_seconds S         seconds between polls (default 30)  [POLL_SECONDS]
  --max_polls N            give up waiting after N polls (default 240)
                                                            [MAX_POLLS]
EOF
}

usage_setup() {
  print_doc <<EOF
Usage: $PROG setup [common flags] [--repo URL [--ref REF]] [--no_libtpu]

Copies the project to every worker and runs 'make setup' there (Python 3.12
venv, pinned requirements, Debian packages), then installs 'jax[tpu]' at the
pinned jax version so JAX finds the TPU. Installs python3.12 (deadsnakes PPA),
make and git first where the image lacks them.

Without --repo: 'git archive' of HEAD plus uncommitted changes to tracked files
(untracked files are left out) is copied with 'gcloud compute tpus tpu-vm scp
--worker=all' and unpacked into REMOTE_DIR (an existing .venv is kept; files get
fresh times, so 'make setup' reinstalls what changed).

  --repo URL     'git clone URL' on every worker instead     [REPO]
  --ref REF      branch, tag or commit to check out (default HEAD)  [REF]
  --no_libtpu    skip installing 'jax[tpu]'
EOF
}

usage_train() {
  print_doc <<EOF
Usage: $PROG train [common flags] --gin_file=gin/runs/RUN.gin [--gin_file=...]
                   --model_dir gs://BUCKET/DIR [--train_steps N]
                   [--gin.MACRO=VALUE ...] [--gin_search_paths P]
                   [--env KEY=VALUE ...] [--log_name NAME] [--allow_local]
                   [--watch [--max_restarts N] [--watch_seconds S]
                            [--no_launch] [create and setup flags]]
                   [-- extra arguments for musiclm_jax.train]

Starts on every worker, in the background (nohup):
  python -m musiclm_jax.train --gin_file=... --gin.MODEL_DIR='gs://...' ...
logging to REMOTE_DIR/logs/NAME.log (NAME defaults to 'train'). Training
resumes from the latest checkpoint in MODEL_DIR, so relaunching is safe.
gin overrides reach the workers exactly as typed, e.g.
  --gin.MIXTURE_OR_TASK_NAME="'synth_coarse'"
Gin files are checked locally (paths relative to the project root); later
--gin_file flags override earlier ones (e.g. a gin/mesh/*.gin file).

  --model_dir DIR      sets --gin.MODEL_DIR='DIR'; must be gs:// (every host
                       of a multi-host slice writes there) unless --allow_local
  --train_steps N      sets --gin.TRAIN_STEPS=N
  --env KEY=VALUE      environment variable for the remote process
  --log_name NAME      log/pid file name on the workers (default train)
  --watch              stay in the foreground and supervise: every
                       --watch_seconds (default 300) [WATCH_SECONDS] poll the
                       queued resource; if it is SUSPENDED/SUSPENDING/FAILED
                       or gone (preempted), delete it, create it again (needs
                       --accelerator_type), run setup and relaunch; if the
                       job on worker 0 exited non-zero or after a SIGTERM
                       ("preempted at step N"), stop it on every worker and
                       relaunch; stop watching when it finished (exit 0).
                       Failed steps are retried at the next poll.
  --max_restarts N     give up after N recreations/relaunches (default 20)
                                                            [MAX_RESTARTS]
  --no_launch          with --watch: supervise a job that already runs
EOF
}

usage_stop() {
  print_doc <<EOF
Usage: $PROG stop [common flags] [--log_name NAME]

Sends SIGTERM to the job started by 'train' on every worker (the trainer saves
a checkpoint and exits 0); after 120 s without exit, SIGKILL.
EOF
}

usage_sample() {
  print_doc <<EOF
Usage: $PROG sample [common flags] --bundle gs://... --prompts_file FILE
                    --out gs://... [--env KEY=VALUE ...] [--allow_local]
                    [-- extra arguments for musiclm_jax.sample]

Runs on every worker, in the foreground (batched over all the slice's devices):
  python -m musiclm_jax.sample --bundle B --prompts_file F --out O
A local prompts file is first copied to every worker; a gs:// one is read there.
Output is also written to REMOTE_DIR/logs/sample.log on each worker.
EOF
}

usage_logs() {
  print_doc <<EOF
Usage: $PROG logs [common flags] [--worker N] [--log_name NAME] [--lines N]

Follows REMOTE_DIR/logs/NAME.log (default train) on worker N (default 0):
'gcloud compute tpus tpu-vm ssh NAME --worker=N --command "tail -F ..."'.
EOF
}

usage_status() {
  print_doc <<EOF
Usage: $PROG status [common flags]

Describes the queued resource; when it is ACTIVE, also prints each worker's
jobs (running, or the exit status) and the last log line.
EOF
}

usage_delete() {
  print_doc <<EOF
Usage: $PROG delete [common flags] [--yes | --quiet | -y] [--async]

Deletes the queued resource and its TPU VMs
('gcloud compute tpus queued-resources delete NAME --force --quiet').
Asks for confirmation unless --yes (required when stdin is not a terminal).
Checkpoints on gs:// are not touched.
EOF
}

usage_run() {
  print_doc <<EOF
Usage: $PROG run [common flags] [--worker all|N] [--env KEY=VALUE ...] -- COMMAND [ARGS...]

Runs COMMAND in REMOTE_DIR on the workers (default all) in the foreground,
with every argument quoted so it arrives intact. Example:
  $PROG run --worker 0 -- .venv/bin/python -c 'import jax; print(jax.devices())'
EOF
}

# ---------------------------------------------------------------------------
# Flag parsing.

flags_for() {
  case "$1" in
    create) echo "$CREATE_FLAGS" ;;
    setup) echo "$SETUP_FLAGS" ;;
    train) echo "gin_file gin_search_paths model_dir train_steps allow_local log_name env" \
                "watch no_launch max_restarts watch_seconds $CREATE_FLAGS $SETUP_FLAGS" ;;
    stop) echo "log_name" ;;
    sample) echo "bundle prompts_file out allow_local log_name env" ;;
    logs) echo "worker log_name lines" ;;
    status) echo "" ;;
    delete) echo "yes quiet async" ;;
    run) echo "worker env" ;;
  esac
}

set_flag() {
  local name="$1" value="$2"
  case "$name" in
    name) TPU_NAME="$value" ;;
    project) PROJECT="$value" ;;
    zone) ZONE="$value" ;;
    remote_dir) REMOTE_DIR="$value" ;;
    dry_run) DRY_RUN=1 ;;
    help) : ;;  # handled before parsing
    accelerator_type) ACCELERATOR_TYPE="$value" ;;
    runtime_version) RUNTIME_VERSION="$value" ;;
    spot) SPOT=1 ;;
    reserved) RESERVED=1 ;;
    no_wait) NO_WAIT=1 ;;
    poll_seconds) POLL_SECONDS="$value" ;;
    max_polls) MAX_POLLS="$value" ;;
    repo) REPO="$value" ;;
    ref) REF="$value" ;;
    no_libtpu) NO_LIBTPU=1 ;;
    gin_file) GIN_FILES+=("$value") ;;
    gin_search_paths) GIN_SEARCH_PATHS="$value" ;;
    model_dir) MODEL_DIR="$value" ;;
    train_steps) TRAIN_STEPS="$value" ;;
    allow_local) ALLOW_LOCAL=1 ;;
    log_name) LOG_NAME="$value" ;;
    env) ENV_VARS+=("$value") ;;
    watch) WATCH=1 ;;
    no_launch) NO_LAUNCH=1 ;;
    max_restarts) MAX_RESTARTS="$value" ;;
    watch_seconds) WATCH_SECONDS="$value" ;;
    bundle) BUNDLE="$value" ;;
    prompts_file) PROMPTS_FILE="$value" ;;
    out) OUT="$value" ;;
    worker) WORKER="$value" ;;
    lines) LINES="$value" ;;
    yes|quiet) YES=1 ;;
    async) ASYNC=1 ;;
    *) die "internal: no handler for --$name" ;;
  esac
}

parse_flags() {
  local sub="$1"
  shift
  local allowed
  allowed=" $COMMON_FLAGS $(flags_for "$sub") "
  while (($#)); do
    local arg="$1"
    shift
    case "$arg" in
      --) EXTRA_ARGS=("$@"); return 0 ;;
      -h) arg="--help" ;;
      -y) arg="--yes" ;;
      --gin.*)
        [[ "$sub" == train ]] || die "gin overrides are for 'train' only: $arg"
        [[ "$arg" == --gin.?*=* ]] || die "gin override must look like --gin.NAME=VALUE: $arg"
        GIN_OVERRIDES+=("$arg")
        continue ;;
      --?*) ;;
      *) die "unexpected argument '$arg' for '$sub' (flags look like --flag=value; arguments for the remote program go after --)" ;;
    esac
    local name="${arg#--}" value="" has_value=0
    if [[ "$name" == *=* ]]; then
      value="${name#*=}"
      name="${name%%=*}"
      has_value=1
    fi
    name="${name//-/_}"
    [[ "$allowed" == *" $name "* ]] || die "unknown flag --$name for '$sub' (see $PROG $sub --help)"
    if [[ "$BOOLEAN_FLAGS" == *" $name "* || "$name" == quiet ]]; then
      ((has_value == 0)) || die "flag --$name takes no value"
      set_flag "$name" 1
    else
      if ((has_value == 0)); then
        (($#)) || die "flag --$name needs a value"
        value="$1"
        shift
      fi
      set_flag "$name" "$value"
    fi
  done
}

# ---------------------------------------------------------------------------
# Validation (local only; runs before any gcloud call).

check_uint() {  # flag value
  [[ "$2" =~ ^[0-9]+$ ]] || die "--$1 must be a non-negative integer, got '$2'"
}

check_target() {
  [[ -n "$TPU_NAME" ]] || die "missing TPU name: pass --name or set TPU_NAME"
  [[ "$TPU_NAME" =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] \
    || die "bad TPU name '$TPU_NAME': lowercase letters, digits and '-', starting with a letter"
  [[ -n "$PROJECT" ]] || die "missing project: pass --project or set PROJECT (or CLOUDSDK_CORE_PROJECT)"
  [[ -n "$ZONE" ]] || die "missing zone: pass --zone or set ZONE (or CLOUDSDK_COMPUTE_ZONE)"
  [[ "$REMOTE_DIR" =~ ^[A-Za-z0-9_][A-Za-z0-9_./-]*$ && "$REMOTE_DIR" != *..* ]] \
    || die "bad --remote_dir '$REMOTE_DIR': a relative path without '..'"
}

check_log_name() {
  [[ "$LOG_NAME" =~ ^[A-Za-z0-9_.-]+$ ]] || die "bad --log_name '$LOG_NAME': letters, digits, '_', '.', '-'"
}

check_env_vars() {
  local kv
  for kv in ${ENV_VARS[@]+"${ENV_VARS[@]}"}; do
    [[ "$kv" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env needs KEY=VALUE, got '$kv'"
  done
}

check_gs() {  # flag value
  [[ "$2" == gs://?* ]] && return 0
  is_true "$ALLOW_LOCAL" && return 0
  die "--$1 must be a gs:// path (every host of a multi-host slice reads/writes it), got '$2'; pass --allow_local to override"
}

default_runtime() {
  case "$1" in
    v4-*) echo "tpu-ubuntu2204-base" ;;
    v5litepod-*) echo "v2-alpha-tpuv5-lite" ;;
    v5p-*) echo "v2-alpha-tpuv5" ;;
    v6e-*) echo "v2-alpha-tpuv6e" ;;
    *) echo "" ;;
  esac
}

check_create() {
  [[ -n "$ACCELERATOR_TYPE" ]] || die "missing accelerator type: pass --accelerator_type (e.g. v4-32) or set ACCELERATOR_TYPE"
  case "$ACCELERATOR_TYPE" in
    v5e-*) die "accelerator type '$ACCELERATOR_TYPE' is called 'v5litepod-${ACCELERATOR_TYPE#v5e-}' in gcloud" ;;
  esac
  [[ "$ACCELERATOR_TYPE" =~ ^v[0-9][a-z0-9]*-[0-9]+$ ]] \
    || die "bad accelerator type '$ACCELERATOR_TYPE' (expected e.g. v4-32, v5litepod-64, v5p-128)"
  if [[ -z "$RUNTIME_VERSION" ]]; then
    RUNTIME_VERSION="$(default_runtime "$ACCELERATOR_TYPE")"
    [[ -n "$RUNTIME_VERSION" ]] || die "no default runtime version for '$ACCELERATOR_TYPE': pass --runtime_version"
  fi
  if is_true "$SPOT" && is_true "$RESERVED"; then
    die "--spot and --reserved exclude each other (SPOT=$SPOT, RESERVED=$RESERVED)"
  fi
  check_uint poll_seconds "$POLL_SECONDS"
  check_uint max_polls "$MAX_POLLS"
  ((MAX_POLLS > 0)) || die "--max_polls must be at least 1"
}

check_setup() {
  if [[ -n "$REPO" ]]; then
    [[ "$REF" =~ ^[A-Za-z0-9_./-]+$ ]] || die "bad --ref '$REF'"
    return 0
  fi
  [[ -z "$REF" || "$REF" == HEAD ]] || die "--ref needs --repo (without --repo the local tree is copied)"
  git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1 \
    || die "$ROOT is not a git work tree: pass --repo URL"
  git -C "$ROOT" rev-parse --verify -q HEAD >/dev/null \
    || die "no commit in $ROOT to archive: commit first or pass --repo URL"
}

check_train() {
  ((${#GIN_FILES[@]} > 0)) || die "missing --gin_file (e.g. --gin_file=gin/runs/coarse_paper.gin)"
  local f
  for f in "${GIN_FILES[@]}"; do
    [[ "$f" != /* ]] || die "gin file must be relative to the project root: $f"
    [[ -f "$ROOT/$f" ]] || die "gin file not found: $f (looked in $ROOT)"
  done
  local o override_dir=""
  for o in ${GIN_OVERRIDES[@]+"${GIN_OVERRIDES[@]}"}; do
    if [[ "$o" == --gin.MODEL_DIR=* ]]; then
      override_dir="${o#--gin.MODEL_DIR=}"
      override_dir="${override_dir//\'/}"
      override_dir="${override_dir//\"/}"
    fi
  done
  if [[ -n "$MODEL_DIR" && -n "$override_dir" ]]; then
    die "give --model_dir or --gin.MODEL_DIR, not both"
  fi
  [[ -n "$MODEL_DIR" || -n "$override_dir" ]] || die "missing --model_dir (e.g. --model_dir gs://BUCKET/musiclm/coarse)"
  [[ "$MODEL_DIR" != *\'* ]] || die "--model_dir must not contain a single quote: $MODEL_DIR"
  check_gs model_dir "${MODEL_DIR:-$override_dir}"
  [[ -z "$TRAIN_STEPS" ]] || check_uint train_steps "$TRAIN_STEPS"
  LOG_NAME="${LOG_NAME:-train}"
  check_log_name
  check_env_vars
  if is_true "$WATCH"; then
    check_uint max_restarts "$MAX_RESTARTS"
    check_uint watch_seconds "$WATCH_SECONDS"
    check_create
    check_setup
  fi
}

check_sample() {
  [[ -n "$BUNDLE" ]] || die "missing --bundle (e.g. --bundle gs://BUCKET/musiclm/bundle)"
  [[ -n "$PROMPTS_FILE" ]] || die "missing --prompts_file"
  [[ -n "$OUT" ]] || die "missing --out (e.g. --out gs://BUCKET/musiclm/samples)"
  check_gs bundle "$BUNDLE"
  check_gs out "$OUT"
  if [[ "$PROMPTS_FILE" != gs://* ]]; then
    [[ -f "$PROMPTS_FILE" ]] || die "prompts file not found: $PROMPTS_FILE"
  fi
  LOG_NAME="${LOG_NAME:-sample}"
  check_log_name
  check_env_vars
}

check_gcloud() {
  is_true "$DRY_RUN" && return 0
  command -v gcloud >/dev/null 2>&1 \
    || fail "gcloud not found on PATH: install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install)"
}

# ---------------------------------------------------------------------------
# gcloud wrappers.

# Runs gcloud (or prints it under --dry_run); exits on failure.
gc() {
  if is_true "$DRY_RUN"; then
    printf '%s\n' "$(qdisplay gcloud "$@")"
    return 0
  fi
  printf '+ %s\n' "$(qdisplay gcloud "$@")" >&2
  local rc=0
  gcloud "$@" || rc=$?
  ((rc == 0)) || fail "gcloud ${*:1:4} failed with exit status $rc (command above)"
}

ssh_workers() {  # worker remote_command
  gc compute tpus tpu-vm ssh "$TPU_NAME" "--project=$PROJECT" "--zone=$ZONE" \
    "--worker=$1" "--command=$2"
}

# Prints the queued resource state (ACTIVE, SUSPENDED, ..., NOT_FOUND, or
# UNKNOWN when gcloud failed otherwise). Under --dry_run it prints the command
# to the script's stdout (fd 3: this function's stdout is captured) and reports
# ACTIVE.
qr_state() {
  local describe_cmd=(compute tpus queued-resources describe "$TPU_NAME" "--project=$PROJECT"
                      "--zone=$ZONE" "--format=value(state.state)")
  if is_true "$DRY_RUN"; then
    printf '%s\n' "$(qdisplay gcloud "${describe_cmd[@]}")" >&3
    echo "ACTIVE"
    return 0
  fi
  local err="$WORK_TMP/describe.err" out rc=0
  out="$(gcloud "${describe_cmd[@]}" 2>"$err")" || rc=$?
  if ((rc != 0)); then
    if grep -qiE 'NOT_FOUND|not found|does not exist' "$err"; then
      echo "NOT_FOUND"
    else
      log "describe failed (exit $rc): $(tail -n 1 "$err")"
      echo "UNKNOWN"
    fi
    return 0
  fi
  out="$(printf '%s' "$out" | tr -d '[:space:]')"
  echo "${out:-UNKNOWN}"
}

wait_active() {
  local i state
  for ((i = 1; i <= MAX_POLLS; i++)); do
    state="$(qr_state)"
    if is_true "$DRY_RUN"; then
      log "dry run: assuming $TPU_NAME is ACTIVE"
      return 0
    fi
    log "queued resource $TPU_NAME: $state (poll $i/$MAX_POLLS)"
    case "$state" in
      ACTIVE) return 0 ;;
      FAILED|SUSPENDED|SUSPENDING|NOT_FOUND)
        fail "queued resource $TPU_NAME is $state: see '$PROG status', then '$PROG delete' and create it again" ;;
    esac
    ((i == MAX_POLLS)) || sleep "$POLL_SECONDS"
  done
  fail "queued resource $TPU_NAME is not ACTIVE after $MAX_POLLS polls; it stays queued ('$PROG status' to check, '$PROG delete' to give up)"
}

# ---------------------------------------------------------------------------
# Remote command pieces (one line each: the remote login shell is bash).

# Installs python3.12 (deadsnakes), make and git where the TPU image lacks them.
remote_prereqs() {
  local apt='sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -y -q'
  printf '%s' "if ! command -v python3.12 >/dev/null 2>&1 || ! command -v make >/dev/null 2>&1 || ! command -v git >/dev/null 2>&1; then $apt update && $apt install software-properties-common make git && { command -v python3.12 >/dev/null 2>&1 || { sudo add-apt-repository -y ppa:deadsnakes/ppa && $apt install python3.12 python3.12-venv python3.12-dev; }; }; fi"
}

# Installs jax[tpu] (libtpu) at the jax version pinned in requirements.txt.
remote_libtpu() {
  # shellcheck disable=SC2016  # expanded on the worker
  printf '%s' 'jaxv="$(sed -n "s/^jax==//p" requirements.txt)" && test -n "$jaxv" && .venv/bin/pip install -q "jax[tpu]==$jaxv"'
}

remote_env_prefix() {
  qa env PYTHONUNBUFFERED=1 ${ENV_VARS[@]+"${ENV_VARS[@]}"}
}

# Background launch of `python -m musiclm_jax.train ...` on a worker, through
# this script's `__job` runner (pid in logs/NAME.pid, exit status in logs/NAME.rc).
remote_train_command() {
  local args=(-m musiclm_jax.train) f
  for f in "${GIN_FILES[@]}"; do args+=("--gin_file=$f"); done
  [[ -z "$GIN_SEARCH_PATHS" ]] || args+=("--gin_search_paths=$GIN_SEARCH_PATHS")
  [[ -z "$MODEL_DIR" ]] || args+=("--gin.MODEL_DIR='$MODEL_DIR'")
  [[ -z "$TRAIN_STEPS" ]] || args+=("--gin.TRAIN_STEPS=$TRAIN_STEPS")
  args+=(${GIN_OVERRIDES[@]+"${GIN_OVERRIDES[@]}"} ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"})
  local l="logs/$LOG_NAME"
  # shellcheck disable=SC2016  # expanded on the worker
  printf '%s' "cd $(qa "$REMOTE_DIR") && mkdir -p logs && if [ -f $l.pid ] && kill -0 -- -\"\$(cat $l.pid)\" 2>/dev/null; then echo \"\$(hostname): $LOG_NAME already running (pid \$(cat $l.pid)); run '$PROG stop' first\" >&2; exit 1; fi && rm -f $l.rc && echo \"=== launched \$(date -u +%Y-%m-%dT%H:%M:%SZ) ===\" >>$l.log && { nohup setsid bash launch/tpu.sh __job $l $(remote_env_prefix) $(qa .venv/bin/python "${args[@]}") >/dev/null 2>&1 </dev/null & echo \$! >$l.pid; echo \"\$(hostname): started $LOG_NAME, pid \$!, log $REMOTE_DIR/$l.log\"; }"
}

# SIGTERM to the job's process group, SIGKILL after 120 s.
remote_stop_command() {
  local l="logs/$LOG_NAME"
  # shellcheck disable=SC2016  # expanded on the worker
  printf '%s' "cd $(qa "$REMOTE_DIR") 2>/dev/null && if [ -f $l.pid ] && kill -0 -- -\"\$(cat $l.pid)\" 2>/dev/null; then p=\"\$(cat $l.pid)\"; kill -TERM -- -\"\$p\"; i=0; while kill -0 -- -\"\$p\" 2>/dev/null && [ \$i -lt 120 ]; do sleep 1; i=\$((i+1)); done; kill -KILL -- -\"\$p\" 2>/dev/null || true; echo \"\$(hostname): stopped $LOG_NAME\"; else echo \"\$(hostname): $LOG_NAME not running\"; fi"
}

# Prints rc=running, rc=missing, rc=nosetup, rc=preempted (exited 0 after a
# SIGTERM: the trainer's last line is "preempted at step N") or rc=N.
remote_probe_command() {
  local l="logs/$LOG_NAME"
  # shellcheck disable=SC2016  # expanded on the worker
  printf '%s' "cd $(qa "$REMOTE_DIR") 2>/dev/null || { echo rc=nosetup; exit 0; }; if [ -f $l.rc ]; then r=\"\$(cat $l.rc)\"; if [ \"\$r\" = 0 ] && awk '/^=== launched/ {p = 0} /^preempted at step/ {p = 1} END {exit !p}' $l.log 2>/dev/null; then r=preempted; fi; echo \"rc=\$r\"; elif [ -f $l.pid ] && kill -0 -- -\"\$(cat $l.pid)\" 2>/dev/null; then echo rc=running; else echo rc=missing; fi"
}

# ---------------------------------------------------------------------------
# Subcommands.

create_args() {
  CREATE_CMD=(compute tpus queued-resources create "$TPU_NAME" "--node-id=$TPU_NAME"
              "--project=$PROJECT" "--zone=$ZONE" "--accelerator-type=$ACCELERATOR_TYPE"
              "--runtime-version=$RUNTIME_VERSION")
  if is_true "$SPOT"; then CREATE_CMD+=(--spot); fi
  if is_true "$RESERVED"; then CREATE_CMD+=(--reserved); fi
}

do_create() {
  create_args
  log "requesting $ACCELERATOR_TYPE ($RUNTIME_VERSION) as queued resource $TPU_NAME in $ZONE"
  gc "${CREATE_CMD[@]}"
  if is_true "$NO_WAIT"; then
    log "queued; '$PROG status' shows the state"
    return 0
  fi
  wait_active
  log "$TPU_NAME is ACTIVE; next: $PROG setup"
}

make_tarball() {
  [[ -z "$TARBALL" ]] || return 0
  local rev untracked
  rev="$(git -C "$ROOT" stash create 2>/dev/null || true)"
  if [[ -n "$rev" ]]; then
    log "copying HEAD plus uncommitted changes to tracked files"
  else
    rev="HEAD"
  fi
  untracked="$(git -C "$ROOT" ls-files --others --exclude-standard | wc -l | tr -d ' ')"
  if [[ "$untracked" != 0 ]]; then
    log "note: $untracked untracked file(s) are not copied ('git add' them to include)"
  fi
  TARBALL="$WORK_TMP/$REMOTE_TARBALL"
  git -C "$ROOT" archive --format=tar.gz -o "$TARBALL" "$rev" || fail "git archive of $ROOT failed"
}

do_setup() {
  local dir cmd
  dir="$(qa "$REMOTE_DIR")"
  if [[ -n "$REPO" ]]; then
    cmd="$(remote_prereqs) && { [ -d $dir/.git ] || git clone -q $(qa "$REPO") $dir; } && git -C $dir fetch -q origin $(qa "$REF") && git -C $dir checkout -q --detach FETCH_HEAD"
  else
    make_tarball
    gc compute tpus tpu-vm scp "$TARBALL" "$TPU_NAME:$REMOTE_TARBALL" "--project=$PROJECT" \
      "--zone=$ZONE" --worker=all
    cmd="$(remote_prereqs) && mkdir -p $dir && tar -xzmf $REMOTE_TARBALL -C $dir && rm -f $REMOTE_TARBALL"
  fi
  cmd+=" && cd $dir && make setup"
  is_true "$NO_LIBTPU" || cmd+=" && $(remote_libtpu)"
  cmd+=" && echo \"\$(hostname): setup done\""
  ssh_workers all "$cmd"
}

launch_train() {
  ssh_workers all "$(remote_train_command)"
  log "started on all workers; follow with: $PROG logs --name $TPU_NAME"
}

# Runs what a recreated or crashed slice still needs (PENDING: setup, launch or
# nothing), each step in a subshell so that a failure is retried at the next poll
# instead of ending the watch. Returns 1 when a step failed.
PENDING=""
catch_up() {
  if [[ "$PENDING" == setup ]]; then
    (do_setup) || { log "setup failed; retrying at the next poll"; return 1; }
    PENDING="launch"
  fi
  if [[ "$PENDING" == launch ]]; then
    (launch_train) || { log "launch failed; retrying at the next poll"; return 1; }
    PENDING=""
  fi
}

count_restart() {  # reason
  RESTARTS=$((RESTARTS + 1))
  ((RESTARTS <= MAX_RESTARTS)) || fail "gave up after $MAX_RESTARTS restarts ($1)"
  log "$1; restart $RESTARTS/$MAX_RESTARTS"
}

# Asks worker 0 about the job; prints running, missing, nosetup, preempted (it
# exited 0 after a SIGTERM), an exit status, or unreachable.
probe_job() {
  if is_true "$DRY_RUN"; then
    ssh_workers 0 "$(remote_probe_command)" >&3
    echo "running"
    return 0
  fi
  local out rc=0
  out="$(gcloud compute tpus tpu-vm ssh "$TPU_NAME" "--project=$PROJECT" "--zone=$ZONE" \
         --worker=0 "--command=$(remote_probe_command)" 2>"$WORK_TMP/probe.err")" || rc=$?
  if ((rc != 0)); then
    log "could not reach worker 0 (exit $rc): $(tail -n 1 "$WORK_TMP/probe.err")"
    echo "unreachable"
    return 0
  fi
  out="$(printf '%s\n' "$out" | grep '^rc=' | tail -n 1 || true)"
  out="${out#rc=}"
  echo "${out:-unreachable}"
}

# Supervises training; recreates a preempted slice and relaunches a crashed job.
# Returns when the job on worker 0 finished (exit 0 without preemption).
RESTARTS=0
watch_train() {
  local state job
  while :; do
    sleep "$WATCH_SECONDS"
    state="$(qr_state)"
    case "$state" in
      ACTIVE)
        if [[ -n "$PENDING" ]]; then
          catch_up || true
        else
          job="$(probe_job)"
          case "$job" in
            0) log "training finished (exit 0) after $RESTARTS restart(s)"; return 0 ;;
            running) log "$TPU_NAME ACTIVE, $LOG_NAME running" ;;
            unreachable) log "worker 0 unreachable; retrying at the next poll" ;;
            nosetup)
              count_restart "$REMOTE_DIR is missing on worker 0; setting up and relaunching"
              PENDING="setup"
              catch_up || true ;;
            *)
              count_restart "$LOG_NAME on worker 0: exit $job; stopping it everywhere and relaunching"
              (ssh_workers all "$(remote_stop_command)") || log "stop failed; relaunching anyway"
              PENDING="launch"
              catch_up || true ;;
          esac
        fi ;;
      SUSPENDED|SUSPENDING|FAILED|NOT_FOUND)
        count_restart "queued resource $TPU_NAME is $state (preempted?); recreating it"
        if [[ "$state" != NOT_FOUND ]]; then
          (gc compute tpus queued-resources delete "$TPU_NAME" "--project=$PROJECT" "--zone=$ZONE" \
              --force --quiet) || { log "delete failed; retrying at the next poll"; continue; }
        fi
        if (do_create); then
          PENDING="setup"
          catch_up || true
        else
          log "create failed; retrying at the next poll"
        fi ;;
      *) log "queued resource $TPU_NAME: $state; waiting" ;;
    esac
    if is_true "$DRY_RUN"; then
      log "dry run: stopping after one poll"
      return 0
    fi
  done
}

do_train() {
  # The watch redeploys the code of its start, not whatever the tree holds later.
  if is_true "$WATCH" && [[ -z "$REPO" ]]; then make_tarball; fi
  if ! is_true "$NO_LAUNCH"; then launch_train; fi
  if is_true "$WATCH"; then
    log "watching $TPU_NAME every ${WATCH_SECONDS}s (max $MAX_RESTARTS restarts); Ctrl-C stops the watch, not the job"
    watch_train
  fi
}

do_stop() { ssh_workers all "$(remote_stop_command)"; }

do_sample() {
  local prompts="$PROMPTS_FILE" pre=""
  if [[ "$PROMPTS_FILE" != gs://* ]]; then
    # A plain remote name: scp may hand the destination to the remote shell.
    local base="${PROMPTS_FILE##*/}"
    base="${base//[^A-Za-z0-9_.-]/_}"
    gc compute tpus tpu-vm scp "$PROMPTS_FILE" "$TPU_NAME:tpu_sh_$base" "--project=$PROJECT" \
      "--zone=$ZONE" --worker=all
    prompts="inputs/$base"
    pre=" && mkdir -p inputs && mv -f \"\$HOME\"/tpu_sh_$base $prompts"
  fi
  local args=(-m musiclm_jax.sample --bundle "$BUNDLE" --prompts_file "$prompts" --out "$OUT")
  args+=(${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"})
  ssh_workers all "set -o pipefail; cd $(qa "$REMOTE_DIR") && mkdir -p logs$pre && $(remote_env_prefix) $(qa .venv/bin/python "${args[@]}") 2>&1 | tee logs/$LOG_NAME.log"
}

do_logs() {
  ssh_workers "${WORKER:-0}" "cd $(qa "$REMOTE_DIR") && tail -n $LINES -F logs/$LOG_NAME.log"
}

do_status() {
  gc compute tpus queued-resources describe "$TPU_NAME" "--project=$PROJECT" "--zone=$ZONE"
  local state
  state="$(qr_state)"
  log "queued resource $TPU_NAME: $state"
  [[ "$state" == ACTIVE ]] || return 0
  # shellcheck disable=SC2016  # expanded on the worker
  ssh_workers all "cd $(qa "$REMOTE_DIR") 2>/dev/null || { echo \"\$(hostname): no $REMOTE_DIR (run setup)\"; exit 0; }; found=0; for p in logs/*.pid; do [ -e \"\$p\" ] || continue; found=1; n=\"\${p%.pid}\"; if kill -0 -- -\"\$(cat \"\$p\")\" 2>/dev/null; then s=running; elif [ -f \"\$n.rc\" ]; then s=\"exited \$(cat \"\$n.rc\")\"; else s=stopped; fi; echo \"\$(hostname) \${n#logs/}: \$s | \$(tail -n 1 \"\$n.log\" 2>/dev/null)\"; done; [ \$found = 1 ] || echo \"\$(hostname): no jobs\""
}

do_delete() {
  if ! is_true "$YES" && ! is_true "$DRY_RUN"; then
    [[ -t 0 ]] || fail "refusing to delete $TPU_NAME without --yes (stdin is not a terminal)"
    local answer=""
    read -r -p "Delete queued resource $TPU_NAME and its TPU VMs (project $PROJECT, zone $ZONE)? [y/N] " answer
    [[ "$answer" == [yY]* ]] || fail "not deleted"
  fi
  local delete_cmd=(compute tpus queued-resources delete "$TPU_NAME" "--project=$PROJECT" "--zone=$ZONE" --force --quiet)
  if is_true "$ASYNC"; then delete_cmd+=(--async); fi
  gc "${delete_cmd[@]}"
}

do_run() {
  ssh_workers "${WORKER:-all}" "cd $(qa "$REMOTE_DIR") && $(qa env ${ENV_VARS[@]+"${ENV_VARS[@]}"} "${EXTRA_ARGS[@]}")"
}

# Runs on a worker (started by `train`): runs COMMAND with output appended to
# LOGBASE.log and writes its exit status to LOGBASE.rc. `stop` signals the whole
# process group; the trap makes this wrapper wait for COMMAND (which checkpoints
# and exits) instead of dying first, so the exit status is still recorded.
run_job() {  # LOGBASE COMMAND...
  local base="$1" rc=0
  shift
  trap ':' TERM HUP INT
  "$@" >>"$base.log" 2>&1 </dev/null || rc=$?
  echo "$rc" >"$base.rc"
}

# ---------------------------------------------------------------------------

show_help() {
  case "$1" in
    create) usage_create ;; setup) usage_setup ;; train) usage_train ;;
    stop) usage_stop ;; sample) usage_sample ;; logs) usage_logs ;;
    status) usage_status ;; delete) usage_delete ;; run) usage_run ;;
    *) usage_main ;;
  esac
}

main() {
  if (($# == 0)); then
    usage_main >&2
    exit 2
  fi
  local sub="$1"
  shift
  case "$sub" in
    __job)
      (($# >= 2)) || die "usage: $PROG __job LOGBASE COMMAND..."
      run_job "$@"
      exit 0 ;;
    -h|--help|help)
      show_help "${1:-}"
      exit 0 ;;
    -*) die "put the command first: $PROG <command> [flags] (commands: $COMMANDS)" ;;
  esac
  [[ " $COMMANDS " == *" $sub "* ]] || die "unknown command '$sub' (commands: $COMMANDS; see $PROG --help)"
  local a
  for a in "$@"; do
    [[ "$a" != -- ]] || break
    if [[ "$a" == -h || "$a" == --help ]]; then
      show_help "$sub"
      exit 0
    fi
  done
  parse_flags "$sub" "$@"

  check_target
  case "$sub" in
    create) check_create ;;
    setup) check_setup ;;
    train) check_train ;;
    stop) LOG_NAME="${LOG_NAME:-train}"; check_log_name ;;
    sample) check_sample ;;
    logs)
      LOG_NAME="${LOG_NAME:-train}"
      check_log_name
      check_uint worker "${WORKER:-0}"
      check_uint lines "$LINES" ;;
    run)
      ((${#EXTRA_ARGS[@]} > 0)) || die "missing command: $PROG run [flags] -- COMMAND [ARGS...]"
      [[ -z "$WORKER" || "$WORKER" == all || "$WORKER" =~ ^[0-9]+$ ]] || die "--worker must be 'all' or a number, got '$WORKER'"
      check_env_vars ;;
  esac
  if [[ "$sub" != train && "$sub" != sample && "$sub" != run && ${#EXTRA_ARGS[@]} -gt 0 ]]; then
    die "'$sub' takes no arguments after --"
  fi
  check_gcloud

  WORK_TMP="$(mktemp -d "${TMPDIR:-/tmp}/tpu_sh.XXXXXX")"
  trap 'rm -rf "$WORK_TMP"' EXIT
  # qr_state's dry-run echo goes to the script's stdout through fd 3.
  exec 3>&1
  case "$sub" in
    create) do_create ;;
    setup) do_setup ;;
    train) do_train ;;
    stop) do_stop ;;
    sample) do_sample ;;
    logs) do_logs ;;
    status) do_status ;;
    delete) do_delete ;;
    run) do_run ;;
  esac
}

main "$@"
