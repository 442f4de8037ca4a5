"""Loading a tokenizer from a local directory or a hub name, with errors that say what to do; training
a small WordPiece tokenizer for the CPU demos."""
from __future__ import annotations

import os
from pathlib import Path

from mmldlm.config import ConfigError


def looks_local(name: str) -> bool:
    """A name that can only be a local path (hub ids are ``name`` or ``org/name``)."""
    return name.startswith(("/", "./", "../", "~", ".\\")) or name.count("/") > 1 or "\\" in name


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False, local_files_only: bool | None = None,
                   key: str = "data.tokenizer_name"):
    """A tokenizer from a local directory or a hub name (the hub cache when offline). Problems are
    a :class:`ConfigError` naming ``key``: a local-looking path that does not exist is "not
    found", never a network error. A tokenizer without a pad token pads with its EOS."""
    from transformers import AutoTokenizer

    from mmldlm.prefetch import check_if_prefetched

    local = Path(name_or_path).expanduser()
    if not local.exists() and looks_local(name_or_path):
        raise ConfigError(f"{key}: not found: {name_or_path} (relative paths are from {Path.cwd()})")
    check_if_prefetched(local)  # a half-prefetched directory is not a tokenizer
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
    kw = {} if local_files_only is None else {"local_files_only": local_files_only}
    try:
        tok = AutoTokenizer.from_pretrained(str(local) if local.exists() else name_or_path,
                                            trust_remote_code=trust_remote_code, **kw)
    except (OSError, ValueError) as e:
        where = "" if local.exists() else (
            " It is no local directory, and it is not in the hub cache" + (" (offline)" if offline or
                                                                         local_files_only else "") + ".")
        raise ConfigError(f"{key}: could not load tokenizer {name_or_path!r}: {str(e).splitlines()[0].rstrip('.')}."
                          f"{where} Point {key} at a local tokenizer directory, or prefetch it first "
                          "(python -m mmldlm.prefetch --repo-id NAME --local-dir DIR)") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _bert_style(model, out_dir: str | Path) -> Path:
    """Save a WordPiece ``model`` with bert's pipeline (lowercase, [CLS] ... [SEP], [MASK]) as a
    transformers tokenizer directory."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(model)
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    tok.decoder = decoders.WordPiece()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")
    fast.save_pretrained(str(out_dir))
    return Path(out_dir)


SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def train_wordpiece(texts: list[str], out_dir: str | Path, vocab_size: int = 4096) -> Path:
    """A WordPiece tokenizer (bert-style: lowercase, [CLS] ... [SEP], [MASK]) trained on ``texts``.
    For CPU demos: a 4k vocabulary instead of bert's 30,522 shrinks the text head, which is most
    of a tiny model's compute, and leaves fewer classes to learn."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL,
                                                             show_progress=False))
    return _bert_style(models.WordPiece(tok.get_vocab(), unk_token="[UNK]"), out_dir)


def word_tokenizer(texts: list[str], out_dir: str | Path) -> Path:
    """A bert-style WordPiece tokenizer whose vocabulary is every word of ``texts`` whole, then
    their characters (a new word still tokenises), in sorted order: for a closed caption set, the
    same texts always give the same ids (a trained WordPiece breaks frequency ties differently
    from run to run, so its pieces, and a model trained on them, vary)."""
    from tokenizers import models, normalizers, pre_tokenizers

    norm, pre = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    words = sorted({w for t in texts for w, _ in pre.pre_tokenize_str(norm.normalize_str(t))})
    chars = sorted({c for w in words for c in w})
    vocab = SPECIAL + [w for w in words if w not in SPECIAL] + [f"##{c}" for c in chars]
    vocab += [c for c in chars if c not in set(words)]
    return _bert_style(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"), out_dir)
