"""Masked text diffusion and Gaussian latent diffusion against independent computations."""
import math

import pytest
import torch

from latentDLM_mmdit.mmdit_objective import ramp
from mmldlm.diffusion.gaussian_latent import GaussianLatentDiffusion
from mmldlm.diffusion.masked_text import MaskedTextDiffusion


def test_mdlm_loss_equals_the_formula_computed_by_hand():
    torch.manual_seed(0)
    B, L, V, mask_id = 3, 7, 11, 10
    d = MaskedTextDiffusion(mask_id, eps=1e-3)
    ids = torch.randint(0, 10, (B, L))
    attn = torch.ones(B, L, dtype=torch.bool)
    attn[0, 5:] = False  # padding
    t = torch.tensor([0.2, 0.5, 0.9])
    noisy, masked = d.corrupt(ids, attn, t)
    logits = torch.randn(B, L, V)
    logits[..., mask_id] += 5.0  # a large [MASK] logit must not count: SUBS sets it to -inf
    loss, acc = d.loss(logits, ids, masked, attn, t)
    total, n_real, hits = 0.0, 0, 0
    for b in range(B):
        sigma = -math.log(1 - (1 - 1e-3) * t[b].item())
        weight = ((1 - 1e-3) / (1 - (1 - 1e-3) * t[b].item())) / math.expm1(sigma)
        for i in range(L):
            n_real += int(attn[b, i])
            if masked[b, i]:
                # SUBS: the distribution over clean tokens, [MASK] removed before normalising
                clean = torch.cat([logits[b, i, :mask_id], logits[b, i, mask_id + 1:]])
                tgt = ids[b, i].item() - (ids[b, i].item() > mask_id)
                total += -clean.log_softmax(-1)[tgt].item() * weight
                hits += int(clean.argmax().item() == tgt)
    assert loss.item() == pytest.approx(total / n_real, rel=1e-5)
    assert acc.item() == pytest.approx(hits / masked.sum().item())
    assert d.loss_weight(t) == pytest.approx(1 / t, rel=1e-4)  # the log-linear ELBO weight is 1/t


def test_padding_is_never_masked_and_the_mask_rate_is_t():
    torch.manual_seed(1)
    d = MaskedTextDiffusion(mask_id=99, eps=1e-4)
    ids = torch.randint(0, 50, (4, 4000))
    attn = torch.ones_like(ids, dtype=torch.bool)
    attn[:, 3000:] = False
    t = torch.tensor([0.1, 0.4, 0.7, 1.0])
    noisy, masked = d.corrupt(ids, attn, t)
    assert not masked[~attn].any() and (noisy[~attn] == ids[~attn]).all()
    assert (noisy[masked] == 99).all() and (noisy[~masked] == ids[~masked]).all()
    rate = masked[:, :3000].float().mean(1)
    assert torch.allclose(rate, t * (1 - 1e-4), atol=0.03)


def test_low_discrepancy_t_is_evenly_spread():
    d = MaskedTextDiffusion(0, eps=1e-4)
    t = torch.sort(d.sample_t(8, "cpu")).values
    gaps = (t[1:] - t[:-1]) / (1 - 1e-4)
    assert torch.allclose(gaps, torch.full_like(gaps, 1 / 8), atol=1e-5) and t.min() >= 1e-4


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_eps_x0_v_conversions_invert_each_other(schedule):
    g = GaussianLatentDiffusion(1000, schedule, "v_param")
    torch.manual_seed(2)
    x0, eps = torch.randn(6, 32).double(), torch.randn(6, 32).double()
    g.alpha_bar = g.alpha_bar.double()
    t = torch.tensor([0, 1, 250, 500, 900, 999])
    x_t = g.q_sample(x0, t, eps)
    v = g.v_from(x0, eps, t)
    torch.testing.assert_close(g.x0_from_v(x_t, v, t), x0)
    torch.testing.assert_close(g.eps_from_v(x_t, v, t), eps)
    torch.testing.assert_close(g.eps_from_x0(x_t, x0, t), eps)
    torch.testing.assert_close(g.x0_from_eps(x_t, eps, t), x0)  # exact in float64, even at t=999


