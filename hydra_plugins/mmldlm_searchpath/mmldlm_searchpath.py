"""Puts the repository's shared ``configs/`` (optimizer, logging, data, training groups) on the
search path of every Hydra entrypoint, so that no entrypoint repeats or copies them."""
from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

SHARED_CONFIGS = Path(__file__).resolve().parents[2] / "configs"


class MMLDLMSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        if SHARED_CONFIGS.is_dir():
            search_path.append(provider="mm-ldlm", path=f"file://{SHARED_CONFIGS}")
