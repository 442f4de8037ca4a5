#!/usr/bin/env bash
# Baselines on the shared loop (baseline/train.py): prefetch the tokenizer, then train offline.
#   DOWNLOAD_ONLY=1 bash scripts/run_baseline.sh
#   TRAIN_JSON=data/train_data.json NUM_STEPS=5000 bash scripts/run_baseline.sh [overrides]
# CONFIG_NAME (t2l_regression) MODEL_ID = tokenizer repo (bert-base-uncased) LOCAL_MODEL_DIR
# (./local_models/bert-base-uncased) DATA_ROOT TRAIN_JSON VAL_JSON DTYPE TRAIN_BATCH_SIZE
# NUM_STEPS LR RUN_NAME SAVE_DIR RESUME USE_WANDB WANDB_PROJECT WANDB_ENTITY + scripts/lib/launch.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/launch.sh"

mmldlm_use_tokenizer bert-base-uncased
mmldlm_training_overrides

mmldlm_launch baseline/train.py --config-name "${CONFIG_NAME:-t2l_regression}" -- "$@"
