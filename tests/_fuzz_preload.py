"""Imported once by the fuzz campaign's fork server, so that each child it forks starts with oxide, torch and
every module a mutant may reach already imported (a fresh child then costs a fork, not seconds of imports)."""

import oxide.api  # noqa: F401
import oxide.models.builder  # noqa: F401
import oxide.models.hf  # noqa: F401
from oxide.models.arch import deepseek, gemma, gemma3, llama, phi3, qwen  # noqa: F401
from oxide.tokenizer import bpe, hf, spm, ugm, wpm  # noqa: F401

import _fuzz  # noqa: F401
