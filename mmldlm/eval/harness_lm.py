"""The lm-evaluation-harness model ``mmldlm``: any run or export of a family that models text.

    import mmldlm.eval.harness_lm  # registers "mmldlm"
    lm_eval.simple_evaluate(model="mmldlm", model_args="pretrained=RUN_OR_EXPORT,num_t=16", tasks=[...])

The model is rebuilt through the eval CLIs' one entry point (``CheckpointKeys.rebuild``) and asked
only through the objective's hooks (``conditional_nelbo``, ``conditional_greedy``, ``complete``),
so the framework names no family. What the numbers mean (exact or a bound, the t-grid, the
windows, greedy): :func:`protocol` and docs/eval.md.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from mmldlm.eval.conditional import Pair, continue_text, fit, rolling_pairs, score_pairs

log = logging.getLogger(__name__)

GEN_KWARGS = ("until", "max_gen_toks", "do_sample", "temperature")
DEFAULT_MAX_GEN_TOKS = 256


def _int(name: str, value, low: int = 1) -> int:
    if isinstance(value, bool) or not str(value).lstrip("-").isdigit():
        raise ValueError(f"{name}={value!r}: a whole number is needed")
    if int(value) < low:
        raise ValueError(f"{name}={value!r}: must be >= {low}")
    return int(value)


@register_model("mmldlm")
class MMLDLM(TemplateLM):
    """An MM-LDLM objective behind lm-eval's three requests (module docstring)."""

    def __init__(self, pretrained: str | None = None, device: str | None = "auto", batch_size=16,
                 max_batch_size=None, num_t=16, steps=None, seed=0, max_length=None, rolling_context=1,
                 ema=True, backbone_dir: str | None = None, trust_remote_code=False, *, loaded=None):
        super().__init__()
        from mmldlm.eval.cli import CheckpointKeys, resolve_device

        if (pretrained is None) == (loaded is None):
            raise ValueError("mmldlm: pass pretrained=RUN_DIR_OR_EXPORT")
        self._device = torch.device(resolve_device(device or "auto"))
        if str(batch_size).startswith("auto") or max_batch_size is not None:
            raise ValueError("mmldlm: batch_size=auto (and its max_batch_size) is not supported; pass a number")
        # every number checked before the model is read
        self.batch_size = _int("batch_size", batch_size)
        self.num_t, self.seed = _int("num_t", num_t), _int("seed", seed, low=0)
        self.steps = None if steps is None else _int("steps", steps)
        self.rolling_context = _int("rolling_context", rolling_context)
        max_length = None if max_length is None else _int("max_length", max_length, low=2)
        if loaded is None:
            keys = CheckpointKeys(ema=bool(ema), device=str(self._device), backbone_dir=backbone_dir,
                                  trust_remote_code=bool(trust_remote_code))
            loaded = keys.rebuild(pretrained, str(self._device))
        self.objective, self.tokenizer, self.cfg = loaded
        self.path = str(pretrained) if pretrained is not None else None
        self.max_length = max_length or int(self.cfg.data.max_seq_len)
        self.eps = float(self.cfg.model.get("t_eps", 1e-4)) if "model" in self.cfg else 1e-4
        self.start_id, self.end_id = _document_tokens(self.tokenizer)
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.end_id
        self.truncated = 0
        self._check_supported()

    @classmethod
    def from_objective(cls, objective, tokenizer, cfg, **kwargs) -> MMLDLM:
        """The harness model around an objective already in memory (tests, notebooks)."""
        return cls(loaded=(objective, tokenizer, cfg), device=str(next(objective.parameters()).device), **kwargs)

    def _check_supported(self) -> None:
        """Refuse a model the hooks cannot serve now, in one line, before the harness loads any task."""
        probe = [Pair((self.start_id,), (self.start_id,))]
        try:
            score_pairs(self.objective, probe, batch_size=1, num_t=1, eps=self.eps, pad_id=self.pad_id,
                        device=self._device)
        except NotImplementedError as e:
            raise ValueError(f"{self.cfg.objective}: {e}") from None

    # -- identity and protocol (written beside the results) -----------------------------------
    @property
    def exact(self) -> bool:
        return not self.objective.nelbo_needs_t

    def identity(self) -> dict:
        from mmldlm.train.rebuild import open_saved

        step = open_saved(self.path).step if self.path else None  # a run, a checkpoint or an export
        return {"path": self.path, "resolved": str(Path(self.path).resolve()) if self.path else None,
                "objective": self.cfg.objective, "run_name": self.cfg.logging.get("run_name"), "step": step,
                "tokenizer": str(self.cfg.data.tokenizer_name),
                "sources": getattr(self.objective, "sources_used", {}),  # names, places, fingerprints
                "ema": bool(getattr(self.objective, "ema_weights", False)),  # set by the rebuild
                "parameters": sum(p.numel() for p in self.objective.parameters()),
                "dtypes": sorted({str(p.dtype).removeprefix("torch.") for p in self.objective.parameters()}),
                "device": str(self._device)}

    def protocol(self) -> dict:
        loglik = ("exact: log p of the continuation given the context (teacher-forced causal forward)" if self.exact
                  else "bound: -NELBO of the continuation given the clean context (a lower bound on log p), the "
                       "mean over the t-grid, masks keyed by (seed, grid point, request tokens, position)")
        out = {"loglikelihood": "exact" if self.exact else "bound", "loglikelihood_meaning": loglik,
               "max_length": self.max_length, "document_start_token": self.start_id,
               "context_truncated_requests": self.truncated,
               "rolling": {"window": self.max_length, "min_context": self.rolling_context,
                           "meaning": "every token scored once, in targets of up to window - min_context tokens "
                                      "after as many preceding tokens as fit (the first after the document-start "
                                      "token); documents scored separately"},
               "greedy": "each continuation token is the argmax of its next-token distribution" if self.exact else
                         "each continuation token is the argmax of p(x0 | context, continuation all [MASK]) at the "
                         "top noise level (a one-step greedy decode)",
               "generate_until": {"sampler": self.objective.sampler_name("ddpm"),
                                  "steps": self.steps if self.steps is not None else "one per generated token",
                                  "seed": self.seed, "stop": "text cut at the first end-of-text token, then at "
                                                              "the first stop sequence"}}
        if not self.exact:
            out.update(num_t=self.num_t, eps=self.eps,
                       t_grid=f"{self.num_t} midpoints of equal cells of [{self.eps}, {1 - self.eps}]")
        return out

    # -- TemplateLM -------------------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.end_id

    @property
    def prefix_token_id(self) -> int:
        return self.start_id

    @property
    def tokenizer_name(self) -> str:
        return str(self.cfg.data.tokenizer_name).replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """The text's ids (special-token strings in it stay text, as in training), after the
        document-start token unless ``add_special_tokens`` is False."""
        ids = self.tokenizer(string, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        return ids if add_special_tokens is False else [self.start_id, *ids]

    def _score(self, pairs: list[Pair], disable_tqdm: bool):
        return score_pairs(self.objective, pairs, batch_size=self.batch_size, num_t=self.num_t, eps=self.eps,
                           pad_id=self.pad_id, device=self._device, progress=not disable_tqdm)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        pairs = []
        for _, context, target in requests:
            pair, cut = fit(context, target, self.max_length)
            self.truncated += cut
            pairs.append(pair)
        out = []
        for (key, _, _), s in zip(requests, self._score(pairs, disable_tqdm)):
            self.cache_hook.add_partial("loglikelihood", key, (s.logprob, s.greedy))
            out.append((s.logprob, s.greedy))
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        windows, owner = [], []
        for i, req in enumerate(requests):
            (text,) = req.args
            pairs = rolling_pairs(self.tok_encode(text, add_special_tokens=False), self.start_id, self.max_length,
                                  self.rolling_context)
            windows += pairs
            owner += [i] * len(pairs)
        totals = [0.0] * len(requests)
        for i, s in zip(owner, self._score(windows, disable_tqdm)):
            totals[i] += s.logprob
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out = []
        for req in tqdm(requests, desc="generating", disable=disable_tqdm):
            context, kwargs = req.args
            until, max_new, temperature = self._gen_kwargs(kwargs)
            text = continue_text(self.objective, self._decode, self.tok_encode(context), max_new=max_new,
                                 until=until, end_id=self.end_id, max_length=self.max_length,
                                 steps=self.steps or max_new, temperature=temperature, seed=self.seed,
                                 device=self._device)
            self.cache_hook.add_partial("generate_until", req.args, text)
            out.append(text)
        return out

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _gen_kwargs(self, kwargs: dict) -> tuple[list[str], int, float]:
        unknown = sorted(set(kwargs) - set(GEN_KWARGS))
        if unknown:
            raise ValueError(f"generate_until: gen_kwargs {unknown} are not supported by mmldlm (supported: "
                             f"{', '.join(GEN_KWARGS)})")
        until = kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        max_new = _int("max_gen_toks", kwargs.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS))
        temperature = float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample", False) else 0.0
        if kwargs.get("do_sample") and temperature == 0:
            temperature = 1.0
        return until, max_new, temperature


def _document_tokens(tokenizer) -> tuple[int, int]:
    """(start, end) of a document: BOS (else CLS, else EOS) and EOS (else SEP), as training wraps text."""
    end = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    start = next((i for i in (tokenizer.bos_token_id, tokenizer.cls_token_id, end) if i is not None), None)
    if start is None:
        raise ValueError(f"the tokenizer {tokenizer.name_or_path!r} has no BOS, CLS, EOS or SEP token to start a "
                         "document with")
    return int(start), end
