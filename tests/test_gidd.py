"""GIDD hybrid diffusion against hand-written formulas (gidd v1.1.0, gamma = 1 closed forms)."""
import math

import pytest
import torch
import torch.nn.functional as F

from mmldlm.diffusion.gidd import GiddDiffusion

V, MASK, PAD = 20, 19, 0  # PAD is excluded: N = 18 ids the model may predict


def hand_schedule(t: float, p: float, n: int) -> tuple[float, float, float, float]:
    """(alpha_t, mask prob, uniform share per allowed id, c_t) for gamma = 1, by hand."""
    p = max(p, math.exp(-20))
    B = 2 * p / (1 - p)
    c = B * math.sqrt(t * (1 - t))
    return (1 - t) / (1 + c), t / (1 + c), c / (1 + c) / n, c


def hand_weights(t: float, p: float, n: int) -> tuple[float, float, float]:
    """ELBO weights (clean, uniform, mask) for gamma = 1: c + (1-t) c'_t simplifies to c_t / (2t)."""
    c = hand_schedule(t, p, n)[3]
    return c / (2 * t * n) / ((1 - t) * (1 - t + c / n)), 1 / (2 * t * (1 - t)), 1 / (t * (1 - t))


def real_ids(shape, gen=None):
    """Token ids that are neither [MASK] nor PAD."""
    return torch.randint(1, MASK, shape, generator=gen)


@pytest.mark.parametrize("p", [0.0, 0.1, 0.2])
def test_marginal_sums_to_one_and_its_uniform_share_at_one_half_is_p_uniform(p):
    d = GiddDiffusion(V, MASK, p_uniform=p, excluded_ids=[PAD])
    x = torch.tensor([3, 7, 18])
    for t in (1e-4, 0.1, 0.5, 0.9, 1 - 1e-4):
        q = d.marginal(x, torch.tensor(t))
        assert torch.allclose(q.sum(-1), torch.ones(3), atol=1e-6)
        alpha, m, u, _ = hand_schedule(t, p, V - 2)
        for i, xi in enumerate(x.tolist()):
            expect = torch.full((V,), u)
            expect[PAD], expect[MASK] = 0.0, m
            expect[xi] += alpha
            assert torch.allclose(q[i].double(), expect.double(), atol=1e-6)
    q = d.marginal(x, torch.tensor(0.5)).double()
    for i, xi in enumerate(x.tolist()):
        others = [v for v in range(V) if v not in (MASK, PAD, xi)]
        uniform_mass = q[i, others].sum() + q[i, others[0]]  # the uniform share on x equals any other's
        assert uniform_mass.item() == pytest.approx(p, abs=1e-6)
    if p == 0.0:
        for t in (0.05, 0.5, 0.95):
            q = d.marginal(x, torch.tensor(t))
            expect = (1 - t) * F.one_hot(x, V).float()
            expect[:, MASK] = t
            assert torch.allclose(q, expect, atol=1e-6)


def test_marginal_broadcasts_and_agrees_with_marginal_of_probs():
    d = GiddDiffusion(V, MASK, p_uniform=0.2, excluded_ids=[PAD])
    x = real_ids((2, 5))
    t = torch.tensor([[0.3], [0.7]])
    q = d.marginal(x, t)
    assert q.shape == (2, 5, V)
    assert torch.allclose(q, d.marginal_of_probs(F.one_hot(x, V).float(), t), atol=1e-7)
    probs = torch.softmax(torch.randn(2, 5, V), -1)
    assert torch.allclose(d.marginal_of_probs(probs, t).sum(-1), torch.ones(2, 5), atol=1e-6)


def test_with_p_uniform_zero_the_elbo_is_mdlm():
    torch.manual_seed(0)
    d = GiddDiffusion(V, MASK, p_uniform=0.0, loss_weighting="none")
    B, L = 6, 30
    ids = torch.randint(0, MASK, (B, L))
    attn = torch.ones(B, L, dtype=torch.bool)
    t = torch.tensor([0.01, 0.1, 0.3, 0.5, 0.8, 0.99])
    noisy = d.corrupt(ids, attn, t)
    masked = noisy == MASK
    assert masked.any() and (noisy[~masked] == ids[~masked]).all()  # p = 0: nothing else
    logits = torch.randn(B, L, V) * 3
    logits[..., MASK] += 10  # SUBS: must not count
    out = d.terms(logits, ids, noisy, attn, t)
    subs = logits.clone()
    subs[..., MASK] = -torch.inf
    ce = F.cross_entropy(subs.transpose(1, 2), ids, reduction="none")
    expect = torch.where(masked, ce / t[:, None], 0.0)
    assert torch.allclose(out.elbo[masked], expect[masked], rtol=1e-4)
    # unmasked: 0 up to upstream's floor p >= e^-20, which leaves clean tokens
    # w_clean (KL + IS) ~ e^-20 / (N t (1-t)^2 x_hat_x): tiny next to the masked tokens' CE / t
    assert out.elbo[~masked].min() >= 0 and out.elbo[~masked].max() < 1e-3
    assert out.elbo[~masked].sum() < 1e-5 * out.elbo[masked].sum()
    assert torch.allclose(out.loss, out.elbo)  # "none": the ELBO weights


