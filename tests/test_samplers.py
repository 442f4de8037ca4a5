"""The samplers of ``mmldlm.eval.samplers`` on tiny real components (DiT, GIDD / HDLM processes, a Llama), CPU."""
import pytest
import torch

from baseline.dit import DiT
from baseline.schema import DiTModelConfig
from mmldlm.diffusion.gidd import GiddDiffusion
from mmldlm.diffusion.hdlm import HierarchicalDiffusion
from mmldlm.eval.samplers import ar_sample, categorical, gidd_sample, hdlm_sample, mdlm_sample

V, MASK, PAD, B, L, N_CLUSTERS = 50, 49, 0, 3, 12, 4


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def dit(num_states: int, time_conditioning: bool = True) -> DiT:
    torch.manual_seed(0)
    m = DiT(DiTModelConfig(hidden_size=32, n_heads=1, n_blocks=1, max_seq_len=32,
                           time_conditioning=time_conditioning), num_states)
    for p in m.parameters():  # away from the zero-init output layer, so the logits depend on input and t
        torch.nn.init.normal_(p, std=0.2)
    return m.eval()


def denoiser(model: DiT):
    return lambda ids, t: model(ids, None, t)[..., :V]


def fixed(target: torch.Tensor):
    """A denoiser sure of ``target [B, L]`` whatever it sees."""
    def denoise(ids, t):
        logits = torch.full((*ids.shape, V), -1e9)
        return logits.scatter_(-1, target.unsqueeze(-1), 0.0)
    return denoise


def clusters() -> torch.Tensor:
    cl = torch.randint(0, N_CLUSTERS, (V,), generator=gen(0))
    cl[1:N_CLUSTERS + 1] = torch.arange(N_CLUSTERS)  # every cluster has a real token
    return cl


def target() -> torch.Tensor:
    return torch.randint(1, MASK, (B, L), generator=gen(7))  # no [MASK], no [PAD]


def assert_clean(out: torch.Tensor) -> None:
    assert out.shape == (B, L) and out.dtype == torch.long
    assert ((out >= 0) & (out < V) & (out != MASK) & (out != PAD)).all(), out


# ---- categorical -----------------------------------------------------------------------------------------------
def test_categorical_matches_frequencies_and_argmax_at_zero_temperature():
    p = torch.tensor([0.5, 0.0, 0.2, 0.25, 0.05])
    n = 20_000
    for kw in ({"logits": p.log().expand(n, -1)}, {"probs": (3 * p).expand(n, -1)}):  # unnormalised probs too
        draws = categorical(**kw, generator=gen(1))
        counts = torch.bincount(draws, minlength=5).double()
        assert counts[1] == 0
        expected = n * p.double()
        nz = expected > 0
        chi2 = ((counts[nz] - expected[nz]) ** 2 / expected[nz]).sum()
        assert chi2 < 20, (counts, chi2)  # 3 dof: P(chi2 > 20) ~ 2e-4
    # temperature 1/2 squares the probabilities
    draws = categorical(logits=p.log().expand(n, -1), temperature=0.5, generator=gen(2))
    q = p.double() ** 2 / (p.double() ** 2).sum()
    freq = torch.bincount(draws, minlength=5).double() / n
    assert torch.allclose(freq, q, atol=0.015), (freq, q)
    logits = torch.randn(7, 9, generator=gen(3))
    assert torch.equal(categorical(logits=logits, temperature=0.0), logits.argmax(-1))
    assert torch.equal(categorical(logits=logits, generator=gen(4)), categorical(logits=logits, generator=gen(4)))
    with pytest.raises(ValueError):
        categorical(logits=logits, probs=logits.softmax(-1))


# ---- MDLM ------------------------------------------------------------------------------------------------------
def test_mdlm_deterministic_and_clean():
    d = denoiser(dit(V))
    a = mdlm_sample(d, B, L, 8, MASK, [PAD], generator=gen(0))
    assert_clean(a)
    assert torch.equal(a, mdlm_sample(d, B, L, 8, MASK, [PAD], generator=gen(0)))
    assert not torch.equal(a, mdlm_sample(d, B, L, 8, MASK, [PAD], generator=gen(1)))
    assert_clean(mdlm_sample(d, B, L, 1, MASK, [PAD], generator=gen(0)))  # one step reveals everything


def test_mdlm_cache_equals_no_cache_without_time_conditioning():
    model = dit(V, time_conditioning=False)
    calls = []

    def d(ids, t):
        calls.append(1)
        return model(ids, None, t)[..., :V]

    a = mdlm_sample(d, B, L, 64, MASK, [PAD], generator=gen(3), cache=False)
    n_plain = len(calls)
    b = mdlm_sample(d, B, L, 64, MASK, [PAD], generator=gen(3), cache=True)
    assert torch.equal(a, b)
    assert len(calls) - n_plain < n_plain  # with 64 steps for 36 tokens some steps reveal nothing


