"""A random-weight, Llama-shaped model of about 1.1B parameters as a Q4_K_M GGUF, written by llama.cpp's tools.

    python benchmarks/make_llama_1b.py [--out PATH] [--seed 0]

It gives the benchmark a second, larger point beside Gemma 3 270M to show how prefill and decode
scale. The shape is TinyLlama 1.1B's: hidden 2048, 22 layers, 32 heads with 4 KV heads (head dim
64), MLP 5632, vocabulary 32000, RoPE theta 10000, untied output head. Nothing of oxide writes it:

1. transformers builds ``LlamaForCausalLM`` from a ``LlamaConfig``; every matrix is then redrawn
   from a normal distribution (std 0.02, a seeded ``torch.Generator``, so runs are reproducible)
   and the RMSNorm gains are 1. It is saved in float16 with ``save_pretrained(safe_serialization=True)``.
2. The vocabulary is Llama 2's SentencePiece vocabulary (32000 pieces with their scores and types),
   read from ``ggml-vocab-llama-spm.gguf`` in the llama-cpp-python sdist and written as the
   ``tokenizer.model`` that the converter looks for first: ``LlamaModel.set_vocab`` loads it with
   sentencepiece (GGUF ``tokenizer.ggml.model = llama``, ``pre = default``). That route involves no
   BPE pre-tokenizer hash, which only the ``tokenizer.json``/gpt2 route checks. BOS 1 and EOS 2
   come from ``config.json``.
3. llama.cpp's ``convert_hf_to_gguf.py`` from the same sdist writes an f16 GGUF.
4. llama.cpp's quantizer (``llama_cpp.llama_model_quantize``) makes it Q4_K_M.

Intermediates live in a temporary folder beside the output and are deleted; the output appears
only when complete, and an existing output is reused. Peak memory is about 5 GB (the model built
in float32 once). Needs torch, transformers, llama-cpp-python, sentencepiece and protobuf.
"""

from __future__ import annotations

import argparse
import collections
import gc
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _llama_convert import convert, quantize  # noqa: E402
from _sdist import llama_cpp_models_dir  # noqa: E402

DEFAULT_OUT = Path.home() / ".cache" / "oxide-bench" / "llama-1b-random-q4_k_m.gguf"
VOCAB = "llama-spm"   # ggml-vocab-<VOCAB>.gguf: Llama 2's 32000-piece SentencePiece vocabulary
WEIGHT_STD = 0.02


@contextmanager
def _step(name: str) -> Iterator[None]:
    """Print how long the step ``name`` took."""
    start = time.perf_counter()
    yield
    print(f"{name}: {time.perf_counter() - start:.1f} s", flush=True)


def write_tokenizer_model(vocab_gguf: Path, out: Path) -> int:
    """Write the SentencePiece vocabulary held in ``vocab_gguf`` as ``out`` (a ``tokenizer.model``).

    Returns the number of pieces. GGUF token types use SentencePiece's numbering (normal 1,
    unknown 2, control 3, user-defined 4, unused 5, byte 6), so they are copied as they are.
    """
    from gguf import GGUFReader
    from sentencepiece import sentencepiece_model_pb2 as spm

    reader = GGUFReader(vocab_gguf)

    def field(key: str) -> Any:
        return reader.fields[f"tokenizer.ggml.{key}"].contents()

    if field("model") != "llama":
        raise ValueError(f"{vocab_gguf} is not a SentencePiece ('llama') vocabulary")
    proto = spm.ModelProto()
    proto.trainer_spec.model_type = spm.TrainerSpec.BPE
    proto.trainer_spec.byte_fallback = True
    proto.trainer_spec.unk_id = field("unknown_token_id")
    proto.trainer_spec.bos_id = field("bos_token_id")
    proto.trainer_spec.eos_id = field("eos_token_id")
    proto.trainer_spec.pad_id = -1
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = True
    proto.normalizer_spec.remove_extra_whitespaces = False
    for piece, score, kind in zip(field("tokens"), field("scores"), field("token_type"), strict=True):
        proto.pieces.add(piece=piece, score=score, type=kind)
    proto.trainer_spec.vocab_size = len(proto.pieces)
    out.write_bytes(proto.SerializeToString())
    return len(proto.pieces)


def write_hf_model(folder: Path, vocab_size: int, seed: int) -> int:
    """Save the random float16 ``LlamaForCausalLM`` into ``folder``; returns its parameter count."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
        num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048, rope_theta=10000.0,
        rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
    )
    model = LlamaForCausalLM(config).to(torch.float16)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 2:
                param.normal_(0.0, WEIGHT_STD, generator=generator)
            else:   # RMSNorm gains
                param.fill_(1.0)
    model.save_pretrained(folder, safe_serialization=True)
    return sum(p.numel() for p in model.parameters())


def describe(path: Path) -> None:
    """Print the architecture, size, parameter count and tensor types of the GGUF file ``path``."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    types = collections.Counter(t.tensor_type.name for t in reader.tensors)
    params = sum(int(t.n_elements) for t in reader.tensors)
    arch = reader.fields["general.architecture"].contents()
    print(f"{path}: {path.stat().st_size / 1e6:.0f} MB, architecture {arch}, {params / 1e9:.3f}B parameters, "
          f"tensors {dict(types.most_common())}")


def make_llama_1b(out: Path = DEFAULT_OUT, seed: int = 0) -> Path:
    """Write the model to ``out`` unless it is already there; returns ``out``."""
    if out.is_file():
        print(f"reusing {out}")
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".make-llama-1b-", dir=out.parent) as tmp:
        hf_dir = Path(tmp) / "llama-1b-random"   # the converter names the model after its folder
        hf_dir.mkdir()
        with _step("tokenizer.model"):
            vocab_size = write_tokenizer_model(llama_cpp_models_dir() / f"ggml-vocab-{VOCAB}.gguf",
                                               hf_dir / "tokenizer.model")
        with _step("random HF model"):
            params = write_hf_model(hf_dir, vocab_size, seed)
            gc.collect()
        print(f"  {params / 1e9:.3f}B parameters")
        f16 = Path(tmp) / "model-f16.gguf"
        with _step("convert_hf_to_gguf (f16)"):
            convert(hf_dir, f16, "f16")
        partial = Path(tmp) / out.name
        with _step("quantize (Q4_K_M)"):
            quantize(f16, partial, "Q4_K_M")
        partial.replace(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output GGUF (default {DEFAULT_OUT})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args()
    describe(make_llama_1b(args.out.expanduser(), args.seed))


if __name__ == "__main__":
    main()
