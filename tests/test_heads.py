"""Text heads without [tokens, vocab] logits (mmldlm.heads): the chunked loss and its gradients
against the whole-logits computation every family used before, fp32 on the CPU, and the largest
tensor a chunked head allocates."""
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from mmldlm import heads
from mmldlm.config import compose
from mmldlm.data.collate import mean_latent
from mmldlm.heads import head_loss, token_ce
from mmldlm.objective import lookup
from mmldlm.sources import Sources
from tests.helpers.common import make_batch


def _inputs(n=37, d=16, v=101, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g).requires_grad_()
    w, b = torch.randn(v, d, generator=g).requires_grad_(), torch.randn(v, generator=g).requires_grad_()
    return h, w, b, torch.randint(0, v, (n,), generator=g), torch.rand(n, generator=g)


def _run(rows, *inputs):
    h, w, b, tgt, wt = inputs
    out = head_loss(h, w, b, token_ce, tgt, wt, chunk_rows=rows)
    (0.3 * out.loss).backward()
    grads = [x.grad.clone() for x in (h, w, b)]
    for x in (h, w, b):
        x.grad = None
    return out, grads


@pytest.mark.parametrize("rows", [1, 5, 36, 1000])
def test_chunked_loss_reports_and_gradients_equal_the_whole_logits(rows):
    inputs = _inputs()
    whole, g_whole = _run(0, *inputs)  # chunk_rows=0: plain autograd through [N, V] logits
    chunked, g_chunked = _run(rows, *inputs)
    torch.testing.assert_close(chunked.loss, whole.loss)
    assert chunked.per_token.keys() == whole.per_token.keys() == {"loss", "correct"}
    for k in whole.per_token:
        torch.testing.assert_close(chunked.per_token[k], whole.per_token[k])
    for a, b in zip(g_chunked, g_whole):
        torch.testing.assert_close(a, b)
    with torch.no_grad():  # eval: no gradients taken, the same loss
        torch.testing.assert_close(head_loss(*inputs[:3], token_ce, *inputs[3:], chunk_rows=rows).loss, whole.loss)


def test_an_empty_selection_is_a_zero_loss_with_zero_gradients():
    h, w, b, tgt, wt = _inputs()
    out = head_loss(h[:0], w, b, token_ce, tgt[:0], wt[:0], chunk_rows=4)
    out.loss.backward()
    assert out.loss.item() == 0 and out.per_token["loss"].shape == (0,) and w.grad.abs().sum() == 0


class _Largest(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out


def test_no_tensor_of_a_chunked_head_holds_more_than_a_chunk_of_logits():
    n, v, rows = 400, 1000, 16
    h, w, b, tgt, wt = _inputs(n=n, v=v)
    with _Largest() as seen:
        head_loss(h, w, b, token_ce, tgt, wt, chunk_rows=rows).loss.backward()
    assert seen.numel <= max(rows * v, w.numel())  # a chunk of logits, or the weight's own gradient
    with _Largest() as whole:
        head_loss(h, w, b, token_ce, tgt, wt, chunk_rows=0).loss.backward()
    assert whole.numel == n * v


def test_autocast_keeps_one_low_precision_copy_of_the_head_weight_for_all_chunks():
    """Autocast caches the bf16 copy of a leaf that requires grad until its region ends: a new leaf
    per chunk kept one copy of the weight per chunk (5 here; 1.2 GiB each for Qwen's head in bf16)."""
    h, w, b, tgt, wt = _inputs(n=40, v=101)
    casts = []

    class Casts(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor) and out.dtype == torch.bfloat16 and out.shape == w.shape:
                casts.append(weakref.ref(out))
            return out

    with torch.autocast("cpu", dtype=torch.bfloat16):
        with Casts():
            head_loss(h, w, b, token_ce, tgt, wt, chunk_rows=8)
        alive = sum(r() is not None for r in casts)
    assert casts and alive <= 1, (len(casts), alive)


def test_a_trainable_head_scoring_fewer_tokens_than_its_width_takes_the_whole_logits(monkeypatch):
    """Its chunks would hold the float32 weight gradient [V, d] from the forward on: more than the
    [N, V] logits when N < d. A frozen head, or more tokens, is chunked."""
    monkeypatch.setattr(heads, "CHUNK_BYTES", 4 * 1000 * 8)  # 8 tokens a chunk

    class Rows(TorchDispatchMode):  # the most rows of any [rows, V] tensor: the logits' size
        rows = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            # [16, V]: the weight gradient's transpose (d = 16), not logits
            if isinstance(out, torch.Tensor) and out.dim() == 2 and out.shape[1] == 1000 and out.shape[0] != 16:
                self.rows = max(self.rows, out.shape[0])
            return out

    for n, trains, whole in ((15, True, True), (15, False, False), (40, True, False)):
        h, w, b, tgt, wt = _inputs(n=n, d=16, v=1000)
        w.requires_grad_(trains)
        with Rows() as seen:
            head_loss(h, w, b, token_ce, tgt, wt).loss.backward()
        assert seen.rows == (n if whole else 8), (n, trains, seen.rows)


def _seven_token_chunks(monkeypatch):
    """7 tokens a chunk at bert's 30,522 rows (many chunks, a partial last), however few the tokens."""
    monkeypatch.setattr(heads, "CHUNK_BYTES", 4 * 30522 * 7)
    monkeypatch.setattr(heads, "whole_is_leaner", lambda *_: False)


def _objective(name, tokenizer, *overrides):
    cfg = compose(name, ["data.data_files.train=x", "model=tiny", *overrides])
    torch.manual_seed(0)
    return lookup(cfg.objective).build(cfg, Sources.of_tokenizer(tokenizer))  # HDLM: clusters from the sizes


def _grads(obj, loss):
    obj.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in obj.named_parameters() if p.grad is not None}


