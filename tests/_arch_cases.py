"""Tiny random models of every registered architecture (and each RoPE scaling), as Hugging Face folders and
as GGUF files written by llama.cpp itself.

Each :class:`Case` builds a transformers model with transformers' own config and model classes: several
layers, grouped-query attention, widths that are not powers of two. The widths (768 and 512 inputs) are
multiples of 256 so that llama.cpp's K-quants can block every matrix (a row length that is not one falls
back to a non-K type). Weights are redrawn from a seeded generator: matrices ``N(0, (GAIN / sqrt(fan_in))^2)``
so the logits spread over several units whatever the width, norms ``center + N(0, 0.2^2)`` (see
:func:`randomize` for the embeddings and the head).

``hf_folder(case, root)`` saves the model with a SentencePiece ``tokenizer.model`` (the converters of
Gemma and Phi-3 read only that form). ``gguf_files(case, folder)`` converts it with llama.cpp's
``convert_hf_to_gguf.py`` to F16 and Q8_0 and quantizes the F16 file to Q4_K_M with llama.cpp's
quantizer; the three files are cached under the test cache, keyed by the folder's bytes.

Where llama.cpp's converter cannot carry what the model does, the case says so and limits the
positions compared (``gguf_tokens``; ``llama_tokens`` where llama.cpp's runtime differs from the file).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from _llama_convert import convert, quantize
from _sdist import VERSION, cache_dir
from _tiny_models import redraw_parameters
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GemmaConfig,
    GemmaForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
    Mistral3Config,
    Mistral3ForConditionalGeneration,
    MistralConfig,
    MistralForCausalLM,
    DeepseekV2Config,
    DeepseekV2ForCausalLM,
    DeepseekV3Config,
    DeepseekV3ForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    PixtralVisionConfig,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen2MoeConfig,
    Qwen2MoeForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
)

VOCAB = 300
HIDDEN = 768              # 3 x 256
FFN = 1280                # 5 x 256
TOKENS = 40               # positions compared
WINDOW = 16               # sliding window of the windowed models: TOKENS crosses it twice
GAIN = 2.0
EMBED_GAIN = 32.0         # token embeddings over the matrices' scale (see randomize)
SANDWICH_EMBED_GAIN = 8.0    # sandwich norms bound each layer's share of the residual: less is enough
DEEPSEEK_EMBED_GAIN = 48.0   # latent attention (two projections each for queries and keys) and scaled experts
                             # write more into the residual than the others' layers: more is needed, for 3
                             # layers, and sqrt(layers / 3) times that for more (each layer adds its share)
HEAD_NOISE = 0.5          # an untied head: the embedding plus this much of a matrix's noise
GGUF_KINDS = ("F16", "Q8_0", "Q4_K_M")


def _common(drop: tuple[str, ...] = (), **overrides: object) -> dict[str, object]:
    """Keyword arguments of every tiny config; ``drop``: keys the config class does not take."""
    kwargs: dict[str, object] = dict(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=2, num_attention_heads=6,
        num_key_value_heads=2, head_dim=128, rms_norm_eps=1e-6, max_position_embeddings=256,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False, attn_implementation="eager",
    )
    kwargs.update(overrides)
    return {k: v for k, v in kwargs.items() if k not in drop}


def randomize(model: PreTrainedModel, seed: int, norm_center: float, embedding_scale: float = 1.0,
              embed_gain: float = EMBED_GAIN) -> PreTrainedModel:
    """Redraw every parameter (see the module docstring); returns the float32 model in eval mode.

    Like a trained model's, each position's logits have a clear favourite, so that top-1 agreement measures
    the engines and not near-ties: token embeddings are ``embed_gain`` times larger than the matrices' scale
    (``embedding_scale``: the model's own multiplier, Gemma's sqrt(hidden)) and the
    output head is close to the embedding (tied, the final norm is scaled down by the same gain). Every value
    is then rounded to float16, so the F16 GGUF holds exactly this model.
    """
    gen = torch.Generator().manual_seed(seed)
    redraw_parameters(model, gen, norm_center, lambda fan_in: GAIN / fan_in ** 0.5)
    with torch.no_grad():
        embed, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
        gain = embed_gain / embedding_scale
        embed.mul_(gain)
        if head is embed:
            final_norm, offset = model.get_decoder().norm.weight, 1.0 - norm_center   # Gemma multiplies by 1 + w
            final_norm.copy_((offset + final_norm) / gain - offset)
        else:
            head.copy_(embed / gain + HEAD_NOISE * GAIN / head.shape[-1] ** 0.5 * torch.randn(head.shape, generator=gen))
        for param in model.parameters():
            param.copy_(param.half().float())
    return model.float().eval()


@dataclass(frozen=True)
class Case:
    """One tiny model: which registry entry its folder and its GGUF load as, and how far each format holds it."""

    name: str
    spec: str                          # registry name of the Hugging Face folder
    gguf_spec: str                     # registry name llama.cpp's GGUF is detected as
    build: Callable[[], PreTrainedModel] = field(repr=False)
    gguf_tokens: int = TOKENS          # positions over which the GGUF file holds the same model
    llama_tokens: int = TOKENS         # positions over which llama.cpp runs that model
    why: str = ""                      # the reason for a limit above
    stateful_rope: bool = False        # transformers' RoPE depends on the sequence so far (dynamic): its own
                                       # decode differs from its full forward
    bpe_pre: str | None = None         # a GPT-2 BPE vocabulary (the converter reads no other for this
                                       # architecture), recorded as this llama.cpp pre-tokenizer
    llama_differs: str = ""            # why llama.cpp's runtime computes another model from this file, if it does


def _llama(seed: int, rope: dict[str, object] | None = None, **overrides: object) -> PreTrainedModel:
    params = {"rope_theta": 10000.0, **(rope or {})}
    return randomize(LlamaForCausalLM(LlamaConfig(**_common(rope_parameters=params, **overrides))), seed, 1.0)


def build_llama3() -> PreTrainedModel:
    # original context 16: wavelengths below 4 stay, above 16 are divided by 8, between them interpolated
    return _llama(21, {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                       "original_max_position_embeddings": 16})


def build_llama_linear() -> PreTrainedModel:
    return _llama(22, {"rope_type": "linear", "factor": 4.0}, num_hidden_layers=3, tie_word_embeddings=True)


def build_llama_dynamic() -> PreTrainedModel:
    # dynamic NTK stretches past max_position_embeddings = 24 < TOKENS
    return _llama(23, {"rope_type": "dynamic", "factor": 2.0}, max_position_embeddings=24)


def _mistral_config(**overrides: object) -> MistralConfig:
    # head_dim 128 with 4 heads: the attention width (512) differs from hidden_size (768)
    return MistralConfig(**_common(num_attention_heads=4, sliding_window=WINDOW, rope_theta=50000.0, **overrides))


def build_mistral() -> PreTrainedModel:
    return randomize(MistralForCausalLM(_mistral_config(num_hidden_layers=3)), 24, 1.0)


def _tiny_vision() -> PixtralVisionConfig:
    return PixtralVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                               image_size=32, patch_size=16)


def build_pixtral() -> PreTrainedModel:
    config = LlavaConfig(vision_config=_tiny_vision(), text_config=_mistral_config(), image_token_id=VOCAB - 1)
    config._attn_implementation = "eager"
    return randomize(LlavaForConditionalGeneration(config), 25, 1.0)


def build_mistral3() -> PreTrainedModel:
    """Mistral Small 3.1's wrapper, which the registry does not name: found through its ``text_config``."""
    config = Mistral3Config(vision_config=_tiny_vision(), text_config=_mistral_config(), image_token_index=VOCAB - 1)
    config._attn_implementation = "eager"
    return randomize(Mistral3ForConditionalGeneration(config), 32, 1.0)


