# MM-LDLM launcher library: sourced by every run script (wedlm_bridge/run_wedlm8b_ar_bridge.sh,
# scripts/run_mmdit.sh, scripts/run_extract.sh, scripts/run_baseline.sh). A run script sets its
# defaults, maps its environment variables to Hydra overrides with `mmldlm_override`, and calls
# `mmldlm_launch ENTRY.py [args...]`. This file holds the logic they share:
#
#   topology   NPROC_PER_NODE (else the count of CUDA_VISIBLE_DEVICES, else `nvidia-smi -L`,
#              else 1); NNODES (else SLURM_NNODES, else 1); NODE_RANK (else SLURM_NODEID, else 0);
#              MASTER_ADDR (else the first host of `scontrol show hostnames $SLURM_JOB_NODELIST`
#              on multi-node SLURM, else 127.0.0.1); MASTER_PORT (29500). One node: --standalone.
#   prefetch   MODEL_ID -> LOCAL_MODEL_DIR via `python -m mmldlm.prefetch` (one
#              implementation; retries: PREFETCH_RETRIES, PREFETCH_BACKOFF; HF_TOKEN, HF_ENDPOINT,
#              MODEL_REVISION, MODEL_ALLOW_PATTERNS). DOWNLOAD_ONLY=1: prefetch, then exit 0.
#   offline    after prefetch: HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1.
#   DRY_RUN=1  print the exact command instead of running it.
# Extra arguments of a run script pass through as Hydra overrides.

MMLDLM_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
MMLDLM_OVERRIDES=()

mmldlm_die() { echo "[launch] error: $*" >&2; exit 1; }
mmldlm_log() { echo "[launch] $*" >&2; }

# mmldlm_override VAR hydra.key : append hydra.key=$VAR when VAR is set and non-empty.
mmldlm_override() {
  local var=$1 key=$2
  if [ -n "${!var:-}" ]; then MMLDLM_OVERRIDES+=("$key=${!var}"); fi
}

# mmldlm_flag VAR --flag : append `--flag $VAR` (argparse entrypoints) when VAR is set.
mmldlm_flag() {
  local var=$1 flag=$2
  if [ -n "${!var:-}" ]; then MMLDLM_OVERRIDES+=("$flag" "${!var}"); fi
}

# The variables every training script shares: DATA_ROOT (-> TRAIN_JSON = DATA_ROOT/train_data.json
# and VAL_JSON = DATA_ROOT/validation_data.json when present), TRAIN_JSON, VAL_JSON, DTYPE,
# TRAIN_BATCH_SIZE, NUM_STEPS, LR, RESUME, RUN_NAME, SAVE_DIR, USE_WANDB (any value -> true),
# WANDB_PROJECT, WANDB_ENTITY, WANDB_DIR.
mmldlm_training_overrides() {
  if [ -n "${DATA_ROOT:-}" ]; then
    TRAIN_JSON=${TRAIN_JSON:-$DATA_ROOT/train_data.json}
    if [ -z "${VAL_JSON:-}" ] && [ -f "$DATA_ROOT/validation_data.json" ]; then VAL_JSON=$DATA_ROOT/validation_data.json; fi
  fi
  USE_WANDB=${USE_WANDB:+true}
  mmldlm_override DATA_ROOT data.latent_data_root
  mmldlm_override TRAIN_JSON data.data_files.train
  mmldlm_override VAL_JSON data.data_files.validation
  mmldlm_override DTYPE training.dtype
  mmldlm_override TRAIN_BATCH_SIZE training.train_batch_size
  mmldlm_override NUM_STEPS training.num_train_steps
  mmldlm_override LR optimizer.lr
  mmldlm_override RESUME training.resume
  mmldlm_override RUN_NAME logging.run_name
  mmldlm_override SAVE_DIR logging.save_dir
  mmldlm_override USE_WANDB logging.use_wandb
  mmldlm_override WANDB_PROJECT logging.wandb_project
  mmldlm_override WANDB_ENTITY logging.wandb_entity
  mmldlm_override WANDB_DIR logging.wandb_dir
}

