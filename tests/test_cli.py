"""The command line: ``oxide run`` and ``oxide info`` (in-process), ``python -m oxide`` (a subprocess)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from oxide.cli import main


def test_run_streams_greedy_text(gemma_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", str(gemma_path), "The capital of France is", "--temperature", "0", "-n", "8", "--stats"])
    out, err = capsys.readouterr()
    assert code == 0
    assert out.startswith(" the capital of the country of France.")
    assert "prompt: 6 tokens" in err and "generated: 8 tokens" in err


@pytest.mark.slow   # the default model is the real one
def test_run_without_model_uses_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "The capital of France is", "--temp", "0", "-n", "3"]) == 0
    assert capsys.readouterr().out.startswith(" the capital")


def _info_fields(out: str) -> tuple[dict[str, str], dict[str, str], dict[str, tuple[int, str]]]:
    """``oxide info``'s output as (top-level fields, config fields, tensor type -> (count, size))."""
    top: dict[str, str] = {}
    config: dict[str, str] = {}
    tensors: dict[str, tuple[int, str]] = {}
    section = None
    for line in out.splitlines():
        if not line.startswith("  "):
            key, _, value = line.partition(":")
            section = key if key in ("config", "tensors") else None
            if section is None:
                top[key] = value.strip()
        elif section == "config":
            key, value = line.split(None, 1)
            config[key] = value
        elif section == "tensors":
            name, count, size = line.split(None, 2)
            tensors[name] = (int(count.lstrip("x")), size)
    return top, config, tensors


def test_info(gemma_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(gemma_path)]) == 0
    top, config, tensors = _info_fields(capsys.readouterr().out)
    assert top["source"] == str(gemma_path)
    assert top["architecture"] == "gemma3 (GGUF 'gemma3')"
    assert top["tokenizer"] == "llama, 262144 tokens"
    assert top["device"].startswith("cpu (")
    assert top["compute dtype"].startswith("torch.float32 (CPU")
    assert top["kv cache"].startswith("torch.float32")
    from oxide.ops import cpu

    assert top["kernels"].startswith("compiled core oxide._cpu" if cpu.available() else "PyTorch reference (")
    assert {key: config[key] for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                                         "num_key_value_heads", "head_dim", "sliding_window")} == {
        "vocab_size": "262144", "hidden_size": "640", "num_hidden_layers": "18", "num_attention_heads": "4",
        "num_key_value_heads": "1", "head_dim": "256", "sliding_window": "512"}
    assert config["layer_types"] == ", ".join(["sliding_attention x5, full_attention"] * 3)
    assert {name: count for name, (count, _) in tensors.items()} == {
        "F32": 109, "Q5_0": 81, "Q4_K": 27, "Q8_0": 10, "Q6_K": 9, "total": 236}
    assert tensors["total"][1] == "235.2 MiB"


def test_info_says_when_the_reference_is_asked_for(gemma_path: Path, capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OXIDE_IMPL", "torch")
    assert main(["info", str(gemma_path)]) == 0
    assert "kernels:       torch, as OXIDE_IMPL asks" in capsys.readouterr().out


def test_bad_model_is_a_clean_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"nope")
    assert main(["info", str(bad)]) == 2
    assert "oxide: error:" in capsys.readouterr().err
    assert main(["run", str(bad), "hi"]) == 2
    assert main(["run", str(tmp_path / "missing.gguf"), "hi"]) == 2


def test_invalid_sampling_flag(gemma_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(gemma_path), "hi", "--top-p", "0"]) == 2
    assert "top_p" in capsys.readouterr().err


def test_python_dash_m(gemma_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "oxide", "info", str(gemma_path)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and "gemma3" in out.stdout


def test_chat_keeps_the_conversation(gemma_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    import io

    import oxide

    seen: list[list[dict]] = []
    real_stream = oxide.Model.stream

    def spy(self, prompt, **kwargs):
        seen.append([dict(m) for m in prompt])
        return real_stream(self, prompt, **kwargs)

    monkeypatch.setattr(oxide.Model, "stream", spy)
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello there\n\nWhat next?\n/exit\nnever read\n"))
    assert main(["chat", str(gemma_path), "--system", "Be brief.", "--temp", "0", "-n", "4"]) == 0
    assert [m["role"] for m in seen[0]] == ["system", "user"]
    assert [m["role"] for m in seen[1]] == ["system", "user", "assistant", "user"]
    assert seen[1][3]["content"] == "What next?" and len(seen) == 2
    assert capsys.readouterr().out.count("\n") >= 2


def test_a_chat_turn_prefills_only_the_new_message(gemma_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """The model's KV slot keeps the conversation: turn two reuses every token of turn one (its prompt and the
    reply's tokens, all but a few the template re-encodes differently) and prefills only the rest."""
    import io
    import re

    monkeypatch.setattr("sys.stdin", io.StringIO("Hello there\nWhat next?\n"))
    assert main(["chat", str(gemma_path), "--temp", "0", "-n", "8", "--stats"]) == 0
    turns = [tuple(map(int, m)) for m in re.findall(r"prompt: (\d+) tokens \((\d+) cached\)", capsys.readouterr().err)]
    (first_prompt, first_cached), (second_prompt, second_cached) = turns
    assert first_cached == 0
    assert second_cached >= first_prompt and second_prompt - second_cached <= 16   # "What next?" and its markers


def test_chat_reports_a_failed_turn_and_goes_on(gemma_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("word " * 60 + "\nhi\n"))
    assert main(["chat", str(gemma_path), "--temp", "0", "-n", "2", "--n-ctx", "40"]) == 0
    err = capsys.readouterr().err
    assert err.count("oxide: error:") == 1 and "context" in err


def test_bench(gemma_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", str(gemma_path), "-p", "16", "-n", "4", "-r", "1"]) == 0
    out = capsys.readouterr().out
    assert "prefill:" in out and "decode:" in out and "tok/s" in out
    assert main(["bench", str(gemma_path), "-n", "1"]) == 2


@pytest.mark.parametrize("args, says", [
    (["--port", "70000"], "is not a TCP port"),
    (["--queue", "-1"], "must be 0 or more"),
    (["--api-key", " "], "--api-key is empty"),
    (["-np", "0"], "parallel=0 must be an integer from 1"),
])
def test_serve_refuses_bad_options_before_loading(args: list[str], says: str, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import oxide.api

    monkeypatch.setattr(oxide.api, "resolve_source", lambda source: pytest.fail("the model should not load"))
    assert main(["serve", *args]) == 2
    assert says in capsys.readouterr().err
