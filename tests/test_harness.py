"""lm-evaluation-harness on every text family (mmldlm.eval.harness): a tiny AR and a tiny MDLM trained
on pydoc prose, scored on held-out paragraphs through local json tasks (loglikelihood, multiple
choice, rolling perplexity, generate_until), offline; the other families' hooks on tiny models."""
import json
import math

import pytest
import torch

from mmldlm.eval.conditional import Pair, rolling_pairs
from mmldlm.train.run_log import read_jsonl
from tests.helpers.common import REPO, make_cfg, ok, run_entry, run_module

pytestmark = pytest.mark.slow
MANY = REPO / "tests" / "helpers" / "train_many.py"
STEPS = 40
TASKS = ["tiny_ll", "tiny_mc", "tiny_roll", "tiny_gen"]


@pytest.fixture(scope="session")
def runs(tmp_path_factory, paragraphs, tokenizer_path):
    """Tiny AR and MDLM runs (one process, 40 steps each) on 300 paragraphs: {name: run dir}."""
    d = tmp_path_factory.mktemp("harness_runs")
    (d / "train.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in paragraphs[:300]))
    common = [f"data.tokenizer_name={tokenizer_path}", f"logging.save_dir={d}",
              f"data.data_files.train={d / 'train.jsonl'}",
              "data.dataset_name=json", "data.val_split_ratio=0.05", "data.max_seq_len=48", "model=tiny",
              "model.hidden_size=64", "model.n_heads=2", "model.n_blocks=2", "model.max_seq_len=48",
              "training.train_batch_size=8", "training.warmup_steps=0", "optimizer.lr=3e-3", "training.dtype=fp32",
              "data.num_workers=0", "logging.progress_bar=false", "logging.log_freq=10", "logging.eval_freq=0",
              "logging.save_freq=0", f"training.num_train_steps={STEPS}"]
    args = []
    for name in ("ar", "mdlm"):
        args += ["--", name, *common, f"logging.run_name={name}"]
    ok(run_entry(MANY, args[1:], timeout=600))
    for name in ("ar", "mdlm"):
        loss = [r["loss"] for r in read_jsonl(d / name / "training_log.jsonl")]
        assert loss[-1] < loss[0], (name, loss)
    return {"ar": d / "ar", "mdlm": d / "mdlm"}


@pytest.fixture(scope="session")
def task_dir(tmp_path_factory, paragraphs):
    """Four local json tasks over 30 held-out paragraphs (never trained on)."""
    d = tmp_path_factory.mktemp("harness_tasks")
    held = paragraphs[300:340]
    docs = []
    for i, text in enumerate(held):
        words, other = text.split()[:20], held[(i + 7) % len(held)].split()
        if len(words) >= 12 and len(other) >= 9:
            docs.append({"context": " ".join(words[:-4]), "right": " " + " ".join(words[-4:]),
                         "wrong": " " + " ".join(other[5:9]), "label": 0, "page": text})
    (d / "docs.jsonl").write_text("\n".join(json.dumps(x) for x in docs))
    head = (f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {d / 'docs.jsonl'}\n"
            f"  cache_dir: {d / 'cache'}\ntest_split: test\n")
    bodies = {
        "tiny_ll": 'output_type: loglikelihood\ndoc_to_text: "{{context}}"\ndoc_to_target: "{{right}}"\n'
                   "metric_list:\n  - metric: perplexity\n    aggregation: perplexity\n    higher_is_better: false\n"
                   "  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n",
        "tiny_mc": 'output_type: multiple_choice\ndoc_to_text: "{{context}}"\ndoc_to_target: label\n'
                   'doc_to_choice: "{{[right, wrong]}}"\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n',
        "tiny_roll": 'output_type: loglikelihood_rolling\ndoc_to_text: ""\ndoc_to_target: "{{page}}"\n'
                     "metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n"
                     "  - metric: bits_per_byte\n",
        "tiny_gen": 'output_type: generate_until\ndoc_to_text: "{{context}}"\ndoc_to_target: "{{right}}"\n'
                    'generation_kwargs:\n  until: ["."]\n  max_gen_toks: 12\n  do_sample: false\n'
                    "metric_list:\n  - metric: exact_match\n"}
    for name, body in bodies.items():
        (d / f"{name}.yaml").write_text(f"task: {name}\n{head}{body}")
    return d


@pytest.fixture(scope="session")
def manager(task_dir):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(task_dir), include_defaults=False)  # the local tasks only: fast to index


