"""The baselines' model, objectives and configs, in-process (fast): parameter counts against the
published ones, the MDLM loss against a hand computation, keyed noise, latent conditioning, EMA."""
import math

import pytest
import torch
import torch.nn.functional as F

from baseline.dit import DiT, dit_parameter_count
from baseline.objectives import MDLMProcess
from baseline.schema import DiTModelConfig, LatentModelConfig
from mmldlm.config import ConfigError, compose
from mmldlm.diffusion.noise import keyed_uniform
from mmldlm.sources import Sources
from tests.helpers.common import make_batch

GPT2_VOCAB = 50257 + 2  # + [PAD] and [MASK], as MDLM/GIDD's tokenizer


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("preset,hidden,blocks,heads,published", [
    ("tiny", 512, 8, 8, None), ("small", 768, 12, 12, 169.6), ("base", 1024, 24, 16, 424.5),
    ("1B", 2048, 24, 32, None)])
def test_presets_have_the_published_parameter_counts(preset, hidden, blocks, heads, published, tmp_path):
    cfg = compose("mdlm", [f"model={preset}", f"data.data_files.train={tmp_path / 'x.jsonl'}"])
    m = cfg.model
    assert (m.hidden_size, m.n_blocks, m.n_heads, m.cond_dim, m.hidden_size // m.n_heads) == (hidden, blocks, heads,
                                                                                              128, 64)
    with torch.device("meta"):  # shapes only: no memory for a 1.4B model
        model = DiT(m, GPT2_VOCAB)
    n = _count(model)
    assert n == dit_parameter_count(GPT2_VOCAB, hidden, blocks)
    if published is not None:  # GIDD README: 169.6M / 424.5M (rounding of 169.70M / 424.64M)
        assert abs(n / 1e6 - published) < 0.15, n


def test_an_inline_model_key_overrides_the_preset(tmp_path):
    cfg = compose("mdlm", ["model=tiny", "model.hidden_size=256", "model.n_heads=4",
                           f"data.data_files.train={tmp_path / 'x.jsonl'}"])
    assert (cfg.model.hidden_size, cfg.model.n_blocks, cfg.model.n_heads) == (256, 8, 4)


