"""Sources in, artifacts out (mmldlm.sources, mmldlm.export): models in the hub's own layouts,
refusals that name their cause, trust only for what the command line names, fingerprints on
resume, FSDP loading without a full copy per rank, and run -> export -> from_pretrained for every
family with the same numbers."""
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from mmldlm.config import compose
from mmldlm.sources import Kind, LoadPolicy, Source, SourceError
from mmldlm.sources.resolve import resolve
from tests.helpers.common import REPO, ok, run_entry
from tests.helpers.fake_hub import FakeHub

BRIDGE = REPO / "wedlm_bridge" / "train_wedlm_ar_bridge.py"
TINY_BRIDGE = ["model=tiny", "training.dtype=fp32", "training.train_batch_size=4", "logging.progress_bar=false",
               "data.num_workers=0", "data.max_seq_len=32", "training.num_train_steps=2", "logging.eval_freq=0",
               "training.task=l2t"]


def model_source(path, **kw) -> Source:
    return Source("backbone", Kind.model, "model.pretrained_local_dir", str(path), **kw)


def python(code: str, env: dict, timeout=300):
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=timeout)


# -- in: where a model is ------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_hubs_own_layouts_train_offline(tmp_path, tiny_wedlm_dir, minilm_data):
    """``hf download --local-dir`` and the hub cache, both made by huggingface_hub against a
    localhost hub, are accepted offline with no marker of ours; a download happens only when allowed."""
    files = {p.name: p.read_bytes() for p in tiny_wedlm_dir.iterdir() if p.is_file()}
    home = {"HF_HOME": str(tmp_path / "hf")}
    with FakeHub("tencent/WeDLM-8B-Base", files) as hub:
        online = {**home, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0"}
        ok(python("from huggingface_hub import snapshot_download as s; s('tencent/WeDLM-8B-Base', "
                  f"local_dir={str(tmp_path / 'dl')!r})", online))
        fetched = python("from mmldlm.sources import Kind, Source; from mmldlm.sources.resolve import resolve; "
                         "r = resolve(Source('b', Kind.model, 'k', 'tencent/WeDLM-8B-Base', local_files_only=False)); "
                         "print(r.how, r.path)", online)
        assert ok(fetched).stdout.startswith("downloaded ")
    offline = {**home, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}
    assert not (tmp_path / "dl" / ".mmldlm_complete.json").exists()
    runs = []
    for name, where in (("dl", f"model.pretrained_local_dir={tmp_path / 'dl'}"),  # hf download --local-dir
                        ("cache", "model.pretrained_local_dir=null")):  # the hub cache, by name
        args = ["--config-name", "wedlm8b_ar_bridge", *TINY_BRIDGE, where, f"data.tokenizer_name={tiny_wedlm_dir}",
                "model.pretrained_model_name_or_path=tencent/WeDLM-8B-Base",
                f"data.data_files.train={minilm_data}", f"logging.save_dir={tmp_path}", f"logging.run_name={name}"]
        ok(run_entry(BRIDGE, args, env=offline))
        runs.append(torch.load(tmp_path / name / "checkpoint_step_2.pt", weights_only=True)["sources"]["backbone"])
    assert [r["how"] for r in runs] == ["hf download --local-dir", "hub cache"]
    assert runs[0]["fingerprint"] == runs[1]["fingerprint"]  # the same model, wherever it lies
    assert runs[1]["repo_id"] == "tencent/WeDLM-8B-Base" and runs[1]["revision"]


def test_incomplete_busy_or_stale_directories(tmp_path, tiny_wedlm_dir):
    """Every refusal names the real cause and the fix; a live prefetch is waited for; a lock left
    by a dead process is recovered."""
    from mmldlm.prefetch import LOCK, OWNER

    d = tmp_path / "m"
    shutil.copytree(tiny_wedlm_dir, d)
    weights = d / "model.safetensors"
    whole = weights.read_bytes()
    weights.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(SourceError, match=r"model.safetensors is truncated .* interrupted download.*Fix: .*prefetch"):
        resolve(model_source(d, hub_id="tencent/WeDLM-8B-Base"))
    weights.write_bytes(whole)
    index = {"weight_map": {"a": "model-00002-of-00002.safetensors"}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(SourceError, match=r"model-00002-of-00002.safetensors is missing \(listed by"):
        resolve(model_source(d))
    (d / "model.safetensors.index.json").unlink()
    (d / "config.json").rename(d / "config.bak")
    with pytest.raises(SourceError, match="no config.json"):
        resolve(model_source(d))
    (d / "config.bak").rename(d / "config.json")
    with pytest.raises(SourceError, match=r"pretrained_local_dir: not found: .*no/such.*not in the hub cache"):
        resolve(model_source(tmp_path / "no" / "such", hub_id="tencent/WeDLM-8B-Base"))
    # a prefetch holding the lock right now: refused, naming who; killed (SIGKILL): the lock is stale
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from filelock import FileLock; "
                               f"l = FileLock({str(d / LOCK)!r}); l.acquire(); "
                               f"open({str(d / OWNER)!r}, 'w').write('node7 pid 42'); print('held', flush=True); "
                               "sys.stdin.read()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SourceError, match=r"being prefetched right now \(node7 pid 42\)"):
            resolve(model_source(d))
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (d / LOCK).exists()
    r = resolve(model_source(d))
    assert r.path == d.resolve() and not (d / LOCK).exists() and not (d / OWNER).exists()


def test_resume_refuses_a_changed_tokenizer_naming_the_override(run_tiny, tmp_path, tokenizer_path):
    tok = tmp_path / "tok"
    shutil.copytree(tokenizer_path, tok)
    common = [f"data.tokenizer_name={tok}", "logging.save_freq=2"]
    run_tiny(*common, "training.num_train_steps=2")
    with open(tok / "vocab.txt", "a") as f:
        f.write("zzzzzz\n")
    p = run_tiny(*common, "training.num_train_steps=3", "training.resume=auto", expect_ok=False)
    err = p.stdout + p.stderr
    assert p.returncode == 1 and "Traceback" not in err, err[-2000:]
    assert "source tokenizer (data.tokenizer_name) changed since checkpoint_step_2.pt" in err
    assert "vocab.txt differ" in err and "training.allow_source_change=true" in err
    p = run_tiny(*common, "training.num_train_steps=3", "training.resume=auto", "training.allow_source_change=true")
    assert "continuing with it" in p.stdout + p.stderr
    # latents rewritten in place (same records, same files): refused too, naming the shard
    import numpy as np

    shard = sorted((tmp_path / "data" / "latents").glob("*.npy"))[0]
    np.save(shard, np.load(shard) * 2)
    common += ["training.allow_source_change=false"]
    p = run_tiny(*common, "training.num_train_steps=4", "training.resume=auto", expect_ok=False)
    err = p.stdout + p.stderr
    assert p.returncode == 1 and "source latents (data.latent_data_root) changed" in err, err[-2000:]
    assert f"{shard.name} differ" in err


# -- trust ------------------------------------------------------------------------------------------------
def test_an_llm_directory_named_by_a_checkpoint_runs_no_code(tiny_qa_llms, tmp_path):
    """LatentWire: the checkpoint names a code-bearing LLM directory; the user trusts code for the
    directory they name (another LLM): refused in one line that names the flag and the option."""
    from mmldlm.sources import build_loaded
    from mmldlm.train.rebuild import rebuild_from_checkpoint
    from tests.helpers.code_dirs import code_model

    evil, ran = code_model(Path(tiny_qa_llms["qwen"]), tmp_path / "evil_llm")
    cfg = lw_cfg(tiny_qa_llms)
    obj = build_loaded(cfg)
    saved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    saved["model"]["llms"][1]["path"] = str(evil)
    saved["model"]["trust_remote_code"] = True
    write_checkpoint(tmp_path / "run", obj, saved)
    policy = LoadPolicy(trust_remote_code=True, paths={"llm.llama": tiny_qa_llms["llama"]})
    with pytest.raises(SourceError) as e:
        rebuild_from_checkpoint(tmp_path / "run", policy=policy, ema=False)
    assert "not by you" in str(e.value) and f"--llm qwen={evil} --trust-remote-code" in str(e.value)
    assert not ran.exists()


def lw_cfg(llms: dict):
    return compose("latentwire", [f"model.llms=[{{name: llama, path: {llms['llama']}}}, "
                                  f"{{name: qwen, path: {llms['qwen']}}}]", "model.llm_dtype=float32", "model.d_z=32",
                                  "model.encoder_type=byte", "model.encoder_layers=1", "model.encoder_heads=4",
                                  "model.latent_len=4", "model.max_bytes=256", "data.data_files.train=unused"])


def write_checkpoint(run: Path, obj, config: dict, sources: dict | None = None) -> None:
    """A checkpoint as the loop writes it (trained tensors, config, sources), for in-process tests."""
    from mmldlm.train import checkpointing as C

    keys = C.saved_keys(obj)
    run.mkdir(parents=True)
    C.save_checkpoint(run, 1, {"model": {k: v for k, v in obj.state_dict().items() if k in keys}, "step": 1,
                               "optimizer": {"state": {}, "param_groups": []}, "config": config,
                               "sources": sources or {}}, keep_last=1)


def test_init_from_refuses_what_it_cannot_carry(tiny_wedlm_dir):
    """LoRA adapters into a run without adapters would be dropped: refused, saying what to do."""
    from mmldlm.config import ConfigError
    from mmldlm.sources import build_loaded
    from mmldlm.train import checkpointing as C

    base = ["model=tiny", f"model.pretrained_local_dir={tiny_wedlm_dir}", f"data.tokenizer_name={tiny_wedlm_dir}",
            "data.data_files.train=x", "data.max_seq_len=32", "training.task=joint"]
    lora = build_loaded(compose("wedlm8b_ar_bridge", [*base, "model.lora_r=2"]))
    full = build_loaded(compose("wedlm8b_ar_bridge", [*base, "model.freeze_backbone=false"]))
    trained = {k: v for k, v in lora.state_dict().items() if k in C.saved_keys(lora)}
    with pytest.raises(ConfigError, match=r"trained tensors of runs/lora have no place .*export the LoRA run"):
        C.carry_over(full, trained, "runs/lora")


# -- FSDP: built on meta, sharded, then each rank reads its own rows ------------------------------------
@pytest.mark.slow
def test_fsdp_ranks_read_only_their_shards_of_a_pretrained_backbone(tmp_path, tiny_wedlm_dir):
    p = ok(run_entry(REPO / "tests" / "helpers" / "fsdp_load.py", [str(tiny_wedlm_dir), str(tmp_path)], nproc=2))
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    total = reports[0]["elements_total"]
    assert all(r["elements_total"] == total for r in reports), p.stdout
    assert all(r["elements_read"] <= 0.55 * total for r in reports)  # its shards, never the whole backbone
    assert sum(r["elements_read"] for r in reports) == total  # and together, every element once
    assert all(r["full_tensors_equal_the_files"] and r["logits_equal_a_plain_load"] for r in reports)


# -- out: every family as an export, reloaded with the same numbers -------------------------------------------
FAMILIES = {
    "mdlm": ["model=tiny", "model.n_blocks=1", "data.max_seq_len=32"],
    "ar": ["model=tiny", "model.n_blocks=1", "data.max_seq_len=32"],
    "hdlm-small-cluster_64-gamma_1.0-xi_1.0": ["model=tiny", "model.n_blocks=1", "model.cluster_size=4",
                                               "data.max_seq_len=32"],
    "mmdit": ["model=tiny", "model.n_blocks=1", "data.latent_dim=384", "data.max_seq_len=32"],
    "gidd": ["model=tiny", "model.n_blocks=1", "model.p_uniform=0.1", "data.max_seq_len=32"],
    "mdlm_cross_attention": ["model=tiny", "model.n_blocks=1", "model.latent_dim=16", "data.latent_data_root=x",
                             "data.data_files.validation=null", "data.max_seq_len=32"],
    "t2l_regression": ["model.hidden_size=32", "model.n_blocks=1", "model.n_heads=2"],
    "image_continuous": ["model=tiny"],
    "image_discrete": ["model=tiny"],
}


def fill(batch: dict, vocab: int) -> dict:
    g = torch.Generator().manual_seed(0)
    for k, v in batch.items():
        if v.dtype == torch.bool:
            v.fill_(True)
        elif k == "index":
            v.copy_(torch.arange(len(v)))
        elif not v.is_floating_point():
            v.copy_(torch.randint(5, vocab - 2, v.shape, generator=g))
        else:
            v.copy_(torch.randn(v.shape, generator=g))
    return batch


@pytest.mark.parametrize("name", list(FAMILIES))
def test_run_export_from_pretrained_gives_the_same_numbers(name, tmp_path, tokenizer_path, shapes_data):
    """A family's run -> python -m mmldlm.export -> mmldlm.from_pretrained: the same loss on the
    same batch, with nothing of the training machine left (tokenizer and file sources copied in)."""
    import mmldlm
    from mmldlm.export import main as export_main
    from mmldlm.objective import lookup
    from mmldlm.sources import open_sources

    tok = tmp_path / "tok"
    shutil.copytree(shapes_data / "tokenizer" if name.startswith("image") else tokenizer_path, tok)
    overrides = [*FAMILIES[name], f"data.tokenizer_name={tok}", "data.data_files.train=x", "training.dtype=fp32",
                 "training.train_batch_size=2"]  # example_batch's size: the shipped 64 x 512 logits take GBs
    if name.startswith("hdlm"):
        torch.save(torch.arange(30522) % 4, tmp_path / "clusters.pt")
        overrides.append(f"model.cluster_dict_path={tmp_path / 'clusters.pt'}")
    if name == "image_discrete":
        from latentIMG_mmdit import codebook as C

        cfg0 = compose(name, [*overrides, "model.codebook=x"])
        images = (torch.rand(16, 3, cfg0.model.image_size, cfg0.model.image_size) * 2 - 1).numpy()
        C.save(C.build(images, cfg0.model.patch_size, cfg0.model.codebook_size, 0), tmp_path / "codebook.npz")
        overrides.append(f"model.codebook={tmp_path / 'codebook.npz'}")
    cfg = compose(name, overrides)
    entry = lookup(cfg.objective)
    sources = open_sources(cfg, entry)
    torch.manual_seed(0)
    obj = entry.build(cfg, sources)
    sources.load(obj, "cpu")
    with torch.no_grad():
        for p in obj.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # "trained": not the initial values
    config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    write_checkpoint(tmp_path / "run", obj, config, sources.records())
    assert export_main(["--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "export")]) == 0
    shutil.rmtree(tok)  # nothing of the training machine is needed any more
    for f in ("clusters.pt", "codebook.npz"):
        (tmp_path / f).unlink(missing_ok=True)
    again, tok2, cfg2 = mmldlm.from_pretrained(str(tmp_path / "export"))
    meta = json.loads((tmp_path / "export" / "config.json").read_text())["mmldlm"]
    assert meta["objective"] == cfg.objective and meta["sources"]["tokenizer"]["fingerprint"]
    assert ("clusters" in meta["inside"]) == name.startswith("hdlm") and "codebook" not in meta["inside"]
    batch = fill(obj.example_batch(cfg, "cpu"), len(tok2))
    obj.eval()
    for model in (obj, again):
        torch.manual_seed(1)
        with torch.no_grad():
            model.result = model(batch, 3)[0]
    torch.testing.assert_close(again.result, obj.result, rtol=0, atol=0)


def test_latentwire_run_export_from_pretrained_gives_the_same_numbers(tiny_qa_llms, tmp_path):
    """LatentWire exports its encoder and adapters; its frozen LLMs stay sources, reloaded from
    where the run recorded them and checked against their fingerprints."""
    import mmldlm
    from latentwire.data import synthetic_qa
    from latentwire.objective import collator
    from mmldlm.export import export
    from mmldlm.objective import lookup
    from mmldlm.sources import open_sources

    cfg = lw_cfg(tiny_qa_llms)
    sources = open_sources(cfg, lookup("latentwire"))
    torch.manual_seed(0)
    obj = lookup("latentwire").build(cfg, sources)
    sources.load(obj, "cpu")
    write_checkpoint(tmp_path / "run", obj, OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
                     sources.records())
    export(tmp_path / "run", tmp_path / "export")
    again, _, _ = mmldlm.from_pretrained(str(tmp_path / "export"))
    trained = set(json.loads((tmp_path / "export" / "config.json").read_text())["mmldlm"]["sources"])
    assert {"llm.llama", "llm.qwen", "tokenizer"} <= trained
    records = synthetic_qa(4, seed=1)
    batch = collator(cfg, sources)([{"index": i, "record": r} for i, r in enumerate(records)]).batch
    obj.eval()
    with torch.no_grad():
        torch.testing.assert_close(again(batch, 3)[0], obj(batch, 3)[0], rtol=0, atol=0)


def test_an_export_never_writes_into_its_inputs_and_a_failed_one_leaves_nothing(tmp_path, tokenizer_path,
                                                                               monkeypatch):
    from mmldlm.export import export
    from mmldlm.objective import Objective
    from mmldlm.sources import build_loaded

    cfg = compose("mdlm", ["model=tiny", "model.n_blocks=1", f"data.tokenizer_name={tokenizer_path}",
                           "data.data_files.train=x"])
    obj = build_loaded(cfg)
    write_checkpoint(tmp_path / "run", obj, OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    for bad in (tmp_path / "run", tmp_path / "run" / "export", Path(tokenizer_path), tmp_path):
        with pytest.raises(SourceError, match="never writes into its inputs"):
            export(tmp_path / "run", bad)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "f").write_text("x")
    with pytest.raises(SourceError, match="already exists and is not empty"):
        export(tmp_path / "run", tmp_path / "taken")

    def broken(self, out, sources):
        raise OSError("disk full")

    monkeypatch.setattr(Objective, "export_artifacts", broken)
    with pytest.raises(OSError, match="disk full"):
        export(tmp_path / "run", tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "taken"]  # no out, no temporary
