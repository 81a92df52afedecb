"""``oxide bench --compare`` end to end on a tiny GGUF written by llama.cpp's own converter.

The runs are tiny (16-token prompt, 4 generated tokens, one repeat), so only the shape of the outputs
is checked (every engine measured, figures present and sane, files written), never a speed.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from _llama_convert import convert

from oxide.bench.harness import EngineResult, benchmark_text, run_worker, skip_reason
from oxide.bench.report import machine_info, markdown
from oxide.cli import main

SPECIALS = ["<unk>", "<s>", "</s>"]
ENGINES = ["oxide", "llama.cpp", "transformers"]


def _write_tokenizer(folder: Path) -> int:
    """A SentencePiece-style byte-fallback BPE trained on the benchmark text (what llama.cpp's converter
    reads as a ``llama`` vocabulary); returns its size."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers

    def blank(model: models.Model) -> Tokenizer:
        tok = Tokenizer(model)
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
        return tok

    trained = blank(models.BPE(unk_token="<unk>", byte_fallback=True))
    trained.train_from_iterator(benchmark_text().splitlines(),
                                trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS, show_progress=False))
    vocab = trained.get_vocab()
    for byte in range(256):
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
              for m in json.loads(trained.to_str())["model"]["merges"]]
    tok = blank(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True))
    tok.add_special_tokens(SPECIALS)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
         "add_bos_token": True, "add_eos_token": False}))
    return tok.get_vocab_size()


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random Llama, saved by transformers and converted to F32 GGUF by llama.cpp's converter."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-llama")
    vocab_size = _write_tokenizer(folder)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    return convert(folder, folder / "tiny-f32.gguf", "f32")


def test_compare_writes_json_markdown_and_png(tiny_gguf: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results"
    code = main(["bench", "--compare", "--models", str(tiny_gguf), "--engines", ",".join(ENGINES), "--threads", "1",
                 "--repeats", "1", "--prompt-tokens", "16", "--gen-tokens", "4", "--quality-tokens", "16",
                 "--out", str(out)])
    assert code == 0, capsys.readouterr().err

    report = json.loads((out / "bench.json").read_text())
    assert report["settings"]["engines"] == ENGINES and report["machine"]["threads"] == 1
    assert report["machine"]["cpu"] and report["machine"]["versions"]["oxide"]
    (model,) = report["models"]
    assert model["prompt_tokens"] == 16 and model["quality_tokens"] == 16
    for name in ENGINES:
        result = model["engines"][name]
        assert result["status"] == "ok", result["reason"]
        (run,) = result["runs"]
        assert len(run["generated"]) == 4 and run["prompt_tokens"] == 16
        assert all(run[key] > 0 for key in ("load_s", "prefill_tok_s", "decode_tok_s", "peak_rss_mb"))
        assert set(result["summary"]) == {"load_s", "prefill_tok_s", "decode_tok_s", "peak_rss_mb"}
        quality = result["quality"]
        assert quality["positions"] == 16 and quality["perplexity"] > 1
        assert quality["kl_mean"] >= 0 and 0 <= quality["top1_agreement"] <= 1
    assert model["engines"]["transformers"]["quality"]["kl_mean"] == 0
    # oxide and transformers both compute in float32 from the same F32 weights: same greedy tokens
    assert model["engines"]["oxide"]["runs"][0]["generated"] == model["engines"]["transformers"]["runs"][0]["generated"]

    table = (out / "bench.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| engine | load s | prefill tok/s | decode tok/s | peak RSS MB | KL vs f32")
    assert [row.split(" | ")[0][2:] for row in rows[1:]] == ENGINES
    assert "(1.00x)" in rows[2]                      # llama.cpp against itself
    assert table in capsys.readouterr().out
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_skipped_and_failed_engines_are_reported(tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "transformers" else real_find_spec(name, *args))
    assert skip_reason("transformers", tiny_gguf) == "transformers is not installed"
    assert skip_reason("llama.cpp", tiny_gguf.parent) == "llama.cpp reads GGUF files only, not Hugging Face folders"
    assert skip_reason("oxide", tiny_gguf) is None

    engines = {"oxide": EngineResult(summary={"load_s": 1.0}, quality={"perplexity": 9.0}),
               "llama.cpp": EngineResult(status="failed", reason="worker exited with status 1: boom"),
               "transformers": EngineResult(status="skipped", reason="transformers is not installed")}
    report = {"machine": machine_info(2), "baseline_engine": "llama.cpp", "reference_engine": "transformers",
              "started": "now", "settings": {"threads": 2, "repeats": 1, "prompt_tokens": 8, "gen_tokens": 2,
                                             "quality_tokens": 8},
              "models": [{"name": "m.gguf", "engines": {k: vars(v) for k, v in engines.items()}}]}
    table = markdown(report)
    assert "| oxide | 1 | - | - | - | - | - | 9.000 |" in table
    assert "- llama.cpp: failed: worker exited with status 1: boom" in table
    assert "- transformers: skipped (transformers is not installed)" in table


def test_unreadable_model_is_reported_per_engine(tmp_path: Path) -> None:
    """A failing worker gives an error line, not an exception."""
    result = run_worker({"task": "speed", "engine": "llama.cpp", "model": str(tmp_path / "missing.gguf"),
                         "threads": 1, "ids": [1, 2], "new_tokens": 2}, threads=1)
    assert result["error"].startswith("worker exited with status 1: ")


def test_compare_rejects_bad_options(tiny_gguf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--compare", "--models", str(tiny_gguf), "--engines", "oxide,vllm"]) == 2
    assert "vllm" in capsys.readouterr().err
    assert main(["bench", str(tiny_gguf), "--engines", "oxide"]) == 2
    assert "--engines only apply with --compare" in capsys.readouterr().err
    assert main(["bench", "--compare", "--models", str(tiny_gguf), "--gen-tokens", "1"]) == 2
    assert "--gen-tokens" in capsys.readouterr().err
