"""The WeDLM bridge on a tiny random Qwen3 saved in WeDLM form."""
import json

import pytest
import torch

from mmldlm.nn import pool
from tests.helpers.common import make_batch as core_batch
from tests.helpers.common import make_cfg as core_cfg
from wedlm_bridge.backbone import load_backbone
from wedlm_bridge.bridge import BridgeObjective, BridgeRunConfig, right_pad, shifted_text_ce
from wedlm_bridge.tiny import make_tiny_wedlm

D = 16


@pytest.fixture
def tiny_dir(tiny_wedlm_dir):
    return tiny_wedlm_dir


def make_cfg(tiny_dir, **overrides):
    return core_cfg(BridgeRunConfig, **{"model.pretrained_local_dir": str(tiny_dir), "model.pretrained_model_dtype":
                                        "float32", "model.latent_dim": D, "data.latent_dim": D,
                                        "model.latent_prefix_len": 3, "model.max_seq_len": 128, **overrides})


def make_obj(tiny_dir, tokenizer, **overrides):
    torch.manual_seed(0)
    obj = BridgeObjective(make_cfg(tiny_dir, **overrides), tokenizer, load_backbone(str(tiny_dir), "float32"))
    obj.sources_loaded()  # the loop calls it once the backbone's weights are in
    return obj


def make_batch(tokenizer, paragraphs, b=4):
    return core_batch(tokenizer, paragraphs, D, b=b, max_len=40)


def test_wedlm_form_loads_into_stock_classes_with_the_same_logits(tmp_path, tiny_dir):
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3ForCausalLM

    raw = json.loads((tiny_dir / "config.json").read_text())
    assert raw["model_type"] == "wedlm" and raw["architectures"] == ["WeDLMForCausalLM"] and "auto_map" in raw
    src = make_tiny_wedlm(tmp_path / "again")  # the Qwen3ForCausalLM it was saved from
    loaded = load_backbone(str(tmp_path / "again"), "float32")
    assert type(loaded) is Qwen3ForCausalLM
    ids = torch.randint(1000, 2000, (2, 12))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, src(ids).logits)
    # a Qwen2.5-shaped checkpoint (the 7B) in WeDLM form: no q/k norms -> Qwen2ForCausalLM
    torch.manual_seed(0)
    q2 = Qwen2ForCausalLM(Qwen2Config(vocab_size=3000, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2)).eval()
    q2.save_pretrained(tmp_path / "q2")
    cfg = json.loads((tmp_path / "q2" / "config.json").read_text())
    cfg.update(model_type="wedlm", architectures=["WeDLMForCausalLM"])
    (tmp_path / "q2" / "config.json").write_text(json.dumps(cfg))
    l2 = load_backbone(str(tmp_path / "q2"), "float32")
    assert type(l2) is Qwen2ForCausalLM
    with torch.no_grad():
        assert torch.equal(l2(ids).logits, q2(ids).logits)


def test_text_ce_without_prefix_equals_the_backbones_labels_loss_and_ignores_pads(tiny_dir, tokenizer, paragraphs):
    obj = make_obj(tiny_dir, tokenizer, **{"training.task": "l2t"}).eval()
    b = make_batch(tokenizer, paragraphs)
    ids, mask = b["input_ids"], b["attention_mask"]
    assert not mask.all()  # the batch has padding
    with torch.no_grad():
        logits, labels = obj.lm_logits(None, ids, mask)
        ours, _ = shifted_text_ce(logits, labels)
        ref = obj.backbone(input_ids=ids, attention_mask=mask.long(), labels=ids.masked_fill(~mask, -100)).loss
        assert ours.item() == pytest.approx(ref.item(), rel=1e-6)
        # more padding, with other pad ids: the same loss, with and without a prefix
        wide = torch.cat([ids, torch.full((4, 5), 7)], 1)
        wmask = torch.cat([mask, torch.zeros(4, 5, dtype=torch.bool)], 1)
        assert shifted_text_ce(*obj.lm_logits(None, wide, wmask))[0].item() == pytest.approx(ours.item(), rel=1e-5)
        prefix = obj.prefix_embeds(b["latent"])
        with_p = shifted_text_ce(*obj.lm_logits(prefix, ids, mask))[0]
        with_p_wide = shifted_text_ce(*obj.lm_logits(prefix, wide, wmask))[0]
        assert with_p.item() == pytest.approx(with_p_wide.item(), rel=1e-5)