@pytest.mark.parametrize("overrides,message", [
    (["loss.loss_type=gidd"], "loss.loss_type"),
    (["model.hidden_size=100", "model.n_heads=3"], "model.hidden_size"),
    (["training.ema=1.0"], "training.ema"),
])
def test_config_mistakes_fail_naming_the_key(overrides, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        compose("mdlm", [f"data.data_files.train={tmp_path / 'x.jsonl'}", *overrides])


def test_hdlm_needs_its_cluster_file_and_xi_below_one_needs_the_simplified_bound(tmp_path):
    from mmldlm.objective import lookup
    from mmldlm.sources import open_sources

    base = [f"data.data_files.train={tmp_path / 'x.jsonl'}"]
    cfg = compose("hdlm-small-cluster_64-gamma_1.0-xi_1.0", base + [f"model.cluster_dict_path={tmp_path / 'no.pt'}"])
    with pytest.raises(ConfigError, match=r"model.cluster_dict_path: not found: .*no.pt.*build_clusters"):
        open_sources(cfg, lookup(cfg.objective))  # the loop's first step, before any data is read
    (tmp_path / "c.pt").write_bytes(b"")
    with pytest.raises(ConfigError, match="loss.simplified"):
        compose("hdlm-small-cluster_64-gamma_1.0-xi_0.9", base + [f"model.cluster_dict_path={tmp_path / 'c.pt'}",
                                                                   "loss.simplified=false"])


def test_mdlm_terms_match_a_hand_computation():
    """2 x 4 batch, vocab 6 (mask 5, pad 0): loss = sum over masked real tokens of CE / t, over real tokens."""
    torch.manual_seed(0)
    V, mask_id, pad = 6, 5, 0
    ids = torch.tensor([[1, 2, 3, 4], [2, 4, 0, 0]])
    attn = ids != pad
    t = torch.tensor([0.5, 0.25])
    u = torch.tensor([[0.1, 0.9, 0.3, 0.6], [0.2, 0.1, 0.0, 0.0]])  # masked: u < (1 - eps) t, real only
    proc = MDLMProcess(V, mask_id, 1e-4, excluded=[pad])
    noisy = proc.corrupt(ids, attn, t, u)
    assert noisy.tolist() == [[5, 2, 5, 4], [5, 5, 0, 0]]  # pads never masked
    logits = torch.randn(2, 4, V)
    terms = proc.terms(logits, ids, noisy, attn, t)
    expected = torch.zeros(2, 4)
    for b in range(2):
        for i in range(4):
            if noisy[b, i] == mask_id:
                z = logits[b, i].clone()
                z[[mask_id, pad]] = -math.inf  # SUBS: never [MASK]; pad is no clean token
                expected[b, i] = -(z[ids[b, i]] - torch.logsumexp(z, 0)) / t[b]
    torch.testing.assert_close(terms.elbo, expected)
    assert terms.elbo.sum() / attn.sum() == pytest.approx(float(expected.sum() / 6), rel=1e-6)
    # the 1/t weight is sigma'(t) / expm1(sigma(t)) of the log-linear schedule, to 1e-6
    tt = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    torch.testing.assert_close(proc.text.loss_weight(tt), 1 / tt, rtol=1e-6, atol=0)


def test_keyed_noise_depends_on_the_keys_only():
    c = torch.arange(100_000)
    u = keyed_uniform(c, 1, 2)
    assert torch.equal(u, keyed_uniform(c.clone(), 1, 2)) and not torch.equal(u, keyed_uniform(c, 1, 3))
    assert abs(u.mean().item() - 0.5) < 0.005 and abs(u.var().item() - 1 / 12) < 0.002
    assert torch.equal(keyed_uniform(c[500:600], 1, 2), u[500:600])  # a sub-batch sees the same numbers


def _objective(name, tokenizer, tmp_path, *overrides):
    from mmldlm.objective import lookup

    cfg = compose(name, [f"data.data_files.train={tmp_path / 'x.jsonl'}", "model=tiny", "model.hidden_size=64",
                         "model.n_heads=1", "model.n_blocks=2", "model.max_seq_len=48", *overrides])
    torch.manual_seed(0)
    return lookup(cfg.objective).build(cfg, Sources.of_tokenizer(tokenizer))


def test_one_rank_batch_split_in_two_sees_the_same_noise(tokenizer, paragraphs, tmp_path):
    """What makes 2 ranks train like 1: the noise of a record is keyed by (seed, step, record)."""
    obj = _objective("mdlm", tokenizer, tmp_path)
    batch = make_batch(tokenizer, paragraphs, dim=4, b=8)
    whole = obj.noise(batch, step=3)
    for rank in range(2):
        half = {k: v[4 * rank: 4 * rank + 4] for k, v in batch.items()}
        with _fake_rank(rank, 2):
            part = obj.noise(half, step=3)
        torch.testing.assert_close(part.t, whole.t[4 * rank: 4 * rank + 4])
        L = half["input_ids"].shape[1]
        torch.testing.assert_close(part.u[:, :L], whole.u[4 * rank: 4 * rank + 4, :L])
    # stratified: one t in each eighth of [eps, 1]
    assert sorted((whole.t * 8).floor().long().tolist()) == list(range(8))


class _fake_rank:
    def __init__(self, rank, world):
        self.rank, self.world = rank, world

    def __enter__(self):
        import torch.distributed as dist

        self.saved = dist.is_initialized, dist.get_rank, dist.get_world_size
        dist.is_initialized, dist.get_rank, dist.get_world_size = (lambda: True), (lambda: self.rank), \
            (lambda: self.world)

    def __exit__(self, *exc):
        import torch.distributed as dist

        dist.is_initialized, dist.get_rank, dist.get_world_size = self.saved


def test_pads_never_change_the_loss(tokenizer, paragraphs, tmp_path):
    obj = _objective("mdlm", tokenizer, tmp_path).eval()
    batch = make_batch(tokenizer, paragraphs, dim=4, b=4)
    loss, _ = obj(batch, 0)
    pads = ~batch["attention_mask"]
    assert pads.any()
    other = {**batch, "input_ids": torch.where(pads, torch.full_like(batch["input_ids"], 1000), batch["input_ids"])}
    loss2, _ = obj(other, 0)
    torch.testing.assert_close(loss, loss2)


def test_without_time_conditioning_the_model_ignores_t():
    m = DiTModelConfig(hidden_size=64, n_heads=1, n_blocks=1, time_conditioning=False)
    model = DiT(m, 50)
    for p in model.parameters():  # adaLN-Zero starts at zero: perturb so t could matter
        torch.nn.init.normal_(p, std=0.1)
    ids = torch.randint(0, 50, (2, 5))
    a, b = model(ids, None, torch.tensor([0.1, 0.2])), model(ids, None, torch.tensor([0.9, 0.7]))
    torch.testing.assert_close(a, b)
    m.time_conditioning = True
    model = DiT(m, 50)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    assert not torch.allclose(model(ids, None, torch.tensor([0.1, 0.2])), model(ids, None, torch.tensor([0.9, 0.7])))


@pytest.mark.parametrize("kind,cond_dim,hidden", [("adaln", 32, 64), ("adaln", 128, 64), ("cross_attention", 32, 64)])
def test_latent_conditioning_selects_its_module_for_any_sizes(kind, cond_dim, hidden):
    m = LatentModelConfig(hidden_size=hidden, n_heads=1, n_blocks=4, cond_dim=cond_dim, latent_dim=12,
                          latent_tokens=3, cross_attention_frequency=2)
    from baseline.schema import ConditioningType

    m.conditioning_type = ConditioningType[kind]
    model = DiT(m, 40, latent_dim=12)
    crosses = [b.cross is not None for b in model.blocks]
    assert crosses == ([True, False, True, False] if kind == "cross_attention" else [False] * 4)
    for p in model.parameters():  # away from the zero init, so the latent can matter
        torch.nn.init.normal_(p, std=0.1)
    ids, t = torch.randint(0, 40, (2, 6)), torch.tensor([0.3, 0.6])
    z = torch.randn(2, 12)
    out = model(ids, None, t, latent=z)
    assert out.shape == (2, 6, model.rows)
    assert not torch.allclose(out, model(ids, None, t, latent=torch.randn(2, 12)))
    if kind == "cross_attention":  # K record vectors x latent_tokens slots, with a key mask
        zk, zmask = torch.randn(2, 2, 12), torch.tensor([[True, True], [True, False]])
        mem, mask = model._memory(zk, zmask)
        assert mem.shape == (2, 6, hidden) and mask.tolist() == [[True] * 6, [True] * 3 + [False] * 3]
        # a masked-out vector does not change the output
        zk2 = zk.clone()
        zk2[1, 1] = 100.0
        torch.testing.assert_close(model(ids, None, t, zk, zmask), model(ids, None, t, zk2, zmask))


def test_ema_tracks_the_weights_and_eval_sees_it_then_the_weights_come_back():
    from mmldlm.train.ema import ema_weights, update_ema

    p = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.AdamW([p], lr=1.0)
    with ema_weights(opt, [p]):  # no EMA before the first update: the weights as they are
        assert torch.equal(p.detach(), torch.zeros(3))
    expected = None
    for _ in range(4):
        p.grad = torch.full((3,), -1.0)
        opt.step()  # AdamW: the extra "ema" key in its state does not disturb it
        update_ema(opt, [p], 0.5)
        expected = p.detach().clone() if expected is None else 0.5 * expected + 0.5 * p.detach()
    torch.testing.assert_close(opt.state[p]["ema"], expected)
    with ema_weights(opt, [p]):
        torch.testing.assert_close(p.detach(), expected)
    trained = p.detach().clone()
    assert not torch.allclose(trained, expected)
    with ema_weights(opt, [p]):
        pass
    assert torch.equal(p.detach(), trained)
    restored = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(3))], lr=1.0)
    restored.load_state_dict(opt.state_dict())  # the optimizer's checkpoint carries it
    torch.testing.assert_close(next(iter(restored.state.values()))["ema"], expected)


