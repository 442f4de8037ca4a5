"""MM-LDLM: the framework every family builds on (configs, objective registry, data, training loop,
diffusion processes, prefetch, plots). It imports no family."""
from mmldlm import quiet

quiet.install()  # known third-party noise, dropped where it is emitted (mmldlm.quiet)


def from_pretrained(path: str, device: str = "cpu", policy=None, ema: bool = True):
    """(objective in eval mode, tokenizer, config) of an export (``python -m mmldlm.export``), a run
    directory or a checkpoint; ``path`` may also be a hub repository id of an export, fetched with
    ``snapshot_download`` (from the hub cache only, unless ``policy.local_files_only`` is False).
    Sources not in the export (a frozen backbone) load from where the run recorded them, unless
    ``policy`` (:class:`mmldlm.sources.LoadPolicy`) names them."""
    from pathlib import Path

    from mmldlm.sources import LoadPolicy
    from mmldlm.sources.resolve import looks_local
    from mmldlm.train.rebuild import rebuild_from_checkpoint

    policy = policy or LoadPolicy()
    if not Path(path).expanduser().exists() and not looks_local(path):
        from huggingface_hub import snapshot_download

        path = snapshot_download(path, local_files_only=policy.local_files_only)
    return rebuild_from_checkpoint(path, device, policy, ema=ema)
