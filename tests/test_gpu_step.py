"""The GPU step, checked on the CPU for every family's row of scripts/bench/gpu_check.py at tiny size:
the compiled step (``training.compile_model``) against the eager one, recompilations, the SDPA
kernel each attention call would get on a GPU, and gpu_check's dry run as users run it."""
import json

import pytest
import torch

from mmldlm.config import compose
from mmldlm.estimate.measure import SdpaLog, build_random, compare_compiled, example, loss_and_grads
from scripts.bench import gpu_check
from tests.helpers.common import REPO, ok, run_entry

ROWS = {r.label: r for r in gpu_check.ROWS}
DENSE_MASK = {"wedlm8b_sft"}  # WeDLM's dual stream: a 2-D mask by construction (the efficient kernel)


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict:
    return gpu_check.tiny_assets(tmp_path_factory.mktemp("tiny_backbones"))


def tiny(row, assets):
    """(config, objective with random weights, id range) of a gpu_check row at its dry-run size."""
    cfg = compose(row.config, [*gpu_check.overrides_of(row, assets), "data.data_files.train=x"], row.config_dir)
    obj, tok = build_random(cfg, "cpu")
    return cfg, obj, len(tok) - 2


def batches_of(cfg, obj, vocab) -> list[dict]:
    """Rows and lengths that change from batch to batch, padding that comes and goes."""
    B, L = cfg.training.train_batch_size, cfg.data.max_seq_len
    return [example(obj, cfg, vocab, "cpu", rows, length, padded)
            for rows, length, padded in ((B, L, False), (B + 1, L - 8, True), (B + 2, L - 4, False))]


@pytest.mark.parametrize("label", list(ROWS))
def test_attention_takes_flash_without_padding_and_never_the_math_path(label, assets):
    row = ROWS[label]
    cfg, obj, vocab = tiny(row, assets)
    unpadded, padded, _ = batches_of(cfg, obj, vocab)
    for batch, has_pads in ((unpadded, False), (padded, True)):
        with SdpaLog() as sdpa:  # bf16 autocast, as the loop runs a GPU step
            loss_and_grads(obj, obj, batch, 10, seed=0, bf16=True)
        assert sdpa.counts and "math" not in sdpa.counts, (has_pads, dict(sdpa.counts))
        if not has_pads and row.config not in DENSE_MASK:  # nothing padded: no mask, the flash kernel
            assert set(sdpa.counts) == {"flash"}, dict(sdpa.counts)


# One compiled process for the block kinds (compilation is what costs on a 2-core CI): the DiT
# (MDLM; GIDD, HDLM and the latent MDLM run the same blocks, their difference is outside them), a
# stock Llama decoder layer (AR; LatentWire's receivers), Qwen3 decoder layers with peft's LoRA under
# a 4-D mask (WeDLM fine-tuning; the bridge's backbone), the mmdit package's joint blocks (the MMDiT;
# the image MMDiT's), the last under inductor's kernels. Every row, LatentWire's encoder layers and
# the image MMDiT included: scripts/bench/bench_compile.py (its losses, docs/performance.md).
COMPILED = {"MDLM small (OWT recipe)": "eager", "AR small (OWT recipe)": "eager",
            "WeDLM-8B SFT LoRA r16, wedlm objective": "eager", "MMDiT base 1024 x 24, l2t": "inductor"}


@pytest.mark.slow
def test_compiled_steps_equal_eager_and_a_new_batch_shape_compiles_nothing(assets):
    """``training.compile_model`` per block against the eager step: the same loss and gradients on
    the same weights, batches and seeds, with batches whose rows, length and padding change. The
    ``eager`` backend runs dynamo's capture (fullgraph: a graph break fails) without generating
    kernels. The MMDiT under inductor is issue 29's bug: compiled whole, its noise levels and masks
    were drawn from inductor's generator, not eager's (first-step L2T loss 9.988 against 9.680)."""
    for label, backend in COMPILED.items():
        cfg, obj, vocab = tiny(ROWS[label], assets)
        result = compare_compiled(obj, batches_of(cfg, obj, vocab), backend=backend)
        rtol, atol = (1e-4, 1e-6) if backend == "eager" else (1e-3, 1e-5)  # inductor: other kernels, fp32
        for (loss_e, grads_e), (loss_c, grads_c) in zip(result.eager, result.compiled):
            torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-5, msg=lambda m, label=label: f"{label}: {m}")
            assert grads_c.keys() == grads_e.keys() and grads_e, label
            for name in grads_e:
                torch.testing.assert_close(grads_c[name], grads_e[name], rtol=rtol, atol=atol,
                                           msg=lambda m, name=name, label=label: f"{label}, {name}: {m}")
        # a graph per attention form (no mask / a key mask) per block kind: the third batch's new shape none
        assert result.graphs[1] == result.graphs[2], (label, result.graphs)


@pytest.mark.slow
def test_gpu_check_dry_run_writes_its_table_and_json(tmp_path):
    out, table = tmp_path / "rows.json", tmp_path / "table.md"
    ok(run_entry(REPO / "scripts" / "bench" / "gpu_check.py",
                 ["--dry-run", "--backend", "eager", "--steps", "1", "--only", "MDLM small",
                  "--json", str(out), "--table", str(table)], timeout=600))
    (row,) = json.loads(out.read_text())
    assert row["row"] == "MDLM small (OWT recipe)" and row["sdpa"] == {"flash": 2}  # 2 blocks, no padding
    assert row["eager"]["tokens_per_s"] > 0 and row["compiled"]["tokens_per_s"] > 0
    assert row["loss_compiled"] == pytest.approx(row["loss_eager"], rel=1e-5)
    text = table.read_text()
    assert "CPU (dry run)" in text and "commit" in text and "| MDLM small (OWT recipe) | 2 x 32 |" in text
