"""Train the cycle-VAE objective on CPU through the shared loop.

    python cycle_vae_impl/entrypoints/train_cycle_vae.py --synthetic [--steps 60] [--output-dir DIR] [overrides]

``--synthetic`` builds a small dataset (pydoc paragraphs; latents a fixed function of the words)
so that the run needs no data and no network. Remaining arguments are Hydra overrides.
"""
import argparse
import sys
import tempfile
from pathlib import Path

from cycle_vae_impl.harness import compose_cycle_config, offline_tokenizer_path, synthetic_dataset
from mmldlm.argtypes import positive_int
from mmldlm.train import train
from mmldlm.train.run_log import read_jsonl


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--synthetic", action="store_true", help="train on a generated dataset (required for now)")
    p.add_argument("--steps", type=positive_int, default=60)
    p.add_argument("--records", type=positive_int, default=256)
    p.add_argument("--output-dir", default=None, help="default: a temporary directory")
    args, overrides = p.parse_known_args()
    if not args.synthetic:
        p.error("pass --synthetic (real data: latentDLM_mmdit/train_mmdit_stable.py --config-name mmdit_cycle_vae)")
    out = Path(args.output_dir or tempfile.mkdtemp(prefix="cycle_vae_"))
    data = synthetic_dataset(out / "data", args.records, dim=384)
    cfg = compose_cycle_config("mmdit_cycle_vae", [
        "model=tiny", f"data.data_files.train={data}", f"data.tokenizer_name={offline_tokenizer_path()}",
        "data.val_split_ratio=0.1", "data.num_workers=0", "training.dtype=fp32", "training.train_batch_size=16",
        f"training.num_train_steps={args.steps}", "training.warmup_steps=5", "optimizer.lr=1e-3",
        f"loss.cycle_text_warmup_steps={args.steps // 4}", f"loss.cycle_latent_warmup_steps={args.steps // 4}",
        f"loss.cycle_text_ramp_steps={args.steps // 4}", f"loss.cycle_latent_ramp_steps={args.steps // 4}",
        f"logging.save_dir={out / 'runs'}", "logging.run_name=synthetic", "logging.log_freq=10",
        f"logging.eval_freq={max(1, args.steps // 2)}", f"logging.save_freq={args.steps}",
        "sample.t2l_steps=10", "sample.l2t_steps=16", *overrides])
    train(cfg)
    log = read_jsonl(out / "runs" / "synthetic" / "training_log.jsonl")
    first, last = log[0], log[-1]
    print(f"\ncycle_vae --synthetic: step {first['step']} -> {last['step']}: loss {first['loss']:.3f} -> "
          f"{last['loss']:.3f}, text {first['text_loss']:.3f} -> {last['text_loss']:.3f}, latent "
          f"{first['latent_loss']:.3f} -> {last['latent_loss']:.3f}, cycle_text {last['cycle_text_loss']:.3f}, "
          f"cycle_latent {last['cycle_latent_loss']:.3f}\n"
          + "".join(f"eval step {e['step']}: T2L2T token acc {e['t2l2t_acc']:.3f}, L2T2L cosine {e['l2t2l_cos']:.3f}\n"
                    for e in read_jsonl(out / "runs" / "synthetic" / "eval_log.jsonl") if "t2l2t_acc" in e)
          + f"run directory: {out / 'runs' / 'synthetic'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
