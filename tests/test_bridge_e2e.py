"""The bridge end to end: launcher + localhost hub, staged training, exact resume, 2 ranks, CLIs."""
import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from mmldlm.prefetch import read_marker
from mmldlm.train.checkpointing import load_checkpoint, read_model_weights
from mmldlm.train.run_log import read_jsonl
from tests.helpers.common import REPO, ok, run_entry
from tests.helpers.fake_hub import FakeHub
from tests.helpers.launch import bash, env_for

pytestmark = pytest.mark.slow
SCRIPT = REPO / "wedlm_bridge" / "run_wedlm8b_ar_bridge.sh"
TRAIN = REPO / "wedlm_bridge" / "train_wedlm_ar_bridge.py"
COMMON = ["model=tiny", "training.dtype=fp32", "training.warmup_steps=0", "optimizer.lr=1e-3",
          "training.train_batch_size=4", "logging.log_freq=2", "logging.progress_bar=false", "data.num_workers=0",
          "data.val_split_ratio=0.1", "data.max_seq_len=48"]


@pytest.fixture
def tiny_dir(tiny_wedlm_dir):
    return tiny_wedlm_dir


def test_download_only_then_offline_stages_t2l_l2t_joint_on_two_ranks(tmp_path, tiny_dir, minilm_data):
    files = {p.name: p.read_bytes() for p in tiny_dir.iterdir() if p.is_file()}
    with FakeHub("tencent/WeDLM-8B-Base", files) as hub:
        env = env_for(tmp_path, hub, DOWNLOAD_ONLY="1", MODEL_ID="tencent/WeDLM-8B-Base",
                      LOCAL_MODEL_DIR=str(tmp_path / "models" / "wedlm"))
        ok(bash(SCRIPT, env))
    local = tmp_path / "models" / "wedlm"
    assert read_marker(local) and (local / "model.safetensors").read_bytes() == files["model.safetensors"]
    runs = tmp_path / "runs"
    base = env_for(tmp_path, None, MODEL_ID="tencent/WeDLM-8B-Base", LOCAL_MODEL_DIR=str(local),
                   TRAIN_JSON=str(minilm_data), NUM_STEPS="6", SAVE_DIR=str(runs), NPROC_PER_NODE="1")
    stages = [("t2l", "s1", {}), ("l2t", "s2", {"INIT_FROM": str(runs / "s1")}),
              ("joint", "s3", {"INIT_FROM": str(runs / "s2"), "NPROC_PER_NODE": "2"})]
    for task, name, extra in stages:  # hub gone: everything below is offline; the 2-rank stage runs FSDP
        fsdp = ["training.parallelism=fsdp"] if name == "s3" else []
        ok(bash(SCRIPT, {**base, "TASK": task, "RUN_NAME": name, **extra}, *COMMON, *fsdp, timeout=600))
        log = read_jsonl(runs / name / "training_log.jsonl")
        keys = {"t2l": {"latent_loss", "latent_cos"}, "l2t": {"text_loss", "text_acc"}}
        want = keys.get(task) or keys["t2l"] | keys["l2t"]
        assert all(want <= r.keys() and all(math.isfinite(r[k]) for k in want) for r in log)
        assert read_jsonl(runs / name / "eval_log.jsonl")
    s3 = runs / "s3" / "checkpoint_step_6"  # sharded: a directory
    assert {k.split(".")[0] for k in read_model_weights(s3)} == {"latent_prefix", "t2l_head"}  # no backbone
    backbone = load_checkpoint(s3)["sources"]["backbone"]  # recorded by name, place and fingerprint
    assert backbone["repo_id"] == "tencent/WeDLM-8B-Base" and backbone["revision"] and backbone["fingerprint"]
    assert backbone["path"] == str(local.resolve()) and backbone["how"] == "prefetched directory"
    # stage 2 started from stage 1's t2l head (frozen in l2t): identical tensors
    s1 = torch.load(runs / "s1" / "checkpoint_step_6.pt", weights_only=True)["model"]
    from mmldlm.sources import LoadPolicy
    from wedlm_bridge.bridge import load_bridge
    s2, _, _ = load_bridge(str(runs / "s2"), policy=LoadPolicy(paths={"backbone": str(local)}))
    assert all(torch.equal(s2.state_dict()[k], v) for k, v in s1.items() if k.startswith("t2l_head"))


