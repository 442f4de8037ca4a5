#!/usr/bin/env bash
# Baselines on the shared loop (baseline/train.py): prefetch the tokenizer, then train offline.
#   DOWNLOAD_ONLY=1 bash scripts/run_baseline.sh
#   TRAIN_JSON=data/train_data.json NUM_STEPS=5000 bash scripts/run_baseline.sh [overrides]
# CONFIG_NAME (t2l_regression) MODEL_ID = tokenizer repo (bert-base-uncased) LOCAL_MODEL_DIR
# (./local_models/bert-base-uncased) DATA_ROOT TRAIN_JSON VAL_JSON DTYPE TRAIN_BATCH_SIZE
# NUM_STEPS LR RUN_NAME SAVE_DIR RESUME USE_WANDB WANDB_PROJECT WANDB_ENTITY + scripts/lib/launch.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/launch.sh"

export MODEL_ID=${MODEL_ID:-bert-base-uncased}
export LOCAL_MODEL_DIR=${LOCAL_MODEL_DIR:-./local_models/bert-base-uncased}
export MODEL_ALLOW_PATTERNS=${MODEL_ALLOW_PATTERNS:-"*.json *.txt *.model"}
if [ -n "${DATA_ROOT:-}" ]; then TRAIN_JSON=${TRAIN_JSON:-$DATA_ROOT/train_data.json}; fi
USE_WANDB=${USE_WANDB:+true}

mmldlm_override LOCAL_MODEL_DIR data.tokenizer_name
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

mmldlm_launch baseline/train.py --config-name "${CONFIG_NAME:-t2l_regression}" -- "$@"
