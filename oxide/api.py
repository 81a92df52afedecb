"""``oxide.load`` and the ``Model`` it returns: the public face of the package."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .chat import ChatTemplate, fallback_template
from .config import ModelConfig
from .device import device_reason, select_device
from .errors import ContextOverflowError, InvalidOptionError, TokenizerError
from .generate import Completion, Generation
from .log import get_logger
from .models.decoder import DecoderLM
from .precision import PrecisionPolicy, choose_precision
from .sampling import Sampler, SamplingOptions
from .sources import ModelSource, resolve_source
from .tokenizer import Tokenizer
from .validation import check_cache, check_vocabulary

log = get_logger("load")

DEFAULT_N_CTX = 8192
Prompt = str | Sequence[dict[str, Any]] | Sequence[int]


@dataclass(frozen=True)
class LoadInfo:
    """What was decided at load and why (source, device, precision, chat template), and how long it took."""

    source: ModelSource
    device_reason: str
    precision: PrecisionPolicy
    load_seconds: float
    template_origin: str


class Model:
    """A loaded model with its tokenizer and chat template.

    A model folder without tokenizer files loads with ``tokenizer`` None: it takes and returns token ids
    (``logits(ids)``, ``generate(list_of_ids)``, whose completion then has ids and no text, and which stops
    only at ``max_new_tokens``: the end-of-sequence ids come with the tokenizer), and a text or chat prompt
    raises :class:`TokenizerError`.
    """

    def __init__(self, lm: DecoderLM, tokenizer: Tokenizer | None, chat_template: ChatTemplate | None, n_ctx: int,
                 info: LoadInfo) -> None:
        self.lm = lm
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.n_ctx = n_ctx
        self.info = info

    @property
    def config(self) -> ModelConfig:
        return self.lm.config

    @property
    def device(self) -> torch.device:
        return self.lm.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm.dtype

    def logits(self, ids: Sequence[int]) -> torch.Tensor:
        """Float32 logits (len(ids), vocab) of one forward over ``ids`` on a fresh cache."""
        ids = list(ids)
        if not ids or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise InvalidOptionError("logits() takes a non-empty flat sequence of integer token ids")
        if len(ids) > self.n_ctx:
            raise ContextOverflowError(f"{len(ids)} tokens exceed the context of {self.n_ctx}; "
                                       f"load with a larger n_ctx or pass fewer tokens")
        cache = self.lm.new_cache(len(ids))
        return self.lm.forward(torch.tensor([ids], device=self.device), cache)[0]

    def encode_prompt(self, prompt: Prompt, *, add_generation_prompt: bool = True) -> list[int]:
        """Token ids for text (BOS added as the vocabulary asks), chat messages (rendered with the model's
        template; no second BOS when the template writes one) or ids (used as given)."""
        if not isinstance(prompt, str):
            items = list(prompt)
            if all(isinstance(i, int) and not isinstance(i, bool) for i in items):
                return [int(i) for i in items]
            if not all(isinstance(m, dict) for m in items):
                raise InvalidOptionError("prompt must be a string, a list of chat messages (dicts) or a list of "
                                         "token ids")
        if self.tokenizer is None:
            raise TokenizerError(
                f"{self.info.source.path} has no tokenizer (no tokenizer.json beside the weights), so a text or "
                f"chat prompt cannot be encoded; pass token ids (a list of int) or add the model's tokenizer.json "
                f"to the folder")
        if isinstance(prompt, str):
            return self._single_bos(self.tokenizer.encode(prompt, add_special_tokens=True))
        return self._encode_chat(items, add_generation_prompt)

    def _encode_chat(self, messages: list[dict[str, Any]], add_generation_prompt: bool) -> list[int]:
        if self.chat_template is None:
            raise TokenizerError("this model has no chat template and none of the built-in ones fits its "
                                 "vocabulary; pass a plain text prompt instead")
        tok = self.tokenizer
        assert tok is not None
        bos = tok.token_to_piece(tok.bos_id) if tok.bos_id is not None else ""
        eos = tok.token_to_piece(tok.eos_ids[0]) if tok.eos_ids else ""
        text = self.chat_template.render(messages, add_generation_prompt=add_generation_prompt,
                                         bos_token=bos, eos_token=eos)
        ids = tok.encode(text, add_special_tokens=False)
        if tok.add_bos and tok.bos_id is not None and (not ids or ids[0] != tok.bos_id):
            ids.insert(0, tok.bos_id)
        return self._single_bos(ids)

    def _single_bos(self, ids: list[int]) -> list[int]:
        """Drop a BOS the text itself spelled out when the tokenizer added one too (llama.cpp warns of the same)."""
        bos = self.tokenizer.bos_id if self.tokenizer is not None else None
        if bos is not None and ids[:2] == [bos, bos]:
            log.warning("the prompt starts with two BOS tokens (one added, one in the text); keeping one")
            return ids[1:]
        return ids

    def _generation(self, prompt: Prompt, max_new_tokens: int, sampling: SamplingOptions | None,
                    stop: str | Sequence[str] | None, ignore_eos: bool) -> Generation:
        if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise InvalidOptionError(f"max_new_tokens={max_new_tokens!r} must be a non-negative integer")
        ids = self.encode_prompt(prompt)
        if not ids:
            raise InvalidOptionError("the prompt encodes to no tokens; give some text or ids")
        if len(ids) >= self.n_ctx:
            raise ContextOverflowError(
                f"the prompt has {len(ids)} tokens but the context holds {self.n_ctx} (and at least one more is "
                f"needed to generate); shorten the prompt or load with a larger n_ctx")
        self.lm.check_ids(torch.tensor(ids))
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if stops and self.tokenizer is None:
            raise TokenizerError("stop strings need a tokenizer to decode the generated ids, and this model has none; "
                                 "leave stop unset or add the model's tokenizer.json to its folder")
        return Generation(self.lm, self.tokenizer, self.lm.new_cache(self.n_ctx), ids,
                          max_new_tokens=max_new_tokens, sampler=Sampler(sampling or SamplingOptions()),
                          stop=stops, ignore_eos=ignore_eos, end_ids=self.tokenizer.eos_ids if self.tokenizer else (),
                          source=str(self.info.source.path))

    def generate(self, prompt: Prompt, *, max_new_tokens: int = 256, sampling: SamplingOptions | None = None,
                 stop: str | Sequence[str] | None = None, ignore_eos: bool = False) -> Completion:
        """Generate a completion of ``prompt`` (text, chat messages or token ids)."""
        generation = self._generation(prompt, max_new_tokens, sampling, stop, ignore_eos)
        for _ in generation:
            pass
        assert generation.completion is not None
        return generation.completion

    def stream(self, prompt: Prompt, *, max_new_tokens: int = 256, sampling: SamplingOptions | None = None,
               stop: str | Sequence[str] | None = None, ignore_eos: bool = False) -> Generation:
        """Like :meth:`generate`, yielding text pieces as they are ready (never half a UTF-8 character).

        The returned iterator's ``completion`` attribute holds the :class:`Completion` once exhausted.
        """
        return self._generation(prompt, max_new_tokens, sampling, stop, ignore_eos)


def load(source: str | os.PathLike[str] | None = None, *, device: str | torch.device | None = None,
         dtype: str | torch.dtype | None = None, n_ctx: int | None = None) -> Model:
    """Load a model: a ``.gguf`` file, or None for the default model (Gemma 3 270M Q4_K_M)."""
    from .models.builder import build_from_gguf

    start = time.perf_counter()
    resolved = resolve_source(source)
    chosen = select_device(device)
    policy = choose_precision(chosen, dtype)
    if resolved.kind == "hf":
        from .models.hf import build_from_hf_dir

        lm = build_from_hf_dir(resolved.path, chosen, policy.compute_dtype)
        tokenizer = _hf_tokenizer(resolved.path)
        template, origin = ChatTemplate.from_hf_dir(resolved.path), "tokenizer_config.json / chat_template.jinja"
    else:
        gguf, lm = build_from_gguf(resolved.path, chosen, policy.compute_dtype)
        tokenizer = Tokenizer.from_gguf_metadata(gguf.metadata, source=str(gguf.path))
        check_vocabulary(tokenizer.vocab_size, lm.config, str(gguf.path))
        template = ChatTemplate.from_gguf_metadata(gguf.metadata, source=str(gguf.path))
        origin = "GGUF tokenizer.chat_template"
    if template is None:
        template = fallback_template(tokenizer.special_tokens) if tokenizer is not None else None
        origin = "built-in fallback" if template is not None else "none"
    context = _context_size(lm.config, n_ctx)
    check_cache(lm.config, context, str(resolved.path))
    info = LoadInfo(resolved, device_reason(chosen, device), policy, time.perf_counter() - start, origin)
    log.info("loaded %s in %.2f s on %s (%s)", resolved.path.name, info.load_seconds, chosen, policy.compute_dtype)
    return Model(lm, tokenizer, template, context, info)


def _hf_tokenizer(directory: Path) -> Tokenizer | None:
    """The folder's tokenizer; None, with a warning, when it has no tokenizer.json (weights-only folders)."""
    if not (directory / "tokenizer.json").exists():
        log.warning("%s has no tokenizer.json: the model loads without a tokenizer and takes token ids only",
                    directory)
        return None
    return Tokenizer.from_hf_dir(directory)


def _context_size(config: ModelConfig, n_ctx: int | None) -> int:
    """``n_ctx`` if given (a warning past the trained context), else the trained context up to 8192."""
    if n_ctx is None:
        return min(config.max_position_embeddings, DEFAULT_N_CTX)
    if not isinstance(n_ctx, int) or isinstance(n_ctx, bool) or n_ctx <= 0:
        raise InvalidOptionError(f"n_ctx={n_ctx!r} must be a positive integer")
    if n_ctx > config.max_position_embeddings:
        log.warning("n_ctx=%d exceeds the model's trained context of %d; quality may degrade",
                    n_ctx, config.max_position_embeddings)
    return n_ctx