def test_nelbo_is_the_training_text_loss_and_latent_gain_reads_the_latent(tiny_dir, tokenizer, paragraphs):
    """The loss CLI's number for the bridge is the training objective's text CE (summed, not averaged),
    left padding or right; latent_gain is 0 when every record carries the same latent; a t2l bridge refuses."""
    obj = make_obj(tiny_dir, tokenizer, **{"training.task": "l2t"}).eval()
    obj.eos_id = tokenizer.sep_token_id  # bert has no EOS; a stand-in, so that one is appended and scored
    b = make_batch(tokenizer, paragraphs)
    with torch.no_grad():
        _, metrics = obj(b, 0)
        out = obj.nelbo(b, None, 0)
        want_tokens = b["attention_mask"].sum(1) + 1  # every text token (the first from the prefix) and the EOS
        assert out.tokens.tolist() == want_tokens.tolist()
        assert (out.nats.sum() / out.tokens.sum()).item() == pytest.approx(metrics["text_loss"].item(), rel=1e-5)
        same = obj.nelbo({**b, "latent": b["latent"][:1].expand_as(b["latent"])}, None, 0)
        assert same.extra["latent_gain"].abs().max().item() < 1e-4
        assert obj.nelbo(b, None, 0).extra["latent_gain"].abs().max().item() > 0
    with pytest.raises(ValueError, match="t2l bridge"):
        make_obj(tiny_dir, tokenizer, **{"training.task": "t2l"}).nelbo(b, None, 0)


def test_generate_decodes_latents_with_the_shared_sampler(tiny_dir, tokenizer):
    """Greedy generation from the latent prefix is transformers' greedy generate from the same embeddings;
    sampling is a function of the generator; no pad is drawn; ids after the stop token stay at it."""
    from wedlm_bridge.decode import decode

    obj = make_obj(tiny_dir, tokenizer, **{"training.task": "l2t"}).eval()
    z = torch.randn(3, D)
    greedy = obj.generate(num_samples=3, length=9, temperature=0.0, latents=z)
    prefix = obj.prefix_embeds(z)
    ref = obj.backbone.generate(inputs_embeds=prefix, attention_mask=torch.ones(3, 3, dtype=torch.long),
                                max_new_tokens=9, do_sample=False, eos_token_id=obj.stop_id,
                                pad_token_id=obj.stop_id, suppress_tokens=[tokenizer.pad_token_id])
    assert torch.equal(greedy, ref[:, :9])
    draw = [obj.generate(num_samples=3, length=9, latents=z, generator=torch.Generator().manual_seed(s))
            for s in (0, 0, 1)]
    assert torch.equal(draw[0], draw[1]) and not torch.equal(draw[0], draw[2])
    assert not (draw[0] == tokenizer.pad_token_id).any()
    texts = decode(obj, tokenizer, z, 9, temperature=0.0)
    for row, text in zip(greedy.tolist(), texts):
        stop = row.index(obj.stop_id) if obj.stop_id in row else len(row)
        assert text == " ".join(tokenizer.decode(row[:stop], skip_special_tokens=True).split())
    with pytest.raises(ValueError, match="latents="):
        obj.generate(num_samples=1, length=4)