def build_gemma() -> PreTrainedModel:
    config = GemmaConfig(**_common(num_attention_heads=8, head_dim=96, tie_word_embeddings=True))
    return randomize(GemmaForCausalLM(config), 26, 0.0, HIDDEN ** 0.5)


def build_gemma2() -> PreTrainedModel:
    # GGUF stores no query_pre_attn_scalar: llama.cpp (and oxide) use head_dim, so the model does too
    config = Gemma2Config(**_common(num_hidden_layers=3, num_attention_heads=8, head_dim=96, query_pre_attn_scalar=96,
                                    sliding_window=WINDOW, tie_word_embeddings=True))
    return randomize(Gemma2ForCausalLM(config), 27, 0.0, HIDDEN ** 0.5, SANDWICH_EMBED_GAIN)


def build_gemma3_linear() -> PreTrainedModel:
    # Gemma 3 4B and larger: linear scaling on the full layers only; 6 layers give llama.cpp's pattern
    # (5 sliding, then 1 full), which GGUF does not store
    config = Gemma3TextConfig(**_common(
        num_hidden_layers=6, num_attention_heads=8, head_dim=96, query_pre_attn_scalar=96, sliding_window=WINDOW,
        tie_word_embeddings=True, intermediate_size=HIDDEN,
        layer_types=["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(6)],
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}}))
    return randomize(Gemma3ForCausalLM(config), 28, 0.0, HIDDEN ** 0.5, SANDWICH_EMBED_GAIN)


