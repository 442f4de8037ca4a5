"""Running the bash launchers in a clean environment (online or offline, no GPUs, no SLURM)."""
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers.common import REPO

REPO_ID = "org/tiny-bert"


def env_for(tmp_path, hub=None, **extra):
    """A clean launcher environment: online, no GPUs, no SLURM, this venv's python first."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "CUDA_VISIBLE", "NPROC", "NNODES", "NODE_RANK", "MASTER_"))}
    env.update({"PATH": f"{Path(sys.executable).parent}:{env['PATH']}", "HF_HUB_OFFLINE": "0",
                "TRANSFORMERS_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf"),
                "HF_HUB_DISABLE_TELEMETRY": "1", "PREFETCH_BACKOFF": "0.05",
                "ESTIMATE": "0",  # the preflight estimate is tested once (test_wedlm_finetune_e2e), not at every launch
                "HF_ENDPOINT": hub.url if hub else "http://127.0.0.1:9", "MODEL_ID": REPO_ID,
                "LOCAL_MODEL_DIR": str(tmp_path / "models" / "tiny-bert"), "MODEL_ALLOW_PATTERNS": "*"})
    env.update(extra)
    return env


def bash(script, env, *args, timeout=300):
    return subprocess.run(["bash", str(script), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)
