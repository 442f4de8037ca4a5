"""Every schema key is read by the code, and every shipped YAML key is one (with its default
stated once: in the schema). "Read" is measured, not grepped: real runs of every family (and the
MMDiT's sampling CLI) under a config that records each key the code asks it for."""
import contextlib
import dataclasses
import json
import sys

import pytest
import yaml
from omegaconf import DictConfig

from mmldlm.config import SHARED_CONFIGS, RunConfig, compose, objective_of
from tests.helpers.common import REPO, shipped_families

pytestmark = pytest.mark.slow


def schema_keys(cls, prefix=""):
    """Dotted keys of a schema; dict-, list- and Any-typed fields are leaves."""
    for f in dataclasses.fields(cls):
        sub = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if isinstance(sub, type) and dataclasses.is_dataclass(sub):
            yield from schema_keys(sub, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}"


# bulk readers that touch every key (composition, validation, saving a config): not a use
NOT_A_USE = ("/omegaconf/", "/hydra/", str(REPO / "mmldlm" / "config.py"))


@pytest.fixture
def reads(monkeypatch):
    """The full keys the code reads from any DictConfig while the test runs (by attribute,
    item or ``get``; reads made by OmegaConf, Hydra and the config module itself do not count)."""
    seen: set[str] = set()
    get_attr, get_item, get = DictConfig.__getattr__, DictConfig.__getitem__, DictConfig.get

    def record(node, key):
        caller = sys._getframe(2).f_code.co_filename  # record <- the patched method <- its caller
        if any(part in caller for part in NOT_A_USE):
            return
        with contextlib.suppress(Exception):  # a key that is not there: nothing to record
            seen.add(node._get_full_key(key))

    def getattr_(self, key):
        value = get_attr(self, key)
        record(self, key)
        return value

    def getitem_(self, key):
        value = get_item(self, key)
        record(self, key)
        return value

    def get_(self, key, default_value=None):
        record(self, key)
        return get(self, key, default_value)

    monkeypatch.setattr(DictConfig, "__getattr__", getattr_)
    monkeypatch.setattr(DictConfig, "__getitem__", getitem_)
    monkeypatch.setattr(DictConfig, "get", get_)
    return seen


def _train(name, tmp_path, data, tokenizer_path, run_name, *overrides):
    from mmldlm.train import train

    cfg = compose(name, [f"data.data_files.train={data}", f"logging.save_dir={tmp_path}",
                         f"logging.run_name={run_name}",
                         "data.val_split_ratio=0.2", "data.num_workers=0", "training.dtype=fp32",
                         "training.train_batch_size=4", "training.num_train_steps=2", "logging.eval_freq=2",
                         "logging.log_freq=1", "logging.progress_bar=false", "logging.num_eval_batches=1", *overrides])
    train(cfg)


def _changed_data_resume(name, tmp_path, data, tokenizer_path, *overrides):
    """Train, change the data, resume allowing it (reads training.allow_data_change)."""
    _train(name, tmp_path, data, tokenizer_path, "resumed", *overrides)
    records = json.loads(data.read_text())
    records[0]["text"] = "a changed first record"
    data.write_text(json.dumps(records))
    _train(name, tmp_path, data, tokenizer_path, "resumed", "training.resume=auto", "training.allow_data_change=true",
           "training.num_train_steps=3", *overrides)


