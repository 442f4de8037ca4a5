"""WeDLM fine-tuning end to end through the users' entrypoint and launcher: 2 ranks = 1 rank and exact
resume under DDP (causal_lm + LoRA), exact resume and the export under FSDP (full, WeDLM's objective),
QLoRA through the entrypoint and its export."""
import json
import shutil

import pytest
import torch

from mmldlm.train.run_log import read_jsonl
from tests.helpers.common import REPO, ok, run_entry, run_module
from tests.helpers.launch import bash, env_for

pytestmark = pytest.mark.slow
ENTRY = REPO / "wedlm_bridge" / "train_wedlm_finetune.py"


def base_args(tiny, data, save_dir, *extra):
    return ["--config-name", "wedlm8b_sft", "model=tiny", f"model.pretrained_local_dir={tiny}",
            f"data.data_files.train={data}", f"logging.save_dir={save_dir}", "training.dtype=fp32",
            "training.warmup_steps=0", "training.lr_schedule=constant", "logging.log_freq=1",
            "logging.progress_bar=false", "logging.eval_freq=0", "data.num_workers=0", "optimizer.lr=1e-3",
            "finetune.block_size=8", "data.max_seq_len=128", *extra]


def losses(run_dir):
    return [r["loss"] for r in read_jsonl(run_dir / "training_log.jsonl")]


def cut_and_resume(run_dir, args, nproc):
    """Drop the last checkpoint (as if killed after step 2's), resume, compare with the whole run."""
    cut = run_dir.parent / (run_dir.name + "_cut")
    shutil.copytree(run_dir, cut)
    for c in sorted(cut.glob("checkpoint_step_4*")):
        shutil.rmtree(c) if c.is_dir() else c.unlink()
    (cut / "latest").write_text(next(p.name for p in cut.glob("checkpoint_step_2*")) + "\n")
    ok(run_entry(ENTRY, [*args, f"logging.run_name={cut.name}", "training.resume=auto"], nproc=nproc))
    assert losses(cut) == losses(run_dir)


def test_ddp_two_ranks_equal_one_and_resume_is_exact(tmp_path, tiny_chat_wedlm_dir, sft_jsonl):
    # LoRA dropout off: each rank draws its own dropout masks, so with it 2 ranks are not 1 rank bit for bit
    args = base_args(tiny_chat_wedlm_dir, sft_jsonl, tmp_path, "finetune.objective=causal_lm",
                     "finetune.lora_dropout=0", "training.num_train_steps=4", "logging.save_freq=2")
    ok(run_entry(ENTRY, [*args, "training.train_batch_size=8", "logging.run_name=one"]))
    ok(run_entry(ENTRY, [*args, "training.train_batch_size=4", "logging.run_name=two"], nproc=2))
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == 4 and one == pytest.approx(two, rel=1e-5)
    cut_and_resume(tmp_path / "two", [*args, "training.train_batch_size=4"], nproc=2)


def test_fsdp_full_wedlm_resumes_exactly_and_exports_from_its_sharded_checkpoint(tmp_path, tiny_chat_wedlm_dir,
                                                                                   sft_jsonl):
    from safetensors import safe_open
    from transformers import Qwen3ForCausalLM

    from mmldlm.sources import LoadPolicy
    from mmldlm.train.rebuild import rebuild_from_checkpoint

    args = base_args(tiny_chat_wedlm_dir, sft_jsonl, tmp_path, "finetune.method=full", "training.parallelism=fsdp",
                     "model.activation_checkpointing=true", "training.num_train_steps=4", "logging.save_freq=2",
                     "training.train_batch_size=3")
    ok(run_entry(ENTRY, [*args, "logging.run_name=fsdp"], nproc=2))
    log = read_jsonl(tmp_path / "fsdp" / "training_log.jsonl")
    assert all({"mlm_loss", "ar_loss", "masked_tokens"} <= r.keys() for r in log)
    assert (tmp_path / "fsdp" / "checkpoint_step_4").is_dir()  # sharded
    cut_and_resume(tmp_path / "fsdp", args, nproc=2)
    out = tmp_path / "export"
    ok(run_module("wedlm_bridge.export_finetuned", "--checkpoint", tmp_path / "fsdp", "--backbone-dir",
                  tiny_chat_wedlm_dir, "--out", out, "--dtype", "float32"))
    obj, _, _ = rebuild_from_checkpoint(tmp_path / "fsdp",
                                        policy=LoadPolicy(paths={"backbone": str(tiny_chat_wedlm_dir)}))
    ids = torch.randint(100, 3000, (2, 10))
    with torch.no_grad():
        trained = obj.lm(input_ids=ids).logits
        exported = Qwen3ForCausalLM.from_pretrained(str(out), dtype=torch.float32)(input_ids=ids).logits
    torch.testing.assert_close(exported, trained, atol=1e-5, rtol=1e-5)
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        names = list(f.keys())
    assert names and not [k for k in names if "lora" in k or "absmax" in k]


