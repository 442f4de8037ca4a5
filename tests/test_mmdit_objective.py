"""The MMDiT objective through the real mmdit model (tiny size): modes, gradients, cycle_vae."""
import math
from collections import Counter

import pytest
import torch

from latentDLM_mmdit.mmdit_objective import MMDiTObjective
from latentDLM_mmdit.schema import BASE_MODES, MMDiTRunConfig, ScheduleBlock
from mmldlm.config import ConfigError, validate
from mmldlm.data.collate import mean_latent
from tests.helpers.common import make_batch as core_batch
from tests.helpers.common import make_cfg as core_cfg

D = 32
CYCLE_KEYS = {"text_loss", "text_acc", "latent_loss", "base_l2t_text_loss", "base_t2l_latent_loss",
              "cycle_text_loss", "cycle_latent_loss", "cycle_text_weight", "cycle_latent_weight", "x0_pred_norm"}


def make_cfg(**overrides):
    return core_cfg(MMDiTRunConfig, **{"model.hidden_size": 32, "model.n_blocks": 2, "model.n_heads": 4,
                                       "model.cond_dim": 32, "model.max_seq_len": 48, "model.latent_dim": D,
                                       "data.latent_dim": D, "data.max_seq_len": 48, "loss.cycle_text_warmup_steps": 0,
                                       "loss.cycle_latent_warmup_steps": 0, **overrides})


def make_batch(tokenizer, paragraphs, k=1, b=4):
    return core_batch(tokenizer, paragraphs, D, k=k, b=b)


