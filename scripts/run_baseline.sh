#!/usr/bin/env bash
# Text-diffusion baselines on the shared loop (baseline/train.py): prefetch the tokenizer (and an HF
# dataset named by DATASET_NAME) on a login node, then train offline.
#   DOWNLOAD_ONLY=1 DATASET_NAME=openwebtext CACHE_DIR=./data bash scripts/run_baseline.sh
#   CONFIG_NAME=gidd DATASET_NAME=openwebtext CACHE_DIR=./data NUM_STEPS=5000 bash scripts/run_baseline.sh [overrides]
#   CONFIG_NAME=mdlm_latent ENTRY=baseline_latent/train_latent_dit.py DATA_ROOT=data/owt_e5 bash scripts/run_baseline.sh
# CONFIG_NAME (mdlm | gidd | ar | hdlm-* | lm1b-hdlm-* | mdlm_latent | mdlm_cross_attention | t2l_regression)
# ENTRY (baseline/train.py) MODEL_ID = tokenizer repo (gpt2; bert-base-uncased for lm1b-* and
# t2l_regression) LOCAL_MODEL_DIR (./local_models/<name>) DATASET_NAME DATASET_SUBSET CACHE_DIR
# DATA_ROOT TRAIN_JSON VAL_JSON DTYPE TRAIN_BATCH_SIZE NUM_STEPS LR RUN_NAME SAVE_DIR RESUME
# USE_WANDB WANDB_PROJECT WANDB_ENTITY + the topology/prefetch variables of scripts/lib/launch.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/launch.sh"

CONFIG_NAME=${CONFIG_NAME:-mdlm}
case "$CONFIG_NAME" in
  lm1b-*|t2l_regression) mmldlm_use_tokenizer bert-base-uncased ;;
  *) mmldlm_use_tokenizer gpt2 ;;
esac
mmldlm_override DATASET_NAME data.dataset_name
mmldlm_override DATASET_SUBSET data.dataset_subset
mmldlm_override CACHE_DIR data.cache_dir
mmldlm_training_overrides

# an HF dataset by name goes into the datasets cache on the login node, like the weights
if [ "${DOWNLOAD_ONLY:-0}" = 1 ] && [ -n "${DATASET_NAME:-}" ] && [[ ! "$DATASET_NAME" =~ ^(json|text)$ ]]; then
  mmldlm_log "DOWNLOAD_ONLY=1: fetching dataset $DATASET_NAME into ${CACHE_DIR:-the datasets cache}"
  HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0 "${PYTHON:-python}" -c \
    'import sys, datasets; datasets.load_dataset(sys.argv[1], sys.argv[2] or None, cache_dir=sys.argv[3] or None)' \
    "$DATASET_NAME" "${DATASET_SUBSET:-}" "${CACHE_DIR:-}" || mmldlm_die "could not fetch dataset $DATASET_NAME (see above)"
fi

mmldlm_launch "${ENTRY:-baseline/train.py}" --config-name "$CONFIG_NAME" -- "$@"
