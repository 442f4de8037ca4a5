"""Hydra multirun (``-m``) for every training entrypoint: each job its own run directory.

Without this, the jobs of ``-m optimizer.lr=1e-4,3e-4`` share ``logging.run_name`` (job 2 stops
on "already holds a run") and Hydra writes ``multirun/`` into the working directory. So, for a
multirun command line (:func:`sweep_args`, before Hydra starts): Hydra's sweep directory goes
under ``logging.save_dir`` (``SAVE_DIR/multirun/DATE_TIME``) and the job's ``override_dirname``
keeps only the swept keys; then each job (:func:`prepare_job`) runs as
``RUN_NAME-KEY=VALUE,KEY=VALUE``. A key or directory the user set wins. Any launcher works the
same way (the local one, or ``hydra/launcher=submitit_slurm`` for SLURM: docs/launchers.md).
"""
from __future__ import annotations

import hashlib
import os

MAX_NAME = 160  # a run directory name; longer ones end in a hash of the whole


def _is_multirun(argv: list[str]) -> bool:
    return "-m" in argv or "--multirun" in argv


def sweep_args(argv: list[str]) -> list[str]:
    """The Hydra overrides to add to a multirun command line ``argv`` (empty for a single run)."""
    if not _is_multirun(argv):
        return []
    from hydra.core.override_parser.overrides_parser import OverridesParser

    given = [a for a in argv if "=" in a and not a.startswith("-")]
    overrides = OverridesParser.create().parse_overrides(given)
    keys = {o.key_or_group for o in overrides}
    extra = []
    if "hydra.sweep.dir" not in keys:
        extra.append("hydra.sweep.dir=${logging.save_dir}/multirun/${now:%Y-%m-%d_%H-%M-%S}")
    if "hydra.job.config.override_dirname.exclude_keys" not in keys:
        fixed = [o.get_key_element() for o in overrides if not o.is_sweep_override()]
        fixed += ["logging.run_name", "logging.save_dir"]
        extra.append("hydra.job.config.override_dirname.exclude_keys=[" + ",".join(f"'{k}'" for k in fixed) + "]")
    return extra


def job_run_name(base: str, override_dirname: str, job_num: int) -> str:
    """``base-KEY=VALUE,...`` (the job's swept overrides; its number when there are none), a
    valid ``logging.run_name``: no ``/`` (a path value keeps its last part), at most ``MAX_NAME``."""
    items = []
    for item in override_dirname.split(",") if override_dirname else []:
        key, _, value = item.partition("=")
        items.append(f"{key}={value.rstrip('/').rsplit('/', 1)[-1]}")
    name = f"{base}-{','.join(items) or job_num}".replace("/", "_")
    if len(name) > MAX_NAME:
        name = name[: MAX_NAME - 13] + "-" + hashlib.sha1(name.encode()).hexdigest()[:12]
    return name


def _torchrun_env_from_submitit() -> None:
    """A job the submitit launcher started as one of several SLURM tasks (``hydra.launcher.
    tasks_per_node``: one per GPU) finds torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR/PORT), which the loop reads; torchrun itself is not in the way then."""
    if "WORLD_SIZE" in os.environ or os.environ.get("SUBMITIT_EXECUTOR") != "slurm":
        return
    from submitit import JobEnvironment
    from submitit.helpers import TorchDistributedEnvironment

    if JobEnvironment().num_tasks > 1:
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def prepare_job(cfg) -> None:
    """In a multirun job, ``logging.run_name`` becomes the job's own (:func:`job_run_name`), and
    a multi-task SLURM job gets torchrun's environment."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return
    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN:
        _torchrun_env_from_submitit()
        cfg.logging.run_name = job_run_name(cfg.logging.run_name, hc.job.override_dirname, hc.job.num)
