"""Will it fit, and how fast? GPU memory and FLOPs of any config, computed on a CPU.

    python -m mmldlm.estimate --config-name NAME [key=value ...] [--world-size N] [--json] [--mfu 0.35]
    python -m mmldlm.estimate --encoder e5 [--batch 256] [--seq 512]      (latent extraction: inference)

The objective is built at its real size from the config alone (no weights: a pretrained backbone
from its config values; no data: a batch of the configured shape) and one training step is traced:
FLOPs on the meta device, the memory peak on fake CPU tensors (mmldlm/estimate/trace.py). Per rank:
parameters, FLOPs per step and per token, the peak split into params / grads / optimizer state /
activations / temporaries, whether it fits an 80 GB H100 and a 141 GB H200 (the peak + 10% for
allocator fragmentation + 1.5 GiB of CUDA context and workspaces), and tokens/s per GPU at an
assumed MFU (an assumption, labelled). Masked-position selections count every position (the peak
when nearly everything is masked). docs/estimates.md has the table of the shipped configs.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings

from mmldlm.argtypes import nonneg_int, positive_int, unit
from mmldlm.estimate.estimate import GIB, GPUS, PEAK_FLOPS, Estimate, distribute, needed_bytes


def build_meta(cfg):
    """The objective of ``cfg`` on the meta device, from its sources' shapes (nothing loaded)."""
    import torch

    from mmldlm.objective import lookup
    from mmldlm.sources import open_sources

    entry = lookup(cfg.objective)
    sources = open_sources(cfg, entry, shapes_only=True)
    with torch.device("meta"):
        torch.manual_seed(0)
        obj = entry.build(cfg, sources)
    return obj.to("meta")  # buffers computed on the CPU at build (schedules) join the rest


def _quantized(obj, notes: list) -> tuple[int, int]:
    """(bytes saved on the frozen Linear weights a QLoRA base holds in 4 bits, the largest one's
    bf16 copy dequantised during its matmul)."""
    from torch import nn

    bits = next((m.quantized_bits for m in obj.modules() if hasattr(m, "quantized_bits")), None)
    if bits is None:
        return 0, 0
    linears = [m.weight for name, m in obj.named_modules() if isinstance(m, nn.Linear) and "lora_" not in name
               and not name.endswith("lm_head") and not m.weight.requires_grad]
    saved = sum(int(w.numel() * (w.element_size() - bits / 8)) for w in linears)
    notes.append(f"QLoRA: traced with a bf16 base, then its {len(linears)} frozen Linear weights counted at {bits} "
                 "bits (nf4 + absmax); + one dequantised bf16 weight at a time")
    return saved, max((w.numel() * 2 for w in linears), default=0)


