"""Generation on the real model: stop strings, streaming, end tokens, seeds, chat prompts."""

from __future__ import annotations

import pytest

import oxide

GREEDY = oxide.SamplingOptions.greedy()
PROMPT = "The capital of France is"   # greedy: " the capital of the country of France. It is the largest ..."


def test_stop_string_cuts_text(gemma) -> None:
    done = gemma.generate(PROMPT, max_new_tokens=20, sampling=GREEDY, stop=["country"])
    assert done.text == " the capital of the "
    assert done.finish_reason == "stop"


def test_stream_equals_generate_and_holds_back_partial_stops(gemma) -> None:
    stop = [" France. It"]
    pieces = list(gemma.stream(PROMPT, max_new_tokens=20, sampling=GREEDY, stop=stop))
    done = gemma.generate(PROMPT, max_new_tokens=20, sampling=GREEDY, stop=stop)
    assert "".join(pieces) == done.text == " the capital of the country of"
    assert not any(" France" in p for p in pieces)


def test_stream_completion_available_after_iteration(gemma) -> None:
    stream = gemma.stream(PROMPT, max_new_tokens=4, sampling=GREEDY)
    text = "".join(stream)
    assert stream.completion is not None and stream.completion.text == text
    assert len(stream.completion.token_ids) == 4 and stream.completion.finish_reason == "length"


def test_max_new_tokens_zero(gemma) -> None:
    done = gemma.generate(PROMPT, max_new_tokens=0)
    assert (done.text, done.token_ids, done.finish_reason) == ("", [], "length")


def test_end_tokens_and_ignore_eos(gemma, monkeypatch: pytest.MonkeyPatch) -> None:
    first = gemma.generate(PROMPT, max_new_tokens=1, sampling=GREEDY).token_ids[0]
    monkeypatch.setattr(gemma.tokenizer.vocab, "eog_ids", [first])
    stopped = gemma.generate(PROMPT, max_new_tokens=5, sampling=GREEDY)
    assert (stopped.token_ids, stopped.finish_reason) == ([], "stop")
    ignored = gemma.generate(PROMPT, max_new_tokens=3, sampling=GREEDY, ignore_eos=True)
    assert ignored.token_ids[0] == first and len(ignored.token_ids) == 3


def test_seed_reproducible(gemma) -> None:
    def run(seed: int) -> list[int]:
        options = oxide.SamplingOptions(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=seed)
        return gemma.generate("Once upon a time", max_new_tokens=12, sampling=options, ignore_eos=True).token_ids

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_prompt_as_ids_equals_prompt_as_text(gemma) -> None:
    ids = gemma.encode_prompt(PROMPT)
    assert gemma.generate(ids, max_new_tokens=5, sampling=GREEDY).token_ids == \
        gemma.generate(PROMPT, max_new_tokens=5, sampling=GREEDY).token_ids


def test_chat_prompt_has_one_bos(gemma) -> None:
    ids = gemma.encode_prompt([{"role": "user", "content": "Hello!"}])
    tok = gemma.tokenizer
    assert ids[0] == tok.bos_id and ids.count(tok.bos_id) == 1
    assert tok.special_tokens["<start_of_turn>"] in ids
    done = gemma.generate([{"role": "user", "content": "Say hi."}], max_new_tokens=8, sampling=GREEDY)
    assert done.stats.prompt_tokens == len(gemma.encode_prompt([{"role": "user", "content": "Say hi."}]))


def test_bad_prompt_type(gemma) -> None:
    with pytest.raises(oxide.InvalidOptionError):
        gemma.generate([1.5, "x"], max_new_tokens=1)
    with pytest.raises(oxide.InvalidOptionError):
        gemma.generate(PROMPT, max_new_tokens=-1)


def test_no_double_bos_when_the_text_spells_it(gemma) -> None:
    assert gemma.encode_prompt("<bos>The capital of France is") == gemma.encode_prompt(PROMPT)


def test_stop_matcher_holds_back_only_possible_starts() -> None:
    from oxide.generate import _StopMatcher

    stops = _StopMatcher(["</answer>", "\n\nQ:", ""])
    assert stops.safe_length("The answer is 4</ans") == len("The answer is 4")
    assert stops.safe_length("The answer is 4\n\n") == len("The answer is 4")
    assert stops.safe_length("The answer is 4<") == len("The answer is 4")
    assert stops.safe_length("a < b") == len("a < b")
    assert stops.find("x</answer> y\n\nQ: z") == 1
    assert stops.find("x</answer> y\n\nQ: z", start=5) == 12
    assert _StopMatcher([]).safe_length("anything") == len("anything")