# mmldlm_use_tokenizer REPO : entrypoints that need only a tokenizer prefetch it (MODEL_ID, default
# REPO) into LOCAL_MODEL_DIR (./local_models/<name>) and read it from there (data.tokenizer_name).
mmldlm_use_tokenizer() {
  export MODEL_ID=${MODEL_ID:-$1}
  export LOCAL_MODEL_DIR=${LOCAL_MODEL_DIR:-./local_models/${MODEL_ID##*/}}
  export MODEL_ALLOW_PATTERNS=${MODEL_ALLOW_PATTERNS:-"*.json *.txt *.model"}
  mmldlm_override LOCAL_MODEL_DIR data.tokenizer_name
}

mmldlm_nproc() {
  if [ -n "${NPROC_PER_NODE:-}" ]; then echo "$NPROC_PER_NODE"; return; fi
  if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
    local ids; IFS=',' read -r -a ids <<< "$CUDA_VISIBLE_DEVICES"; echo "${#ids[@]}"; return
  fi
  if command -v nvidia-smi >/dev/null 2>&1; then
    local n; n=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
    if [ "${n:-0}" -gt 0 ]; then echo "$n"; return; fi
  fi
  echo 1
}

mmldlm_topology() {
  NPROC_PER_NODE=$(mmldlm_nproc)
  NNODES=${NNODES:-${SLURM_NNODES:-1}}
  NODE_RANK=${NODE_RANK:-${SLURM_NODEID:-0}}
  MASTER_PORT=${MASTER_PORT:-29500}
  if [ -z "${MASTER_ADDR:-}" ]; then
    if [ "$NNODES" -gt 1 ] && [ -n "${SLURM_JOB_NODELIST:-}" ]; then
      command -v scontrol >/dev/null 2>&1 || mmldlm_die "multi-node SLURM job but no scontrol on PATH: set MASTER_ADDR"
      # read every line (no `head`): a reader that stops early sends scontrol SIGPIPE, which
      # pipefail turns into exit 141 whenever scontrol is still writing
      MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)
    elif [ "$NNODES" -gt 1 ]; then
      mmldlm_die "NNODES=$NNODES needs MASTER_ADDR (the address of node rank 0) outside SLURM"
    else
      MASTER_ADDR=127.0.0.1
    fi
  fi
  [[ "$NPROC_PER_NODE" =~ ^[1-9][0-9]*$ ]] || mmldlm_die "NPROC_PER_NODE must be a positive integer, got '$NPROC_PER_NODE'"
  [[ "$NNODES" =~ ^[1-9][0-9]*$ ]] || mmldlm_die "NNODES must be a positive integer, got '$NNODES'"
  [ "$NODE_RANK" -lt "$NNODES" ] || mmldlm_die "NODE_RANK=$NODE_RANK must be below NNODES=$NNODES"
}

mmldlm_prefetch() {
  [ -n "${MODEL_ID:-}" ] || return 0
  [ -n "${LOCAL_MODEL_DIR:-}" ] || mmldlm_die "MODEL_ID=$MODEL_ID needs LOCAL_MODEL_DIR (where the weights go)"
  local args=(--repo-id "$MODEL_ID" --local-dir "$LOCAL_MODEL_DIR")
  [ -n "${MODEL_REVISION:-}" ] && args+=(--revision "$MODEL_REVISION")
  if [ -n "${MODEL_ALLOW_PATTERNS:-}" ]; then  # split on spaces, never glob (*.txt is a pattern)
    local pats; read -r -a pats <<< "$MODEL_ALLOW_PATTERNS"; args+=(--allow-patterns "${pats[@]}")
  fi
  if [ "${DRY_RUN:-0}" = 1 ] && [ "${DOWNLOAD_ONLY:-0}" != 1 ]; then
    echo "$(printf '%q ' "$MMLDLM_PYTHON" -m mmldlm.prefetch "${args[@]}")"
  elif [ "${DOWNLOAD_ONLY:-0}" = 1 ] || [ "${HF_HUB_OFFLINE:-0}" != 1 ]; then
    "$MMLDLM_PYTHON" -m mmldlm.prefetch "${args[@]}" \
      || mmldlm_die "prefetch of $MODEL_ID into $LOCAL_MODEL_DIR failed (see above); on a compute node without internet, run DOWNLOAD_ONLY=1 bash $0 on a login node first"
  else
    "$MMLDLM_PYTHON" -m mmldlm.prefetch "${args[@]}" --check \
      || mmldlm_die "HF_HUB_OFFLINE=1 and $LOCAL_MODEL_DIR is incomplete: run DOWNLOAD_ONLY=1 bash $0 on a machine with internet first"
  fi
}

# mmldlm_preflight --config-name NAME [overrides...]: the estimator's one-line verdict (GPU memory per
# rank, whether it fits an 80 GB H100 / a 141 GB H200) for the exact command, before the job starts;
# a config predicted not to fit gets the suggested fix. ESTIMATE=0 skips it; it never blocks a launch.
mmldlm_preflight() {
  [ "${ESTIMATE:-1}" != 0 ] || return 0
  local name="" rest=()
  while [ $# -gt 0 ]; do
    if [ "$1" = --config-name ]; then name=$2; shift 2; else rest+=("$1"); shift; fi
  done
  [ -n "$name" ] || return 0  # argparse entrypoints: no Hydra config to estimate
  local out
  if out=$("$MMLDLM_PYTHON" -m mmldlm.estimate --verdict --world-size $((NNODES * NPROC_PER_NODE)) \
             --config-name "$name" "${rest[@]}" 2>&1); then
    mmldlm_log "$out"
  else
    mmldlm_log "estimate unavailable (ESTIMATE=0 skips it): $(echo "$out" | tail -1)"
  fi
}

# mmldlm_launch ENTRY.py [fixed args...] -- [user args...]: prefetch, go offline, exec torchrun
# ENTRY fixed-args env-overrides user-args (the user's own arguments come last and win).
mmldlm_launch() {
  local entry=$1; shift
  local fixed=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do fixed+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  MMLDLM_PYTHON=${PYTHON:-python}
  command -v "$MMLDLM_PYTHON" >/dev/null 2>&1 || mmldlm_die "no '$MMLDLM_PYTHON' on PATH: activate the environment (bash scripts/setup_env.sh) or set PYTHON"
  mmldlm_prefetch
  if [ "${DOWNLOAD_ONLY:-0}" = 1 ]; then
    mmldlm_log "DOWNLOAD_ONLY=1: weights are in ${LOCAL_MODEL_DIR:-(none needed)}; not training"
    exit 0
  fi
  export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
  mmldlm_topology
  mmldlm_preflight "${fixed[@]}" "${MMLDLM_OVERRIDES[@]}" "$@"
  local run=("$MMLDLM_PYTHON" -m torch.distributed.run)
  if [ "$NNODES" -eq 1 ]; then
    run+=(--standalone --nproc_per_node "$NPROC_PER_NODE")
  else
    run+=(--nnodes "$NNODES" --node_rank "$NODE_RANK" --master_addr "$MASTER_ADDR"
          --master_port "$MASTER_PORT" --nproc_per_node "$NPROC_PER_NODE")
  fi
  run+=("$entry" "${fixed[@]}" "${MMLDLM_OVERRIDES[@]}" "$@")
  if [ "${DRY_RUN:-0}" = 1 ]; then
    echo "HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(printf '%q ' "${run[@]}")"
    exit 0
  fi
  mmldlm_log "$(printf '%q ' "${run[@]}")"
  cd "$MMLDLM_ROOT"
  # SLURM's --signal=USR1@N reaches every process of the step. The torchrun agent must survive
  # it (inherited SIG_IGN); the training processes install their own handler (checkpoint, exit).
  trap '' USR1
  exec "${run[@]}"
}
