"""Weight prefetch: the one implementation, used by the bash launchers and by the trainers.

    python -m mmldlm.prefetch --repo-id tencent/WeDLM-8B-Base --local-dir ./local_models/wedlm-8b

``huggingface_hub.snapshot_download`` of one pinned commit into a local directory, under an
inter-process lock (``filelock``; the OS drops it when its holder dies, even by SIGKILL, so the
next waiter takes over), with retries and exponential backoff on 429 / 5xx / connection errors,
then a completion marker written last. With the marker present, prefetch is a no-op that makes no
network call. The marker is evidence, not a requirement: a directory is judged complete by its
contents (``--check``, and every loader through :mod:`mmldlm.sources`). ``HF_TOKEN`` and ``HF_ENDPOINT``
are honoured (huggingface_hub reads them).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import socket
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from filelock import FileLock, Timeout

from mmldlm.argtypes import nonneg_float, nonneg_int
from mmldlm.io import write_json_atomic

log = logging.getLogger("mm_ldlm.prefetch")

MARKER = ".mmldlm_complete.json"
LOCK = ".mmldlm_prefetch.lock"
OWNER = ".mmldlm_prefetch.owner"
_OURS = {MARKER, LOCK, OWNER}


class PrefetchError(RuntimeError):
    """Prefetch failed or a directory is not a complete model; the message says what to do."""


def read_marker(local_dir: str | os.PathLike) -> dict | None:
    """The completion marker of ``local_dir``, or None if the directory is not complete."""
    try:
        return json.loads((Path(local_dir) / MARKER).read_text())
    except (OSError, ValueError):
        return None


def require_complete(local_dir: str | os.PathLike, repo_id: str | None = None, hint: str = "") -> dict:
    """For offline use: ``local_dir`` must be a complete model (or tokenizer) directory, by its
    contents (config.json + every safetensors shard whole, :mod:`mmldlm.sources.resolve`); the
    completion marker is extra evidence (it also names the repo, checked against ``repo_id``), not a
    requirement: ``hf download --local-dir`` and copies qualify. Returns the marker (or {}); a
    PrefetchError names the real cause and how to fix it."""
    from mmldlm.sources.resolve import Kind, prefetch_holder, problem

    d = Path(local_dir)
    fix = hint or "DOWNLOAD_ONLY=1 bash <run script>"
    if not d.is_dir():
        raise PrefetchError(f"{d} does not exist: run the prefetch first on a machine with internet, e.g. {fix}")
    holder = prefetch_holder(d)
    if holder:
        raise PrefetchError(f"{d} is being prefetched right now ({holder}); wait for it to finish")
    marker = read_marker(d) or {}
    if repo_id and marker and marker.get("repo_id") != repo_id:
        raise PrefetchError(f"{d} holds {marker.get('repo_id')}, not {repo_id}: point the local directory elsewhere "
                            "or prefetch again")
    why = problem(Kind.model, d)
    tokenizer_only = not (d / "config.json").is_file() and problem(Kind.tokenizer, d) is None
    if why and not tokenizer_only:
        raise PrefetchError(f"{d} is not a complete model directory: {why}. Run the prefetch (again) on a machine "
                            f"with internet, e.g. {fix}")
    return marker


_TRANSPORT = ("TransportError", "ConnectError", "ConnectionError", "TimeoutException", "Timeout",
              "RemoteProtocolError", "ReadError")


def check_if_prefetched(path: str | os.PathLike) -> None:
    """Before loading from a local directory: one being prefetched right now is refused (naming
    the holder); a lock left by a dead process is recovered. Its contents decide the rest."""
    from mmldlm.sources.resolve import prefetch_holder

    d = Path(path)
    holder = prefetch_holder(d) if d.is_dir() else None
    if holder:
        raise PrefetchError(f"{d} is being prefetched right now ({holder}); wait for it to finish")


def _retryable(err: Exception) -> bool:
    """429 / 5xx answers and transport failures (by class name: huggingface_hub has used
    requests, httpx and httpx2 across its versions)."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(err, OfflineModeIsEnabled):
        return False
    if isinstance(err, HfHubHTTPError) and getattr(err, "response", None) is not None:
        return err.response.status_code == 429 or err.response.status_code >= 500
    return any(c.__name__ in _TRANSPORT for c in type(err).__mro__)


def _with_retries(what: str, fn, retries: int, backoff: float):
    for attempt in range(retries + 1):
        try:
            return fn()
        except Exception as e:  # re-raised unless _retryable says it is transient
            if attempt == retries or not _retryable(e):
                raise
            wait = backoff * 2**attempt * (1 + 0.25 * random.random())
            log.warning("%s failed (%s); retry %d/%d in %.1fs", what, str(e).splitlines()[0],
                        attempt + 1, retries, wait)
            time.sleep(wait)