def test_prefix_matches_the_embedding_scale(tiny_dir, tokenizer):
    obj = make_obj(tiny_dir, tokenizer)
    p = obj.prefix_embeds(torch.randn(5, D) * 100)
    emb = obj.backbone.get_input_embeddings().weight
    rms = p.pow(2).mean(-1).sqrt()
    assert p.shape == (5, 3, emb.shape[1]) and torch.allclose(rms, emb.pow(2).mean().sqrt().expand_as(rms), rtol=1e-3)


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_pooling_is_correct_under_left_and_right_padding(tiny_dir, tokenizer, paragraphs, pooling):
    obj = make_obj(tiny_dir, tokenizer, **{"model.latent_pooling": pooling}).eval()
    texts = [paragraphs[0][:40], paragraphs[1][:120]]
    with torch.no_grad():
        alone = torch.cat([obj.encode_text(e["input_ids"], e["attention_mask"].bool())
                           for e in (tokenizer([t], return_tensors="pt") for t in texts)])
        for side in ("right", "left"):
            tokenizer.padding_side = side
            e = tokenizer(texts, padding=True, return_tensors="pt")
            got = obj.encode_text(e["input_ids"], e["attention_mask"].bool())
            torch.testing.assert_close(got, alone, atol=1e-5, rtol=1e-4)  # RoPE: only relative positions
    tokenizer.padding_side = "right"


def test_left_padded_batches_give_each_row_the_loss_it_has_alone(tiny_dir, tokenizer, paragraphs):
    obj = make_obj(tiny_dir, tokenizer, **{"training.task": "l2t"}).eval()
    obj.eos_id = tokenizer.sep_token_id  # bert has no EOS; a stand-in, so that one is appended
    texts, z = [paragraphs[0][:40], paragraphs[1][:150]], torch.randn(2, D)

    def loss_of(rows, side, latent):
        tokenizer.padding_side = side
        e = tokenizer(rows, padding=True, return_tensors="pt")
        with torch.no_grad():
            batch = {"input_ids": e["input_ids"], "attention_mask": e["attention_mask"].bool(), "latent": latent}
            return obj(batch, 0)[0]

    try:
        alone = [loss_of([t], "right", z[i : i + 1]).item() for i, t in enumerate(texts)]
        n = [len(tokenizer(t)["input_ids"]) + 1 for t in texts]  # each token and the EOS are targets
        want = (n[0] * alone[0] + n[1] * alone[1]) / sum(n)  # the batch CE is a token mean
        for side in ("right", "left"):
            assert loss_of(texts, side, z).item() == pytest.approx(want, rel=1e-5), side
    finally:
        tokenizer.padding_side = "right"
    ids = torch.tensor([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12]])
    mask = ids > 0
    r_ids, r_mask = right_pad(ids, mask)
    assert r_ids.tolist() == [[5, 6, 7, 0, 0], [8, 9, 10, 11, 12]] and r_mask.sum(1).tolist() == [3, 5]
    e_ids, e_mask = obj.with_eos(r_ids, r_mask)
    assert e_ids[0, :4].tolist() == [5, 6, 7, obj.eos_id] and e_ids[1].tolist() == [8, 9, 10, 11, 12, obj.eos_id]


def test_latents_are_scaled_where_the_heads_meet_them(tiny_dir, tokenizer, paragraphs):
    obj = make_obj(tiny_dir, tokenizer, **{"training.task": "joint", "model.latent_scale": 4.0}).eval()
    b = make_batch(tokenizer, paragraphs)
    with torch.no_grad():
        _, metrics = obj(b, 0)
        hidden = obj.backbone(input_ids=b["input_ids"], attention_mask=b["attention_mask"].long(),
                              output_hidden_states=True).hidden_states[-1]
        pred = obj.t2l_head(pool(hidden, b["attention_mask"], "last").float())
        assert metrics["latent_loss"].item() == pytest.approx(((pred - 4.0 * b["latent"]) ** 2).mean().item(), rel=1e-5)
        torch.testing.assert_close(obj.encode_text(b["input_ids"], b["attention_mask"]), pred / 4.0)
        raw = obj.latent_prefix(b["latent"] * 4.0).view(4, 3, -1)
        torch.testing.assert_close(obj.prefix_embeds(b["latent"]), raw * torch.rsqrt(raw.pow(2).mean(-1, keepdim=True)
                                                                                    + 1e-6) * obj.emb_rms)


