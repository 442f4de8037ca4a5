"""LatentWire's latent path learns (issue 27): the collapse diagnostics on known cases, the KD
teacher's cache (the same loss as the live teacher; refused for another receiver), the centred
encoder gradient (``model.center_latent_grad``), and the shipped defaults fitting 8 records with
the tiny receivers."""
import json
import shutil
import struct

import pytest
import torch

from latentwire.diagnose import geometry
from latentwire.kd_cache import KDCache, KDCacheError, _dense, receiver_fingerprint
from mmldlm.objective import lookup
from mmldlm.sources import open_sources
from tests.helpers.lw_config import RECORDS, lw_cfg, objective_and_batch


@pytest.fixture(scope="module")
def tiny(tiny_qa_llms) -> dict:
    return tiny_qa_llms


def fingerprint(model_dir) -> str:
    cfg = lw_cfg({"llama": str(model_dir)})
    return receiver_fingerprint(open_sources(cfg, lookup("latentwire")), "llm.llama")


def test_geometry_identical_latents_are_one_point_and_distinct_ones_are_not():
    torch.manual_seed(0)
    one = torch.randn(1, 4, 16)
    same = geometry(one.expand(6, -1, -1))
    assert same.cos == pytest.approx(1.0) and same.between == pytest.approx(0.0, abs=1e-12) and same.eff_dim == 0.0
    apart = geometry(torch.randn(6, 4, 16))
    assert apart.cos < 0.3 and apart.between > 0.7 and apart.eff_dim > 3
    # a shared offset ten times the per-example part: near-identical rows, a between-share near 0.01
    near = geometry(one * 10 + torch.randn(6, 4, 16))
    assert near.cos > 0.95 and near.between < 0.05


def test_topk_entries_read_back_the_stored_probabilities_and_tail_mass():
    torch.manual_seed(0)
    logits, tau, k = torch.randn(3, 50) * 3, 2.0, 8
    values, index = logits.topk(k, -1)
    p = torch.softmax(logits / tau, -1)
    tail = 1 - p.gather(-1, index).sum(-1)
    q = torch.softmax(_dense(values, index, tail, 50, tau) / tau, -1)
    torch.testing.assert_close(q.gather(-1, index), p.gather(-1, index), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(1 - q.gather(-1, index).sum(-1), tail, atol=1e-6, rtol=1e-5)


def test_byte_stages_find_a_backbone_that_sends_one_vector_from_every_position():
    """The collapse measured in latentwire/README.md (issue 27), on a known case: a byte backbone
    whose output no longer depends on its input (the final LayerNorm's gain at 0, so every position
    holds its bias) has no energy along a source and one mean for all sources."""
    from latentwire.diagnose import byte_stages
    from latentwire.encoder import InterlinguaEncoder

    torch.manual_seed(0)
    enc = InterlinguaEncoder(["m"], 32, 4, 0, 1, 4, 2, 256)
    sources = [b"Context: Ann was born in Oslo.\nQuestion: Where?", b"Context: 1999, a red kite.\nQuestion: When?",
               b"Context: Bo keeps a cat named Pip.\nQuestion: Who?"]
    ids = torch.zeros(3, 64, dtype=torch.long)
    mask = torch.zeros(3, 64, dtype=torch.bool)
    for i, src in enumerate(sources):
        ids[i, :len(src)], mask[i, :len(src)] = torch.tensor(list(src)), True
    batches = [{"bytes": ids, "bytes_mask": mask}]
    fresh = byte_stages(enc, batches)
    assert 0.3 < fresh["position_share"] < 1 and fresh["pooled"]["between"] > 1e-4
    with torch.no_grad():
        enc.backbone.ln.weight.zero_()
        enc.backbone.ln.bias.normal_()
    flat = byte_stages(enc, batches)
    assert flat["position_share"] < 1e-10 and flat["pooled"]["between"] < 1e-10 and flat["attention"]["between"] < 1e-10


def test_kd_cache_gives_the_live_teachers_loss_and_is_refused_for_another_receiver(tiny, tmp_path):
    live, batch = objective_and_batch(lw_cfg(tiny), RECORDS)
    want_loss, want = live(batch, 0)
    cache_dir = tmp_path / "cache"
    cfg = lw_cfg(tiny, **{"loss.kd_cache": True, "loss.kd_cache_dir": str(cache_dir), "loss.kd_cache_topk": 0})
    cached, _ = objective_and_batch(cfg, RECORDS)
    for epoch in range(2):  # the first fills the cache, the second reads it
        loss, got = cached(batch, epoch)
        torch.testing.assert_close(loss, want_loss, atol=1e-5, rtol=1e-5)
        for key in ("kd/llama", "kd/qwen", "tf"):
            torch.testing.assert_close(got[key], want[key], atol=1e-5, rtol=1e-5)
    assert all((c.hits, c.misses) == (4, 4) for c in cached._kd_caches.values())
    assert len(list((cache_dir / "llama").glob("*/*.npz"))) == len(RECORDS)
    # another receiver under the same name: the qwen directory's weights are not the llama's
    other = lw_cfg({"llama": tiny["qwen"]}, **{"loss.kd_cache": True, "loss.kd_cache_dir": str(cache_dir)})
    obj, batch = objective_and_batch(other, RECORDS)
    with pytest.raises(KDCacheError, match="another receiver"):
        obj(batch, 0)
    # a copy of the same receiver has its fingerprint; an edited config or weight bytes do not
    copy = tmp_path / "llama_copy"
    shutil.copytree(tiny["llama"], copy)
    assert fingerprint(copy) == fingerprint(tiny["llama"])
    shard = copy / "model.safetensors"
    data = bytearray(shard.read_bytes())
    start = 8 + struct.unpack("<Q", bytes(data[:8]))[0]  # the first tensor's first byte
    data[start] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert fingerprint(copy) != fingerprint(tiny["llama"])
    shutil.copytree(tiny["llama"], copy, dirs_exist_ok=True)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "rope_theta": 1234.0}))
    with pytest.raises(KDCacheError, match="another receiver"):
        KDCache(cache_dir, "llama", fingerprint(copy), cached.kd_cache("llama").vocab, 4, 0, 2.0, "float32")


