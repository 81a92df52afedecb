"""Non-finite logits: ``generate`` and ``stream`` raise :class:`oxide.NumericalError` naming the step (greedy and
sampled alike; an argmax over NaN is no answer), and ``logits()`` returns what the model computed."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

import oxide

VOCAB, HIDDEN, FFN = 16, 32, 64
FAVOURITE = 7   # the token whose logit dominates


def write_model(path: Path, *, embed_row: float | None = None, head_column: float = 100.0,
                final_norm: float = 1.0, every_token: bool = False) -> Path:
    """A one-block Llama GGUF whose logits are known in sign: the block adds nothing (its output projections
    are zero), every embedding's first coordinate is 1 (so the final norm's first coordinate is about
    sqrt(HIDDEN)), and the output head's first column is ``head_column`` for FAVOURITE (so its logit is about
    ``head_column * final_norm * sqrt(HIDDEN)``, the others ~0; ``every_token``: every token's is). ``embed_row``: FAVOURITE's whole embedding row
    set to it (NaN: a poisoned token)."""
    rng = np.random.default_rng(3)
    w = gguf.GGUFWriter(str(path), "llama")
    for key, value in {"context_length": 64, "embedding_length": HIDDEN, "block_count": 1,
                       "feed_forward_length": FFN, "attention.head_count": 2, "attention.head_count_kv": 2}.items():
        w.add_uint32(f"llama.{key}", value)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_tokenizer_model("llama")
    w.add_token_list(["<unk>", "<s>", "</s>"] + [f"t{i}" for i in range(3, VOCAB)])
    w.add_token_scores([0.0] * VOCAB)
    w.add_token_types([2, 3, 3] + [1] * (VOCAB - 3))
    embed = 0.01 * rng.standard_normal((VOCAB, HIDDEN)).astype(np.float32)
    embed[:, 0] = 1.0
    if embed_row is not None:
        embed[FAVOURITE] = embed_row
    head = 0.01 * rng.standard_normal((VOCAB, HIDDEN)).astype(np.float32)
    head[:, 0] = head_column if every_token else 0.0
    head[FAVOURITE, 0] = head_column
    norm = np.zeros(HIDDEN, np.float32)
    norm[0] = final_norm
    tensors = {
        "token_embd.weight": embed, "output.weight": head, "output_norm.weight": norm,
        "blk.0.attn_norm.weight": np.ones(HIDDEN, np.float32), "blk.0.ffn_norm.weight": np.ones(HIDDEN, np.float32),
        "blk.0.attn_q.weight": rng.standard_normal((HIDDEN, HIDDEN)).astype(np.float32),
        "blk.0.attn_k.weight": rng.standard_normal((HIDDEN, HIDDEN)).astype(np.float32),
        "blk.0.attn_v.weight": rng.standard_normal((HIDDEN, HIDDEN)).astype(np.float32),
        "blk.0.attn_output.weight": np.zeros((HIDDEN, HIDDEN), np.float32),
        "blk.0.ffn_gate.weight": rng.standard_normal((FFN, HIDDEN)).astype(np.float32),
        "blk.0.ffn_up.weight": rng.standard_normal((FFN, HIDDEN)).astype(np.float32),
        "blk.0.ffn_down.weight": np.zeros((HIDDEN, FFN), np.float32),
    }
    for name, array in tensors.items():
        w.add_tensor(name, array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


GREEDY = oxide.SamplingOptions(temperature=0.0)
SAMPLED = oxide.SamplingOptions(temperature=0.8, top_k=0, top_p=1.0, seed=5)
PROMPT = [1, 4, 5]


def test_the_healthy_model_picks_its_favourite(tmp_path: Path) -> None:
    """The construction does what it says, so the failures below come from the one poisoned value."""
    model = oxide.load(write_model(tmp_path / "ok.gguf"), device="cpu")
    for sampling in (GREEDY, SAMPLED):
        assert model.generate(PROMPT, max_new_tokens=3, sampling=sampling).token_ids == [FAVOURITE] * 3


@pytest.mark.parametrize("sampling", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
@pytest.mark.parametrize("poison, says", [
    (dict(final_norm=float("nan")), "the logits contain NaN"),
    (dict(head_column=3e38), r"the logits contain \+inf"),
    (dict(head_column=-3e38, final_norm=1.0), None),      # one -inf logit among finite ones is no error
])
def test_non_finite_logits_at_the_first_step(tmp_path: Path, sampling, poison: dict, says: str | None) -> None:
    path = write_model(tmp_path / "poisoned.gguf", **poison)
    model = oxide.load(path, device="cpu")
    if says is None:
        assert FAVOURITE not in model.generate(PROMPT, max_new_tokens=2, sampling=sampling).token_ids
        return
    for run in (lambda: model.generate(PROMPT, max_new_tokens=3, sampling=sampling),
                lambda: list(model.stream(PROMPT, max_new_tokens=3, sampling=sampling))):
        with pytest.raises(oxide.NumericalError, match=rf"^{path}: generation step 0 .*{says}.*likely corrupt"):
            run()


@pytest.mark.parametrize("sampling", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_the_step_that_turns_non_finite_is_named(tmp_path: Path, sampling) -> None:
    """FAVOURITE's own embedding is NaN: the first step picks it, the second sees NaN everywhere."""
    model = oxide.load(write_model(tmp_path / "poisoned.gguf", embed_row=float("nan")), device="cpu")
    pieces = model.stream(PROMPT, max_new_tokens=4, sampling=sampling)
    with pytest.raises(oxide.NumericalError, match=r"generation step 1 \(position 4 of the sequence\): the logits "
                                                   r"contain NaN"):
        list(pieces)


def test_every_logit_minus_infinity_is_an_error(tmp_path: Path) -> None:
    """No token can be chosen when every logit is -inf (the final norm scales the one coordinate the head reads
    by -inf)."""
    model = oxide.load(write_model(tmp_path / "poisoned.gguf", final_norm=float("-inf"), head_column=1.0,
                                   every_token=True), device="cpu")
    assert (model.logits(PROMPT)[-1] == float("-inf")).all()
    for sampling in (GREEDY, SAMPLED):
        with pytest.raises(oxide.NumericalError, match="generation step 0 .*no token has a finite logit"):
            model.generate(PROMPT, max_new_tokens=1, sampling=sampling)


def test_logits_returns_what_the_model_computed(tmp_path: Path) -> None:
    nan = oxide.load(write_model(tmp_path / "nan.gguf", final_norm=float("nan")), device="cpu")
    assert nan.logits(PROMPT).isnan().all()
    inf = oxide.load(write_model(tmp_path / "inf.gguf", head_column=3e38), device="cpu")
    logits = inf.logits(PROMPT)
    assert (logits[:, FAVOURITE] == float("inf")).all() and logits[:, :FAVOURITE].isfinite().all()
