#!/usr/bin/env bash
# MMDiT text<->latent diffusion: prefetch the tokenizer, then train offline under torchrun.
#   DOWNLOAD_ONLY=1 bash scripts/run_mmdit.sh
#   DATA_ROOT=data/owt_e5 LOSS_TYPE=cycle_vae CONFIG_NAME=mmdit_cycle_vae bash scripts/run_mmdit.sh
# ENTRY (latentDLM_mmdit/train_mmdit.py; or train_mmdit_stable.py) CONFIG_NAME (mmdit)
# MODEL_ID = tokenizer repo (bert-base-uncased) LOCAL_MODEL_DIR (./local_models/bert-base-uncased)
# DATA_ROOT TRAIN_JSON VAL_JSON LOSS_TYPE DTYPE TRAIN_BATCH_SIZE NUM_STEPS LR RUN_NAME SAVE_DIR
# RESUME USE_WANDB WANDB_PROJECT WANDB_ENTITY + the topology/prefetch variables of scripts/lib/launch.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/launch.sh"

export MODEL_ID=${MODEL_ID:-bert-base-uncased}
export LOCAL_MODEL_DIR=${LOCAL_MODEL_DIR:-./local_models/bert-base-uncased}
export MODEL_ALLOW_PATTERNS=${MODEL_ALLOW_PATTERNS:-"*.json *.txt *.model"}
if [ -n "${DATA_ROOT:-}" ]; then
  TRAIN_JSON=${TRAIN_JSON:-$DATA_ROOT/train_data.json}
  if [ -z "${VAL_JSON:-}" ] && [ -f "$DATA_ROOT/validation_data.json" ]; then VAL_JSON=$DATA_ROOT/validation_data.json; fi
fi
USE_WANDB=${USE_WANDB:+true}

mmldlm_override LOCAL_MODEL_DIR data.tokenizer_name
mmldlm_override DATA_ROOT data.latent_data_root
mmldlm_override TRAIN_JSON data.data_files.train
mmldlm_override VAL_JSON data.data_files.validation
mmldlm_override LOSS_TYPE loss.loss_type
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

mmldlm_launch "${ENTRY:-latentDLM_mmdit/train_mmdit.py}" --config-name "${CONFIG_NAME:-mmdit}" -- "$@"