def test_center_grad_sends_the_encoder_only_what_makes_examples_differ():
    """The collapse's measured cause (latentwire/README.md, issue 27): the encoder's update was the
    part of the receiver's gradient common to every example. ``center_grad`` leaves the latents
    as they are and removes that part from the gradient that reaches the encoder."""
    from latentwire.encoder import center_grad

    torch.manual_seed(0)
    z = torch.randn(6, 4, 8, requires_grad=True)
    out = center_grad(z)
    torch.testing.assert_close(out, z)
    w = torch.randn(4, 8)
    (out.mean(0) * w).sum().backward()  # a loss that only sees what the examples share
    assert z.grad.abs().max() < 1e-6
    z.grad = None
    per = torch.randn(6, 4, 8)
    (center_grad(z) * per).sum().backward()
    torch.testing.assert_close(z.grad, per - per.mean(0))
    with torch.no_grad():
        assert center_grad(z) is z



@pytest.mark.slow
def test_the_shipped_defaults_fit_8_records_with_tiny_receivers(tiny, tmp_path):
    """Issue 27's fit, on the tiny receivers: the users' command with nothing set but the data and
    the run length (the default st-tokens encoder and lr) gets every record's first answer token."""
    from latentwire.cli import train_config, train_main, train_parser
    from latentwire.data import load_qa
    from latentwire.diagnose import _batches, first_token
    from mmldlm.sources import LoadPolicy
    from mmldlm.train.rebuild import rebuild_from_checkpoint

    run = tmp_path / "fit"
    flags = ["--models", "", "--llm", f"llama={tiny['llama']}", "--dataset", "synthetic", "--samples", "8",
             "--batch_size", "8", "--epochs", "120", "--output_dir", str(run), "logging.progress_bar=false"]
    train_main(flags)
    args, rest = train_parser().parse_known_args(flags)
    cfg = train_config(args, rest)
    assert cfg.model.encoder_type == "st-tokens"
    obj = rebuild_from_checkpoint(run, "cpu", LoadPolicy(paths={"llm.llama": tiny["llama"]}), expect="latentwire",
                                  ema=False)[0].eval()
    with torch.no_grad():
        fit = first_token(obj, "llama", _batches(cfg, obj, load_qa("synthetic", None, 8, args.data_seed)))
    assert fit.top1 == 1.0 and fit.prior_top1 < 0.5, fit


def test_st_tokens_slots_read_minilms_token_states_and_ignore_padding():
    """st-tokens: a source's latent does not depend on a longer batch-mate (pads masked in
    MiniLM and in the reader), the reader's parameters get a gradient, MiniLM stays frozen."""
    from transformers import AutoModel, AutoTokenizer

    from latentwire.encoder import STTokensEncoder, minilm_dir
    from mmldlm.data.collate import Collator

    torch.manual_seed(0)
    path = minilm_dir(None)
    enc = STTokensEncoder(["a"], d_z=32, latent_len=4, st=AutoModel.from_pretrained(path), heads=4)
    collate = Collator(AutoTokenizer.from_pretrained(path), 256)

    def latent(sources):
        tok = collate.tokenize(sources)
        return enc({"st_ids": tok.input_ids, "st_mask": tok.attention_mask})["a"]

    short = "Context: Elena Novak was born in Lisbon.\nQuestion: Where was Elena Novak born?\n"
    longer = "Context: " + "Hiro Tanaka works as a pilot. " * 6 + "\nQuestion: What is the job of Hiro Tanaka?\n"
    alone, batched = latent([short]), latent([short, longer])
    assert torch.allclose(alone[0], batched[0], atol=1e-5)
    assert (batched[0] - batched[1]).abs().max() > 1e-2
    batched.pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.reader.parameters())
    assert all(p.grad is None for p in enc.st.parameters())