def test_resume_is_exact_and_the_clis_work_with_lora(tmp_path, tiny_dir, minilm_data, capsys):
    args = ["--config-name", "wedlm8b_ar_bridge", *COMMON, f"model.pretrained_local_dir={tiny_dir}",
            f"data.data_files.train={minilm_data}", f"logging.save_dir={tmp_path}", "training.task=joint",
            "model.lora_r=4", "training.num_train_steps=8", "logging.save_freq=4", "logging.run_name=ref"]
    ok(run_entry(TRAIN, args))
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "ref", cut)
    (cut / "checkpoint_step_8.pt").unlink()  # as if killed between step 4's and step 8's checkpoints
    (cut / "latest").write_text("checkpoint_step_4.pt\n")
    ok(run_entry(TRAIN, args[:-1] + ["logging.run_name=cut", "training.resume=auto"]))
    ref, got = read_jsonl(tmp_path / "ref" / "training_log.jsonl"), read_jsonl(cut / "training_log.jsonl")
    assert [r["step"] for r in got] == [2, 4, 6, 8]
    assert [r["loss"] for r in got] == [r["loss"] for r in ref]

    texts = tmp_path / "t.txt"
    texts.write_text("A for loop iterates over items.\nThe with statement wraps a block.\n")
    def cli(mod, *a):
        return subprocess.run([sys.executable, "-m", f"wedlm_bridge.{mod}", "--checkpoint", str(tmp_path / "ref"),
                               "--backbone-dir", str(tiny_dir), *map(str, a)], capture_output=True, text=True,
                              cwd=REPO, timeout=300)

    ok(cli("encode", "--input", texts, "--output", tmp_path / "z.npy", "--device", "cpu"))
    z = np.load(tmp_path / "z.npy")
    assert z.shape == (2, 384) and np.isfinite(z).all()
    ok(cli("decode", "--latents", tmp_path / "z.npy", "--output", tmp_path / "out.txt", "--max-new-tokens", "8",
           "--device", "cpu"))
    decoded = (tmp_path / "out.txt").read_text().splitlines()
    assert len(decoded) == 2
    # the shared eval CLIs read the bridge too (its backbone named on the command line): generate draws
    # what decode drew (one sampler), the loss CLI gives the exact NLL given the latent, twice the same
    from baseline.eval.generate_samples import main as generate
    from baseline.eval.loss import main as loss

    keys = [f"path={tmp_path / 'ref'}", f"backbone_dir={tiny_dir}", "device=cpu"]
    samples = torch.load(generate([*keys, f"latents={tmp_path / 'z.npy'}", "num_samples=2", "length=8",
                                   "temperature=0", f"samples_path={tmp_path / 's.pt'}"]), weights_only=True)
    assert samples["header"]["sampler"].startswith("ar from the latent prefix") and samples["ids"].shape == (2, 8)
    sep = 102  # bert's [SEP] closes a text: the bridge's stop token
    rows = [r[: r.index(sep)] if sep in r else r for r in samples["ids"].tolist()]
    from mmldlm.data.tokenizer import load_tokenizer

    tok = load_tokenizer(str(tiny_dir))
    assert [" ".join(tok.decode(r, skip_special_tokens=True).split()) for r in rows] == decoded
    scored = [loss([*keys, "batch_size=4", f"metrics_path={tmp_path / f'loss{i}.json'}"]) for i in range(2)]
    assert scored[0]["nelbo"] == scored[1]["nelbo"] and scored[0]["num_t"] == 0 and "latent_gain" in scored[0]
    assert scored[0]["ppl"] == pytest.approx(math.exp(scored[0]["nelbo"]))
    # without backbone_dir= the backbone the run recorded is used (it is here, with its fingerprint)
    recorded = loss([keys[0], "device=cpu", "batch_size=4", f"metrics_path={tmp_path / 'loss2.json'}"])
    assert recorded["nelbo"] == scored[0]["nelbo"]
    ok(cli("export", "--output", tmp_path / "export"))
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import mmldlm
    from mmldlm.sources import LoadPolicy
    from wedlm_bridge.backbone import load_backbone
    from wedlm_bridge.bridge import load_bridge
    export = tmp_path / "export"
    trained = load_file(export / "model.safetensors")
    assert {k.split(".")[0] for k in trained} == {"latent_prefix", "t2l_head", "backbone"}  # LoRA: in the backbone
    assert all("lora_" in k for k in trained if k.startswith("backbone."))
    raw = json.loads((export / "backbone" / "config.json").read_text())  # stock: no remote code
    assert raw["model_type"] == "qwen3" and "auto_map" not in raw and "mask_token_id" in raw
    obj, _, _ = load_bridge(str(tmp_path / "ref"), policy=LoadPolicy(paths={"backbone": str(tiny_dir)}))
    ids = torch.randint(1000, 2000, (2, 10))
    with torch.no_grad():
        want = obj.backbone(input_ids=ids).logits  # base + adapters
        stock = AutoModelForCausalLM.from_pretrained(export / "backbone", dtype=torch.float32)
        adapter = PeftModel.from_pretrained(load_backbone(str(tiny_dir), "float32"), export / "adapter")
        torch.testing.assert_close(stock(input_ids=ids).logits, want, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(adapter(input_ids=ids).logits, want, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(want, load_backbone(str(tiny_dir), "float32")(input_ids=ids).logits, atol=1e-6)
    assert AutoTokenizer.from_pretrained(export / "backbone")("a for loop")["input_ids"]
    # the export rebuilds as the run did: the same latents for the same texts
    again, _, _ = mmldlm.from_pretrained(str(export))
    batch = tok(["A for loop iterates over items."], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(again.encode_text(batch["input_ids"], batch["attention_mask"].bool()),
                                   obj.encode_text(batch["input_ids"], batch["attention_mask"].bool()))
    # never into an input: the run directory, the backbone (the CLI's body in-process: its start-up ran above)
    from wedlm_bridge.export import main as export_main

    for bad in (tmp_path / "ref" / "x", tiny_dir):
        assert export_main(["--checkpoint", str(tmp_path / "ref"), "--backbone-dir", str(tiny_dir),
                            "--output", str(bad)]) == 2
        assert "never writes into its inputs" in capsys.readouterr().err


def test_code_runs_only_for_directories_named_on_this_command_line(tmp_path, tiny_dir, minilm_data):
    """A checkpoint naming a code-bearing tokenizer directory, and asking for remote code: with the
    user's --trust-remote-code given for another directory (their backbone), no code runs; a changed
    backbone is refused, naming the override; a backbone that is gone is asked for by its flag."""
    from tests.helpers.code_dirs import code_tokenizer

    ok(run_entry(TRAIN, ["--config-name", "wedlm8b_ar_bridge", *COMMON, f"model.pretrained_local_dir={tiny_dir}",
                         f"data.data_files.train={minilm_data}", f"logging.save_dir={tmp_path}",
                         "training.num_train_steps=1", "logging.run_name=r", "logging.eval_freq=0",
                         "training.task=l2t"]))
    evil, ran = code_tokenizer(tiny_dir, tmp_path / "evil_tokenizer")
    ckpt = tmp_path / "r" / "checkpoint_step_1.pt"
    state = torch.load(ckpt, weights_only=True)
    state["config"]["model"].update(trust_remote_code=True, local_files_only=False)
    state["config"]["data"]["tokenizer_name"] = str(evil)
    state["sources"].pop("tokenizer")  # as if trained with it
    torch.save(state, ckpt)
    z = tmp_path / "z.npy"
    np.save(z, np.random.default_rng(0).standard_normal((2, 384)).astype(np.float32))

    from wedlm_bridge.decode import main as decode_main

    def decode(*flags):
        """``python -m wedlm_bridge.decode``'s body in-process (the module's start-up runs in the
        test above): None when it wrote its output, else the one line it exits with (no traceback)."""
        (tmp_path / "out.txt").unlink(missing_ok=True)
        try:
            decode_main(["--checkpoint", str(ckpt), "--latents", str(z), "--output", str(tmp_path / "out.txt"),
                         "--max-new-tokens", "2", *flags])
        except SystemExit as e:
            assert isinstance(e.code, str) and e.code.startswith("error: "), e.code
            return e.code
        assert len((tmp_path / "out.txt").read_text().splitlines()) == 2
        return None

    for err in (decode("--backbone-dir", str(tiny_dir), "--trust-remote-code"), decode()):
        assert err and "not by you" in err and f"--source tokenizer={evil} --trust-remote-code" in err, err
    assert not ran.exists()  # neither the checkpoint's request nor the user's flag for another directory ran it
    state["config"]["data"]["tokenizer_name"] = str(tiny_dir)
    torch.save(state, ckpt)
    assert decode() is None  # the backbone and tokenizer the run recorded, unchanged
    changed = tmp_path / "changed"
    shutil.copytree(tiny_dir, changed)
    (changed / "config.json").write_text((changed / "config.json").read_text().replace('"rms_norm_eps": 1e-06',
                                                                                      '"rms_norm_eps": 1e-05'))
    err = decode("--backbone-dir", str(changed))
    assert err and "source backbone" in err and "--allow-source-change" in err, err
    assert decode("--backbone-dir", str(changed), "--allow-source-change") is None
    state["config"]["model"]["pretrained_local_dir"] = str(tmp_path / "moved")
    torch.save(state, ckpt)
    err = decode()
    assert err and f"not found: {tmp_path / 'moved'}" in err and "--backbone-dir" in err, err


def test_bad_data_is_reported_before_the_backbone_is_loaded(tmp_path, minilm_data, tokenizer_path, tiny_dir):
    """A backbone whose weights would fail to load (complete files, foreign tensors): the bad record
    is what the user hears about, so the data check came first."""
    from safetensors.torch import save_file

    records = json.loads(minilm_data.read_text())
    records[3]["text"] = ""
    bad = minilm_data.parent / "bad_bridge.json"
    bad.write_text(json.dumps(records))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    shutil.copy(tiny_dir / "config.json", foreign / "config.json")
    save_file({"not.a.qwen.tensor": torch.zeros(2)}, str(foreign / "model.safetensors"))
    p = run_entry(TRAIN, ["--config-name", "wedlm8b_ar_bridge", *COMMON, f"model.pretrained_local_dir={foreign}",
                          f"data.tokenizer_name={tokenizer_path}", f"data.data_files.train={bad}",
                          f"logging.save_dir={tmp_path}", "logging.run_name=b"])
    out = p.stdout + p.stderr
    assert p.returncode == 1 and "record 3: text is empty" in out and "lacks" not in out, out[-3000:]
    assert not (tmp_path / "b").exists()
