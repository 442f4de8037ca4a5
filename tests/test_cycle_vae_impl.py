"""The cycle-VAE harness commands of DESIGN.md; the cluster config composes to the full size."""
import subprocess
import sys

import pytest

from tests.helpers.common import REPO

ENTRY = REPO / "cycle_vae_impl" / "entrypoints"


def run(*cmd, timeout=300):
    return subprocess.run([sys.executable, *map(str, cmd)], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_smoke_forward_passes_through_the_real_model():
    p = run(ENTRY / "smoke_cycle_vae_forward.py")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "OK: finite losses, all metric keys present" in p.stdout and "cycle_latent_loss" in p.stdout


@pytest.mark.slow
def test_synthetic_training_runs_through_the_shared_loop(tmp_path):
    p = run(ENTRY / "train_cycle_vae.py", "--synthetic", "--steps", "20", "--records", "96", "--output-dir", tmp_path,
            "logging.log_freq=5")
    assert p.returncode == 0, p.stderr[-3000:]
    assert (tmp_path / "runs" / "synthetic" / "checkpoint_step_20.pt").exists()
    assert "cycle_vae --synthetic: step 5 -> 20" in p.stdout


def test_cluster_config_is_the_full_size_recipe():
    from cycle_vae_impl.harness import compose_cycle_config

    cfg = compose_cycle_config("mmdit_cycle_vae_cluster", ["data.data_files.train=x.json"])
    m, t, lo, o = cfg.model, cfg.training, cfg.loss, cfg.optimizer
    assert (m.hidden_size, m.n_blocks, m.n_heads, m.latent_dim) == (1024, 24, 24, 1024)
    assert (t.dtype.name, t.train_batch_size, t.num_train_steps, t.lr_schedule.name, t.warmup_steps) == (
        "bf16", 4, 100_000, "cosine", 2000)
    assert (lo.loss_type.name, lo.latent_t_mode.name, lo.cycle_text_weight, lo.cycle_latent_weight) == (
        "cycle_vae", "full", 0.1, 0.1)
    assert lo.cycle_text_ramp_steps > 0 and lo.cycle_latent_ramp_steps > 0
    assert (o.lr, o.grad_clip_norm) == (5e-5, 0.5) and m.latent_parameterization == "v_param"