def build_phi3() -> PreTrainedModel:
    # LongRoPE: max 1024 over an original 256 (attention factor sqrt(1 + ln 4 / ln 256)); TOKENS < 256 use the
    # short factors, and so does llama.cpp, which picks them by its context (at least 256) instead of the
    # sequence; tests/test_rope.py covers the long ones. Every layer slides over 32 positions.
    half = 64
    config = Phi3Config(**_common(
        drop=("head_dim",), sliding_window=2 * WINDOW, original_max_position_embeddings=256,
        max_position_embeddings=1024,
        rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0,
                         "short_factor": [1.0 + 0.05 * i for i in range(half)],
                         "long_factor": [1.0 + 0.5 * i for i in range(half)],
                         "original_max_position_embeddings": 256}))
    return randomize(Phi3ForCausalLM(config), 29, 1.0)


def build_qwen2() -> PreTrainedModel:
    config = Qwen2Config(**_common(drop=("head_dim",), rope_theta=1e6, use_sliding_window=False,
                                   tie_word_embeddings=True))
    return randomize(Qwen2ForCausalLM(config), 30, 1.0)


def build_qwen3() -> PreTrainedModel:
    config = Qwen3Config(**_common(num_attention_heads=4, rope_theta=1e6, use_sliding_window=False))
    return randomize(Qwen3ForCausalLM(config), 31, 1.0)


# --- mixtures of experts: 5 experts, 2 per token (40 tokens use every one), expert widths of 512 ---------

EXPERTS = 5


def build_mixtral() -> PreTrainedModel:
    config = MixtralConfig(**_common(num_local_experts=EXPERTS, num_experts_per_tok=2, sliding_window=None,
                                     rope_theta=1e6))
    return randomize(MixtralForCausalLM(config), 32, 1.0)


def build_qwen2moe(mlp_only_layers: tuple[int, ...] = ()) -> PreTrainedModel:
    # a shared expert (768 wide) beside the routed ones; the router's top-2 is not renormalised
    config = Qwen2MoeConfig(**_common(
        drop=("head_dim",), num_hidden_layers=3, num_experts=EXPERTS, num_experts_per_tok=2, moe_intermediate_size=512,
        shared_expert_intermediate_size=HIDDEN, norm_topk_prob=False, use_sliding_window=False,
        mlp_only_layers=list(mlp_only_layers), rope_theta=1e6))
    return randomize(Qwen2MoeForCausalLM(config), 33, 1.0)


def build_qwen3moe() -> PreTrainedModel:
    config = Qwen3MoeConfig(**_common(num_attention_heads=4, num_experts=EXPERTS, num_experts_per_tok=2,
                                      moe_intermediate_size=512, norm_topk_prob=True, use_sliding_window=False,
                                      rope_theta=1e6))
    return randomize(Qwen3MoeForCausalLM(config), 34, 1.0)


# --- DeepSeek: latent attention (values narrower than query/key heads), experts in groups, a dense first layer ---

def _deepseek(config_class, model_class, seed: int, **overrides: object) -> PreTrainedModel:
    shape: dict[str, object] = dict(
        num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=192, qk_nope_head_dim=64,
        qk_rope_head_dim=32, v_head_dim=80, n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=256,
        n_shared_experts=1, first_k_dense_replace=1, rope_theta=10000.0)
    config = config_class(**_common(drop=("head_dim",), **{**shape, **overrides}))
    depth_gain = (config.num_hidden_layers / 3) ** 0.5
    model = randomize(model_class(config), seed, 1.0, embed_gain=DEEPSEEK_EMBED_GAIN * depth_gain)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, buffer in model.named_buffers():   # V3's router bias: a buffer, which randomize leaves at zero
            if name.endswith("e_score_correction_bias"):
                buffer.copy_((0.1 * torch.randn(buffer.shape, generator=gen)).half().float())
    return model


def build_deepseek_v2() -> PreTrainedModel:
    # V2: queries through a latent, softmax router over every expert, the picked weights scaled
    return _deepseek(DeepseekV2Config, DeepseekV2ForCausalLM, 35, q_lora_rank=256, topk_method="greedy",
                     routed_scaling_factor=1.5)


