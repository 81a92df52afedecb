"""Reference outputs of the real model from transformers (f32, dequantized) and llama.cpp.

Building them costs about a minute (transformers' GGUF load dominates), so they are computed once and
cached under the test cache, keyed by the model file's SHA-256 and the texts. The cache file is
written to a temporary name and renamed, so an interrupted run never leaves a partial file.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

# Varied texts: prose, code, digits, several scripts. LONG crosses Gemma 3's 512-token sliding window.
TEXTS = (
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined "
    "movable metal type, oil-based ink and a wooden screw press into a system that could produce books quickly.",
    "def fibonacci(n: int) -> list[int]:\n    seq = [0, 1]\n    while len(seq) < n:\n        seq.append(seq[-1] + "
    "seq[-2])\n    return seq[:n]\n\nprint(fibonacci(10))  # [0, 1, 1, 2, 3, 5, 8, 13, 21, 34]\n",
    "In 2023 the population was 8,045,311,447 people; by 2050 it may reach 9.7 billion, while the median age "
    "rises from 30.5 to 36.1 years.",
    "Paris est la capitale de la France. Берлин — столица Германии. 東京は日本の首都です。 "
    "La ciudad de México es enorme.",
)
LONG = " ".join(f"Item {i}: the {word} is placed on shelf {i % 7} next to the {other}." for i, (word, other) in
                enumerate(zip(["lamp", "book", "clock", "vase", "pen", "cup", "map", "key"] * 5,
                              ["chair", "desk", "bed", "door", "rug", "box", "fan", "jar"] * 12)))
LONG_TAIL = 64                    # positions of LONG whose reference logits are kept (all past the window)
GREEDY_PROMPTS = ("The capital of France is", "Once upon a time, in a small village,")
GREEDY_TOKENS = 16


@dataclass
class References:
    ids: list[list[int]]               # BOS + llama.cpp's tokenization of each text (TEXTS..., LONG)
    hf_logits: list[torch.Tensor]      # float32 (positions, vocab); for LONG only the last LONG_TAIL
    llama_top1: list[torch.Tensor]     # llama.cpp's argmax at the same positions
    greedy_prompt_ids: list[list[int]]
    greedy_hf: list[list[int]]         # transformers' greedy continuation ids
    greedy_hf_margins: list[list[float]]   # at each of its steps, transformers' top-1 minus top-2 logit
    llama_hf_top1: float               # llama.cpp's top-1 agreement with transformers over the same positions
    llama_hf_mean_kl: float            # and its mean KL(transformers || llama.cpp)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_references(model_path: Path, cache_dir: Path) -> References:
    fields = tuple(References.__dataclass_fields__)   # a new field is a new cache file
    key = hashlib.sha256(repr((TEXTS, LONG, LONG_TAIL, GREEDY_PROMPTS, GREEDY_TOKENS, fields)).encode()).hexdigest()[:12]
    cached = cache_dir / f"gemma-references-{file_sha256(model_path)[:16]}-{key}.pt"
    if cached.exists():
        return References(**torch.load(cached))
    refs = _build(model_path)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(vars(refs), tmp)
        os.replace(tmp, cached)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return refs


def _build(model_path: Path) -> References:
    import llama_cpp
    from transformers import AutoModelForCausalLM

    llm = llama_cpp.Llama(str(model_path), n_ctx=2048, n_threads=2, logits_all=True, verbose=False)
    ids = [llm.tokenize(text.encode(), add_bos=True, special=False) for text in (*TEXTS, LONG)]
    assert len(ids[-1]) > 512 + LONG_TAIL, "LONG must cross the sliding window"
    keep = [slice(None)] * len(TEXTS) + [slice(-LONG_TAIL, None)]
    llama_logprobs = []
    for seq, sl in zip(ids, keep):
        llm.reset()
        llm.eval(seq)
        llama_logprobs.append(torch.from_numpy(llm.scores[: len(seq)])[sl].float().log_softmax(-1))
    llama_top1 = [logprobs.argmax(-1) for logprobs in llama_logprobs]
    greedy_prompt_ids = [llm.tokenize(p.encode(), add_bos=True, special=False) for p in GREEDY_PROMPTS]
    del llm

    hf = AutoModelForCausalLM.from_pretrained(str(model_path.parent), gguf_file=model_path.name,
                                              dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        hf_logits = [hf(torch.tensor([seq])).logits[0, sl].float().clone() for seq, sl in zip(ids, keep)]
        runs = [hf.generate(torch.tensor([p]), max_new_tokens=GREEDY_TOKENS, do_sample=False, output_scores=True,
                            return_dict_in_generate=True) for p in greedy_prompt_ids]
    greedy_hf = [run.sequences[0, len(p):].tolist() for run, p in zip(runs, greedy_prompt_ids)]
    greedy_hf_margins = [[float(top[0] - top[1]) for top in (step[0].topk(2).values for step in run.scores)]
                         for run in runs]
    hits = sum(int((h.argmax(-1) == l).sum()) for h, l in zip(hf_logits, llama_top1))
    llama_hf_top1 = hits / sum(len(l) for l in llama_top1)
    llama_hf_mean_kl = float(torch.cat([mean_kl_terms(h, l) for h, l in zip(hf_logits, llama_logprobs)]).mean())
    return References(ids, hf_logits, llama_top1, greedy_prompt_ids, greedy_hf, greedy_hf_margins, llama_hf_top1,
                      llama_hf_mean_kl)


def mean_kl_terms(reference_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(reference || ours) per position: (positions, vocab) logits or log-probabilities -> (positions,)."""
    return torch.nn.functional.kl_div(logits.log_softmax(-1), reference_logits.log_softmax(-1), log_target=True,
                                      reduction="none").sum(-1)