def instances(kind, args_list):
    from lm_eval.api.instance import Instance

    return [Instance(kind, {}, args, i) for i, args in enumerate(args_list)]


def finite_metrics(results: dict, tasks=TASKS) -> None:
    for task in tasks:
        numbers = {k: v for k, v in results[task].items() if "," in k and "stderr" not in k}
        assert numbers and all(math.isfinite(v) for v in numbers.values()), (task, results[task])


PAIRS = [("Note that it is unnecessary to include", " the source code"), ("The", " section"),
         ("", "Python"), ("the list of keywords is", " long and sorted.")]


def test_ar_likelihoods_are_exact(runs, manager):
    import lm_eval

    from mmldlm.eval.harness_lm import MMLDLM

    lm = MMLDLM(pretrained=str(runs["ar"]), device="cpu", batch_size=3)
    out = lm_eval.simple_evaluate(model=lm, tasks=TASKS, task_manager=manager, limit=6, log_samples=False)
    finite_metrics(out["results"])
    assert lm.protocol()["loglikelihood"] == "exact" and lm.identity()["step"] == STEPS
    # every log-likelihood equals the sum of log-softmaxes of the model's own logits over the continuation
    scored = lm.loglikelihood(instances("loglikelihood", PAIRS))
    model, tok = lm.objective.model, lm.tokenizer
    for (context, continuation), (logprob, greedy) in zip(PAIRS, scored):
        ctx = lm.tok_encode(context) if context else [lm.start_id]
        whole = [*ctx, *tok(context + continuation, add_special_tokens=False)["input_ids"][len(ctx) - 1:]]
        with torch.no_grad():
            logp = model(torch.tensor([whole])).logits[0].double().log_softmax(-1)
        steps = range(len(ctx), len(whole))
        assert logprob == pytest.approx(sum(logp[i - 1, whole[i]].item() for i in steps), abs=1e-4), context
        assert greedy == all(logp[i - 1].argmax().item() == whole[i] for i in steps)
    rolled = lm.loglikelihood_rolling(instances("loglikelihood_rolling", [(p,) for p in PAIRS[0]]))
    assert all(math.isfinite(v) and v < 0 for v in rolled)


def test_mdlm_bound_repeats_across_runs_and_batch_sizes(runs, task_dir, manager, tmp_path, paragraphs):
    """Local tasks and the five standard ones offline (their datasets cache made here, as
    --download-only makes it on a login node), in a CLI process; then in-process at other batch sizes."""
    import lm_eval

    from mmldlm.eval.harness_lm import MMLDLM
    from tests.helpers.datasets_cache import STANDARD, make_cache

    cache = tmp_path / "datasets"
    (tmp_path / "work").mkdir()
    make_cache(cache, paragraphs[300:400], tmp_path / "work")
    out = tmp_path / "mdlm.json"
    offline = {"HF_DATASETS_CACHE": str(cache), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    ok(run_module("mmldlm.eval.harness", "--checkpoint", runs["mdlm"], "--tasks", ",".join([*TASKS, *STANDARD]),
                  "--include_path", task_dir, "--limit", 3, "--batch_size", 4, "--num_t", 4, "--steps", 4,
                  "--output_path", out, env=offline))
    cli = json.loads(out.read_text())
    finite_metrics(cli["results"], [*TASKS, *STANDARD])
    assert cli["protocol"]["loglikelihood"] == "bound" and cli["protocol"]["num_t"] == 4
    assert cli["model"]["objective"] == "mdlm" and cli["model"]["step"] == STEPS
    assert set(cli["n-samples"]) == {*TASKS, *STANDARD}
    one = MMLDLM(pretrained=str(runs["mdlm"]), device="cpu", batch_size=1, num_t=4)
    res = lm_eval.simple_evaluate(model=one, tasks=["tiny_ll", "tiny_mc"], task_manager=manager, limit=3,
                                  log_samples=False)["results"]
    for task in ("tiny_ll", "tiny_mc"):  # another process, batch 4 there, 1 here: the same numbers
        assert {k: v for k, v in res[task].items() if "," in k and "stderr" not in k} == \
               {k: v for k, v in cli["results"][task].items() if "," in k and "stderr" not in k}, task
    five = MMLDLM(pretrained=str(runs["mdlm"]), device="cpu", batch_size=5, num_t=4)
    reqs = instances("loglikelihood", PAIRS * 2)
    assert one.loglikelihood(reqs) == five.loglikelihood(reqs)
    text = [(" ".join(p for pair in PAIRS for p in pair) * 3,)]
    assert one.loglikelihood_rolling(instances("loglikelihood_rolling", text)) == \
           five.loglikelihood_rolling(instances("loglikelihood_rolling", text))

    # the bound of a whole text is the loss CLI's: the same t-grid and keyed masks
    obj, tok = one.objective, one.tokenizer
    ids = torch.tensor([tok("the list of keywords")["input_ids"]])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids, dtype=torch.bool), "index": torch.tensor([7])}
    t = torch.tensor([0.3])
    with torch.no_grad():
        assert torch.equal(obj.conditional_nelbo({**batch, "target_mask": batch["attention_mask"]}, t, 2).nats,
                           obj.nelbo(batch, t, 2).nats)