def build_deepseek_v2_grouped() -> PreTrainedModel:
    # V2's group-limited softmax router: only experts in the best 2 of 4 groups, each ranked by its best expert
    return _deepseek(DeepseekV2Config, DeepseekV2ForCausalLM, 38, q_lora_rank=256, topk_method="group_limited_greedy",
                     n_group=4, topk_group=2)


def build_deepseek_v2_lite() -> PreTrainedModel:
    # V2-Lite: a plain query projection, a softmax router over every expert. llama.cpp reads a file without a
    # query latent only as V2-Lite, which it knows by its 26 or 27 layers: 26 narrow ones
    return _deepseek(DeepseekV2Config, DeepseekV2ForCausalLM, 37, q_lora_rank=None, topk_method="greedy",
                     num_hidden_layers=26, hidden_size=256, intermediate_size=512, num_attention_heads=2,
                     num_key_value_heads=2, kv_lora_rank=64, moe_intermediate_size=128)


def build_deepseek_v3() -> PreTrainedModel:
    # V3: queries through a latent, sigmoid router with correction bias in groups, renormalised and scaled (by
    # 1.5, not V3's 2.5: with renormalised weights that much makes the two routed experts outweigh the rest of
    # this tiny model, and 8-bit rounding that flips a near-tied routing decision then moves the prediction);
    # YaRN (16 x an original context of 16) with DeepSeek's mscales, which scale the softmax too
    yarn = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 16.0, "original_max_position_embeddings": 16,
            "mscale": 0.707, "mscale_all_dim": 0.707, "beta_fast": 32, "beta_slow": 1}
    # (scoring_func, which transformers implies, is written as DeepSeek's own config.json has it, so that
    # llama.cpp's converter records the sigmoid gating)
    return _deepseek(DeepseekV3Config, DeepseekV3ForCausalLM, 36, q_lora_rank=256, n_group=4, topk_group=2,
                     norm_topk_prob=True, routed_scaling_factor=1.5, rope_parameters=yarn, scoring_func="sigmoid",
                     topk_method="noaux_tc")


_MISTRAL_WINDOW = ("llama.cpp's converter writes Mistral as llama without its sliding window, so the file "
                   "holds the model within the window only")
CASES: dict[str, Case] = {c.name: c for c in (
    Case("llama-llama3", "llama", "llama", build_llama3),
    Case("llama-linear", "llama", "llama", build_llama_linear),
    Case("llama-dynamic", "llama", "llama", build_llama_dynamic, gguf_tokens=24, llama_tokens=24,
         why="llama.cpp has no dynamic NTK RoPE and its converter drops it: the file is plain RoPE, the same "
             "model up to max_position_embeddings", stateful_rope=True),
    Case("mistral", "mistral", "llama", build_mistral, gguf_tokens=WINDOW, llama_tokens=WINDOW, why=_MISTRAL_WINDOW),
    Case("pixtral", "pixtral", "llama", build_pixtral, gguf_tokens=WINDOW, llama_tokens=WINDOW, why=_MISTRAL_WINDOW),
    Case("gemma", "gemma", "gemma", build_gemma),
    Case("gemma2", "gemma2", "gemma2", build_gemma2),
    Case("gemma3-linear", "gemma3", "gemma3", build_gemma3_linear),
    Case("phi3", "phi3", "phi3", build_phi3, llama_tokens=2 * WINDOW,
         why="llama.cpp disables Phi-3's sliding window (it logs 'Phi SWA is currently disabled')"),
    Case("qwen2", "qwen2", "qwen2", build_qwen2),
    Case("qwen3", "qwen3", "qwen3", build_qwen3),
    Case("mixtral", "mixtral", "mixtral", build_mixtral),
    Case("qwen2moe", "qwen2moe", "qwen2moe", build_qwen2moe, bpe_pre="qwen2"),
    Case("qwen3moe", "qwen3moe", "qwen3moe", build_qwen3moe, bpe_pre="qwen2"),
    Case("deepseek-v2", "deepseek", "deepseek", build_deepseek_v2, bpe_pre="deepseek-v3"),
    Case("deepseek-v3", "deepseek", "deepseek", build_deepseek_v3, bpe_pre="deepseek-v3"),
    Case("deepseek-v2-grouped", "deepseek", "deepseek", build_deepseek_v2_grouped, bpe_pre="deepseek-v3",
         llama_differs="llama.cpp ranks the groups of every grouped router by their two best experts (V3's rule), "
                       "V2's group_limited_greedy by the best one"),
    Case("deepseek-v2-lite", "deepseek", "deepseek", build_deepseek_v2_lite, bpe_pre="deepseek-v3"),
)}