def estimate(name: str, overrides: list[str], world: int = 1, mfu: float = 0.35, step: int | None = None,
             config_dir: str | None = None) -> Estimate:
    from mmldlm.config import ConfigError, compose
    from mmldlm.estimate.trace import Peak, count_flops, trace_memory

    try:
        cfg = compose(name, overrides, config_dir)
    except ConfigError as e:  # no data named: a placeholder, since nothing is read
        if "data.data_files.train" not in str(e):
            raise
        cfg = compose(name, [*overrides, "data.data_files.train=no-data-is-read-by-the-estimate"], config_dir)
    t = cfg.training
    bf16 = t.dtype.name == "bf16"
    step = t.num_train_steps - 1 if step is None else step  # every ramp on (cycle terms counted)
    notes: list[str] = []
    obj = build_meta(cfg)
    params_total = sum(p.numel() for p in obj.parameters())
    params_trainable = sum(p.numel() for p in obj.parameters() if p.requires_grad)
    flops = count_flops(obj, obj.example_batch(cfg), step, bf16)
    obj = build_meta(cfg)  # fresh: no meta gradients from the FLOP pass
    peaks = trace_memory(obj, lambda device: obj.example_batch(cfg, device), step, bf16, cfg.optimizer)
    saved, dequantised = _quantized(obj, notes)
    eight_bit = cfg.optimizer.name.name != "adamw"
    if eight_bit:
        notes.append(f"optimizer {cfg.optimizer.name.name}: traced as AdamW, its state counted at 8 bits")
    fsdp = t.parallelism.name == "fsdp"
    candidates = []
    for peak in peaks:  # per rank, the larger of the two moments once sharding and 4/8 bits apply
        peak = Peak(peak.params - saved, peak.grads, peak.optimizer // 4 if eight_bit else peak.optimizer,
                    peak.activations, peak.temporaries + dequantised, peak.other)
        candidates.append(distribute(peak, obj, world, fsdp, bf16, notes if not candidates else []))
    peak = max(candidates, key=lambda p: p.total)
    tokens = t.train_batch_size * cfg.data.max_seq_len
    per_token = flops / tokens
    need = needed_bytes(peak.total)
    return Estimate(
        config=name, objective=cfg.objective, world_size=world, parallelism=t.parallelism.name,
        batch_per_rank=t.train_batch_size, tokens_per_step_per_rank=tokens, params_total=params_total,
        params_trainable=params_trainable, flops_per_step=flops, flops_per_token=per_token,
        peak_bytes_per_rank=peak.total, params_bytes=peak.params, grads_bytes=peak.grads,
        optimizer_bytes=peak.optimizer, activations_bytes=peak.activations, temporaries_bytes=peak.temporaries,
        other_bytes=peak.other, fits_80gb=need <= GPUS["80gb"][1], fits_141gb=need <= GPUS["141gb"][1],
        assumed_mfu=mfu, tokens_per_s_per_gpu_at_assumed_mfu=mfu * PEAK_FLOPS["bf16" if bf16 else "fp32"] / per_token,
        notes=notes)


def verdict(e: Estimate) -> str:
    """One line: the peak and where it fits (the launchers' preflight prints it)."""
    need = needed_bytes(e.peak_bytes_per_rank) / GIB
    where = [label for key, (label, _) in GPUS.items() if getattr(e, f"fits_{key}")]
    fits = f"fits {' and '.join(where)}" if where else "fits neither an 80 GB H100 nor a 141 GB H200"
    return (f"estimate: peak {e.peak_bytes_per_rank / GIB:.1f} GiB per rank (~{need:.1f} GiB with CUDA context and "
            f"fragmentation): {fits}; {e.flops_per_step / 1e12:.1f} TFLOP per step")


def suggestion(e: Estimate) -> str:
    if e.fits_80gb:
        return ""
    return ("  to fit: a smaller training.train_batch_size with more training.gradient_accumulation_steps, "
            "model.activation_checkpointing=true (where the model has it), or training.parallelism=fsdp over more "
            "ranks")


def report(e: Estimate) -> str:
    g = lambda b: f"{b / GIB:8.2f} GiB"  # noqa: E731
    lines = [
        f"{e.config} ({e.objective}), {e.parallelism} x {e.world_size}, batch {e.batch_per_rank} per rank, "
        f"{e.tokens_per_step_per_rank} tokens per rank and step",
        f"parameters       {e.params_total / 1e6:12.2f} M total, {e.params_trainable / 1e6:.2f} M trainable",
        f"FLOPs            {e.flops_per_step / 1e12:12.2f} TFLOP per step and rank, {e.flops_per_token / 1e9:.2f} "
        "GFLOP per token (forward + backward)",
        "peak per rank:",
        f"  params         {g(e.params_bytes)}", f"  grads          {g(e.grads_bytes)}",
        f"  optimizer      {g(e.optimizer_bytes)}", f"  activations    {g(e.activations_bytes)}",
        f"  temporaries    {g(e.temporaries_bytes)}", f"  other          {g(e.other_bytes)}",
        f"  total          {g(e.peak_bytes_per_rank)}",
        verdict(e),
        f"tokens/s per GPU at an ASSUMED {e.assumed_mfu:.0%} MFU (989 TFLOP/s bf16 peak): "
        f"{e.tokens_per_s_per_gpu_at_assumed_mfu:,.0f} (an assumption, not a measurement)",
        *(f"note: {n}" for n in e.notes),
    ]
    hint = suggestion(e)
    return "\n".join(lines + ([hint] if hint else []))