def _acquire(lock: FileLock, owner_file: Path, poll: float) -> None:
    """Take the lock; while waiting, say (at once, then every ``poll`` s) who holds it."""
    timeout = 0.0
    while True:
        try:
            lock.acquire(timeout=timeout)
            break
        except Timeout:
            timeout = poll
            try:
                who = owner_file.read_text().strip()
            except OSError:
                who = "another process"
            log.info("waiting for the prefetch lock on %s, held by %s", owner_file.parent, who)
    owner_file.write_text(f"{socket.gethostname()} pid {os.getpid()} since "
                          f"{datetime.now(UTC).isoformat(timespec='seconds')}\n")


def prefetch(repo_id: str, local_dir: str | os.PathLike, revision: str | None = None,
             allow_patterns: list[str] | None = None, retries: int = 5, backoff: float = 2.0,
             poll: float = 10.0) -> Path:
    """Make ``local_dir`` a complete copy of ``repo_id`` at ``revision``; returns the directory."""
    local_dir = Path(local_dir)
    marker = read_marker(local_dir)
    if marker and marker.get("repo_id") == repo_id and revision in (None, marker.get("revision"),
                                                                     marker.get("commit")):
        log.info("%s already holds %s@%s", local_dir, repo_id, marker["commit"][:12])
        return local_dir
    if marker:
        raise PrefetchError(f"{local_dir} already holds {marker.get('repo_id')}@{marker.get('revision')};"
                            f" refusing to overwrite it with {repo_id}@{revision}: choose another directory")
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import OfflineModeIsEnabled

    local_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(local_dir / LOCK))
    _acquire(lock, local_dir / OWNER, poll)
    try:
        marker = read_marker(local_dir)  # another process may have finished while we waited
        if marker and marker.get("repo_id") == repo_id:
            return local_dir
        try:
            info = _with_retries(f"repo info of {repo_id}", lambda: HfApi().repo_info(
                repo_id, revision=revision), retries, backoff)
            commit = info.sha
            log.info("downloading %s@%s into %s", repo_id, commit[:12], local_dir)
            _with_retries(f"download of {repo_id}", lambda: snapshot_download(
                repo_id, revision=commit, local_dir=local_dir, allow_patterns=allow_patterns),
                retries, backoff)
        except OfflineModeIsEnabled:
            raise PrefetchError(f"{local_dir} is incomplete and HF_HUB_OFFLINE=1 forbids downloading: "
                                "run the prefetch (DOWNLOAD_ONLY=1) on a machine with internet") from None
        files = sorted(str(p.relative_to(local_dir)) for p in local_dir.rglob("*")
                       if p.is_file() and p.name not in _OURS and ".cache" not in p.parts)
        write_json_atomic(local_dir / MARKER, {"repo_id": repo_id, "revision": revision or "main", "commit": commit,
                                               "allow_patterns": allow_patterns, "files": files,
                                               "completed": datetime.now(UTC).isoformat(timespec="seconds")},
                          indent=1)
        log.info("%s complete: %d files", local_dir, len(files))
        return local_dir
    finally:
        (local_dir / OWNER).unlink(missing_ok=True)
        lock.release()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mmldlm.prefetch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo-id", required=True, help="hub repository, e.g. tencent/WeDLM-8B-Base")
    p.add_argument("--local-dir", required=True, help="directory to fill (created if missing)")
    p.add_argument("--revision", default=None, help="branch, tag or commit (default: main)")
    p.add_argument("--allow-patterns", nargs="*", default=None, help="glob patterns of files to fetch")
    p.add_argument("--retries", type=nonneg_int, default=int(os.environ.get("PREFETCH_RETRIES", 5)),
                   help="retries on 429/5xx/connection errors (env PREFETCH_RETRIES)")
    p.add_argument("--backoff", type=nonneg_float, default=float(os.environ.get("PREFETCH_BACKOFF", 2.0)),
                   help="first retry delay in seconds, doubled each retry (env PREFETCH_BACKOFF)")
    p.add_argument("--check", action="store_true",
                   help="no download: exit 0 if the directory is complete, else 1 with a message")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[prefetch] %(message)s")
    try:
        if args.check:
            require_complete(args.local_dir, args.repo_id)
        else:
            prefetch(args.repo_id, args.local_dir, args.revision, args.allow_patterns,
                     args.retries, args.backoff)
    except PrefetchError as e:
        print(f"[prefetch] error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - a hub error: one line, not a traceback
        print(f"[prefetch] error: {type(e).__name__}: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
