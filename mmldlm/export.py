"""Any run as a model directory: ``python -m mmldlm.export --checkpoint RUN --out DIR``.

DIR holds (huggingface_hub's ``save_pretrained`` layout, for a model that is not a transformers
class):

- ``model.safetensors``: every tensor the run trained (its EMA where the run kept one, as its
  evaluation used), under the objective's own names; frozen pretrained parts are not copied;
- ``config.json``: ``{"mmldlm": {objective, config, sources, step, ema, inside}}``: the family, its
  resolved config, each source by name and fingerprint, and the copies DIR holds (``inside``);
- the tokenizer's files, and every file source the weights do not carry (``sources/NAME/``), so
  nothing on the training machine is needed to reload it but the pretrained models it names;
- what the family adds (``Objective.export_artifacts``): the bridge's trained backbone as a stock
  model directory and its LoRA adapter in peft's format, a fine-tune's stock model.

``mmldlm.from_pretrained(DIR)`` rebuilds it (every eval CLI reads DIR like a run). An export never
writes into its inputs: an ``--out`` that is, or lies inside, the run directory or a source is
refused before anything is written; DIR is written to a temporary sibling and renamed into place,
so a failed export leaves nothing.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import uuid
from pathlib import Path

from mmldlm.flags import add_renamed
from mmldlm.sources import LoadPolicy, SourceError
from mmldlm.sources.cli import add_policy_args, policy_of
from mmldlm.sources.resolve import TOKENIZER_FILES
from mmldlm.train.rebuild import EXPORT_CONFIG, EXPORT_KEY, EXPORT_WEIGHTS, open_saved, rebuild_from_checkpoint

log = logging.getLogger("mm_ldlm.export")
FORMAT_VERSION = 1


class ExportError(SourceError):
    """An export that would write into its inputs, or over something, is refused."""


def _inside(p: Path, root: Path) -> bool:
    return p == root or root in p.parents


def guard_out(out: Path, inputs: dict[str, Path], overwrite: bool) -> None:
    """Refuse an ``out`` that is or lies inside an input (the run directory, a source), or that
    holds an input; and an existing non-empty ``out`` unless ``overwrite``."""
    for what, p in inputs.items():
        p = p.resolve()
        if _inside(out, p) or _inside(p, out):
            raise ExportError(f"--out {out}: {'is' if out == p else 'overlaps'} {what} ({p}); an export never writes "
                              "into its inputs: choose a new directory")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ExportError(f"--out {out} already exists and is not empty; choose a new directory (or --overwrite, "
                          "which replaces it once the new export is complete)")


def inputs_of(saved, used: dict[str, dict]) -> dict[str, Path]:
    """Every path an export of ``saved`` reads: the run directory (or export), the checkpoint, the sources."""
    run = saved.path if saved.export else (saved.path.parent if saved.path.name.startswith("checkpoint_") else
                                           saved.path)
    found = {"the run directory": run, "the checkpoint": saved.path}
    for name, rec in used.items():
        if rec.get("path"):
            found[f"source {name}"] = Path(rec["path"])
    return found


def write_export(obj, tok, cfg, saved, tmp: Path) -> dict:
    """The export's files into ``tmp``; returns its config.json section."""
    from omegaconf import OmegaConf
    from safetensors.torch import save_file

    state = obj.state_dict()
    weights = {k: state[k].detach().to("cpu").contiguous().clone() for k in sorted(obj.trained_keys)}
    save_file(weights, str(tmp / EXPORT_WEIGHTS), metadata={"format": "pt", "mmldlm": str(FORMAT_VERSION)})
    inside = {}
    for name, rec in obj.sources_used.items():
        path = Path(rec["path"]) if rec.get("path") else None
        if path is None:
            continue
        if name == "tokenizer" and path.is_dir():
            copied = [f for f in TOKENIZER_FILES if (path / f).is_file()]
            for f in copied:
                shutil.copy2(path / f, tmp / f)
            inside[name] = "."
        elif rec.get("kind") == "file":
            (tmp / "sources" / name).mkdir(parents=True)
            shutil.copy2(path, tmp / "sources" / name / path.name)
            inside[name] = f"sources/{name}/{path.name}"
    extra = obj.export_artifacts(tmp, obj.sources_used)
    return {"format_version": FORMAT_VERSION, "objective": cfg.objective, "step": saved.step,
            "ema": bool(obj.ema_weights), "exported_from": str(saved.path),
            "config": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
            "sources": obj.sources_used, "inside": inside, "artifacts": extra}


def export(checkpoint: str | Path, out: str | Path, policy: LoadPolicy | None = None, ema: bool = True,
           overwrite: bool = False) -> Path:
    """Export a run (directory, checkpoint or an earlier export) to ``out``; returns ``out``."""
    policy = policy or LoadPolicy()
    out = Path(out).expanduser().absolute()
    saved = open_saved(checkpoint)
    guard_out(out, inputs_of(saved, saved.sources), overwrite=True)  # the recorded inputs, before any loading
    obj, tok, cfg = rebuild_from_checkpoint(checkpoint, "cpu", policy, ema=ema)

    def fill(tmp: Path) -> None:
        meta = write_export(obj, tok, cfg, saved, tmp)
        (tmp / EXPORT_CONFIG).write_text(json.dumps({EXPORT_KEY: meta, "library_name": "mm-ldlm"}, indent=1))

    return write_dir(out, inputs_of(saved, obj.sources_used), overwrite, fill)


def write_dir(out: Path, inputs: dict[str, Path], overwrite: bool, fill) -> Path:
    """``fill(tmp)`` into a temporary sibling of ``out``, then renamed into place (a failure leaves
    nothing); ``out`` checked against ``inputs`` first (:func:`guard_out`)."""
    out = Path(out).expanduser().absolute()
    guard_out(out, inputs, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        fill(tmp)
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def main(argv: list[str] | None = None, prog: str = "python -m mmldlm.export", doc: str = __doc__) -> int:
    ap = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="a run directory (its latest checkpoint), a checkpoint, or "
                                                        "an export")
    add_renamed(ap, "--out", "--output", required=True,
                    help="the directory to write (must not exist, or be empty)")
    ap.add_argument("--no-ema", dest="ema", action="store_false", help="the raw weights, not the run's EMA")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out once the export is complete")
    add_policy_args(ap)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        out = export(a.checkpoint, a.out, policy_of(a), a.ema, a.overwrite)
    except (SourceError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"exported to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
