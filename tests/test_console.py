"""What a run tells its user: the console's eval lines and summary, the start warnings, quiet output."""
import json
import logging

import pytest

from mmldlm.train.advice import guidance_warning, start_warnings, warn_once
from tests.helpers.common import make_cfg
from tests.helpers.tiny_train import TinyConfig

# lines third-party code prints that carry nothing for the user (none may show in a run's output)
NOISE = ("Warning", "warn(", "kernels-community", "deprecated", "model of type")


@pytest.mark.slow
def test_tiny_run_prints_eval_lines_on_ema_and_a_summary_and_nothing_else(run_tiny):
    # horizon 2 steps: no EMA warning; warmup 2 < 12 steps; save every 4. The length as epochs:
    # 139 training records // batch 8 = 17 steps per epoch, x 0.706 -> the loop counts 12 steps
    p = run_tiny("training.ema=0.5", "training.num_train_steps=1", "training.num_train_epochs=0.706")
    out = p.stdout + p.stderr
    assert "training.num_train_epochs=0.706: 12 steps (139 records, 8 per step)" in out, out
    evals = [ln for ln in out.splitlines() if ln.startswith("eval step")]
    assert [ln.split(":")[0] for ln in evals] == [f"eval step {s} (EMA)" for s in (4, 8, 12)], out
    assert "| mse " in evals[0], evals  # the family's declared metrics, not only the loss
    run_dir = run_tiny.run_dir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == [0, 12] and summary["eval_on_ema"] and summary["best_eval"]["step"] in (4, 8, 12)
    assert summary["checkpoint"].endswith("checkpoint_step_12.pt") and summary["train_tokens_per_s"] > 0
    assert "done: steps 0 -> 12 in " in out and "eval loss (EMA) best " in out
    assert f"checkpoint: {run_dir / 'checkpoint_step_12.pt'}" in out and "python -m mmldlm.plot" in out
    noise = [ln for ln in out.splitlines() if any(n in ln for n in NOISE)]
    assert not noise, noise  # neither our start warnings (nothing to warn about) nor third-party lines


def test_each_start_warning_is_triggered_by_its_setting_only():
    base = {"training.num_train_steps": 60, "logging.save_freq": 20, "data.num_workers": 1, "optimizer.lr": 1e-4}
    cfg = make_cfg(TinyConfig, **base)
    assert start_warnings(cfg, ranks_on_node=1, cores=2) == []
    cases = {("training.warmup_steps", 1000): "never leaves warmup (it reaches 6e-06",
             ("training.ema", 0.9999): "averages over ~10000 steps, longer than this 60-step run",
             ("data.num_workers", 4): "4 loader workers x 1 rank(s) on this node exceed its 2 CPU core(s)",
             ("logging.save_freq", 1000): "only checkpoint is the final one"}
    for (key, value), expected in cases.items():
        (warning,) = start_warnings(make_cfg(TinyConfig, **{**base, key: value}), ranks_on_node=1, cores=2)
        assert expected in warning, (key, warning)
    assert start_warnings(cfg, ranks_on_node=2, cores=1)  # 1 worker x 2 ranks on 1 core


def test_guidance_on_a_model_without_null_rows_is_named_once(caplog):
    assert guidance_warning(0.0, 0.0, "loss.l2t_uncond_prob", "--guidance") is None
    assert guidance_warning(1.0, 0.1, "loss.l2t_uncond_prob", "--guidance") is None
    msg = guidance_warning(1.0, 0.0, "loss.l2t_uncond_prob", "--guidance")
    assert "loss.l2t_uncond_prob=0" in msg and "--guidance 0" in msg
    log = logging.getLogger("test_console")
    with caplog.at_level(logging.WARNING):
        warn_once(log, msg)
        warn_once(log, msg)  # samplers run per batch: said once
    assert [r.getMessage() for r in caplog.records] == [msg]


def test_an_import_time_kernel_hub_probe_runs_offline_and_reaches_no_network(tmp_path, monkeypatch):
    """bitsandbytes' import probes the kernel hub on AVX512-BF16 CPUs: mmldlm.quiet runs that import
    offline. The same mechanism on a stand-in package that makes the same probe (works on any CPU)."""
    import sys

    from huggingface_hub import constants

    from mmldlm.quiet import _OfflineImport

    (tmp_path / "probe_pkg.py").write_text(
        "from huggingface_hub import constants\n"
        "OFFLINE = constants.HF_HUB_OFFLINE\n"
        "try:\n"
        "    from kernels import get_kernel\n"
        "    get_kernel('kernels-community/quantization-bitsandbytes', version=1)\n"
        "    ERROR = None\n"
        "except Exception as e:\n"
        "    ERROR = e\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    calls, watching = [], [True]
    sys.addaudithook(lambda ev, args: calls.append(ev) if watching[0] and ev.startswith("socket.") else None)
    monkeypatch.setattr(sys, "meta_path", [_OfflineImport("probe_pkg"), *sys.meta_path])
    try:
        import probe_pkg
    finally:
        watching[0] = False
        sys.modules.pop("probe_pkg", None)
    assert probe_pkg.OFFLINE and probe_pkg.ERROR is not None and not calls, (probe_pkg.ERROR, calls)
    assert constants.HF_HUB_OFFLINE is False  # restored after the import


def test_a_wedlm_tokenizer_loads_without_the_model_type_message(tiny_wedlm_dir):
    from mmldlm.data.tokenizer import load_tokenizer

    said = []
    hook = logging.Handler()
    hook.emit = lambda record: said.append(record.getMessage())
    logging.getLogger("transformers").addHandler(hook)  # the library's loggers do not propagate
    try:
        load_tokenizer(str(tiny_wedlm_dir))
    finally:
        logging.getLogger("transformers").removeHandler(hook)
    assert not [m for m in said if "model of type" in m], said


def test_plots_draw_every_familys_declared_metrics_and_overlays_go_where_out_says(tmp_path, capsys):
    from mmldlm.objective import registered
    from mmldlm.plot import main as plot_main
    from mmldlm.plot import panels

    def fake_run(name: str, objective: str, keys: list[str]):
        d = tmp_path / name
        d.mkdir()
        (d / "config.yaml").write_text(f"objective: {objective}\n")
        rows = [{"step": s, **{k: 1.0 / s for k in keys}} for s in (1, 2, 3)]
        (d / "training_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (d / "eval_log.jsonl").write_text(json.dumps(rows[-1]) + "\n")
        return d

    families = registered()
    assert {"mmdit", "mdlm", "gidd", "hdlm", "ar", "bridge", "latentwire", "image_continuous"} <= families.keys()
    for name, entry in families.items():
        keys = [k for ks in entry.metrics.values() for k in ks]
        assert panels([fake_run(name, name, keys)]) == {t: list(ks) for t, ks in entry.metrics.items()}, name
    image = panels([fake_run("img", "image_continuous", ["loss", "image_loss", "i2t_f1"])])
    assert image == {"loss": ["loss", "image_loss"], "image -> caption": ["i2t_f1"]}  # what this run logged
    runs = [tmp_path / "mdlm", tmp_path / "latentwire"]
    with pytest.raises(SystemExit, match="--out"):
        plot_main([str(r) for r in runs])
    plot_main([*map(str, runs), "--out", str(tmp_path / "both.png")])
    assert capsys.readouterr().out.strip() == str(tmp_path / "both.png") and (tmp_path / "both.png").stat().st_size
    assert not any((r / "curves.png").exists() for r in runs)  # never into a run