@pytest.mark.parametrize("name", ["ar", "mdlm"])
def test_generate_until_stops_at_its_stop_sequence(runs, name):
    from mmldlm.eval.harness_lm import MMLDLM

    lm = MMLDLM(pretrained=str(runs[name]), device="cpu", steps=6)
    context = "Note that it is unnecessary to include the source code for"
    full = lm.generate_until(instances("generate_until", [(context, {"max_gen_toks": 10})]))[0]
    assert len(full.split()) >= 3, full
    stop = full.split()[2]
    cut = lm.generate_until(instances("generate_until", [(context, {"until": [stop], "max_gen_toks": 10})]))[0]
    assert cut == full[: full.index(stop)] and stop not in cut, (full, cut)
    with pytest.raises(ValueError, match="top_k"):
        lm.generate_until(instances("generate_until", [(context, {"top_k": 5})]))


def test_unknown_task_is_named_with_a_close_one(manager):
    from mmldlm.eval.harness import tasks_of

    assert tasks_of("tiny_ll, tiny_mc", manager) == ["tiny_ll", "tiny_mc"]
    with pytest.raises(ValueError, match="'tiny_l'.*did you mean tiny_ll"):
        tasks_of("tiny_ll,tiny_l", manager)


def test_rolling_windows_predict_every_token_once():
    pairs = rolling_pairs(list(range(10, 33)), 1, max_length=8, min_context=3)
    assert [t for p in pairs for t in p.target] == list(range(10, 33))
    assert pairs[0] == Pair((1,), tuple(range(10, 17)))
    assert all(len(p.context) + len(p.target) <= 8 and len(p.context) >= 1 for p in pairs)
    assert all(len(p.context) >= 3 for p in pairs[1:]) and len(pairs[-1].context) == 8 - len(pairs[-1].target)


def family_models(tmp_path, tokenizer, tokenizer_path):
    """(name, objective, tokenizer, cfg) of every other family that models text, tiny and untrained."""
    from baseline.objectives import build
    from baseline.schema import GiddRunConfig, HdlmRunConfig
    from latentDLM_mmdit.mmdit_objective import MMDiTObjective
    from latentDLM_mmdit.schema import MMDiTRunConfig
    from mmldlm.data.tokenizer import load_tokenizer
    from mmldlm.sources import Sources, build_loaded
    from wedlm_bridge.finetune.schema import FinetuneRunConfig
    from wedlm_bridge.tiny import make_tiny_wedlm

    torch.manual_seed(0)
    dit = {"model.hidden_size": 32, "model.n_heads": 2, "model.n_blocks": 1, "model.cond_dim": 16,
           "model.max_seq_len": 48, "data.max_seq_len": 48}
    clusters = tmp_path / "clusters.pt"
    torch.save(torch.arange(30522) % 4, clusters)
    gidd = make_cfg(GiddRunConfig, **dit, **{"model.p_uniform": 0.1})
    hdlm = make_cfg(HdlmRunConfig, **dit, **{"model.cluster_size": 4, "model.cluster_dict_path": str(clusters),
                                             "data.tokenizer_name": tokenizer_path})
    mmdit = make_cfg(MMDiTRunConfig, **{**dit, "model.n_heads": 4, "model.latent_dim": 16, "data.latent_dim": 16})
    wedlm_dir = tmp_path / "wedlm"
    make_tiny_wedlm(wedlm_dir, chat=True)
    chat = load_tokenizer(str(wedlm_dir))
    raw = json.loads((wedlm_dir / "config.json").read_text())
    eos = chat.convert_tokens_to_ids("<|im_end|>")  # the tiny model's config names none; a real WeDLM's does
    (wedlm_dir / "config.json").write_text(json.dumps({**raw, "eos_token_id": eos}))
    ft = make_cfg(FinetuneRunConfig, **{"model.pretrained_local_dir": str(wedlm_dir), "model.pretrained_model_dtype":
                                         "float32", "model.max_seq_len": 64, "data.max_seq_len": 64,
                                         "data.tokenizer_name": str(wedlm_dir)})
    src = Sources.of_tokenizer(tokenizer)
    return [("gidd", build(gidd, src), tokenizer, gidd), ("hdlm", build_loaded(hdlm), tokenizer, hdlm),
            ("mmdit", MMDiTObjective(mmdit, tokenizer), tokenizer, mmdit),
            ("wedlm_finetune", build_loaded(ft), chat, ft)]


