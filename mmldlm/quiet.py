"""Third-party messages that carry nothing for the user, filtered where they are emitted.

Each filter drops one known message from one library logger (or one warning), never a level or
a whole library: anything else those libraries say still shows. Installed when ``mmldlm`` is
imported (every entrypoint imports it first); cheap (no third-party import).

- transformers' ``AutoTokenizer`` reads a model directory's config with the base config class
  when its model type is unknown to it (``wedlm`` without remote code), and says "You are using a
  model of type `wedlm` to instantiate a model of type ``": the tokenizer is unaffected (the
  backbone is checked by ``wedlm_bridge.backbone``).
- bitsandbytes, on CPUs with AVX512-BF16, probes the kernel hub for a CPU 4-bit kernel when it is
  imported and logs the failure ("Failed to load CPU gemm_4bit_forward from kernels-community").
  Whoever imports bitsandbytes first (the 8-bit optimizer, peft, transformers' quantizer), that
  import runs with huggingface_hub offline, so the probe looks in the local kernel cache only and
  reaches no network (the ``kernels`` package reads ``HF_HUB_OFFLINE`` when called); its failure
  message is dropped.
- torch's DataLoader warns about more workers than cores; the loop's start warning says it with
  the key to change (``mmldlm.train.advice``).
"""
from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import logging
import sys
import warnings

_DROPPED = {
    "transformers.configuration_utils": "to instantiate a model of type ``",
    "bitsandbytes.backends.cpu.ops": "from kernels-community",
    "kernels._internals.hf_hub": "trust check for 'kernels-community/quantization-bitsandbytes'",  # offline probe
}


class _Drop(logging.Filter):
    def __init__(self, fragment: str):
        super().__init__()
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self.fragment not in record.getMessage()


def install() -> None:
    for name, fragment in _DROPPED.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Drop) for f in logger.filters):
            logger.addFilter(_Drop(fragment))
    warnings.filterwarnings("ignore", message="This DataLoader will create", category=UserWarning)
    if "bitsandbytes" not in sys.modules and not any(isinstance(f, _OfflineImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _OfflineImport("bitsandbytes"))


@contextlib.contextmanager
def hub_offline():
    """huggingface_hub offline for the duration: a hub probe made on import (the kernels hub's)
    looks in the local cache only and reaches no network."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


class _OfflineImport(importlib.abc.MetaPathFinder):
    """The first import of ``package`` (with its submodules) runs under :func:`hub_offline`."""

    def __init__(self, package: str):
        self.package = package

    def find_spec(self, name, path, target=None):
        if name != self.package:
            return None
        sys.meta_path.remove(self)  # once: find the real spec without coming back here
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            run = spec.loader.exec_module

            def exec_offline(module):
                with hub_offline():
                    run(module)

            spec.loader.exec_module = exec_offline
        return spec
