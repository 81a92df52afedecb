"""Chat templates stored in GGUF files, wired through oxide.load and generate(messages): special tokens
recognised whole, one BOS whatever the template writes, generation stopping at the end of the turn."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import gguf
import pytest

import oxide
from oxide.chat import ChatTemplate
from oxide.weights.gguf import read_metadata

from _sdist import llama_cpp_models_dir
from _tiny_models import TINY_MODELS, write_gguf

SPECIALS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "Blue."}, {"role": "user", "content": "Another?"}]
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _vocab(add_bos: bool, templates: dict[str, str]) -> Callable[[gguf.GGUFWriter, int], None]:
    """A SentencePiece vocabulary that can spell any text: specials, the 256 byte tokens, a few pieces."""

    def write(writer: gguf.GGUFWriter, size: int) -> None:
        pieces = [f"\u2581{w}" for w in ("the", "a", "colour", "Blue", "user", "system", "assistant")]
        tokens = SPECIALS + [f"<0x{b:02X}>" for b in range(256)] + pieces
        tokens += [f"\u2581pad{i}" for i in range(size - len(tokens))]
        types = [gguf.TokenType.UNKNOWN] + [gguf.TokenType.CONTROL] * 4 + [gguf.TokenType.BYTE] * 256
        types += [gguf.TokenType.NORMAL] * (size - len(types))
        writer.add_tokenizer_model("llama")
        writer.add_token_list(tokens)
        writer.add_token_scores([0.0] * 261 + [-1.0] * (size - 261))
        writer.add_token_types(types)
        writer.add_unk_token_id(0)
        writer.add_bos_token_id(1)
        writer.add_eos_token_id(2)
        writer.add_add_bos_token(add_bos)
        writer.add_add_space_prefix(False)
        writer.add_chat_template(templates.get("default", ""))
        for name, source in templates.items():
            if name != "default":
                writer.add_string(f"tokenizer.chat_template.{name}", source)

    return write


def _model(tmp_path: Path, add_bos: bool, templates: dict[str, str]) -> oxide.Model:
    path = write_gguf(TINY_MODELS["llama"].build(), tmp_path / "chat.gguf", vocab=_vocab(add_bos, templates))
    return oxide.load(path, device="cpu")


def _template(name: str) -> str:
    return (llama_cpp_models_dir() / "templates" / name).read_text(encoding="utf-8")


@pytest.mark.slow   # llama.cpp's templates come with the llama-cpp-python sdist
def test_chatml_template_from_the_file(tmp_path: Path) -> None:
    model = _model(tmp_path, add_bos=False, templates={"default": _template("Qwen-Qwen2.5-7B-Instruct.jinja")})
    assert model.chat_template.name == f"{model.info.source.path}: tokenizer.chat_template"
    assert model.info.template_origin == "GGUF tokenizer.chat_template"
    ids = model.encode_prompt(MESSAGES)
    text = model.chat_template.render(MESSAGES, add_generation_prompt=True, bos_token="<s>", eos_token="</s>")
    assert text.startswith("<|im_start|>system\nYou are terse.<|im_end|>\n") and text.endswith("<|im_start|>assistant\n")
    assert ids == model.tokenizer.encode(text)
    assert ids.count(3) == 5 and ids.count(4) == 4 and 1 not in ids    # whole specials; no BOS for ChatML
    assert 4 in model.tokenizer.eos_ids                                  # the turn ends generation


@pytest.mark.slow
def test_template_that_writes_bos_gives_one_bos(tmp_path: Path) -> None:
    model = _model(tmp_path, add_bos=True, templates={"default": _template("meta-llama-Llama-3.1-8B-Instruct.jinja")})
    ids = model.encode_prompt(MESSAGES)
    assert ids[0] == 1 and ids.count(1) == 1
    (tmp_path / "plain").mkdir()
    plain = _model(tmp_path / "plain", add_bos=True, templates={"default": "{% for m in messages %}{{ m['content'] }}"
                                                                          "\n{% endfor %}"})
    ids = plain.encode_prompt(MESSAGES)
    assert ids[0] == 1 and ids.count(1) == 1                            # added when the template does not


def test_named_variants_and_errors(tmp_path: Path) -> None:
    templates = {"default": "{{ messages[0]['content'] }}", "tool_use": "{{ raise_exception('no tools here') }}"}
    model = _model(tmp_path, add_bos=False, templates=templates)
    metadata = read_metadata(model.info.source.path)
    variant = ChatTemplate.from_gguf_metadata(metadata, "tool_use")
    assert variant.name == "tokenizer.chat_template.tool_use"
    with pytest.raises(oxide.TemplateError, match=r"tokenizer\.chat_template\.tool_use.*no tools here"):
        variant.render(MESSAGES)
    assert model.generate(MESSAGES, max_new_tokens=2, sampling=oxide.SamplingOptions.greedy()).stats.prompt_tokens > 0


def test_generation_stops_at_the_end_of_turn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A few tokens are generated, then the end-of-turn token ends the completion: it is neither kept nor
    shown, and the reason is "stop". The tiny model's weights are random, so the token that ends the turn is
    declared: the vocabulary is told that the greedy continuation's fourth new token is an end of turn."""
    model = _model(tmp_path, add_bos=False, templates={"default": CHATML})
    greedy = oxide.SamplingOptions.greedy()
    free = model.generate(MESSAGES, max_new_tokens=12, sampling=greedy, ignore_eos=True).token_ids
    assert len(free) == 12
    at = next(k for k in range(3, len(free)) if free[k] not in free[:k])   # its first occurrence
    monkeypatch.setattr(model.tokenizer.vocab, "eog_ids", [4, free[at]])   # as if it were <|im_end|>
    done = model.generate(MESSAGES, max_new_tokens=12, sampling=greedy)
    assert done.token_ids == free[:at] and len(done.token_ids) >= 3
    assert done.finish_reason == "stop"
    assert done.text == model.tokenizer.decode(free[:at], skip_special_tokens=True)
    stream = model.stream(MESSAGES, max_new_tokens=12, sampling=greedy)
    assert "".join(stream) == done.text and stream.completion.token_ids == free[:at]
