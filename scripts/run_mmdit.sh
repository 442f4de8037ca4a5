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

mmldlm_use_tokenizer bert-base-uncased
mmldlm_override LOSS_TYPE loss.loss_type
mmldlm_training_overrides

mmldlm_launch "${ENTRY:-latentDLM_mmdit/train_mmdit.py}" --config-name "${CONFIG_NAME:-mmdit}" -- "$@"