def test_every_mmdit_key_is_read(reads, tmp_path, tokenizer_path, paragraphs, monkeypatch):
    from latentDLM_mmdit.sample import main as sample_main
    from latentDLM_mmdit.schema import MMDiTRunConfig
    from tests.helpers.common import make_dataset

    monkeypatch.setenv("WANDB_MODE", "offline")
    data = make_dataset(tmp_path / "d", paragraphs[:40], dim=384)
    tiny = ["model=tiny", "model.max_seq_len=32", f"data.tokenizer_name={tokenizer_path}", "sample.l2t_steps=4",
            "sample.t2l_steps=2"]
    _changed_data_resume("mmdit_cycle_vae", tmp_path, data, tokenizer_path, *tiny, "loss.cycle_text_warmup_steps=0",
                         "loss.cycle_latent_warmup_steps=0", "loss.latent_t_mode=random", "loss.l2t_uncond_prob=0.5",
                         "logging.use_wandb=true", f"logging.wandb_dir={tmp_path / 'wandb'}")
    _train("mmdit", tmp_path, data, tokenizer_path, "seq", *tiny, "loss.loss_type=sequential")
    _train("mmdit", tmp_path, data, tokenizer_path, "rnd", *tiny, "loss.loss_type=random")
    texts = tmp_path / "t.txt"
    texts.write_text("a for loop\n")
    sample_main(["t2l", "--checkpoint", str(tmp_path / "seq"), "--input", str(texts),
                 "--output", str(tmp_path / "z.npy")])
    sample_main(["l2t", "--checkpoint", str(tmp_path / "seq"), "--input", str(tmp_path / "z.npy"),
                 "--output", str(tmp_path / "o.txt"), "--length", "8"])
    unread = sorted(set(schema_keys(MMDiTRunConfig)) - reads)
    assert not unread, f"MMDiT config keys no code reads: {unread}"


def test_every_bridge_and_baseline_key_is_read(reads, tmp_path, tokenizer_path, paragraphs, tiny_wedlm_dir):
    from baseline.text_to_latent import T2LRunConfig
    from tests.helpers.common import make_dataset
    from wedlm_bridge.bridge import BridgeRunConfig

    data = make_dataset(tmp_path / "d", paragraphs[:40], dim=384)
    bridge = ["model=tiny", f"model.pretrained_local_dir={tiny_wedlm_dir}", "data.max_seq_len=32"]
    _train("wedlm8b_ar_bridge", tmp_path, data, tokenizer_path, "b1", *bridge, "model.freeze_backbone=false",
           "model.activation_checkpointing=true")
    # a full fine-tune carried into a LoRA stage: its trained backbone becomes the adapters' base
    _train("wedlm8b_ar_bridge", tmp_path, data, tokenizer_path, "b2", *bridge, "training.task=joint", "model.lora_r=2",
           f"training.init_from={tmp_path / 'b1'}")
    import torch

    from mmldlm.sources.weights import canonical
    from mmldlm.train.checkpointing import read_model_weights, resolve_checkpoint

    full, lora = (read_model_weights(resolve_checkpoint(tmp_path / run)) for run in ("b1", "b2"))
    base = {canonical(k.removeprefix("backbone.")): v for k, v in lora.items() if "lora_" not in k}
    carried = [k for k in full if k.startswith("backbone.")]
    assert carried and all(torch.equal(base[canonical(k.removeprefix("backbone."))], full[k]) for k in carried)
    shared = set(schema_keys(RunConfig))  # the loop's: read in every run, checked by the MMDiT test above
    assert not (unread := sorted(set(schema_keys(BridgeRunConfig)) - shared - reads)), f"bridge keys unread: {unread}"
    reads.clear()
    _train("t2l_regression", tmp_path, data, tokenizer_path, "t2l", f"data.tokenizer_name={tokenizer_path}")
    assert not (unread := sorted(set(schema_keys(T2LRunConfig)) - shared - reads)), f"baseline keys unread: {unread}"