def test_every_text_family_answers_the_three_requests(tmp_path, tokenizer, tokenizer_path):
    from baseline.objectives import build
    from baseline.schema import LatentRunConfig
    from baseline.text_to_latent import T2LRunConfig
    from baseline.text_to_latent import build as build_t2l
    from mmldlm.eval.harness_lm import MMLDLM
    from mmldlm.sources import Sources
    from wedlm_bridge.finetune.objective import causal_lm_of

    context = "Note that it is unnecessary to include the source code"
    for name, obj, tok, cfg in family_models(tmp_path, tokenizer, tokenizer_path):
        obj.eval()
        lm = MMLDLM.from_objective(obj, tok, cfg, num_t=2, steps=3, batch_size=2)
        scored = lm.loglikelihood(instances("loglikelihood", PAIRS))
        assert all(math.isfinite(lp) and lp < 0 for lp, _ in scored), (name, scored)
        again = lm.loglikelihood(instances("loglikelihood", PAIRS[::-1]))[::-1]  # other batches, other padding
        if lm.exact:  # a stock transformers forward: equal to float32 rounding
            assert [lp for lp, _ in again] == pytest.approx([lp for lp, _ in scored], rel=1e-5), name
        else:  # the DiTs: keyed noise, the same numbers in any batch
            assert again == scored, name
        rolled = lm.loglikelihood_rolling(instances("loglikelihood_rolling", [(context * 4,)]))
        assert math.isfinite(rolled[0]) and rolled[0] < 0, name
        text = lm.generate_until(instances("generate_until", [(context, {"until": ["e"], "max_gen_toks": 6})]))[0]
        assert isinstance(text, str) and "e" not in text, (name, text)
        assert lm.protocol()["loglikelihood"] == ("exact" if name == "wedlm_finetune" else "bound"), name
        if name == "wedlm_finetune":  # the causal path's log-likelihood is exact
            ids = lm.tok_encode(context + " code")
            with torch.no_grad():
                logp = causal_lm_of(obj.lm)(torch.tensor([ids])).logits[0].double().log_softmax(-1)
            n = len(lm.tok_encode(context))
            want = sum(logp[i - 1, ids[i]].item() for i in range(n, len(ids)))
            got = lm.loglikelihood(instances("loglikelihood", [(context, " code")]))[0][0]
            assert got == pytest.approx(want, abs=1e-4)
    # a model the harness cannot ask: one line that says why
    latent = make_cfg(LatentRunConfig, **{"model.hidden_size": 32, "model.n_heads": 2, "model.n_blocks": 1,
                                          "model.latent_dim": 16, "data.latent_dim": 16})
    with pytest.raises(ValueError, match="use_latent_conditioning=false"):
        MMLDLM.from_objective(build(latent, Sources.of_tokenizer(tokenizer)), tokenizer, latent)
    t2l = make_cfg(T2LRunConfig, **{"model.latent_dim": 16, "data.latent_dim": 16})
    with pytest.raises(ValueError, match="scores no continuation"):
        MMLDLM.from_objective(build_t2l(t2l, Sources.of_tokenizer(tokenizer)), tokenizer, t2l)
