"""``oxide.load`` and the ``Model`` it returns: the public face of the package."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .chat import ChatTemplate, fallback_template
from .concurrency import LockedStream, ModelLock
from .config import ModelConfig
from .device import device_reason, select_device
from .engine import Engine, Event
from .errors import ContextOverflowError, InvalidOptionError, MediaError, ModelBusyError, TokenizerError
from .generate import Completion, Generation, Request
from .log import get_logger
from .models.decoder import DecoderLM
from .precision import PrecisionPolicy, choose_precision
from .sampling import SamplingOptions
from .slots import SlotPool
from .sources import ModelSource, resolve_source
from .tokenizer import Tokenizer
from .validation import check_cache, check_vocabulary

if TYPE_CHECKING:
    from .images import PromptInput
    from .models.vision.model import VisionModel

log = get_logger("load")

DEFAULT_N_CTX = 8192
MAX_PARALLEL = 256   # KV slots of one model: far past where a batch step stops gaining throughput
Prompt = str | Sequence[dict[str, Any]] | Sequence[int]
GGUF_NO_VISION = ("a GGUF file holds only the language model: llama.cpp keeps the vision tower in a separate mmproj "
                  "file, which oxide does not read; load the model's Hugging Face folder to give it images")

@dataclass(frozen=True)
class LoadInfo:
    """What was decided at load and why (source, device, precision, chat template), and how long it took."""

    source: ModelSource
    device_reason: str
    precision: PrecisionPolicy
    load_seconds: float
    template_origin: str
    vision: str               # the vision tower loaded, or why the model takes no images


class Model:
    """A loaded model with its tokenizer and chat template.

    A model folder without tokenizer files loads with ``tokenizer`` None: it takes and returns token ids
    (``logits(ids)``, ``generate(list_of_ids)``, whose completion then has ids and no text, and which stops
    only at ``max_new_tokens``: the end-of-sequence ids come with the tokenizer), and a text or chat prompt
    raises :class:`TokenizerError`.

    A model with a vision tower (:attr:`vision`; Pixtral-Llava folders) takes images beside its prompt: see
    :mod:`oxide.images` for what an image may be and where it goes.

    One model may be shared by threads: its forward passes are serialised by a lock (see
    :mod:`oxide.concurrency`); a stream holds it from its first piece until it is exhausted, closed or dropped.
    """

    def __init__(self, lm: DecoderLM, tokenizer: Tokenizer | None, chat_template: ChatTemplate | None, n_ctx: int,
                 info: LoadInfo, vision: VisionModel | None = None, parallel: int = 1) -> None:
        self.lm = lm
        self.vision = vision
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.n_ctx = n_ctx
        self.info = info
        self._lock = ModelLock(f"the model {info.source.path.name}")
        self.slots = SlotPool(lm, n_ctx, parallel)   # KV caches of n_ctx positions, allocated as needed

    @property
    def lock(self) -> ModelLock:
        """The lock every forward pass on this model runs under (a server's scheduler takes it per step)."""
        return self._lock

    @property
    def config(self) -> ModelConfig:
        return self.lm.config

    @property
    def device(self) -> torch.device:
        return self.lm.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm.dtype

    def logits(self, ids: Sequence[int], *, images: Sequence[Any] | None = None) -> torch.Tensor:
        """Float32 logits (T, vocab) of one forward over ``ids`` on a fresh cache; T = len(ids), or with
        ``images`` the length after each image placeholder is expanded to its tokens."""
        ids = list(ids)
        if not ids or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise InvalidOptionError("logits() takes a non-empty flat sequence of integer token ids")
        prompt = self._with_images(ids, _image_list(images), chat=False)
        if len(prompt.ids) > self.n_ctx:
            raise ContextOverflowError(f"{len(prompt.ids)} tokens exceed the context of {self.n_ctx}; "
                                       f"load with a larger n_ctx or pass fewer tokens")
        with self._lock:
            cache = self.lm.new_cache(len(prompt.ids))
            if prompt.embeddings is not None:
                return self.lm.forward_embeddings(prompt.embeddings, cache)[0]
            return self.lm.forward(torch.tensor([prompt.ids], device=self.device), cache)[0]

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

    def _with_images(self, ids: list[int], images: list[Any], *, chat: bool) -> PromptInput:
        """``ids`` alone without images; with them, expanded and embedded with their features
        (:func:`oxide.images.image_prompt`). A model without a vision tower raises :class:`MediaError`."""
        from .images import PromptInput, image_prompt, to_pixels
        from .models.vision.placement import ImageTokens

        if not images:
            return PromptInput(ids, None)

        if self.vision is None:
            raise MediaError(f"{self.info.source.path} takes no images: {self.info.vision}")
        if self.tokenizer is None:
            raise TokenizerError(f"{self.info.source.path} has no tokenizer.json, whose [IMG_BREAK] and [IMG_END] "
                                 f"tokens an image prompt needs; add the model's tokenizer.json to the folder")
        tokens = ImageTokens.from_tokenizer(self.tokenizer, self.vision.config.image_token_index)
        pixels = [to_pixels(image, self.vision, i) for i, image in enumerate(images)]
        with self._lock:   # the vision tower's forward, serialised like the decoder's
            return image_prompt(self.lm, self.vision, tokens, ids, pixels, bos=self.tokenizer.bos_id, chat=chat)

    def _prompt(self, prompt: Prompt, images: Sequence[Any] | None) -> PromptInput:
        """The prompt's ids (and, with images, their embeddings): images from ``images`` and chat image parts."""
        from .images import chat_images

        given = _image_list(images)
        ids = self.encode_prompt(prompt)
        chat = not isinstance(prompt, str) and bool(prompt) and isinstance(list(prompt)[0], dict)
        found = chat_images(list(prompt), given) if chat else given
        return self._with_images(ids, found, chat=chat)

    def request(self, prompt: Prompt, *, max_new_tokens: int = 256, sampling: SamplingOptions | None = None,
                stop: str | Sequence[str] | None = None, ignore_eos: bool = False,
                images: Sequence[Any] | None = None, logprobs: int | None = None) -> Request:
        """The :class:`~oxide.generate.Request` that :meth:`generate` runs: the prompt encoded and checked to fit
        the context with room for one generated token (:class:`ContextOverflowError` if not)."""
        if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
            raise InvalidOptionError(f"max_new_tokens={max_new_tokens!r} must be a non-negative integer")
        ids, embeddings = self._prompt(prompt, images)
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
        return Request(ids, max_new_tokens, sampling or SamplingOptions(), stops, ignore_eos, logprobs, embeddings)

    def _generation(self, request: Request) -> LockedStream:
        def start() -> Generation:   # runs under the lock: the slots are the model's only while it is ours
            ids = request.key_ids
            slot = self.slots.acquire(ids)
            if slot is None:
                raise ModelBusyError(f"all {self.slots.capacity} KV slots of {self.info.source.path.name} hold "
                                     f"running sequences (a server's); load the model again for this thread")
            self.slots.reuse_prefix(slot, ids)
            return Generation(self.lm, self.tokenizer, slot, request, release=self.slots.release,
                              source=str(self.info.source.path))

        return LockedStream(start, self._lock)

    def generate(self, prompt: Prompt | Sequence[Prompt], *, max_new_tokens: int = 256,
                 sampling: SamplingOptions | None = None, stop: str | Sequence[str] | None = None,
                 ignore_eos: bool = False, images: Sequence[Any] | None = None) -> Completion | list[Completion]:
        """Generate a completion of ``prompt`` (text, chat messages or token ids), seeing ``images`` (and a
        chat's image parts) when the model has a vision tower.

        A list of prompts (of strings, or of lists of messages or ids) runs them together, batched as a server
        batches its requests (:mod:`oxide.engine`, up to the model's ``parallel`` slots at once), and returns a
        list of completions in their order; each is the one that prompt would get alone (a seed included).
        """
        options = dict(max_new_tokens=max_new_tokens, sampling=sampling, stop=stop, ignore_eos=ignore_eos)
        if _is_prompt_list(prompt):
            if images:
                raise InvalidOptionError("images= goes with a single prompt; put images in each chat's "
                                         "messages to batch image prompts")
            return self._generate_batch([self.request(p, **options) for p in prompt])
        generation = self._generation(self.request(prompt, images=images, **options))
        for _ in generation:
            pass
        assert generation.completion is not None
        return generation.completion

    def _generate_batch(self, requests: list[Request]) -> list[Completion]:
        events: list[list[Event]] = [[] for _ in requests]
        with self.lock:
            engine = Engine(self.lm, self.tokenizer, self.slots, max_waiting=len(requests),
                            source=str(self.info.source.path))
            for request, sink in zip(requests, events):
                engine.submit(request, sink.append)
            while engine.busy():
                engine.step()
        for sequence in events:
            if sequence[-1].error is not None:
                raise sequence[-1].error
        return [sequence[-1].completion for sequence in events]

    def stream(self, prompt: Prompt, *, max_new_tokens: int = 256, sampling: SamplingOptions | None = None,
               stop: str | Sequence[str] | None = None, ignore_eos: bool = False,
               images: Sequence[Any] | None = None) -> LockedStream:
        """Like :meth:`generate`, yielding text pieces as they are ready (never half a UTF-8 character).

        The returned iterator's ``completion`` attribute holds the :class:`Completion` once exhausted. From its
        first piece until it is exhausted, closed (``close()``) or dropped it holds the model: other threads'
        calls wait, and this thread's raise :class:`~oxide.errors.ModelBusyError`.
        """
        return self._generation(self.request(prompt, max_new_tokens=max_new_tokens, sampling=sampling, stop=stop,
                                             ignore_eos=ignore_eos, images=images))


def load(source: str | os.PathLike[str] | None = None, *, device: str | torch.device | None = None,
         dtype: str | torch.dtype | None = None, n_ctx: int | None = None, parallel: int = 1) -> Model:
    """Load a model: a ``.gguf`` file, a Hugging Face folder or Hub id, or None for the default model (Gemma 3
    270M Q4_K_M).

    ``n_ctx``: the context of each sequence (default: the trained context, up to 8192). ``parallel``: how many
    sequences may hold a KV cache at once (:class:`~oxide.slots.SlotPool`): the width of a batched
    ``generate`` over a list of prompts, and how many earlier prompts the prefix cache keeps. Memory: up to
    ``parallel`` caches of ``n_ctx`` positions, each allocated when first needed.
    """
    from .models.builder import build_from_gguf

    if not isinstance(parallel, int) or isinstance(parallel, bool) or not 1 <= parallel <= MAX_PARALLEL:
        raise InvalidOptionError(f"parallel={parallel!r} must be an integer from 1 to {MAX_PARALLEL}")
    start = time.perf_counter()
    resolved = resolve_source(source)
    chosen = select_device(device)
    policy = choose_precision(chosen, dtype)
    if resolved.kind == "hf":
        from .models.hf import build_from_hf_dir, build_vision_from_hf_dir

        lm = build_from_hf_dir(resolved.path, chosen, policy.compute_dtype)
        vision, vision_note = build_vision_from_hf_dir(resolved.path, chosen, policy.compute_dtype)
        tokenizer = _hf_tokenizer(resolved.path)
        template, origin = ChatTemplate.from_hf_dir(resolved.path), "tokenizer_config.json / chat_template.jinja"
    else:
        gguf, lm = build_from_gguf(resolved.path, chosen, policy.compute_dtype)
        vision, vision_note = None, GGUF_NO_VISION
        tokenizer = Tokenizer.from_gguf_metadata(gguf.metadata, source=str(gguf.path))
        check_vocabulary(tokenizer.vocab_size, lm.config, str(gguf.path))
        template = ChatTemplate.from_gguf_metadata(gguf.metadata, source=str(gguf.path))
        origin = "GGUF tokenizer.chat_template"
    if template is None:
        template = fallback_template(tokenizer.special_tokens) if tokenizer is not None else None
        origin = "built-in fallback" if template is not None else "none"
    context = _context_size(lm.config, n_ctx)
    check_cache(lm.config, context, str(resolved.path))
    info = LoadInfo(resolved, device_reason(chosen, device), policy, time.perf_counter() - start, origin,
                    vision_note)
    log.info("loaded %s in %.2f s on %s (%s)", resolved.path.name, info.load_seconds, chosen, policy.compute_dtype)
    return Model(lm, tokenizer, template, context, info, vision, parallel)


def _is_prompt_list(prompt: Any) -> bool:
    """Whether ``prompt`` is several prompts: a list of strings, or of lists (each messages or ids)."""
    if isinstance(prompt, str) or not isinstance(prompt, Sequence) or not prompt:
        return False
    return all(isinstance(p, str) for p in prompt) or all(isinstance(p, Sequence) and not isinstance(p, str)
                                                            for p in prompt)


def _image_list(images: Sequence[Any] | None) -> list[Any]:
    """``images=`` as a list: None is none; a lone path or bytes is a mistake worth naming."""
    if images is None:
        return []
    if isinstance(images, (str, bytes, os.PathLike)) or not isinstance(images, Sequence):
        raise InvalidOptionError(f"images must be a list of images, got a {type(images).__name__}; "
                                 f"wrap a single image in a list")
    return list(images)


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
