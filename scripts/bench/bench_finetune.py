"""Fine-tuning side by side in one run: the shared loop against the HF Trainer + peft (the users'
guide's recipe) on the same model, the same batches and the same optimizer, then WeDLM's objective
against causal_lm on the same tokens.

Model: a random Qwen3 in WeDLM form (--hidden x --layers, ChatML tokenizer), LoRA r 16 / alpha 32 on
q/k/v/o, dropout 0 (so that the curves can match), AdamW lr 1e-3 constant, wd 0.01, clip 1.0, fp32.
Data: the pydoc SFT set (wedlm_bridge.finetune.demo_data), batch --batch conversations, padded.
Both get the batches in the same order (the Trainer reads the shared loader's batches in sequence)
and the same LoRA initialisation (same seed). 2N steps; the second N are timed (the shared loop's
per-step log window; the Trainer's step-end callback). Repeats alternate; medians are reported.

    python scripts/bench/bench_finetune.py [--steps 20] [--repeats 3] [--hidden 256] [--layers 4] [--batch 8]
"""
from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch


def ours(tmp: Path, tiny: Path, data: Path, name: str, objective: str, args) -> tuple[list[float], float]:
    """(per-step losses, samples/s over the second half) of the shared loop."""
    from mmldlm.config import compose
    from mmldlm.train import train
    from mmldlm.train.run_log import read_jsonl

    cfg = compose("wedlm8b_sft", overrides(tiny, data, tmp, args) + [f"logging.run_name={name}",
                                                                     f"finetune.objective={objective}"])
    train(cfg)
    log = read_jsonl(tmp / name / "training_log.jsonl")
    rates = [r["samples_per_s"] for r in log[args.steps:]]
    return [r["loss"] for r in log], len(rates) / sum(1 / r for r in rates)


def overrides(tiny, data, tmp, args) -> list[str]:
    return ["model=tiny", f"model.pretrained_local_dir={tiny}", f"data.data_files.train={data}",
            f"logging.save_dir={tmp}", "finetune.method=lora", "finetune.lora_dropout=0", "finetune.packing=false",
            f"training.train_batch_size={args.batch}", f"training.num_train_steps={2 * args.steps}",
            "training.dtype=fp32", "training.warmup_steps=0", "training.lr_schedule=constant", "optimizer.lr=1e-3",
            "logging.log_freq=1", "logging.eval_freq=0", "logging.save_freq=0", "logging.progress_bar=false",
            "data.num_workers=0", "data.max_seq_len=256"]


def hf_trainer(tmp: Path, tiny: Path, data: Path, args) -> tuple[list[float], float]:
    """The guide's recipe: Trainer + peft LoRA, plain causal-LM CE on the same batches."""
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from mmldlm.config import compose
    from mmldlm.data.loader import build_data
    from mmldlm.data.tokenizer import load_tokenizer
    from mmldlm.sources import Sources
    from wedlm_bridge.backbone import load_backbone
    from wedlm_bridge.finetune.objective import collator
    from wedlm_bridge.finetune.sft_data import SFT_RECORDS

    cfg = compose("wedlm8b_sft", overrides(tiny, data, tmp, args))
    tok = load_tokenizer(str(tiny))
    collate = collator(cfg, Sources.of_tokenizer(tok))
    stream = build_data(cfg.data, cfg.training, tok, collate=collate, fields=SFT_RECORDS).train
    batches = []
    for _ in range(2 * args.steps):
        b, _ = next(stream)
        batches.append({"input_ids": b["input_ids"], "attention_mask": (b["segment"] >= 0).long(),
                        "labels": b["labels"]})
    torch.manual_seed(cfg.training.seed)  # as the loop seeds before building: the same LoRA init
    model = get_peft_model(load_backbone(str(tiny), "float32"),
                           LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM"))
    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, *a, **k):
            stamps.append(time.perf_counter())

    class InOrder(Trainer):
        def _get_train_sampler(self, train_dataset=None):
            return torch.utils.data.SequentialSampler(self.train_dataset)

    targs = TrainingArguments(output_dir=str(tmp / "hf"), max_steps=2 * args.steps, per_device_train_batch_size=1,
                              learning_rate=1e-3, weight_decay=0.01, max_grad_norm=1.0, lr_scheduler_type="constant",
                              warmup_steps=0, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
                              dataloader_num_workers=0, remove_unused_columns=False, seed=cfg.training.seed,
                              disable_tqdm=True)
    trainer = InOrder(model=model, args=targs, train_dataset=batches, data_collator=lambda items: items[0],
                      callbacks=[Stamp()])
    trainer.train()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    timed = stamps[args.steps:]
    per_step = (timed[-1] - stamps[args.steps - 1]) / len(timed)
    return losses, args.batch / per_step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    from wedlm_bridge.finetune.demo_data import write_demo
    from wedlm_bridge.tiny import make_tiny_wedlm

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        make_tiny_wedlm(tmp / "tiny", hidden=args.hidden, layers=args.layers, chat=True)
        data = write_demo(tmp / "sft.jsonl", n=79, answer_words=60)
        ratios, costs, gaps = [], [], []
        for r in range(args.repeats):
            hf_losses, hf_rate = hf_trainer(tmp, tmp / "tiny", data, args)
            our_losses, our_rate = ours(tmp, tmp / "tiny", data, f"c{r}", "causal_lm", args)
            _, wedlm_rate = ours(tmp, tmp / "tiny", data, f"w{r}", "wedlm", args)
            ratios.append(our_rate / hf_rate)
            costs.append(our_rate / wedlm_rate)
            gaps.append(max(abs(a - b) for a, b in zip(our_losses, hf_losses)))
            print(f"repeat {r}: ours {our_rate:.1f} / Trainer {hf_rate:.1f} samples/s; wedlm {wedlm_rate:.1f}; "
                  f"max |loss diff| {gaps[-1]:.2e}", flush=True)
        print(f"\nQwen3 {args.hidden}x{args.layers} LoRA r16, batch {args.batch}, {args.steps} timed steps, CPU fp32")
        print("step  shared loop  HF Trainer")
        for i, (a, b) in enumerate(zip(our_losses, hf_losses)):
            print(f"{i + 1:4d}  {a:11.5f}  {b:10.5f}")
        print(f"shared loop / HF Trainer + peft, samples/s (median): {statistics.median(ratios):.3f}")
        print(f"wedlm / causal_lm step cost (median): {statistics.median(costs):.2f}x")
        print(f"largest loss difference over the curve: {max(gaps):.2e}")


if __name__ == "__main__":
    main()