def test_qlora_through_the_entrypoint_and_launcher_then_export(tmp_path, tiny_chat_wedlm_dir, sft_jsonl):
    env = env_for(tmp_path, None, METHOD="qlora", DRY_RUN="1", TRAIN_JSON=str(sft_jsonl),
                  LOCAL_MODEL_DIR=str(tiny_chat_wedlm_dir), MODEL_ID="mmldlm/tiny")
    p = ok(bash(REPO / "wedlm_bridge" / "run_wedlm8b_finetune.sh", {**env, "ESTIMATE": "1"}, "model=tiny"))
    dry = p.stdout
    assert "finetune.method=qlora" in dry and "optimizer.name=paged_adamw_8bit" in dry and "train_wedlm_finetune" in dry
    # the preflight: the estimator's verdict for this exact command (QLoRA's 4-bit base on the tiny shape)
    assert "estimate: peak" in p.stderr and "fits H100 80 GB" in p.stderr, p.stderr[-2000:]
    full = ok(bash(REPO / "wedlm_bridge" / "run_wedlm8b_finetune.sh", {**env, "METHOD": "full"})).stdout
    assert "training.parallelism=fsdp" in full and "optimizer.lr=3e-6" in full and "float32" in full
    args = base_args(tiny_chat_wedlm_dir, sft_jsonl, tmp_path, "finetune.method=qlora", "training.dtype=bf16",
                     "optimizer.name=paged_adamw_8bit", "training.num_train_steps=3", "logging.run_name=q",
                     "training.train_batch_size=4")
    ok(run_entry(ENTRY, args))
    log = read_jsonl(tmp_path / "q" / "training_log.jsonl")
    assert len(log) == 3 and all(torch.isfinite(torch.tensor(r["loss"])) for r in log)
    saved = torch.load(tmp_path / "q" / "checkpoint_step_3.pt", weights_only=True)["model"]
    assert saved and all("lora_" in k for k in saved)  # adapters only: no 4-bit base, no quantisation state
    # the export CLI's body in-process (python -m wedlm_bridge.export_finetuned itself ran in the FSDP test)
    from wedlm_bridge.export_finetuned import main as export_main

    export_main(["--checkpoint", str(tmp_path / "q"), "--out", str(tmp_path / "qx")])
    raw = json.loads((tmp_path / "qx" / "config.json").read_text())  # the base the run recorded, unchanged
    assert raw["dtype"] == "bfloat16" and raw["model_type"] == "wedlm"
    # --format hf: stock transformers, no remote code, no prompt; the peft adapter beside it gives the same logits
    export_main(["--checkpoint", str(tmp_path / "q"), "--out", str(tmp_path / "qh"), "--format", "hf", "--dtype",
                 "float32"])
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from wedlm_bridge.backbone import load_backbone

    raw = json.loads((tmp_path / "qh" / "config.json").read_text())
    assert raw["model_type"] == "qwen3" and "auto_map" not in raw and not list((tmp_path / "qh").glob("*.py"))
    assert "auto_map" not in json.loads((tmp_path / "qh" / "tokenizer_config.json").read_text())
    tok = AutoTokenizer.from_pretrained(tmp_path / "qh")
    ids = torch.tensor([tok("<|im_start|>user\nhi<|im_end|>")["input_ids"]])
    with torch.no_grad():
        stock = AutoModelForCausalLM.from_pretrained(tmp_path / "qh")(input_ids=ids).logits
        base = load_backbone(tiny_chat_wedlm_dir, "float32")
        plain = base(input_ids=ids).logits
        adapted = PeftModel.from_pretrained(base, tmp_path / "qh" / "adapter")(input_ids=ids).logits
    torch.testing.assert_close(adapted, stock, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(plain, stock, atol=1e-5)  # the adapters moved it
    # never into an input: the base stays as it was (the audit: it was overwritten, then a LoRA applied twice)
    before = {f.name: f.read_bytes() for f in tiny_chat_wedlm_dir.iterdir() if f.is_file()}
    with pytest.raises(SystemExit) as into:  # one line for the user (a string exit code), no traceback
        export_main(["--checkpoint", str(tmp_path / "q"), "--out", str(tiny_chat_wedlm_dir)])
    assert isinstance(into.value.code, str) and "never writes into its inputs" in into.value.code
    assert {f.name: f.read_bytes() for f in tiny_chat_wedlm_dir.iterdir() if f.is_file()} == before