def test_elbo_equals_brute_force_gidd_with_an_excluded_id():
    """Full distributions in float64, KL and r - log r - 1 summed by hand."""
    torch.manual_seed(1)
    p, B, L = 0.2, 4, 25
    d = GiddDiffusion(V, MASK, p_uniform=p, excluded_ids=[PAD], loss_weighting="none")
    ids = real_ids((B, L))
    attn = torch.ones(B, L, dtype=torch.bool)
    t = torch.tensor([0.05, 0.3, 0.6, 0.95])
    noisy = d.corrupt(ids, attn, t)
    logits = torch.randn(B, L, V) * 2
    out = d.terms(logits, ids, noisy, attn, t)
    lg = logits.double()
    lg[..., [MASK, PAD]] = -torch.inf
    xhat = lg.softmax(-1)
    for b in range(B):
        tb = t[b].item()
        alpha, m, u, _ = hand_schedule(tb, p, V - 2)
        w_clean, w_unif, w_mask = hand_weights(tb, p, V - 2)
        noise = torch.full((V,), u, dtype=torch.float64)
        noise[PAD], noise[MASK] = 0.0, m
        for i in range(L):
            x, z = ids[b, i].item(), noisy[b, i].item()
            qx = noise.clone()
            qx[x] += alpha
            qh = noise + alpha * xhat[b, i]
            keep = qx > 0
            kl = (qx[keep] * (qx[keep] / qh[keep]).log()).sum().item()
            r = (qx[z] / qh[z]).item()
            w = w_mask if z == MASK else w_clean if z == x else w_unif
            assert out.elbo[b, i].item() == pytest.approx(w * (kl + r - math.log(r) - 1), rel=1e-4, abs=1e-7)


@pytest.mark.parametrize("p", [0.0, 0.1, 0.2])
def test_kl_plus_is_is_nonnegative_and_zero_for_a_perfect_prediction(p):
    torch.manual_seed(2)
    d = GiddDiffusion(V, MASK, p_uniform=p, excluded_ids=[PAD], loss_weighting="none")
    B, L = 8, 64
    ids = real_ids((B, L))
    attn = torch.ones(B, L, dtype=torch.bool)
    t = torch.linspace(0.02, 0.98, B)
    noisy = d.corrupt(ids, attn, t)
    forced = noisy.clone()
    forced[:, :4] = torch.randint(1, MASK, (B, 4))  # uniform-noise tokens even at p = 0
    for z in (noisy, forced):
        for logits in (torch.randn(B, L, V) * 4, 30 * F.one_hot(ids, V).float()):
            elbo = d.terms(logits, ids, z, attn, t).elbo  # the gamma = 1 ELBO weights are all > 0
            assert (elbo >= 0).all()
    # all mass on x (x_hat of other ids ~ e^-30): zero, with noise drawn from q_t
    assert d.terms(30 * F.one_hot(ids, V).float(), ids, noisy, attn, t).elbo.max() < 1e-6