@pytest.mark.parametrize("task,lora,trains", [
    ("t2l", 0, {"t2l_head"}), ("l2t", 0, {"latent_prefix"}), ("joint", 0, {"t2l_head", "latent_prefix"}),
    ("l2t", 4, {"latent_prefix", "lora"}), ("t2l", 4, {"t2l_head", "lora"})])
def test_only_the_task_heads_and_adapters_train_and_the_backbone_stays_bit_identical(
        tiny_dir, tokenizer, paragraphs, task, lora, trains):
    obj = make_obj(tiny_dir, tokenizer, **{"training.task": task, "model.lora_r": lora})
    names = {n for n, p in obj.named_parameters() if p.requires_grad}
    kinds = {"lora" if "lora_" in n else n.split(".")[0] for n in names}
    assert kinds == trains
    frozen = {n: p.detach().clone() for n, p in obj.named_parameters() if not p.requires_grad}
    opt = torch.optim.AdamW([p for p in obj.parameters() if p.requires_grad], lr=1e-2)
    b = make_batch(tokenizer, paragraphs)
    for step in range(3):
        loss, metrics = obj(b, step)
        loss.backward()
        assert all(p.grad is not None for n, p in obj.named_parameters() if n in names)
        opt.step()
        opt.zero_grad()
    assert all(torch.equal(p, frozen[n]) for n, p in obj.named_parameters() if n in frozen)
    want = {"t2l": {"latent_loss", "latent_cos"}, "l2t": {"text_loss", "text_acc"}}
    assert set(metrics) == (want.get(task) or want["t2l"] | want["l2t"])


def test_unfrozen_backbone_respects_freeze_lm_head(tiny_dir, tokenizer):
    obj = make_obj(tiny_dir, tokenizer, **{"model.freeze_backbone": False, "model.freeze_lm_head": True})
    grads = {n.split(".")[1] for n, p in obj.named_parameters() if p.requires_grad and n.startswith("backbone.")}
    assert grads == {"model"} and not obj.backbone.lm_head.weight.requires_grad


def test_smoke_script_skips_without_weights_and_checks_shapes_with_them(tmp_path, tiny_dir):
    import subprocess
    import sys

    from tests.helpers.common import REPO

    script = REPO / "wedlm_bridge" / "scripts" / "smoke_wedlm8b_ar_bridge.py"
    run = lambda *a: subprocess.run([sys.executable, str(script), *a], capture_output=True, text=True,  # noqa: E731
                                    cwd=REPO, timeout=300)
    p = run("--model-dir", str(tmp_path / "absent"))
    assert p.returncode == 0 and p.stdout.startswith("SKIP: no WeDLM weights")
    p = run("--model-dir", str(tiny_dir), "--latent-dim", "24")
    assert p.returncode == 0 and "OK: l2t logits [2, " in p.stdout, p.stderr[-2000:]


@pytest.mark.parametrize("task,reaches", [("t2l", False), ("l2t", True), ("joint", True)])
def test_checkpointed_backward_enters_the_frozen_backbone_only_when_something_below_trains(
        tiny_dir, tokenizer, paragraphs, task, reaches):
    """transformers' activation checkpointing makes the input embeddings require grad (for adapters);
    a t2l head on a frozen backbone must not pay a backward pass through the whole backbone for it."""
    obj = make_obj(tiny_dir, tokenizer, **{"training.task": task, "model.activation_checkpointing": True})
    layer = [m for m in obj.backbone.modules() if type(m).__name__.endswith("DecoderLayer")][0]
    entered = []
    layer.register_full_backward_hook(lambda *a: entered.append(1))
    loss, _ = obj(make_batch(tokenizer, paragraphs), 0)
    loss.backward()
    assert bool(entered) == reaches
