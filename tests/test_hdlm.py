"""HDLM process and loss against independent closed forms; the cluster dict loader; the offline cluster builder."""
import math

import numpy as np
import pytest
import torch

from mmldlm.diffusion.hdlm import HierarchicalDiffusion, load_clusters
from mmldlm.diffusion.masked_text import MaskedTextDiffusion

V, MASK, PAD = 50, 49, 0


def clusters(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    cl = torch.randint(0, n, (V,), generator=g)
    cl[1:n + 1] = torch.arange(n)  # every cluster has a real token
    return cl


def process(n: int = 5, **kw) -> HierarchicalDiffusion:
    return HierarchicalDiffusion(V, MASK, clusters(n), excluded_ids=[PAD], **kw)


def closed_form(t: float, gamma: float) -> tuple[float, float, float]:
    """(alpha, c, m) from the refs' formulas; gamma = 2 in its expanded form c = 2t(1-t), m = t^2."""
    alpha = (1 - t) ** gamma
    if gamma == 1:
        return alpha, -(1 - t) * math.log(1 - t), t + (1 - t) * math.log(1 - t)
    if gamma == 2:
        return alpha, 2 * t * (1 - t), t * t
    c = gamma * (1 - t) * (1 - (1 - t) ** (gamma - 1)) / (gamma - 1)
    return alpha, c, 1 - c - alpha


@pytest.mark.parametrize("gamma", [1.0, 2.0])
@pytest.mark.parametrize("p", [0.0, 0.1])
def test_marginals_sum_to_one_and_match_the_closed_forms(gamma, p):
    n = 5
    d = process(n, gamma=gamma, p_perturb=p, simplified=p > 0)
    ts = [0.01, 0.3, 0.5, 0.9, 0.999]
    x = torch.arange(1, MASK).repeat(len(ts), 1)  # every real token, one row per t
    q = d.marginal(x, torch.tensor(ts, dtype=torch.float64)).double()
    assert q.shape == (len(ts), MASK - 1, V + n)
    assert torch.allclose(q.sum(-1), torch.ones(()).double(), atol=1e-6)
    cl = clusters(n)
    for i, t in enumerate(ts):
        alpha, c, m = closed_form(t, gamma)
        for j, tok in enumerate(x[i].tolist()):
            row = q[i, j]
            assert row[tok].item() == pytest.approx(alpha, abs=1e-6)
            assert row[MASK].item() == pytest.approx(m, abs=1e-6)
            own = int(cl[tok])
            assert row[V + own].item() == pytest.approx(c * (1 - p), abs=1e-6)
            others = [V + k for k in range(n) if k != own]
            assert torch.allclose(row[others], torch.tensor(c * p / (n - 1)).double(), atol=1e-6)
    # pads (excluded) and [MASK] are never noised: their row is their own one-hot
    q_pad = d.marginal(torch.tensor([PAD, MASK]), torch.tensor(0.5))
    assert q_pad[0, PAD] == 1 and q_pad[1, MASK] == 1


@pytest.mark.parametrize("gamma", [0.5, 1.0, 1.0 + 1e-7, 2.0, 3.0])
def test_elbo_weights_are_the_rates_of_the_marginals(gamma):
    """w_mask = m_t'/m_t and w_cluster = -alpha_t'/c_t, by central differences of the closed forms (upstream's
    mask weight lacks 1/(gamma-1) and is off for gamma not in {1, 2})."""
    d = process(gamma=gamma)
    for t in (0.05, 0.3, 0.7, 0.95):
        h = 1e-6
        g = 1.0 if gamma == 1.0 + 1e-7 else gamma  # the gamma != 1 branch must agree with the log form near 1
        a0, c0, m0 = closed_form(t - h, g)
        a1, c1, m1 = closed_form(t + h, g)
        alpha, c, m, w_mask, w_cluster = (v.item() for v in d.schedule(torch.tensor(t)))
        assert (alpha, c, m) == pytest.approx(closed_form(t, g), rel=1e-6)
        assert w_mask == pytest.approx((m1 - m0) / (2 * h) / m, rel=1e-5)
        assert w_cluster == pytest.approx(-(a1 - a0) / (2 * h) / c, rel=1e-5)
        assert w_mask > 0 and w_cluster > 0


@pytest.mark.parametrize("p", [0.0, 0.2])
def test_corrupt_matches_the_marginal(p):
    n, B, L = 5, 4, 20_000
    d = process(n, p_perturb=p, simplified=p > 0)
    cl = clusters(n)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, MASK, (B, L), generator=g)
    attn = torch.ones(B, L, dtype=torch.bool)
    attn[:, -1000:] = False
    ids[:, -1000:] = PAD
    t = torch.tensor([0.1, 0.4, 0.7, 0.95])
    z = d.corrupt(ids, attn, t, generator=g)
    assert (z[~attn] == ids[~attn]).all()  # pads unchanged
    real, zr = ids[:, :-1000], z[:, :-1000]
    N = real.shape[1]
    own = V + cl[real]
    for b in range(B):
        alpha, c, m = closed_form(t[b].item(), 1.0)
        got = {"clean": (zr[b] == real[b]).float().mean().item(), "mask": (zr[b] == MASK).float().mean().item(),
               "own": (zr[b] == own[b]).float().mean().item(),
               "wrong": ((zr[b] >= V) & (zr[b] != own[b])).float().mean().item()}
        want = {"clean": alpha, "mask": m, "own": c * (1 - p), "wrong": c * p}
        for k, pk in want.items():
            assert abs(got[k] - pk) <= 3 * math.sqrt(pk * (1 - pk) / N) + 1e-9, (b, k, got[k], pk)
    assert ((z == real.new_tensor(MASK)) | (z < V + n)).all()
    if p == 0:
        at_cluster = zr >= V
        assert (zr[at_cluster] == own[at_cluster]).all()  # cluster id is V + c(x)
    else:  # wrong clusters are uniform over the other n - 1
        wrong = (zr >= V) & (zr != own)
        counts = torch.bincount((zr[wrong] - own[wrong]) % n, minlength=n)  # offsets 1..n-1 from the own cluster
        assert counts[0] == 0
        share = counts[1:].double() / counts.sum()
        se = math.sqrt((1 / (n - 1)) * (1 - 1 / (n - 1)) / counts.sum().item())
        assert (share - 1 / (n - 1)).abs().max() <= 3 * se