def test_ar_loss_is_next_token_cross_entropy_over_real_tokens(tokenizer, paragraphs, tmp_path):
    obj = _objective("ar", tokenizer, tmp_path).eval()
    batch = make_batch(tokenizer, paragraphs, dim=4, b=3)
    loss, metrics = obj(batch, 0)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    logits = obj.model(input_ids=ids, attention_mask=mask.long()).logits.float()
    total, count = 0.0, 0
    for b in range(ids.shape[0]):
        n = int(mask[b].sum())
        total += F.cross_entropy(logits[b, : n - 1], ids[b, 1:n], reduction="sum").item()
        count += n - 1
    assert loss.item() == pytest.approx(total / count, rel=1e-5)
    assert metrics["elbo"] == loss


def test_packed_rows_of_one_record_get_their_own_masks():
    from baseline.objectives import DiffusionLM

    batch = {"input_ids": torch.ones(3, 16, dtype=torch.long), "index": torch.tensor([5, 5, 6])}
    u = DiffusionLM.mask_uniforms(batch, (0, 1))
    assert not torch.equal(u[0], u[1]) and not torch.equal(u[1], u[2])
    alone = DiffusionLM.mask_uniforms({k: v[:1] for k, v in batch.items()}, (0, 1))
    assert torch.equal(alone[0], u[0])  # the first row of a record keys as an unpacked record does