def write_sentencepiece_vocab(folder: Path, size: int = VOCAB) -> None:
    """A SentencePiece ``tokenizer.model``: <unk>, <s>, </s>, then one normal piece per remaining id."""
    from sentencepiece import sentencepiece_model_pb2 as spm

    proto = spm.ModelProto()
    proto.trainer_spec.model_type = spm.TrainerSpec.BPE
    proto.trainer_spec.unk_id, proto.trainer_spec.bos_id, proto.trainer_spec.eos_id = 0, 1, 2
    proto.trainer_spec.pad_id = -1
    proto.trainer_spec.vocab_size = size
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = True
    unknown, control, normal = 2, 3, 1          # SentencePiece piece types
    for piece, kind in (("<unk>", unknown), ("<s>", control), ("</s>", control), ("<|endoftext|>", control)):
        proto.pieces.add(piece=piece, score=0.0, type=kind)
    for i in range(4, size):
        proto.pieces.add(piece=f"\u2581t{i}", score=-float(i), type=normal)
    (folder / "tokenizer.model").write_bytes(proto.SerializeToString())


def write_bpe_vocab(folder: Path, size: int = VOCAB) -> None:
    """A GPT-2 style byte-level BPE ``tokenizer.json`` of exactly ``size`` tokens (the 256 bytes, three
    specials, merges learnt from a fixed text), with the ``tokenizer_config.json`` that AutoTokenizer reads."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    text = [f"token {i} of the tiny vocabulary, counted {i * 7 % 13} times" for i in range(400)]
    tokenizer.train_from_iterator(text, trainers.BpeTrainer(
        vocab_size=size, special_tokens=["<|endoftext|>", "<s>", "</s>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    assert tokenizer.get_vocab_size() == size, tokenizer.get_vocab_size()
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        '{"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>"}')


def hf_folder(model: PreTrainedModel, folder: Path, *, bpe: bool = False) -> Path:
    """Save ``model`` (safetensors) and a vocabulary into ``folder``: SentencePiece, or with ``bpe`` a GPT-2
    style byte-level BPE."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    (write_bpe_vocab if bpe else write_sentencepiece_vocab)(folder)
    return folder


def _folder_key(folder: Path) -> str:
    digest = hashlib.sha256(f"llama.cpp {VERSION}".encode())
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix in (".json", ".safetensors", ".model"):
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def gguf_files(case: Case, folder: Path) -> dict[str, Path]:
    """kind (``GGUF_KINDS``) -> the GGUF of ``folder`` written by llama.cpp; cached by the folder's bytes."""
    root = cache_dir() / "tiny-gguf" / f"{case.name}-{_folder_key(folder)}"
    if not root.is_dir():                          # the case changed: drop its older files
        for stale in root.parent.glob(f"{case.name}-*"):
            if stale.name.rsplit("-", 1)[0] == case.name:
                shutil.rmtree(stale, ignore_errors=True)
        root.mkdir(parents=True)
    paths = {kind: root / f"{case.name}-{kind}.gguf" for kind in GGUF_KINDS}
    steps = {"F16": lambda out: convert(folder, out, "f16", bpe_pre=case.bpe_pre),
             "Q8_0": lambda out: convert(folder, out, "q8_0", bpe_pre=case.bpe_pre),
             "Q4_K_M": lambda out: quantize(paths["F16"], out, "Q4_K_M", nthread=2)}
    for kind in GGUF_KINDS:                        # F16 before the quantization that reads it
        if not paths[kind].is_file():
            fd, tmp = tempfile.mkstemp(dir=root, suffix=".gguf.tmp")
            os.close(fd)
            try:
                steps[kind](Path(tmp))
                os.replace(tmp, paths[kind])       # complete files only, even with concurrent runs
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
    return paths


@torch.no_grad()
def hf_decode_logits(model: PreTrainedModel, ids: torch.Tensor, steps: list[tuple[int, int]]) -> torch.Tensor:
    """transformers' own decode through its KV cache: float32 logits (1, T, V) of ``ids`` fed as the slices
    ``steps`` (start, stop)."""
    from transformers import DynamicCache

    cache, out = DynamicCache(config=model.config), []
    with warnings.catch_warnings():      # transformers 5 renames past_key_values; 4.x knows only that name
        warnings.simplefilter("ignore", FutureWarning)
        for start, stop in steps:
            out.append(model(input_ids=ids[:, start:stop], past_key_values=cache, use_cache=True).logits.float())
    return torch.cat(out, dim=1)
