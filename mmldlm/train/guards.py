"""The loop's refusals and what they tell the user to do: a run directory that already holds a
run, a resume onto changed data or sources, and the next steps after a bad record."""
from __future__ import annotations

import logging
from pathlib import Path

from mmldlm.data.records import DataError
from mmldlm.objective import lookup
from mmldlm.sources import check_unchanged
from mmldlm.train import checkpointing as C
from mmldlm.train.report import LOGS
from mmldlm.train.run_dir import RunDirError, probe_writable

log = logging.getLogger("mm_ldlm")


class DataChangedError(RuntimeError):
    """The training file's records changed since the checkpoint being resumed."""


def check_run_dir(run_dir: Path, resume) -> None:
    """The save directory is writable, and a fresh run does not land on another run's files."""
    probe_writable(run_dir.parent)
    holds_a_run = bool(C.list_checkpoints(run_dir)) or any((run_dir / n).exists() for n in LOGS)
    if resume is None and holds_a_run:
        raise RunDirError(f"run directory {run_dir} already holds a run; set training.resume=auto to continue "
                          "it, or choose another logging.run_name")


def check_resumable(state: dict, checkpoint: Path, fingerprint: dict, source_records: dict, t) -> None:
    """Refuses to resume onto training data or sources that changed since ``checkpoint`` was
    written, unless ``training.allow_data_change`` / ``allow_source_change`` say go on (warned)."""
    saved = state.get("data_fingerprint")
    if saved is None:
        log.warning("checkpoint has no data fingerprint (written by an older version): not checked")
    elif saved["table_hash"] != fingerprint["table_hash"]:
        what = (f"data.data_files.train {fingerprint['path']} changed since the checkpoint ({saved['records']} -> "
                f"{fingerprint['records']} records, {saved['size']} -> {fingerprint['size']} bytes, record table "
                f"hash {saved['table_hash'][:12]} -> {fingerprint['table_hash'][:12]})")
        if not t.allow_data_change:
            raise DataChangedError(f"{what}: resuming would continue on a different data stream than the "
                                   "uninterrupted run. Restore the file, or set training.allow_data_change=true "
                                   "to continue on the new data")
        log.warning("%s; continuing on the new data (training.allow_data_change=true)", what)
    for note in check_unchanged(state.get("sources"), source_records, t.allow_source_change,
                                checkpoint.name, "training.allow_source_change=true"):
        log.warning("%s; continuing with it (training.allow_source_change=true)", note)


def bad_data_hint(e: DataError, cfg, run_dir: Path | None, step: int = 0, last_saved: int | None = None,
                  rescued_step: int | None = None) -> str:
    """What to do about a bad record: the checker's command for the run's data, and how to
    continue (the step the run saved first, when it had trained). ``run_dir``: None before the
    loop existed."""
    if e.record is None:
        return ""
    if lookup(cfg.objective).records.name == "core" and lookup(cfg.objective).collator is None:
        check = f"python -m latentDLM_mmdit.data_simple check {e.json_path} --latent-dim {cfg.data.latent_dim}"
    elif run_dir is not None and (run_dir / "config.yaml").is_file():
        check = f"python -m mmldlm.data.check {e.json_path} --run {run_dir}"
    else:
        check = f"python -m mmldlm.data.check {e.json_path} --config-name NAME [your overrides]"
    hint = f"\nList every bad record with: {check} (or set data.on_bad_record=skip to skip and count them)"
    if step > 0 and last_saved == step:  # the trained steps are on disk
        how = "was saved first" if rescued_step == step else "is saved"
        hint += f"\nStep {step} {how}: after the fix, continue with training.resume=auto (nothing trained is lost)"
    return hint
