"""The estimator against reality where this machine has it: the traced peak of a training step
against the peak the PyTorch profiler records for the same step run for real on the CPU, and the
traced FLOPs against the analytic count of a dense transformer; the CLI's JSON."""
import json

import numpy as np
import pytest
import torch

from mmldlm.config import compose
from mmldlm.estimate.__main__ import estimate
from mmldlm.estimate.trace import train_step
from mmldlm.objective import lookup
from mmldlm.sources import open_sources
from mmldlm.train.optim import build_optimizer
from tests.helpers.common import run_module

SHAPE = ["training.train_batch_size=4", "data.max_seq_len=64", "training.dtype=fp32"]


def measured_peak(tmp_path, name, overrides) -> int:
    """The profiler's memory timeline peak of a real steady-state step (optimizer state present)."""
    from torch.profiler import ProfilerActivity, profile

    cfg = compose(name, [*overrides, "data.data_files.train=x"])
    torch.manual_seed(0)
    obj = lookup(cfg.objective).build(cfg, open_sources(cfg, lookup(cfg.objective), shapes_only=True)).train()
    if hasattr(obj, "t_lo"):  # a diffusion baseline: t = 1 masks every token, the selection the estimate traces
        obj.t_lo = obj.t_hi = 1.0
    batch = obj.example_batch(cfg, "cpu")
    batch["input_ids"].random_(5, 1000)
    batch["attention_mask"].fill_(True)
    batch["index"].copy_(torch.arange(len(batch["index"])))
    opt = build_optimizer([(n, p) for n, p in obj.named_parameters() if p.requires_grad], cfg.optimizer,
                          torch.device("cpu"))
    train_step(obj, batch, 1, False, opt)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        train_step(obj, batch, 2, False, opt)
    prof.export_memory_timeline(str(tmp_path / "timeline.json"), device="cpu")
    return int(np.array(json.loads((tmp_path / "timeline.json").read_text())[1]).sum(1).max())


@pytest.mark.slow
@pytest.mark.parametrize("name,model,extra,tolerance", [
    ("ar", "tiny", [], 0.03),
    # 8 x 256: large enough that a hidden vocabulary-sized temporary (the cross-entropy over a
    # transposed [B, V, L] layout, 12% of the step's peak) would show
    ("mdlm", "tiny", ["training.train_batch_size=8", "data.max_seq_len=256"], 0.03),
    ("mdlm", "small", ["training.train_batch_size=2"], 0.15)])
def test_traced_peak_matches_a_real_cpu_step(tmp_path, name, model, extra, tolerance):
    overrides = [f"model={model}", *SHAPE, *extra]
    e = estimate(name, overrides)
    real = measured_peak(tmp_path, name, overrides)
    assert abs(e.peak_bytes_per_rank - real) <= tolerance * real, (e.peak_bytes_per_rank / 2**20, real / 2**20)


def test_flops_match_the_analytic_count_of_a_dense_transformer():
    """AR (a Llama): 6 x (parameters that multiply per token: all but the input embedding) per token,
    + attention 12 x layers x T x d (QK^T and AV, forward and the two backward matmuls of each)."""
    e = estimate("ar", ["model=tiny", *SHAPE])
    cfg = compose("ar", ["model=tiny", *SHAPE, "data.data_files.train=x"])
    m, T = cfg.model, cfg.data.max_seq_len
    vocab = open_sources(cfg, lookup(cfg.objective), shapes_only=True).tokenizer
    n_matmul = e.params_total - len(vocab) * m.hidden_size  # the input embedding is a lookup
    analytic = 6 * n_matmul + 12 * m.n_blocks * T * m.hidden_size
    assert e.flops_per_token == pytest.approx(analytic, rel=0.05)


def test_cli_json_has_every_field_and_fsdp_divides_the_state():
    p = run_module("mmldlm.estimate", "--config-name", "mdlm", "--json", "--world-size", "4", "model=tiny",
                   "training.parallelism=fsdp", *SHAPE)
    assert p.returncode == 0, p.stderr[-2000:]
    got = json.loads(p.stdout)
    for key in ("params_total", "params_trainable", "flops_per_step", "peak_bytes_per_rank", "params_bytes",
                "grads_bytes", "optimizer_bytes", "activations_bytes", "temporaries_bytes", "fits_80gb",
                "fits_141gb", "tokens_per_s_per_gpu_at_assumed_mfu"):
        assert key in got, key
    one = estimate("mdlm", ["model=tiny", *SHAPE])
    assert got["params_bytes"] < one.params_bytes / 3 and got["fits_80gb"]
    e5 = json.loads(run_module("mmldlm.estimate", "--encoder", "e5", "--batch", "8", "--seq", "64", "--json").stdout)
    assert 5.5e8 < e5["params_total"] < 5.7e8 and e5["fits_80gb"]  # multilingual-e5-large: XLM-R large, 560M
    bad = run_module("mmldlm.estimate", "--config-name", "mdlm", "model.no_such_key=1")
    assert bad.returncode != 0 and "no_such_key" in bad.stderr and "Traceback" not in bad.stderr


def test_configs_that_need_files_or_a_hub_dataset_are_estimated_without_them():
    """GIDD (build-time id tables), HDLM without its cluster file (only the cluster count shapes the
    model), LM1B (a hub dataset: no data file is invented for it)."""
    for name in ("gidd", "hdlm-small-cluster_64-gamma_1.0-xi_1.0", "lm1b-hdlm-small-cluster_64-gamma_1.0-xi_1.0"):
        e = estimate(name, ["training.train_batch_size=1", "data.max_seq_len=64"])
        assert e.params_total > 1e8 and e.fits_80gb, name


def test_latentwire_and_image_configs_are_estimated_without_llms_or_a_codebook():
    """LatentWire's default LLMs (not on this machine) from their config values: 8.03 B + 7.62 B
    frozen parameters, a few M trainable; the discrete image MMDiT without its codebook file (only
    its size shapes the model) costs what the continuous one does, give or take its heads."""
    lw = estimate("latentwire", ["model.anchor_text='Answer: '", "model.max_bytes=256"])
    assert 15.6e9 < lw.params_total < 15.7e9 and lw.params_trainable < 2e7 and lw.flops_per_step > 0
    cont, disc = (estimate(n, ["training.train_batch_size=2", "model=tiny"]) for n in ("image_continuous",
                                                                                   "image_discrete"))
    assert disc.params_total > 0 and 0.5 < disc.flops_per_step / cont.flops_per_step < 2
