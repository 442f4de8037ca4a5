"""Samples from a baseline or bridge checkpoint (the users' command, the original's keys):

    python baseline/eval/generate_samples.py path=RUN_OR_CKPT samples_path=samples.pt num_samples=256 \\
        num_denoising_steps=512 batch_size=16 [seed=0] [length=...] [temperature=1.0] [sampler=ddpm]

MDLM: ancestral (ddpm) or ddpm_cache (only for models trained without time conditioning); GIDD:
its posterior sampler (min_p); HDLM: the two-stage sampler; AR: ancestral with a KV cache (top_p);
the WeDLM bridge: AR from each latent's prefix (backbone_dir=DIR names its frozen backbone); the
MMDiT: L2T through its own sampler (sampler=ancestral | confidence; default the run's
sample.l2t_sampler). Latent models take latents=FILE.npy ([N, D] or [N, K, D]; one sample per row).
Other families (image, LatentWire, fine-tune, text->latent regression) are refused in one line
that names the CLI that samples them. Draws are float64.
The file (torch.save; read with torch.load(weights_only=True), no pickled objects) holds ids [N, L],
the decoded text (special tokens kept) and a header: checkpoint, step, objective, sampler, steps,
precision, seed, length, temperature, EMA. samples_dir= (the original README's spelling) is
accepted: a directory gets samples.pt inside.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from mmldlm.eval.cli import CheckpointKeys


@dataclass
class GenerateArgs(CheckpointKeys):
    path: str = field(metadata={"help": "a run directory (its latest checkpoint), a checkpoint_step_N path or an "
                                        "export (python -m mmldlm.export)"})
    samples_path: str = field(default="samples.pt", metadata={"help": "output file (samples_dir= accepted)"})
    num_samples: int = field(default=16, metadata={"min": 1, "help": "sequences to draw"})
    num_denoising_steps: int = field(default=128, metadata={"min": 1, "help": "sampler steps (diffusion models)"})
    batch_size: int = field(default=16, metadata={"min": 1, "help": "sequences per forward batch"})
    seed: int = field(default=0, metadata={"help": "the generator's seed: same seed, same samples"})
    length: Optional[int] = field(default=None, metadata={"min": 1,
                                                           "help": "tokens per sample (default model.max_seq_len)"})
    temperature: float = field(default=1.0, metadata={"min": 0.0, "help": "0 = argmax"})
    top_p: float = field(default=1.0, metadata={"above": 0.0, "max": 1.0,
                                                "help": "AR and the bridge: draw from the top-p nucleus"})
    min_p: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0,
                                                "help": "GIDD: drop tokens below min_p x the top probability"})
    sampler: str = field(default="ddpm", metadata={"help": "MDLM: ddpm | ddpm_cache; MMDiT: ancestral | confidence"})
    latents: Optional[str] = field(default=None, metadata={"help": "latent models: a .npy of latents, one per sample"})


def main(argv: list[str] | None = None) -> Path:
    import torch

    from mmldlm.data.records import read_latent_input
    from mmldlm.eval.cli import parse_keys, resolve_device
    from mmldlm.io import write_atomic
    from mmldlm.train.rebuild import open_saved

    args = parse_keys(GenerateArgs, argv, __doc__, aliases={"samples_dir": "samples_path"})
    out = Path(args.samples_path)
    if out.is_dir() or not out.suffix:
        out = out / "samples.pt"
    device = resolve_device(args.device)
    saved = open_saved(args.path)  # a run, a checkpoint or an export
    ckpt = saved.path
    objective, tok, cfg = args.rebuild(saved, device, "python baseline/eval/generate_samples.py", needs="generate")
    length = args.length or cfg.model.max_seq_len
    latents = None
    if args.latents:
        if cfg.model.get("latent_dim") is None:
            raise ValueError(f"latents={args.latents}: {cfg.objective} models take no latents")
        latents = torch.from_numpy(read_latent_input(args.latents, cfg.model.latent_dim, multi=True))
        if latents.shape[0] < args.num_samples:
            raise SystemExit(f"latents={args.latents} holds {latents.shape[0]} rows, fewer than "
                             f"num_samples={args.num_samples}")
    gen = torch.Generator(device=device).manual_seed(args.seed)
    ids = []
    for start in range(0, args.num_samples, args.batch_size):
        n = min(args.batch_size, args.num_samples - start)
        lat = None if latents is None else latents[start: start + n].to(device)
        ids.append(objective.generate(num_samples=n, length=length, steps=args.num_denoising_steps,
                                      temperature=args.temperature, top_p=args.top_p, min_p=args.min_p,
                                      sampler=args.sampler, generator=gen, latents=lat).cpu())
        print(f"{start + n}/{args.num_samples} samples", flush=True)
    ids = torch.cat(ids)
    model_dtypes = "+".join(sorted({str(p.dtype).removeprefix("torch.") for p in objective.parameters()}))
    header = {"checkpoint": str(ckpt), "step": saved.step, "objective": cfg.objective,
              "sampler": objective.sampler_name(args.sampler), "steps": args.num_denoising_steps,
              "precision": f"float64 categorical draws, {model_dtypes} model", "seed": args.seed, "length": length,
              "temperature": args.temperature, "top_p": args.top_p, "min_p": args.min_p, "ema": objective.ema_weights,
              "tokenizer": str(cfg.data.tokenizer_name)}
    text = tok.batch_decode(ids.tolist(), skip_special_tokens=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, lambda f: torch.save({"ids": ids, "text": text, "header": header}, f))
    print(f"wrote {len(ids)} samples to {out}")
    return out


if __name__ == "__main__":
    from mmldlm.eval.cli import run_cli

    run_cli(main)
