"""Hugging Face model directories: config.json + safetensors + tokenizer.json, against transformers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer

import oxide
from oxide.registry import ARCHITECTURES

from _tiny_models import TINY_MODELS, VOCAB, hf_logits, random_ids

CORPUS = ["The quick brown fox jumps over the lazy dog. Ünïcödé, 東京, 🙂 and code: x = f(1, 2)."] * 40


def _write_tokenizer(directory: Path) -> None:
    """A byte-level BPE tokenizer.json (GPT-2 / Llama 3 style) that fits the tiny vocabulary."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "tokenizer_class": "PreTrainedTokenizerFast"}))


@pytest.fixture(scope="module", params=[spec.name for spec in ARCHITECTURES if spec.name in TINY_MODELS])
def model_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    hf = TINY_MODELS[request.param].build()
    directory = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(directory, safe_serialization=True)
    _write_tokenizer(directory)
    return hf, directory


def test_logits_equal_transformers(model_dir) -> None:
    hf, directory = model_dir
    model = oxide.load(directory, device="cpu")
    ids = random_ids(24, seed=5)
    ours = model.logits(ids[0].tolist())
    ref = hf_logits(hf, ids)[0]
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-4 * ref.abs().max().item())


def test_tokenizer_and_generation(model_dir) -> None:
    hf, directory = model_dir
    model = oxide.load(directory, device="cpu")
    reference = AutoTokenizer.from_pretrained(str(directory))
    text = "The lazy fox, 東京 🙂 x = f(2)"
    assert model.encode_prompt(text) == reference(text).input_ids
    done = model.generate(text, max_new_tokens=6, sampling=oxide.SamplingOptions.greedy(), ignore_eos=True)
    prompt = torch.tensor([reference(text).input_ids])
    with torch.no_grad():   # the mask is explicit: this vocabulary's BOS id equals the model's pad id
        expected = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6, do_sample=False,
                               eos_token_id=None)[0, prompt.shape[1]:].tolist()
    assert done.token_ids == expected
    assert done.text == reference.decode(expected)


def test_unsupported_hf_architecture(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["AlienForCausalLM"], "model_type": "alien"}))
    with pytest.raises(oxide.UnsupportedArchitecture, match="AlienForCausalLM.*supported architectures: .*gemma3"):
        oxide.load(tmp_path)


def test_missing_weights(tmp_path: Path) -> None:
    hf = TINY_MODELS["llama"].build()
    hf.config.save_pretrained(tmp_path)
    with pytest.raises(oxide.ModelFormatError, match="model.safetensors"):
        oxide.load(tmp_path)


def test_info_describes_a_directory(model_dir, capsys: pytest.CaptureFixture[str]) -> None:
    from oxide.cli import main

    hf, directory = model_dir
    assert main(["info", str(directory)]) == 0
    out = capsys.readouterr().out
    assert f"architecture:  {hf.config.model_type.replace('_text', '')}" in out
    assert "F32" in out and f"num_hidden_layers          {hf.config.num_hidden_layers}" in out


@pytest.fixture(scope="module")
def weights_only_dir(tmp_path_factory: pytest.TempPathFactory):
    """A Llama folder with config.json and safetensors and no tokenizer files."""
    hf = TINY_MODELS["llama"].build()
    directory = tmp_path_factory.mktemp("weights-only")
    hf.save_pretrained(directory, safe_serialization=True)
    return hf, directory


def test_folder_without_tokenizer_loads_for_token_ids(weights_only_dir, caplog: pytest.LogCaptureFixture) -> None:
    hf, directory = weights_only_dir
    with caplog.at_level("WARNING", logger="oxide.load"):
        model = oxide.load(directory, device="cpu")
    assert model.tokenizer is None and model.chat_template is None
    assert any("no tokenizer.json" in r.getMessage() and str(directory) in r.getMessage() for r in caplog.records)

    ids = random_ids(12, seed=8)
    expected = hf_logits(hf, ids)[0]
    torch.testing.assert_close(model.logits(ids[0].tolist()), expected, rtol=0, atol=1e-4 * expected.abs().max().item())
    done = model.generate(ids[0].tolist(), max_new_tokens=5, sampling=oxide.SamplingOptions.greedy())
    with torch.no_grad():
        greedy = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False,
                             eos_token_id=None)[0, ids.shape[1]:].tolist()
    assert done.token_ids == greedy and done.text == "" and done.finish_reason == "length"
    assert list(model.stream(ids[0].tolist(), max_new_tokens=3)) == []


@pytest.mark.parametrize("prompt", ["Hello", [{"role": "user", "content": "Hello"}]], ids=["text", "chat"])
def test_folder_without_tokenizer_refuses_text(weights_only_dir, prompt) -> None:
    _, directory = weights_only_dir
    model = oxide.load(directory, device="cpu")
    with pytest.raises(oxide.TokenizerError, match=f"{directory}.*no tokenizer.*tokenizer.json.*token ids"):
        model.generate(prompt, max_new_tokens=2)
    with pytest.raises(oxide.TokenizerError, match="stop strings need a tokenizer"):
        model.generate([5, 6], max_new_tokens=2, stop=["x"])
