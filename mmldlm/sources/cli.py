"""The flags of every argparse CLI that rebuilds a run (export, the bridge's decode / encode /
export, export_finetuned): where its sources are on this machine and what this command line
allows. The key=value eval CLIs have the same keys (``mmldlm.eval.cli.CheckpointKeys``)."""
from __future__ import annotations

import argparse

from mmldlm.sources import LoadPolicy


def add_policy_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--source", action="append", default=[], metavar="NAME=PATH",
                    help="where a source of the run is on this machine (backbone, tokenizer, llm.NAME ...); "
                         "default: the path the run recorded, if it is here and unchanged")
    ap.add_argument("--backbone-dir", default=None, help="the same as --source backbone=DIR")
    ap.add_argument("--trust-remote-code", action="store_true",
                    help="let the code of the directories named on this command line run (only if you trust them)")
    ap.add_argument("--allow-download", action="store_true",
                    help="let sources come from the hub (default: local files and the hub cache only)")
    ap.add_argument("--allow-source-change", action="store_true",
                    help="accept a source whose fingerprint differs from the one the run trained with")


def policy_of(args) -> LoadPolicy:
    """The :class:`LoadPolicy` of :func:`add_policy_args`' flags."""
    paths = {}
    for spec in args.source:
        name, eq, path = spec.partition("=")
        if not eq or not name:
            raise SystemExit(f"error: --source: expected NAME=PATH, got {spec!r}")
        paths[name] = path
    if args.backbone_dir:
        paths["backbone"] = args.backbone_dir
    return LoadPolicy(trust_remote_code=args.trust_remote_code, local_files_only=not args.allow_download,
                      paths=paths, allow_source_change=args.allow_source_change)
