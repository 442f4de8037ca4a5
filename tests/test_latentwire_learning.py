"""LatentWire's latent path learns (issue 27): the collapse diagnostics on known cases, the KD
teacher's cache (the same loss as the live teacher; refused for another receiver), and the centred
encoder gradient (``model.center_latent_grad``). The strict fit of 8 records with the tiny
receivers is not here yet: latentwire/README.md says what it reached."""
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

