"""Directories that bring their own Python code (for the trust tests): each writes a marker file
when its code is imported, so a test sees whether any code ran."""
from __future__ import annotations

import json
import shutil
from pathlib import Path


def code_tokenizer(base: Path, out: Path) -> tuple[Path, Path]:
    """A copy of the tokenizer files of ``base`` whose tokenizer_config.json maps AutoTokenizer to
    a class in evil_tokenizer.py; returns (directory, marker)."""
    out.mkdir(parents=True)
    for f in base.iterdir():
        if f.is_file() and (f.name.startswith(("tokenizer", "special_tokens", "vocab")) or f.suffix == ".txt"):
            shutil.copy(f, out / f.name)
    ran = out.parent / f"{out.name}.ran"
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    cfg.update(auto_map={"AutoTokenizer": [None, "evil_tokenizer.EvilTokenizer"]}, tokenizer_class="EvilTokenizer")
    (out / "tokenizer_config.json").write_text(json.dumps(cfg))
    (out / "evil_tokenizer.py").write_text(f"open({str(ran)!r}, 'w').write('ran')\n"
                                           "from transformers import PreTrainedTokenizerFast as EvilTokenizer\n")
    return out, ran


def code_model(base: Path, out: Path) -> tuple[Path, Path]:
    """A copy of model directory ``base`` whose config.json names its own code (an unknown
    model_type with an auto_map); returns (directory, marker)."""
    shutil.copytree(base, out)
    ran = out.parent / f"{out.name}.ran"
    cfg = json.loads((out / "config.json").read_text())
    cfg.update(model_type="evil_llm", auto_map={"AutoConfig": "configuration_evil.EvilConfig",
                                                "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"})
    (out / "config.json").write_text(json.dumps(cfg))
    for name in ("configuration_evil.py", "modeling_evil.py"):
        (out / name).write_text(f"open({str(ran)!r}, 'w').write('ran')\n")
    return out, ran