def test_mdlm_returns_the_sequence_the_denoiser_is_sure_of():
    x = target()
    for steps in (1, 5, 100):
        assert torch.equal(mdlm_sample(fixed(x), B, L, steps, MASK, [PAD], generator=gen(steps)), x)


def test_mdlm_and_hdlm_reveal_at_the_schedule_rate():
    """After the first of 2 steps (t -> 1/2): MDLM keeps [MASK] with prob mp(1/2) / mp(1) = 1/2; HDLM keeps it
    with m_s / m_t and turns the rest into clusters (a new cluster waits for the next step to become a word)."""
    x = torch.randint(1, MASK, (200, 20), generator=gen(8))
    seen = []

    def d(ids, t):
        seen.append(ids.clone())
        return fixed(x)(ids, t)

    mdlm_sample(d, 200, 20, 2, MASK, [PAD], generator=gen(9))
    assert abs((seen[1] == MASK).double().mean().item() - 0.5) < 0.03
    proc = HierarchicalDiffusion(V, MASK, clusters(), excluded_ids=[PAD])
    seen.clear()
    hdlm_sample(d, proc, 200, 20, 2, generator=gen(9))
    _, _, m_t, _, _ = proc.schedule(torch.tensor(1 - proc.eps))
    _, _, m_s, _, _ = proc.schedule(torch.tensor(0.5))
    z = seen[1]
    assert abs((z == MASK).double().mean().item() - (m_s / m_t).item()) < 0.03
    assert torch.equal(z[z != MASK], V + proc.cluster_of[x][z != MASK])


# ---- GIDD ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("p_uniform", [0.0, 0.2])
def test_gidd_deterministic_clean_and_exact(p_uniform):
    proc = GiddDiffusion(V, MASK, p_uniform=p_uniform, excluded_ids=[PAD])
    d = denoiser(dit(V))
    a = gidd_sample(d, proc, B, L, 8, generator=gen(0))
    assert_clean(a)
    assert torch.equal(a, gidd_sample(d, proc, B, L, 8, generator=gen(0)))
    assert not torch.equal(a, gidd_sample(d, proc, B, L, 8, generator=gen(1)))
    assert_clean(gidd_sample(d, proc, B, L, 8, min_p=0.1, temperature=0.7, generator=gen(0)))
    assert_clean(gidd_sample(d, proc, B, L, 1, generator=gen(0)))
    x = target()
    assert torch.equal(gidd_sample(fixed(x), proc, B, L, 6, generator=gen(5)), x)


@pytest.mark.parametrize("p_uniform", [0.0, 0.2])
def test_gidd_posterior_reverses_the_forward_marginal(p_uniform):
    """Under a denoiser sure of x, z_s after the first step of 2 (t = 1 - eps -> s = 1/2) is distributed as the
    forward marginal q_s(. | x): the fractions of [MASK], uniform-noise and clean tokens match it."""
    proc = GiddDiffusion(V, MASK, p_uniform=p_uniform, excluded_ids=[PAD])
    x = torch.randint(1, MASK, (200, 20), generator=gen(8))
    seen = []

    def d(ids, t):
        seen.append(ids.clone())
        return fixed(x)(ids, t)

    gidd_sample(d, proc, 200, 20, 2, generator=gen(9))
    assert (seen[0] == MASK).all()
    z = seen[1]
    q = proc.marginal(x[:1, :1], torch.tensor(0.5)).double()[0, 0]  # [V] at one position
    want_mask, want_clean = q[MASK].item(), q[x[0, 0]].item()
    assert abs((z == MASK).double().mean().item() - want_mask) < 0.03
    assert abs((z == x).double().mean().item() - want_clean) < 0.03
    assert abs(((z != MASK) & (z != x)).double().mean().item() - (1 - want_mask - want_clean)) < 0.03


# ---- HDLM ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gamma", [1.0, 2.0])
def test_hdlm_deterministic_clean_and_exact(gamma):
    proc = HierarchicalDiffusion(V, MASK, clusters(), gamma=gamma, excluded_ids=[PAD])
    model = dit(proc.num_states)
    seen = []

    def d(ids, t):
        seen.append(ids.clone())
        return model(ids, None, t)[..., :V]

    a = hdlm_sample(d, proc, B, L, 8, generator=gen(0))
    assert_clean(a)
    assert any(((s >= V) & (s < proc.num_states)).any() for s in seen)  # cluster tokens did occur on the way
    assert torch.equal(a, hdlm_sample(d, proc, B, L, 8, generator=gen(0)))
    assert not torch.equal(a, hdlm_sample(d, proc, B, L, 8, generator=gen(1)))
    assert_clean(hdlm_sample(d, proc, B, L, 1, generator=gen(0)))
    assert_clean(hdlm_sample(d, proc, B, L, 8, temperature=0.0, generator=gen(0)))
    x = target()
    for steps in (1, 4, 50):
        assert torch.equal(hdlm_sample(fixed(x), proc, B, L, steps, generator=gen(steps)), x)


