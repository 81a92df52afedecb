"""Tokenizer.from_file / from_hf_dir (tokenizer.json) against transformers, on trained tokenizers of both
families LLMs use: byte-level BPE (GPT-2, Llama 3, Qwen) and SentencePiece-style BPE with byte fallback."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from tokenizers import Tokenizer as FastTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer

from oxide.errors import TokenizerError
from oxide.tokenizer import StreamDecoder, Tokenizer

CORPUS = [
    "The quick brown fox jumps over the lazy dog. Ünïcödé façade, naïve café; 東京と大阪; Привет мир; 🙂👍🏽.",
    "def f(x):\n    return x ** 2  # squares\n\tindented\ttabs   and   spaces 12345 67890",
] * 30
SAMPLES = ["Hello world", " leading space", "trailing space ", "東京 🙂👩‍👩‍👧 x", "a\n\n\tb", "12345678901234",
           "<|im_start|>user\nhi<|im_end|>", "unknown ☃ glyph ✈"]


def _write(directory: Path, family: str) -> Path:
    specials = ["<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    if family == "byte-level":
        tok = FastTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    else:
        tok = FastTokenizer(models.BPE(byte_fallback=True, unk_token=None))
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
        trainer = trainers.BpeTrainer(vocab_size=450, special_tokens=specials)
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    tok.save(str(directory / "tokenizer.json"))
    if family == "sentencepiece":   # byte-fallback pieces are ordinary vocabulary entries, as in Llama 2's file
        spec = json.loads((directory / "tokenizer.json").read_text())
        vocab = spec["model"]["vocab"]
        for byte in range(256):
            vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
        (directory / "tokenizer.json").write_text(json.dumps(spec))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "tokenizer_class": "PreTrainedTokenizerFast"}))
    (directory / "generation_config.json").write_text(json.dumps({"eos_token_id": [1, 3]}))
    return directory


@pytest.fixture(scope="module", params=["byte-level", "sentencepiece"])
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    directory = _write(tmp_path_factory.mktemp(request.param), request.param)
    return Tokenizer.from_hf_dir(directory), AutoTokenizer.from_pretrained(str(directory))


def test_encode_equals_transformers(pair) -> None:
    ours, ref = pair
    for text in SAMPLES:
        assert ours.encode(text, add_special_tokens=True) == ref(text).input_ids, text
        assert ours.encode(text) == ref(text, add_special_tokens=False).input_ids, text


def test_decode_and_stream_equal_transformers(pair) -> None:
    ours, ref = pair
    rng = random.Random(0)
    for text in SAMPLES:
        ids = ref(text).input_ids
        for skip in (False, True):
            expected = ref.decode(ids, skip_special_tokens=skip)
            assert ours.decode(ids, skip_special_tokens=skip) == expected
            stream = StreamDecoder(ours, skip_special_tokens=skip)
            pieces = [stream.push(i) for i in ids]
            assert "".join(pieces) + stream.flush() == expected
            assert all("\ufffd" not in p for p in pieces)
    if "ByteFallback" in str(ref.backend_tokenizer.decoder):
        # Arbitrary ids make invalid UTF-8: the ByteFallback decoder writes one U+FFFD per byte of an invalid run,
        # the stream (Python's incremental decoder) one per maximal invalid subpart. Only valid text is compared.
        return
    for _ in range(50):   # arbitrary ids: streaming still equals decode
        ids = [rng.randrange(ours.vocab_size) for _ in range(rng.randrange(1, 12))]
        stream = StreamDecoder(ours, skip_special_tokens=True)
        assert "".join(stream.push(i) for i in ids) + stream.flush() == ref.decode(ids, skip_special_tokens=True)


def test_special_tokens_and_flags(pair) -> None:
    ours, ref = pair
    assert ours.bos_id == ref.bos_token_id == 0
    assert ours.eos_ids == [1, 3]                  # eos_token, then generation_config.json's list
    assert ours.add_bos and not ours.add_eos
    assert ours.special_tokens["<|im_end|>"] == 3
    assert ours.vocab_size == len(ref)
    text = "<|im_start|>user"
    assert ours.encode(text)[0] == 2
    assert 2 not in ours.encode(text, parse_special=False)
    assert ours.token_to_piece(3) == "<|im_end|>"


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="tokenizer.json: missing"):
        Tokenizer.from_hf_dir(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{broken")
    with pytest.raises(TokenizerError, match="tokenizer.json: cannot be read as JSON"):
        Tokenizer.from_hf_dir(tmp_path)
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"type": "Nope"}}))
    with pytest.raises(TokenizerError, match="not a valid tokenizer.json"):
        Tokenizer.from_hf_dir(tmp_path)


def test_out_of_range_ids(pair) -> None:
    ours, _ = pair
    with pytest.raises(TokenizerError, match=f"token id {ours.vocab_size} is out of range"):
        ours.decode([0, ours.vocab_size])
    with pytest.raises(TokenizerError):
        StreamDecoder(ours).push(-1)


def test_added_token_objects_in_config(tmp_path: Path) -> None:
    """Older tokenizer_config.json files spell special tokens as AddedToken objects."""
    directory = _write(tmp_path, "byte-level")
    config = json.loads((directory / "tokenizer_config.json").read_text())
    config["eos_token"] = {"__type": "AddedToken", "content": "</s>", "special": True}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    (directory / "generation_config.json").unlink()
    assert Tokenizer.from_hf_dir(directory).eos_ids == [1]