def test_one_cluster_gamma_one_is_mdlm_in_expectation():
    """n = 1, gamma = 1: the [MASK] term is exactly 0, the cluster token's term is CE / c_t, and the expected
    per-token ELBO under q_t equals MDLM's (t * 1/t * CE) for the same logits."""
    d = HierarchicalDiffusion(V, MASK, torch.zeros(V, dtype=torch.long))  # every token in cluster 0
    torch.manual_seed(0)
    B, L = 3, 6
    ids = torch.randint(0, MASK, (B, L))
    attn = torch.ones(B, L, dtype=torch.bool)
    t = torch.tensor([0.2, 0.5, 0.8])
    logits = torch.randn(B, L, V) * 3
    noisy = torch.where(torch.arange(L) % 2 == 0, MASK, V).expand(B, L)  # even: [MASK], odd: the cluster token
    out = d.terms(logits, ids, noisy, attn, t)
    assert torch.isfinite(out.elbo).all() and (out.elbo >= 0).all()
    mdlm = MaskedTextDiffusion(MASK, eps=0.0)
    ce = torch.nn.functional.cross_entropy(mdlm.subs(logits).transpose(1, 2), ids, reduction="none")  # [B, L]
    for b in range(B):
        tb = t[b].item()
        c = -(1 - tb) * math.log(1 - tb)
        assert torch.allclose(out.elbo[b, 0::2], torch.zeros(L // 2), atol=1e-6)
        assert torch.allclose(out.elbo[b, 1::2], ce[b, 1::2] / c, rtol=1e-5)
        # E_q[HDLM] = q(cluster) * CE / c_t + q(mask) * 0; E_q[MDLM] = mask_prob * CE * 1/t
        q = d.marginal(ids[b, 1::2], t[b])
        expect_hdlm = q[:, V] * out.elbo[b, 1::2] + q[:, MASK] * out.elbo[b, 0::2]
        expect_mdlm = mdlm.mask_prob(t[b]) * mdlm.loss_weight(t[b]) * ce[b, 1::2]
        assert torch.allclose(expect_hdlm, expect_mdlm, rtol=1e-5)
        assert torch.allclose(expect_mdlm, ce[b, 1::2], rtol=1e-5)


def _batch(d, seed=0, B=6, L=40):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, MASK, (B, L), generator=g)
    attn = torch.ones(B, L, dtype=torch.bool)
    attn[0, 30:] = False
    ids[0, 30:] = PAD
    t = torch.linspace(0.05, 0.95, B)
    return ids, attn, t, d.corrupt(ids, attn, t, generator=g)


def test_strict_elbo_is_nonnegative_zero_for_a_perfect_model_and_weights_are_clipped():
    d = process()
    ids, attn, t, z = _batch(d)
    out = d.terms(torch.randn(*ids.shape, V) * 4, ids, z, attn, t)
    assert (out.elbo >= 0).all() and out.elbo[attn & (z != ids)].gt(0).all()
    assert (out.elbo[~attn] == 0).all() and (out.loss[~attn] == 0).all() and (out.elbo[z == ids] == 0).all()
    perfect = torch.nn.functional.one_hot(ids, V).float() * 40
    assert d.terms(perfect, ids, z, attn, t).elbo.abs().max() < 1e-5
    # one [MASK] at t = 0.9: ELBO weight -log(0.1)/m = 3.44, training weight clipped to max_loss_weight = 2
    m = 0.9 + 0.1 * math.log(0.1)
    one = d.terms(torch.randn(1, 1, V), ids[:1, :1], torch.tensor([[MASK]]), attn[:1, :1], torch.tensor([0.9]))
    assert one.loss.item() == pytest.approx(one.elbo.item() * 2 / (-math.log(0.1) / m), rel=1e-5)
    # by hand at t = 0.3, gamma = 2, x = token 2 (cluster 1): [MASK] -> -log p(c), cluster -> -log p(x | c)
    d2 = process(gamma=2.0, max_loss_weight=100.0)
    lg = torch.randn(1, 2, V, dtype=torch.float64) * 2
    out = d2.terms(lg.float(), torch.full((1, 2), 2), torch.tensor([[MASK, V + 1]]), torch.ones(1, 2, dtype=torch.bool),
                   torch.tensor([0.3]))
    lg[..., [MASK, PAD]] = -math.inf
    prob = lg.softmax(-1)[0]
    pc = prob[:, clusters(5) == 1].sum(-1)
    _, c, m = closed_form(0.3, 2.0)  # alpha' = -2(1 - t), m' = 2t
    want = torch.stack([2 * 0.3 / m * -pc[0].log(), 2 * (1 - 0.3) / c * -(prob[1, 2] / pc[1]).log()])
    assert torch.allclose(out.elbo[0].double(), want, rtol=1e-4) and torch.allclose(out.loss, out.elbo)


def test_simplified_equals_strict_at_xi_one_and_the_xi_09_config_trains():
    strict, simple = process(), process(simplified=True)
    ids, attn, t, z = _batch(strict, seed=1)
    logits = torch.randn(*ids.shape, V) * 3
    a, b = strict.terms(logits, ids, z, attn, t), simple.terms(logits, ids, z, attn, t)
    assert torch.allclose(a.elbo, b.elbo, atol=1e-4, rtol=1e-5)
    # upstream's hdlm-small-cluster_64-gamma_1.0-xi_0.9: simplified + force_transitting_within (asserted there)
    d = process(p_perturb=0.1, simplified=True, force_transitting_within=True)
    ids, attn, t, z = _batch(d, seed=2)
    assert ((z >= V) & (z != V + clusters(5)[ids])).any()  # some wrong clusters to score
    assert clusters(5)[1] == 0  # token 1 is in cluster 0 (used by hand below)
    logits = (torch.randn(*ids.shape, V) * 3).requires_grad_()
    out = d.terms(logits, ids, z, attn, t)
    assert torch.isfinite(out.elbo).all() and torch.isfinite(out.loss).all() and (out.elbo >= 0).all()
    assert all(torch.isfinite(v) for v in out.metrics.values()) and out.metrics["frac_wrong_cluster"] > 0
    out.loss.sum().backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    # by hand at t = 0.6 for x = token 1 (cluster 0): [MASK], its own cluster, a wrong cluster
    xi, n, t0 = 0.9, 5, 0.6
    lg = torch.randn(1, 3, V, dtype=torch.float64) * 2
    out = d.terms(lg.float(), torch.ones(1, 3, dtype=torch.long), torch.tensor([[MASK, V, V + 3]]),
                  torch.ones(1, 3, dtype=torch.bool), torch.tensor([t0]))
    lg[..., [MASK, PAD]] = -math.inf
    prob = lg.softmax(-1)[0]
    pc = prob[:, clusters(n) == 0].sum(-1)
    r = (1 - xi) / (xi * (n - 1))
    ell = -torch.log(pc + r * (1 - pc))
    _, c, m = closed_form(t0, 1.0)
    w_mask, w_cluster = -math.log(1 - t0) / m, 1 / c
    want = [w_mask * xi * ell[0], w_cluster * (-prob[1, 1].log() - ell[1]), w_cluster * -prob[2, 1].log()]
    assert torch.allclose(out.elbo[0].double(), torch.stack(want), rtol=1e-4)
    with pytest.raises(ValueError, match=r"model\.p_perturb.*loss\.simplified"):
        process(p_perturb=0.1)
    with pytest.raises(ValueError, match="gamma"):
        process(gamma=0.0)


def test_load_clusters_errors_name_the_file_and_the_reason(tmp_path):
    good = clusters(5)
    torch.save(good, tmp_path / "ok.pt")
    np.save(tmp_path / "ok.npy", good.numpy())
    assert torch.equal(load_clusters(tmp_path / "ok.pt", V), good)
    assert torch.equal(load_clusters(str(tmp_path / "ok.npy"), V), good)
    torch.save(good[:40], tmp_path / "short.pt")
    with pytest.raises(ValueError, match=r"short\.pt.*40 entries.*50 tokens.*another tokenizer"):
        load_clusters(tmp_path / "short.pt", V)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}] * V, dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"obj\.npy.*refused.*allow_pickle=False"):
        load_clusters(tmp_path / "obj.npy", V)
    with pytest.raises(ValueError, match=r"missing\.pt.*not found"):
        load_clusters(tmp_path / "missing.pt", V)
    np.save(tmp_path / "float.npy", good.numpy().astype(np.float32))
    with pytest.raises(ValueError, match="not a 1-D integer array"):
        load_clusters(tmp_path / "float.npy", V)
    np.save(tmp_path / "gap.npy", np.where(good.numpy() == 2, 4, good.numpy()))
    with pytest.raises(ValueError, match=r"not contiguous.*empty cluster.*\[2\]"):
        load_clusters(tmp_path / "gap.npy", V)


@pytest.mark.slow
def test_build_clusters_on_minilm_embeddings(tmp_path, tokenizer_path, capsys):
    from baseline.build_clusters import main

    out = tmp_path / "minilm_8.pt"
    assert main(["--model", tokenizer_path, "--n-clusters", "8", "--out", str(out), "--iters", "3"]) == 0
    ids = load_clusters(out, 30522)
    assert ids.shape == (30522,) and torch.bincount(ids).gt(0).sum() == 8 and ids.max() == 7
    assert np.load(tmp_path / "minilm_8_centroids.npy").shape == (8, 384)
    assert "8 clusters over 30522 tokens" in capsys.readouterr().out
    d = HierarchicalDiffusion(30522, 103, ids, excluded_ids=[0])  # bert: [MASK] 103, [PAD] 0
    assert d.n_clusters == 8 and d.num_states == 30530