def test_every_text_diffusion_baseline_key_is_read(reads, tmp_path, tokenizer_path, paragraphs):
    import torch

    from baseline.schema import ARRunConfig, GiddRunConfig, HdlmRunConfig, LatentRunConfig, MDLMRunConfig
    from tests.helpers.common import make_dataset

    text = tmp_path / "text.jsonl"
    text.write_text("\n".join(json.dumps({"text": p}) for p in paragraphs[:40]))
    latent = make_dataset(tmp_path / "lat", paragraphs[:40], dim=16)
    torch.save(torch.randint(0, 4, (30522,)), clusters := tmp_path / "clusters.pt")
    small = [f"data.tokenizer_name={tokenizer_path}", "model=tiny", "model.hidden_size=32", "model.n_heads=1",
             "model.n_blocks=2", "model.max_seq_len=32", "data.max_seq_len=32", "data.dataset_name=json"]
    runs = [("mdlm", MDLMRunConfig, ["training.low_discrepancy_sampling=false", "model.time_conditioning=false"]),
            ("gidd", GiddRunConfig, ["model.p_uniform=0.1", "model.gamma=1.0"]),
            ("ar", ARRunConfig, ["model.dropout=0.1"]),
            ("hdlm-small-cluster_64-gamma_1.0-xi_0.9", HdlmRunConfig, [f"model.cluster_dict_path={clusters}",
                                                                       "model.cluster_size=4"]),
            ("mdlm_cross_attention", LatentRunConfig, ["model.latent_dim=16", "model.latent_tokens=2",
                                                       "model.cross_attention_frequency=1",
                                                       f"data.latent_data_root={latent.parent}",
                                                       "data.data_files.validation=null"])]
    shared = set(schema_keys(RunConfig))
    for name, schema, extra in runs:
        reads.clear()
        _train(name, tmp_path, latent if name.startswith("mdlm_") else text, tokenizer_path, name, *small, *extra)
        assert not (unread := sorted(set(schema_keys(schema)) - shared - reads)), f"{name} keys unread: {unread}"


def test_every_latentwire_and_image_key_is_read(reads, tmp_path, tokenizer_path, tiny_qa_llms, shapes_data):
    """LatentWire: two runs that between them take every branch a key selects (byte / st-tokens
    encoder, cosine / warmup first-token schedule, state KD, metadata, colorizer, private slots;
    its QA eval reads only what a rebuild reads). The image MMDiT: both variants, with flips and
    sampled eval metrics."""
    from latentIMG_mmdit.build_codebook import build_from_records
    from latentIMG_mmdit.schema import DiscreteImageRunConfig, ImageRunConfig
    from latentwire.data import synthetic_qa, write_records
    from latentwire.schema import LatentWireRunConfig

    shared = set(schema_keys(RunConfig))
    qa = write_records(synthetic_qa(10, seed=0), tmp_path / "qa.jsonl")
    lw = tiny_qa_llms
    llms = [f"model.llms=[{{name: llama, path: {lw['llama']}}}, {{name: qwen, path: {lw['qwen']}}}]",
            "model.llm_dtype=float32", "model.d_z=32", "model.encoder_layers=1", "model.encoder_heads=4",
            "model.latent_len=2", "model.max_bytes=256", "model.anchor_text='Answer: '", "logging.eval_freq=0"]
    _train("latentwire", tmp_path, qa, tokenizer_path, "lw_byte", *llms, "model.encoder_type=byte",
           "model.latent_private_len=1", "model.adapter_metadata=true", "model.adapter_colorize=true",
           "model.sequential_models=true", "loss.first_token_ce_schedule=cosine", "loss.state_kd_weight=0.1",
           "data.val_split_ratio=0.0")
    _train("latentwire", tmp_path, qa, tokenizer_path, "lw_st", *llms, "model.encoder_type=st-tokens",
           "model.latent_shared_len=null", "loss.first_token_ce_schedule=warmup", "model.calibration=fixed",
           "model.anchor_text=''",
           "data.val_split_ratio=0.0")
    assert not (unread := sorted(set(schema_keys(LatentWireRunConfig)) - shared - reads)), f"latentwire: {unread}"

    reads.clear()
    image = ["model=tiny", "model.image_size=16", "model.patch_size=8", "model.depth=1", f"data.tokenizer_name="
             f"{shapes_data / 'tokenizer'}", "data.random_flip=true", "sample.t2i_steps=2", "sample.i2t_steps=2",
             f"data.data_files.validation={shapes_data / 'validation_data.json'}", "data.val_split_ratio=0.0"]
    train_json = shapes_data / "train_data.json"
    _train("image_continuous", tmp_path, train_json, tokenizer_path, "img_c", *image)
    codebook = build_from_records(train_json, tmp_path / "cb.npz", 16, 8, 8, seed=0)
    _train("image_discrete", tmp_path, train_json, tokenizer_path, "img_d", *image, f"model.codebook={codebook}",
           "model.codebook_size=8")
    # the variants share one schema: continuous-only keys (the Gaussian schedule) and discrete-only
    # ones (the codebook) are each read by their own run
    keys = set(schema_keys(ImageRunConfig)) | set(schema_keys(DiscreteImageRunConfig))
    assert not (unread := sorted(keys - shared - reads)), f"image MMDiT keys unread: {unread}"