def test_hdlm_clusters_are_the_ones_of_the_final_words():
    """A cluster token on the way is always the cluster of the word it becomes (words drawn within it)."""
    proc = HierarchicalDiffusion(V, MASK, clusters(), excluded_ids=[PAD])
    model = dit(proc.num_states)
    seen = []

    def d(ids, t):
        seen.append(ids.clone())
        return model(ids, None, t)[..., :V]

    out = hdlm_sample(d, proc, B, L, 16, generator=gen(4))
    final_cluster = V + proc.cluster_of[out]
    for s in seen:
        is_c = s >= V
        assert torch.equal(s[is_c], final_cluster[is_c])
        clean = (s < V) & (s != MASK)
        assert torch.equal(s[clean], out[clean])


# ---- AR --------------------------------------------------------------------------------------------------------
def llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg)


def test_ar_cache_matches_no_cache_and_fills_after_eos():
    import logging

    model = llama()
    bos, eos = 1, 2
    kw = {"excluded": [PAD, MASK]}
    said = []
    hook = logging.Handler()
    hook.emit = lambda record: said.append(record.getMessage())
    logging.getLogger("transformers").addHandler(hook)  # the library's loggers do not propagate
    try:
        a = ar_sample(model, 4, 24, bos, eos, generator=gen(0), use_cache=True, **kw)
    finally:
        logging.getLogger("transformers").removeHandler(hook)
    assert not [m for m in said if "deprecated" in m], said  # the Cache API, not the legacy kwarg
    b = ar_sample(model, 4, 24, bos, eos, generator=gen(0), use_cache=False, **kw)
    assert torch.equal(a, b)
    assert torch.equal(a, ar_sample(model, 4, 24, bos, eos, generator=gen(0), **kw))
    assert not torch.equal(a, ar_sample(model, 4, 24, bos, eos, generator=gen(1), **kw))
    assert (a[:, 0] == bos).all() and not ((a == PAD) | (a == MASK)).any()
    # a model that likes EOS: every row stops early and stays at EOS
    bias = torch.zeros(V)
    bias[eos] = 3.0
    model.lm_head.register_forward_hook(lambda module, args, out: out + bias)
    c = ar_sample(model, 4, 24, bos, eos, generator=gen(2), **kw)
    for row in c:
        hits = (row[1:] == eos).nonzero()
        assert len(hits) > 0
        assert (row[1 + hits[0, 0]:] == eos).all()
    assert model.training  # mode restored


def test_ar_with_an_embedding_prefix_matches_transformers_greedy_and_its_own_uncached_run():
    """The bridge's path: input embeddings before the first id, no BOS. Greedy equals transformers'
    generate from the same inputs_embeds; sampling (tempered, top-p) is the same with and without the cache."""
    model = llama().eval()
    eos = 2
    prefix = torch.randn(3, 4, 32, generator=gen(5))
    greedy = ar_sample(model, 3, 10, None, eos, temperature=0.0, prefix=prefix)
    ref = model.generate(inputs_embeds=prefix, attention_mask=torch.ones(3, 4, dtype=torch.long), max_new_tokens=10,
                         do_sample=False, eos_token_id=eos, pad_token_id=eos)
    assert torch.equal(greedy, ref[:, :10])  # generate pads with EOS after a row's EOS, as we do
    kw = {"temperature": 0.7, "top_p": 0.9, "prefix": prefix}
    a = ar_sample(model, 3, 12, None, eos, generator=gen(0), use_cache=True, **kw)
    assert torch.equal(a, ar_sample(model, 3, 12, None, eos, generator=gen(0), use_cache=False, **kw))


def test_nucleus_keeps_the_smallest_top_set_reaching_top_p():
    from mmldlm.eval.samplers import nucleus

    probs = torch.tensor([[0.05, 0.5, 0.3, 0.15], [0.97, 0.01, 0.01, 0.01]])
    kept = nucleus(probs.log(), 0.75).isfinite()
    # row 0: 0.5 + 0.3 passes 0.75 (ids 1, 2); row 1: the top id alone
    assert kept.tolist() == [[False, True, True, False], [True, False, False, False]]
    assert nucleus(probs.log(), 1.0).isfinite().all()