def test_dynamic_and_clip_weights_and_padding():
    torch.manual_seed(3)
    p, B, L = 0.2, 4, 40
    ids = real_ids((B, L))
    attn = torch.ones(B, L, dtype=torch.bool)
    attn[1, 25:] = False
    ids[1, 25:] = PAD
    t = torch.tensor([0.1, 0.4, 0.5, 0.9])
    d_none = GiddDiffusion(V, MASK, p_uniform=p, excluded_ids=[PAD], loss_weighting="none")
    noisy = d_none.corrupt(ids, attn, t)
    noisy[1, 25:] = MASK  # whatever sits at padding must not count
    logits = torch.randn(B, L, V)
    elbo = d_none.terms(logits, ids, noisy, attn, t).elbo
    is_mask, is_clean = noisy == MASK, noisy == ids
    is_unif = ~(is_mask | is_clean)
    assert is_mask[attn].any() and is_clean[attn].any() and is_unif[attn].any()
    w_elbo = torch.zeros(B, L, dtype=torch.float64)
    w_dyn = torch.zeros(B, L, dtype=torch.float64)
    for b in range(B):
        w_clean, w_unif, w_mask = hand_weights(t[b].item(), p, V - 2)
        w_elbo[b] = torch.where(is_mask[b], w_mask, torch.where(is_clean[b], w_clean, w_unif))
        x_scale = (2 * p / (1 - p)) / V * math.exp(0.5 / (1 + math.exp(t[b].item())))  # B/V exp(sigmoid(-t)/2)
        w_dyn[b] = torch.where(is_mask[b], 2.0, torch.where(is_clean[b], x_scale, 1.0))
    kl_is = elbo.double() / w_elbo
    assert (w_dyn[is_clean] < 0.05).all()  # ~0 on clean tokens: B/V (with V = 20 here)
    cases = {("dynamic", 0.0, 2.0): w_dyn, ("dynamic", 0.0, 1.5): w_dyn.clamp(0, 1.5),
             ("clip", 0.5, 2.0): w_elbo.clamp(0.5, 2.0), ("clip", 0.0, 3.0): w_elbo.clamp(0, 3.0)}
    for (weighting, lo, hi), w in cases.items():
        d = GiddDiffusion(V, MASK, p_uniform=p, excluded_ids=[PAD], loss_weighting=weighting,
                          min_loss_weight=lo, max_loss_weight=hi)
        lg = logits.clone().requires_grad_()
        out = d.terms(lg, ids, noisy, attn, t)
        assert torch.allclose(out.loss[attn].double(), (w * kl_is)[attn], rtol=1e-5, atol=1e-8)
        assert (out.loss[~attn] == 0).all() and (out.elbo[~attn] == 0).all()
        out.loss.sum().backward()
        assert torch.isfinite(lg.grad).all() and (lg.grad[1, 25:] == 0).all()
        assert (lg.grad[..., [MASK, PAD]] == 0).all()
        n = attn.sum()
        assert out.metrics["frac_mask"].item() == pytest.approx((is_mask & attn).sum().item() / n.item())
        assert out.metrics["kl"].item() + out.metrics["is"].item() == pytest.approx(out.metrics["elbo"].item(),
                                                                                     rel=1e-5)


def test_corrupt_matches_the_marginal_and_leaves_padding_alone():
    p, t, B, L = 0.2, 0.5, 100, 2000
    gen = torch.Generator().manual_seed(4)
    d = GiddDiffusion(V, MASK, p_uniform=p, excluded_ids=[PAD])
    ids = real_ids((B, L), gen)
    attn = torch.ones(B, L, dtype=torch.bool)
    attn[:, 1900:] = False
    ids[:, 1900:] = PAD
    z = d.corrupt(ids, attn, torch.full((B,), t), generator=torch.Generator().manual_seed(5))
    assert torch.equal(z, d.corrupt(ids, attn, torch.full((B,), t), generator=torch.Generator().manual_seed(5)))
    assert (z[~attn] == PAD).all()
    zr, xr = z[attn], ids[attn]
    n = zr.numel()
    assert n == 190_000 and not (zr == PAD).any()
    alpha, m, u, _ = hand_schedule(t, p, V - 2)
    expect = {"mask": m, "uniform (changed)": u * (V - 3), "clean": alpha + u}
    got = {"mask": (zr == MASK).float().mean().item(), "uniform (changed)": ((zr != MASK) & (zr != xr)).float().mean()
           .item(), "clean": (zr == xr).float().mean().item()}
    for key, e in expect.items():
        assert abs(got[key] - e) < 3 * math.sqrt(e * (1 - e) / n), (key, got[key], e)
    assert sum(expect.values()) == pytest.approx(1.0)
    changed = zr[(zr != MASK) & (zr != xr)]
    assert set(changed.tolist()) == set(range(1, MASK))  # uniform over every allowed id, no others


def test_t_range():
    d = GiddDiffusion(V, MASK, eps=1e-3)
    t = d.sample_t(64, "cpu")
    assert t.min() >= 1e-3 and t.max() <= 1 - 1e-3
    assert torch.equal(d.clip_t(torch.tensor([0.0, 0.5, 1.0])), torch.tensor([1e-3, 0.5, 1 - 1e-3]))


@pytest.mark.parametrize("kwargs, key", [
    ({"p_uniform": 1.0}, "model.p_uniform"), ({"p_uniform": -0.1}, "model.p_uniform"),
    ({"gamma": 0.0}, "model.gamma"), ({"loss_weighting": "gidd+"}, "loss.loss_weighting"),
    ({"max_loss_weight": 0.0}, "loss.max_loss_weight"),
    ({"min_loss_weight": 3.0, "max_loss_weight": 2.0}, "loss.min_loss_weight"),
])
def test_bad_arguments_name_their_config_key(kwargs, key):
    with pytest.raises(ValueError, match=key):
        GiddDiffusion(V, MASK, **kwargs)