def _leaves(d, prefix=""):
    for k, v in (d or {}).items():
        if isinstance(v, dict):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _default(schema, key):
    node = schema()
    for part in key.split("."):
        node = getattr(node, part)
    return node.value if hasattr(node, "value") and not isinstance(node, (int, float)) else node


def _group_file(d, group, name):
    """(path, prefix) of a group option: ``# @package _global_`` files merge at the root."""
    f = d / group / f"{name}.yaml"
    return f, ("" if "@package _global_" in f.read_text() else f"{group}.")


def _inherited(f, d) -> set[str]:
    """Keys the configs in ``f``'s defaults list set (a recipe may set what the schema's default
    restores, e.g. lm1b's bert tokenizer after the OWT recipe's GPT-2)."""
    keys = set()
    for item in (yaml.safe_load(f.read_text()) or {}).get("defaults", []):
        parent = d / f"{item}.yaml" if isinstance(item, str) else None
        if parent is not None and not item.endswith("_schema") and parent.is_file():
            keys |= {k for k, _ in _leaves(_body(parent))} | _inherited(parent, d)
        elif isinstance(item, dict):
            for group, name in item.items():
                group = group.replace("override ", "").strip()
                if (d / group / f"{name}.yaml").is_file():
                    gf, prefix = _group_file(d, group, name)
                    keys |= {prefix + k for k, _ in _leaves(_body(gf))}
    return keys


def _body(f):
    doc = yaml.safe_load(f.read_text()) or {}
    doc.pop("defaults", None), doc.pop("hydra", None)
    return doc


def test_shipped_yaml_keys_exist_and_state_no_schema_default():
    """Every leaf of every shipped YAML is a key of its family's schema, and no YAML restates
    the schema's default (one source of truth; drifted copies were how tests and users ran with
    different settings), unless it undoes what a config it includes set."""
    entries = shipped_families()
    dirs = {e.config_dir for e in entries.values()} | {REPO / "cycle_vae_impl" / "configs"}
    problems = []
    for d in sorted(dirs):
        for f in sorted(d.rglob("*.yaml")):
            group = f.parent.name if f.parent != d else None
            if group:  # a group option: a key of any schema sharing the directory (baseline/ has several)
                schemas = [e.schema for e in entries.values() if e.config_dir == d]
                _, prefix = _group_file(d, group, f.stem)
                inherited = set()
            else:
                obj = objective_of(f.stem, [d, *(e.config_dir for e in entries.values()), SHARED_CONFIGS])
                schemas, prefix, inherited = [entries[obj].schema], "", _inherited(f, d)
            for key, value in _leaves(_body(f), prefix):
                owners = [sc for sc in schemas if key in set(schema_keys(sc))]
                if not owners and not any(key.startswith(k + ".") for sc in schemas for k in schema_keys(sc)):
                    problems.append(f"{f.relative_to(REPO)}: {key} is no key of {schemas[0].__name__}")
                elif owners and key not in inherited and not (isinstance(value, str) and "${" in value) \
                        and all(value == _default(sc, key) for sc in owners):
                    problems.append(f"{f.relative_to(REPO)}: {key}={value!r} restates the schema default")
    for f in SHARED_CONFIGS.rglob("*.yaml"):
        for key, value in _leaves({f.parent.name: yaml.safe_load(f.read_text())}):
            if not (isinstance(value, str) and "${" in value):
                problems.append(f"{f.relative_to(REPO)}: {key} is not an interpolation (defaults live in the schema)")
    assert not problems, "\n".join(problems)