def test_cosine_schedule_end_point_and_why_eps_is_ill_conditioned_at_t1():
    g = GaussianLatentDiffusion(1000, "cosine", "epsilon")
    assert g.alpha_bar[-1].sqrt().item() < 1e-4  # ~5e-5 with this discretisation (REFERENCE: ~1.6e-5)
    T = torch.tensor([999] * 4)
    x_t, out = torch.randn(4, 1024), torch.randn(4, 1024)  # an untrained network's output
    assert g.predict_x0(out, x_t, T).norm(dim=-1).min() > 1e4  # the original's ~3e5 blow-up
    for param in ("v_param", "x0"):
        x0 = GaussianLatentDiffusion(1000, "cosine", param).predict_x0(out, x_t, T)
        assert x0.norm(dim=-1).max() < 100
    clamped = GaussianLatentDiffusion(1000, "cosine", "epsilon", x0_clamp=3.0).predict_x0(out, x_t, T)
    assert clamped.abs().max() <= 3.0


@pytest.mark.parametrize("param", ["epsilon", "x0", "v_param"])
def test_ddim_with_an_oracle_recovers_x0_for_every_parameterisation(param):
    """The sampler reads the network output the way training defined it."""
    g = GaussianLatentDiffusion(1000, "cosine", param)
    g.alpha_bar = g.alpha_bar.double()
    torch.manual_seed(3)
    x0, eps = torch.randn(2, 16).double(), torch.randn(2, 16).double()
    x = g.q_sample(x0, torch.tensor([900, 900]), eps)
    steps = [900, 600, 300, 100, 0]
    for t, t_prev in zip(steps, steps[1:] + [-1]):
        tt = torch.tensor([t, t])
        true_eps = g.eps_from_x0(x, x0, tt)
        oracle = {"epsilon": true_eps, "x0": x0, "v_param": g.v_from(x0, true_eps, tt)}[param]
        x = g.ddim_step(oracle, x, tt, torch.tensor([t_prev, t_prev]))
    torch.testing.assert_close(x, x0)


def test_ramp_weights_at_chosen_steps():
    assert [ramp(0.1, s, 100, 200) for s in (0, 99, 100, 200, 300, 10_000)] == pytest.approx(
        [0, 0, 0, 0.05, 0.1, 0.1])
    assert [ramp(0.1, s, 100, 0) for s in (99, 100)] == [0, 0.1]


def test_ddim_finishes_rows_whose_previous_index_is_minus_one_and_steps_the_others():
    g = GaussianLatentDiffusion(1000, "cosine", "x0")
    torch.manual_seed(4)
    x_t, out = torch.randn(3, 8), torch.randn(3, 8)  # x0 parameterisation: out is the x0 prediction
    t, t_prev = torch.tensor([10, 10, 500]), torch.tensor([-1, 5, -1])
    got = g.ddim_step(out, x_t, t, t_prev)
    torch.testing.assert_close(got[0], out[0])  # finished rows return x0, never re-noised
    torch.testing.assert_close(got[2], out[2])
    eps = g.eps_from_x0(x_t[1:2], out[1:2], t[1:2])
    a = g.alpha_bar[5]
    torch.testing.assert_close(got[1], (a.sqrt() * out[1] + (1 - a).sqrt() * eps[0]))


def test_latent_time_code_keeps_zero_for_the_clean_latent():
    g = GaussianLatentDiffusion(1000, "cosine", "v_param")
    codes = g.time_code(torch.tensor([0, 499, 999]))
    assert codes.tolist() == pytest.approx([0.001, 0.5, 1.0]) and codes.min() > 0


@pytest.mark.parametrize("T", [20, 100, 250, 1000, 4000])
def test_linear_betas_are_rescaled_so_every_length_ends_in_pure_noise(T):
    g = GaussianLatentDiffusion(T, "linear", "v_param")
    assert g.alpha_bar[-1].item() < 1e-3
    if T == 1000:  # the DDPM schedule itself: betas 1e-4 .. 0.02
        betas = 1 - g.alpha_bar.double()[1:] / g.alpha_bar.double()[:-1]
        assert betas[0].item() == pytest.approx(torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)[1].item(),
                                                rel=1e-3)
        assert 1 - g.alpha_bar[0].item() == pytest.approx(1e-4, rel=1e-3)