def grads_after(obj, batch, step=0):
    torch.manual_seed(0)
    obj.zero_grad()
    loss, metrics = obj(batch, step)
    loss.backward()
    return loss, metrics, {n: p.grad for n, p in obj.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("mode,frozen", [("l2t", "model.latent_head"), ("t2l", "model.text_head"),
                                         ("unconditional", None), ("cycle_vae", None)])
def test_gradients_reach_exactly_the_parameters_that_train(tokenizer, paragraphs, mode, frozen):
    obj = MMDiTObjective(make_cfg(**{"loss.loss_type": mode}), tokenizer)
    frozen_names = {n for n, p in obj.named_parameters() if not p.requires_grad}
    assert frozen_names == ({f"{frozen}.weight", f"{frozen}.bias"} if frozen else set())
    loss, metrics, grads = grads_after(obj, make_batch(tokenizer, paragraphs))
    assert torch.isfinite(loss)
    missing = [n for n, g in grads.items() if g is None]
    assert not missing, missing  # DDP sees every trainable parameter on every step
    head = "model.text_head.weight" if mode != "t2l" else "model.latent_head.weight"
    assert grads[head].abs().sum() > 0


def test_cycle_vae_batch_gt_1_all_metrics_and_kxd_latents(tokenizer, paragraphs):
    obj = MMDiTObjective(make_cfg(**{"loss.loss_type": "cycle_vae"}), tokenizer)
    for k in (1, 3):  # [B, D] and [B, K, D] + latent_mask: never broadcast to [B, B, D]
        loss, metrics = obj(make_batch(tokenizer, paragraphs, k=k), step=5)
        assert loss.dim() == 0 and torch.isfinite(loss)
        assert metrics.keys() >= CYCLE_KEYS
        assert all(math.isfinite(float(v)) for v in metrics.values())
        assert float(metrics["cycle_text_loss"]) > 0 and float(metrics["cycle_latent_loss"]) > 0


def test_cycle_weights_follow_the_ramp(tokenizer, paragraphs):
    obj = MMDiTObjective(make_cfg(**{"loss.loss_type": "cycle_vae", "loss.cycle_text_warmup_steps": 10,
                                     "loss.cycle_text_ramp_steps": 20, "loss.cycle_latent_warmup_steps": 0,
                                     "loss.cycle_latent_ramp_steps": 0}), tokenizer)
    batch = make_batch(tokenizer, paragraphs)
    got = {s: obj(batch, s)[1] for s in (5, 20, 40)}
    assert [got[s]["cycle_text_weight"] for s in (5, 20, 40)] == pytest.approx([0.0, 0.05, 0.1])
    assert float(got[5]["cycle_text_loss"]) == 0.0  # not computed before its warmup
    assert all(got[s]["cycle_latent_weight"] == pytest.approx(0.1) for s in got)


def only_cycle(kind, **extra):
    w = {"loss.text_loss_weight": 0.0, "loss.latent_loss_weight": 0.0, "loss.cycle_text_weight": 0.0,
         "loss.cycle_latent_weight": 0.0, "loss.loss_type": "cycle_vae"}
    w[f"loss.cycle_{kind}_weight"] = 1.0
    return make_cfg(**{**w, **extra})


def test_stop_grad_switch_decides_whether_the_latent_head_learns_from_t2l2t(tokenizer, paragraphs):
    batch = make_batch(tokenizer, paragraphs)
    for stop, expect in ((True, False), (False, True)):
        obj = MMDiTObjective(only_cycle("text", **{"loss.cycle_stop_grad_latent": stop}), tokenizer)
        _, _, grads = grads_after(obj, batch)
        assert bool(grads["model.latent_head.weight"].abs().sum() > 0) == expect, stop


def test_l2t2l_pseudo_tokens_argmax_vs_categorical_and_no_gradient_through_them(tokenizer, paragraphs):
    batch = make_batch(tokenizer, paragraphs)
    losses = {}
    for sampling in ("argmax", "categorical"):
        obj = MMDiTObjective(only_cycle("latent", **{"loss.cycle_latent_sampling": sampling}), tokenizer)
        loss, metrics, grads = grads_after(obj, batch)
        losses[sampling] = float(metrics["cycle_latent_loss"])
        # the text head only produced the pseudo-tokens: no gradient reaches it
        assert grads["model.text_head.weight"].abs().sum() == 0
        assert grads["model.latent_head.weight"].abs().sum() > 0
    assert losses["argmax"] != losses["categorical"]


def test_modes_depend_on_seed_and_step_only(tokenizer):
    cfg = make_cfg(**{"loss.loss_type": "random"})
    cfg.training.mode_weights = {"l2t": 1.0, "t2l": 3.0}
    a, b = MMDiTObjective(cfg, tokenizer), MMDiTObjective(cfg, tokenizer)
    torch.manual_seed(123)  # a rank's RNG state must not matter
    modes = [a.mode_at(s) for s in range(400)]
    torch.manual_seed(999)
    assert modes == [b.mode_at(s) for s in range(400)]
    assert set(modes) == {"l2t", "t2l"} and 0.6 < modes.count("t2l") / 400 < 0.9
    seq = make_cfg(**{"loss.loss_type": "sequential"})
    seq.training.sequential_schedule = [ScheduleBlock("l2t", 2), ScheduleBlock("unconditional", 1)]
    obj = MMDiTObjective(seq, tokenizer)
    assert [obj.mode_at(s) for s in range(6)] == ["l2t", "l2t", "unconditional"] * 2
    assert set(BASE_MODES) == {"l2t", "t2l", "unconditional"}


def test_eval_of_an_alternating_run_scores_every_mode_it_trains_under_its_own_keys(tokenizer, paragraphs):
    cfg = make_cfg(**{"loss.loss_type": "random"})
    cfg.training.mode_weights = {"l2t": 1.0, "t2l": 1.0}
    obj = MMDiTObjective(cfg, tokenizer).eval()
    batch = make_batch(tokenizer, paragraphs)
    torch.manual_seed(0)
    with torch.no_grad():
        loss, metrics = obj(batch, step=7)
    assert {"l2t/loss", "l2t/text_loss", "l2t/text_acc", "t2l/loss", "t2l/latent_loss"} <= metrics.keys()
    assert not any(k.startswith("unconditional/") or k.startswith("mode_") for k in metrics)
    assert loss.item() == pytest.approx((metrics["l2t/loss"] + metrics["t2l/loss"]).item() / 2)
    single = MMDiTObjective(make_cfg(**{"loss.loss_type": "t2l"}), tokenizer).eval()
    single.load_state_dict(obj.state_dict())
    torch.manual_seed(0)
    with torch.no_grad():  # the l2t pass draws its noise first, then the t2l pass: replay that
        obj._mode_loss("l2t", batch["input_ids"], batch["attention_mask"], mean_latent(batch) * obj.latent_scale, 7)
        want = single(batch, 7)[1]["latent_loss"]
    assert metrics["t2l/latent_loss"].item() == pytest.approx(want.item(), rel=1e-6)


@pytest.mark.parametrize("override,words", [
    ({"loss.loss_type": "sequential"}, "training.sequential_schedule"),
    ({"loss.loss_type": "random"}, "training.mode_weights"),
    ({"model.n_heads": 0}, "model.n_heads"),
    ({"model.latent_parameterization": "score"}, "model.latent_parameterization"),
    ({"data.latent_dim": 7}, "data.latent_dim"),
    ({"loss.l2t_uncond_prob": 1.0}, "loss.l2t_uncond_prob"),
    ({"sample.l2t_guidance": -1.0}, "sample.l2t_guidance"),
])
def test_inconsistent_configs_are_errors(override, words):
    cfg = make_cfg(**override)
    if override.get("loss.loss_type") == "random":
        cfg.training.mode_weights = {}
    with pytest.raises(ConfigError, match=words.replace(".", r"\.")):
        validate(cfg, MMDiTRunConfig)


def test_n_heads_reaches_the_attention_even_when_hidden_does_not_divide(tokenizer):
    """REFERENCE's 1024 hidden / 24 heads: dim_head = 42, attention width 24 * 42 = 1008."""
    obj = MMDiTObjective(make_cfg(**{"model.hidden_size": 48, "model.n_heads": 5}), tokenizer)
    attn = obj.model.backbone.blocks[0].joint_attn
    assert attn.to_qkv[0].weight.shape[0] == 3 * 5 * (48 // 5)  # Linear(dim, 3 * heads * dim_head)


def test_samplers_produce_complete_outputs_in_the_trained_parameterisation(tokenizer, paragraphs):
    from latentDLM_mmdit.sampling import l2t_decode, t2l_encode

    obj = MMDiTObjective(make_cfg(**{"loss.loss_type": "unconditional"}), tokenizer).eval()
    batch = make_batch(tokenizer, paragraphs)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    z1 = t2l_encode(obj, ids, mask, steps=8, generator=torch.Generator().manual_seed(0))
    z2 = t2l_encode(obj, ids, mask, steps=8, generator=torch.Generator().manual_seed(0))
    assert z1.shape == (4, D) and torch.isfinite(z1).all() and torch.equal(z1, z2)  # deterministic DDIM
    out = l2t_decode(obj, batch["latent"], mask, steps=6)
    assert out.shape == ids.shape
    assert not (out[mask] == tokenizer.mask_token_id).any()  # every real position decoded
    assert (out[~mask] == 0).all()  # padding untouched


def test_a_tokenizer_without_mask_token_is_a_config_error_naming_the_key(tokenizer):
    import copy

    no_mask = copy.deepcopy(tokenizer)
    no_mask.mask_token = None
    with pytest.raises(ConfigError, match=r"data\.tokenizer_name: .* has no mask token"):
        MMDiTObjective(make_cfg(), no_mask)


def test_roundtrip_metrics_equal_a_recomputation_from_the_samplers(tokenizer, paragraphs):
    from latentDLM_mmdit.metrics import roundtrip
    from latentDLM_mmdit.sampling import l2t_decode, t2l_encode

    obj = MMDiTObjective(make_cfg(**{"sample.roundtrip_t2l_steps": 4, "sample.l2t_steps": 5}), tokenizer).eval()
    batch = make_batch(tokenizer, paragraphs)
    ids, mask, z = batch["input_ids"], batch["attention_mask"], mean_latent(batch)
    torch.manual_seed(3)
    rt = roundtrip(obj, ids, mask, z)
    metrics = rt.metrics
    torch.manual_seed(3)  # the same noise, drawn by hand in the same order
    ids_hat = l2t_decode(obj, t2l_encode(obj, ids, mask, 4), mask, 5)
    z_hat = t2l_encode(obj, l2t_decode(obj, z, mask, 5), mask, 4)
    special = torch.tensor([tokenizer.get_special_tokens_mask(r, already_has_special_tokens=True)
                            for r in ids.tolist()], dtype=torch.bool)
    scored = mask & ~special
    assert torch.equal(rt.t2l2t_ids, ids_hat)
    assert metrics["t2l2t_acc"].item() == pytest.approx((ids_hat == ids)[scored].float().mean().item())
    cos = (z_hat * z).sum(-1) / (z_hat.norm(dim=-1) * z.norm(dim=-1))
    assert metrics["l2t2l_cos"].item() == pytest.approx(cos.mean().item(), abs=1e-6)
    f1 = []  # SQuAD-style token F1 by hand: multiset overlap of the scored tokens
    for r in range(ids.shape[0]):
        p, g = Counter(ids_hat[r][scored[r]].tolist()), Counter(ids[r][scored[r]].tolist())
        common = sum((p & g).values())
        f1.append(0.0 if common == 0 else 2 * common / (sum(p.values()) + sum(g.values())))
    assert metrics["t2l2t_f1"].item() == pytest.approx(sum(f1) / len(f1), abs=1e-6)
    assert obj.eval_extra(batch, 0).keys() == {"t2l2t_acc", "t2l2t_f1", "l2t2l_cos"} and obj.eval_extra(batch, 1) == {}


def test_token_f1_is_order_free_counts_multiplicity_and_ignores_off_positions():
    from latentDLM_mmdit.metrics import token_f1

    ref = torch.tensor([[5, 6, 7, 7, 0], [5, 6, 7, 8, 9]])
    on = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    pred = torch.tensor([[7, 7, 6, 5, 3], [7, 7, 7, 7, 7]])  # row 0: a permutation (+ an off position)
    f1 = token_f1(pred, ref, on, on)
    assert f1[0].item() == pytest.approx(1.0)
    assert f1[1].item() == pytest.approx(2 * 1 / (5 + 5))  # one 7 in common of five and five


def test_l2t_uncond_prob_puts_that_fraction_of_rows_on_the_null_latent(tokenizer, paragraphs):
    obj = MMDiTObjective(make_cfg(**{"loss.loss_type": "l2t", "loss.l2t_uncond_prob": 0.5}), tokenizer)
    seen = []
    obj.model.register_forward_hook(lambda m, args, out: seen.append((args[2].clone(), args[4].clone())))
    batch = make_batch(tokenizer, paragraphs * 16, b=64)
    torch.manual_seed(0)
    obj(batch, 0)
    (latent, t_lat), x0 = seen[0], mean_latent(batch) * obj.latent_scale
    null = t_lat > 0
    assert 16 < null.sum() < 48 and torch.all(t_lat[null] == 1.0)  # index T - 1, coded (T - 1 + 1) / T
    assert torch.equal(latent[~null], x0[~null]) and ((latent[null] - x0[null]).abs().amax(-1) > 0.1).all()
    off = MMDiTObjective(make_cfg(**{"loss.loss_type": "l2t"}), tokenizer)
    seen.clear()
    off.model.register_forward_hook(lambda m, args, out: seen.append(args[4].clone()))
    off(batch, 0)
    assert (seen[0] == 0).all()  # the default trains no unconditional rows


def test_guided_decoding_commits_the_argmax_of_the_guided_log_probs(tokenizer, paragraphs):
    from latentDLM_mmdit.sampling import l2t_decode

    obj = MMDiTObjective(make_cfg(**{"loss.loss_type": "l2t"}), tokenizer).eval()
    batch = make_batch(tokenizer, paragraphs)
    z, mask, w = mean_latent(batch), batch["attention_mask"], 1.5
    torch.manual_seed(1)
    # one step commits every position at once: at temperature 0 the ancestral sampler takes the argmax
    one_step = l2t_decode(obj, z, mask, steps=1, guidance=w, sampler="ancestral", temperature=0.0)
    torch.manual_seed(1)  # the same null noise, drawn by hand
    null, t_null = obj.null_latent(z.shape[0], z.device)
    ids, zeros, t = obj.text.fully_masked(mask), torch.zeros(z.shape[0]), torch.ones(z.shape[0])
    def log_p_x0(logits):  # SUBS: [MASK] is no clean token, its probability mass is 0
        return logits.masked_fill(torch.arange(logits.shape[-1]) == tokenizer.mask_token_id, -math.inf).log_softmax(-1)

    with torch.no_grad():
        cond = log_p_x0(obj.model(ids, mask, z * obj.latent_scale, t, zeros)[0])
        uncond = log_p_x0(obj.model(ids, mask, null, t, t_null)[0])
    guided = (1 + w) * cond - w * uncond
    guided[..., tokenizer.mask_token_id] = -math.inf
    assert torch.equal(one_step[mask], guided.argmax(-1)[mask])
    torch.manual_seed(1)
    assert torch.equal(l2t_decode(obj, z, mask, steps=1, guidance=w, sampler="confidence"), one_step)
    plain = l2t_decode(obj, z, mask, steps=1, guidance=0.0, sampler="ancestral", temperature=0.0)
    assert torch.equal(plain[mask], cond.argmax(-1)[mask])
    assert not torch.equal(one_step, plain)  # guidance changes the decision somewhere


def test_ancestral_l2t_reveals_at_the_mdlm_rate_and_a_seed_fixes_it(tokenizer, paragraphs):
    from latentDLM_mmdit.sampling import l2t_decode

    obj = MMDiTObjective(make_cfg(**{"loss.loss_type": "l2t"}), tokenizer).eval()
    batch = make_batch(tokenizer, paragraphs, b=4)
    z, mask = mean_latent(batch), batch["attention_mask"]
    runs = [l2t_decode(obj, z, mask, steps=4, generator=torch.Generator().manual_seed(s)) for s in (0, 0, 1)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    assert not (runs[0][mask] == tokenizer.mask_token_id).any() and (runs[0][~mask] == 0).all()
    # after 1 of 4 steps (t = 1 -> 0.75) each position is revealed with probability 1/4
    seen = []
    original = obj.model.forward

    def spy(ids, *args, **kw):
        seen.append((ids == tokenizer.mask_token_id).float().sum().item() / mask.sum().item())
        return original(ids, *args, **kw)

    obj.model.forward = spy
    big = make_batch(tokenizer, paragraphs * 4, b=32)
    mask = big["attention_mask"]
    l2t_decode(obj, mean_latent(big), mask, steps=4, generator=torch.Generator().manual_seed(2))
    assert seen[0] == 1.0 and abs(seen[1] - 0.75) < 0.04, seen


def test_sample_cli_rejects_a_negative_guidance_before_loading_anything(capsys):
    from latentDLM_mmdit.sample import main

    with pytest.raises(SystemExit) as e:
        main(["l2t", "--checkpoint", "no/such/run", "--input", "z.npy", "--output", "t.txt", "--guidance", "-1"])
    assert e.value.code == 2 and "argument --guidance: must be >= 0.0, got -1" in capsys.readouterr().err