def _assert_same(a_loss, a_grads, b_loss, b_grads):
    torch.testing.assert_close(a_loss, b_loss, rtol=1e-5, atol=1e-6)
    assert a_grads.keys() == b_grads.keys() and a_grads
    for k in a_grads:
        torch.testing.assert_close(a_grads[k], b_grads[k], rtol=1e-4, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")


BASELINE = ["model.hidden_size=64", "model.n_heads=2", "model.n_blocks=2", "model.max_seq_len=64"]


@pytest.mark.parametrize("name,extra", [("mdlm", []), ("gidd", ["model.p_uniform=0.1"]),
                                        ("hdlm-small-cluster_64-gamma_1.0-xi_1.0", [])])
def test_diffusion_baselines_train_on_the_whole_logits_loss(name, extra, tokenizer, paragraphs, monkeypatch):
    _seven_token_chunks(monkeypatch)
    obj = _objective(name, tokenizer, *BASELINE, *extra)
    batch = make_batch(tokenizer, paragraphs, dim=4, b=4)
    mask, ids = batch["attention_mask"], batch["input_ids"]
    noise = obj.noise(batch, 3)
    torch.manual_seed(7)
    loss, metrics = obj(batch, 3)
    chunked = _grads(obj, loss)
    # before: the DiT's logits [B, L, V], the process's terms on all of them
    torch.manual_seed(7)
    t = noise.t
    noisy = obj.process.corrupt(ids, mask, t, noise.u) if name == "mdlm" else obj.process.corrupt(ids, mask, t)
    logits = obj.model(noisy, mask, t)[..., : obj.vocab]
    terms = obj.process.terms(logits, ids, noisy, mask, t)
    ref = terms.loss.sum() / mask.sum()
    _assert_same(loss, chunked, ref, _grads(obj, ref))
    assert metrics["elbo"] == pytest.approx(float(terms.elbo.sum() / mask.sum()), rel=1e-5)


def test_ar_baseline_trains_on_the_whole_logits_loss(tokenizer, paragraphs, monkeypatch):
    _seven_token_chunks(monkeypatch)
    obj = _objective("ar", tokenizer, *BASELINE)
    batch = make_batch(tokenizer, paragraphs, dim=4, b=3)
    loss, _ = obj(batch, 0)
    chunked = _grads(obj, loss)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    logits = obj.model(input_ids=ids, attention_mask=mask.long()).logits[:, :-1].float()
    real = mask[:, 1:] & mask[:, :-1]
    ref = F.cross_entropy(logits[real], ids[:, 1:][real])
    _assert_same(loss, chunked, ref, _grads(obj, ref))


def test_mmdit_l2t_trains_on_the_whole_logits_loss(tokenizer, paragraphs, monkeypatch):
    _seven_token_chunks(monkeypatch)
    obj = _objective("mmdit", tokenizer, "loss.loss_type=l2t", "model.latent_dim=384", "data.latent_dim=384")
    batch = make_batch(tokenizer, paragraphs, dim=384, b=4)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    x0 = mean_latent(batch).float() * obj.latent_scale
    torch.manual_seed(5)
    out = obj.l2t_pass(ids, mask, x0)
    chunked = _grads(obj, out.loss)
    torch.manual_seed(5)  # the same draws as l2t_pass: t, then the masks
    t = obj.text.sample_t(ids.shape[0], ids.device)
    noisy, masked = obj.text.corrupt(ids, mask, t)
    logits, _ = obj.model(noisy, mask, x0, t, torch.zeros_like(t), text_logits=masked)
    ref, acc = obj.text.loss(logits, ids, masked, mask, t)
    _assert_same(out.loss, chunked, ref, _grads(obj, ref))
    assert float(out.acc) == pytest.approx(float(acc))


def test_bridge_text_ce_equals_the_logits_ce(tiny_wedlm_dir, tokenizer, paragraphs, monkeypatch):
    from tests.helpers.common import make_cfg
    from wedlm_bridge.backbone import load_backbone
    from wedlm_bridge.bridge import BridgeObjective, BridgeRunConfig, shifted_text_ce

    _seven_token_chunks(monkeypatch)
    cfg = make_cfg(BridgeRunConfig, **{"model.pretrained_local_dir": str(tiny_wedlm_dir), "model.latent_dim": 16,
                                       "data.latent_dim": 16, "model.pretrained_model_dtype": "float32",
                                       "training.task": "l2t", "model.latent_prefix_len": 3, "model.max_seq_len": 128})
    torch.manual_seed(0)
    obj = BridgeObjective(cfg, tokenizer, load_backbone(str(tiny_wedlm_dir), "float32"))
    batch = make_batch(tokenizer, paragraphs, dim=16, b=3)
    ids, mask = obj.with_eos(batch["input_ids"], batch["attention_mask"])
    prefix = obj.prefix_embeds(batch["latent"])
    text = obj.text_ce(prefix, ids, mask)
    chunked = _grads(obj, text.loss)
    ref, acc = shifted_text_ce(*obj.lm_logits(obj.prefix_embeds(batch["latent"]), ids, mask))
    _assert_same(text.loss, chunked, ref, _grads(obj, ref))
    assert float(text.acc) == pytest.approx(float(acc))
