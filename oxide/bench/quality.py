"""Quality figures from saved logits: perplexity, and KL divergence and top-1 agreement against a reference.

Logits files are ``(positions, vocab)`` float32 ``.npy`` arrays written by the workers. They are read
memory-mapped, a block of rows at a time, so that a 262k-token vocabulary stays affordable.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import ModelFormatError

ROWS_PER_BLOCK = 32


def _log_probs(logits: np.ndarray) -> torch.Tensor:
    """Log-softmax in float64, so that the KL of near-identical rows is not lost to rounding."""
    return torch.log_softmax(torch.from_numpy(np.array(logits, dtype=np.float64)), dim=-1)


def perplexity(logits_path: Path, ids: Sequence[int]) -> float:
    """``exp`` of the mean negative log-likelihood of ``ids[1:]``, each predicted from the positions before it."""
    logits = np.load(logits_path, mmap_mode="r")
    targets = torch.tensor(list(ids[1:]))
    total = 0.0
    for start in range(0, len(targets), ROWS_PER_BLOCK):
        rows = _log_probs(logits[start:start + ROWS_PER_BLOCK])[:len(targets) - start]
        total -= float(rows.gather(1, targets[start:start + len(rows), None]).sum())
    return float(np.exp(total / len(targets)))


def agreement(logits_path: Path, reference_path: Path) -> dict[str, float]:
    """Mean and max KL(reference || engine) per position (nats), and the share of positions where both
    engines' most likely tokens agree."""
    logits = np.load(logits_path, mmap_mode="r")
    reference = np.load(reference_path, mmap_mode="r")
    if logits.shape != reference.shape:
        raise ModelFormatError(f"logits of shape {logits.shape} cannot be compared with the reference's "
                               f"{reference.shape}: the engines disagree on the vocabulary size")
    kls: list[torch.Tensor] = []
    same_top1 = 0
    for start in range(0, logits.shape[0], ROWS_PER_BLOCK):
        mine = _log_probs(logits[start:start + ROWS_PER_BLOCK])
        ref = _log_probs(reference[start:start + ROWS_PER_BLOCK])
        kls.append((ref.exp() * (ref - mine)).sum(-1).clamp_min(0.0))   # >= 0 but for the last rounding
        same_top1 += int((mine.argmax(-1) == ref.argmax(-1)).sum())
    kl = torch.cat(kls)
    return {"kl_mean": float(kl.mean()), "kl_max": float(kl.max()), "top1_agreement": same_top1 / logits.shape[0]}