def encoder_report(name: str, batch: int, seq: int, mfu: float, as_json: bool) -> str:
    from mmldlm.estimate.encoder import estimate_encoder

    r = estimate_encoder(name, batch, seq)
    peak, need = r["peak"].total, needed_bytes(r["peak"].total)
    texts_s = mfu * PEAK_FLOPS["bf16"] / r["flops_per_batch"] * batch
    out = {"encoder": name, "batch": batch, "seq": seq, "params_total": r["params"],
           "flops_per_batch": r["flops_per_batch"], "peak_bytes": peak, "params_bytes": r["peak"].params,
           "activations_bytes": r["peak"].activations, "fits_80gb": need <= GPUS["80gb"][1],
           "fits_141gb": need <= GPUS["141gb"][1], "assumed_mfu": mfu, "texts_per_s_at_assumed_mfu": texts_s}
    if as_json:
        return json.dumps(out)
    return (f"{name} encoder, batch {batch} x {seq} tokens, bf16, inference: {r['params'] / 1e6:.1f} M params, "
            f"{r['flops_per_batch'] / 1e12:.1f} TFLOP per batch, peak {peak / GIB:.2f} GiB (params "
            f"{r['peak'].params / GIB:.2f}, activations {r['peak'].activations / GIB:.2f}); "
            f"{texts_s:,.0f} texts/s per GPU at an ASSUMED {mfu:.0%} MFU (an assumption, not a measurement)")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m mmldlm.estimate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config-name", help="a shipped config (mmdit, mdlm, wedlm8b_ar_bridge, wedlm8b_sft, ...)")
    ap.add_argument("--encoder", choices=["e5"], help="latent extraction's encoder instead of a training config")
    ap.add_argument("--batch", type=positive_int, default=256, help="--encoder: texts per forward")
    ap.add_argument("--seq", type=positive_int, default=512, help="--encoder: tokens per text (padded)")
    ap.add_argument("--config-dir", default=None, help="a config directory outside the families' own "
                    "(e.g. cycle_vae_impl/configs for mmdit_cycle_vae_cluster)")
    ap.add_argument("--world-size", type=positive_int, default=1, help="ranks (FSDP divides what it shards)")
    ap.add_argument("--mfu", type=unit, default=0.35, help="the ASSUMED model FLOPs utilisation for tokens/s")
    ap.add_argument("--step", type=nonneg_int, default=None, help="the step traced (default: the last, ramps on)")
    ap.add_argument("--json", action="store_true", help="one JSON object instead of the report")
    ap.add_argument("--verdict", action="store_true", help="only the one-line verdict (the launchers' preflight)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, key=value")
    a = ap.parse_args(argv)
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")  # libraries' deprecation notes say nothing about the estimate
    from mmldlm.config import ConfigError

    started = time.perf_counter()
    if a.encoder:
        print(encoder_report(a.encoder, a.batch, a.seq, a.mfu, a.json))
        return
    if not a.config_name:
        ap.error("--config-name NAME (or --encoder e5) is required")
    try:
        e = estimate(a.config_name, a.overrides, a.world_size, a.mfu, a.step, a.config_dir)
    except ConfigError as err:
        raise SystemExit(f"error: {err}") from None
    if a.json:
        print(json.dumps(e.as_dict()))
    elif a.verdict:
        print(verdict(e) + ("\n" + suggestion(e) if suggestion(e) else ""))
    else:
        print(report(e))
        print(f"({time.perf_counter() - started:.0f} s on this CPU)", file=sys.stderr)


if __name__ == "__main__":
    main()
