#!/usr/bin/env bash
# WeDLM-8B fine-tuning: prefetch the backbone (login node: DOWNLOAD_ONLY=1), then train offline
# under torchrun. Every variable is optional; extra arguments are Hydra overrides (they win).
#
#   DOWNLOAD_ONLY=1 bash wedlm_bridge/run_wedlm8b_finetune.sh                      # login node, internet
#   TRAIN_JSON=sft.jsonl bash wedlm_bridge/run_wedlm8b_finetune.sh                 # LoRA, WeDLM's objective
#   METHOD=full TRAIN_JSON=sft.jsonl bash wedlm_bridge/run_wedlm8b_finetune.sh     # FSDP, fp32 master, lr 3e-6
#   METHOD=qlora TRAIN_JSON=sft.jsonl bash wedlm_bridge/run_wedlm8b_finetune.sh    # nf4 base, paged 8-bit AdamW
#
# METHOD (lora | full | qlora) OBJECTIVE (wedlm | causal_lm) ACT_CKPT (activation checkpointing)
# MODEL_ID (tencent/WeDLM-8B-Instruct) MODEL_REVISION LOCAL_MODEL_DIR (./local_models/wedlm-8b-instruct)
# TRAIN_JSON VAL_JSON DTYPE TRAIN_BATCH_SIZE NUM_STEPS LR RUN_NAME SAVE_DIR RESUME USE_WANDB WANDB_PROJECT
# WANDB_ENTITY WANDB_DIR HF_TOKEN HF_ENDPOINT PREFETCH_RETRIES PREFETCH_BACKOFF
# NPROC_PER_NODE NNODES NODE_RANK MASTER_ADDR MASTER_PORT DOWNLOAD_ONLY DRY_RUN PYTHON
# See scripts/lib/launch.sh for how topology and prefetch are derived.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib/launch.sh"

export MODEL_ID=${MODEL_ID:-tencent/WeDLM-8B-Instruct}
export LOCAL_MODEL_DIR=${LOCAL_MODEL_DIR:-./local_models/wedlm-8b-instruct}
export MODEL_ALLOW_PATTERNS=${MODEL_ALLOW_PATTERNS:-"*.json *.safetensors *.txt *.model *.tiktoken *.py *.jinja"}
METHOD=${METHOD:-lora}
case "$METHOD" in
  lora) ;;
  full) LR=${LR:-3e-6}  # Tencent's SFT; 8B x 16 bytes of weights, grads and Adam state need FSDP
        MMLDLM_OVERRIDES+=(model.pretrained_model_dtype=float32 training.parallelism=fsdp) ;;
  qlora) MMLDLM_OVERRIDES+=(optimizer.name=paged_adamw_8bit) ;;
  *) mmldlm_die "METHOD=$METHOD: lora | full | qlora" ;;
esac
MMLDLM_OVERRIDES+=(finetune.method="$METHOD")
mmldlm_override MODEL_ID model.pretrained_model_name_or_path
mmldlm_override LOCAL_MODEL_DIR model.pretrained_local_dir
mmldlm_override OBJECTIVE finetune.objective
mmldlm_override ACT_CKPT model.activation_checkpointing
mmldlm_training_overrides

mmldlm_launch wedlm_bridge/train_wedlm_finetune.py --config-name wedlm8b_sft -- "$@"
