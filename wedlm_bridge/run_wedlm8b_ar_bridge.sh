#!/usr/bin/env bash
# WeDLM-8B AR latent bridge: prefetch the backbone (login node: DOWNLOAD_ONLY=1), then train
# offline under torchrun. Every variable is optional; extra arguments are Hydra overrides.
#
#   DOWNLOAD_ONLY=1 bash wedlm_bridge/run_wedlm8b_ar_bridge.sh           # login node, internet
#   TASK=t2l NUM_STEPS=20000 bash wedlm_bridge/run_wedlm8b_ar_bridge.sh   # compute node, offline
#
# MODEL_ID (tencent/WeDLM-8B-Base) MODEL_REVISION LOCAL_MODEL_DIR (./local_models/wedlm-8b)
# DATA_ROOT TRAIN_JSON (DATA_ROOT/train_data.json) VAL_JSON DTYPE TASK (t2l|l2t|joint)
# TRAIN_BATCH_SIZE NUM_STEPS LR RUN_NAME SAVE_DIR RESUME INIT_FROM (a previous stage's run dir)
# LORA_R (>0: LoRA adapters) FREEZE_BACKBONE ACT_CKPT (activation checkpointing) USE_WANDB WANDB_PROJECT WANDB_ENTITY
# WANDB_DIR (WANDB_MODE is read by wandb) HF_TOKEN HF_ENDPOINT PREFETCH_RETRIES PREFETCH_BACKOFF
# NPROC_PER_NODE NNODES NODE_RANK MASTER_ADDR MASTER_PORT DOWNLOAD_ONLY DRY_RUN PYTHON
# See scripts/lib/launch.sh for how topology and prefetch are derived.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib/launch.sh"

export MODEL_ID=${MODEL_ID:-tencent/WeDLM-8B-Base}
export LOCAL_MODEL_DIR=${LOCAL_MODEL_DIR:-./local_models/wedlm-8b}
export MODEL_ALLOW_PATTERNS=${MODEL_ALLOW_PATTERNS:-"*.json *.safetensors *.txt *.model *.tiktoken *.py"}
mmldlm_override MODEL_ID model.pretrained_model_name_or_path
mmldlm_override LOCAL_MODEL_DIR model.pretrained_local_dir
mmldlm_override TASK training.task
mmldlm_override INIT_FROM training.init_from
mmldlm_override LORA_R model.lora_r
mmldlm_override FREEZE_BACKBONE model.freeze_backbone
mmldlm_override ACT_CKPT model.activation_checkpointing
mmldlm_training_overrides

mmldlm_launch wedlm_bridge/train_wedlm_ar_bridge.py --config-name wedlm8b_ar_bridge -- "$@"
