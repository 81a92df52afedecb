"""Continuous batching and the prefix cache on tiny models: a batch gives every sequence what it gets alone,
reused or copied prefixes give what a fresh prefill gives, and the scheduler frees slots, bounds its queue and
survives a failing sequence.

Tolerance: on the CPU a batched decode step's logits equal the single-sequence step's bit for bit (every op
computes row by row: the GEMV kernels take each row's dot products in the same order whatever the row count),
so logits are compared with ``torch.equal`` and tokens exactly. Another device may reorder sums; these tests
run on the CPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import oxide
from oxide import engine as engine_module
from oxide.engine import Engine, Event
from oxide.errors import QueueFullError
from oxide.generate import Request
from oxide.quant import GGMLType
from oxide.sampling import SamplingOptions

from _tiny_models import GEMMA_WINDOW, TINY_MODELS, write_gguf

GREEDY = SamplingOptions.greedy()
SAMPLED = SamplingOptions(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=11)
DEFAULT = SamplingOptions(seed=21)   # the server's defaults: top-k 40, top-p 0.95, min-p 0.05, temperature 0.8


def _prompts(n: int, seed: int) -> list[list[int]]:
    """``n`` prompts of different lengths (3 to 3 + 2n ids), ordinary ids only."""
    gen = torch.Generator().manual_seed(seed)
    return [[1, *torch.randint(3, 300, (2 + 2 * i,), generator=gen).tolist()] for i in range(n)]


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def model_path(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny Llama (full attention, Q8_0) and Gemma 3 (sliding rings of GEMMA_WINDOW, Q8_0)."""
    path = tmp_path_factory.mktemp("engine") / f"{request.param}.gguf"
    return write_gguf(TINY_MODELS[request.param].build(), path, qtype=GGMLType.Q8_0)


def _load(path: Path, parallel: int = 8, n_ctx: int = 64) -> oxide.Model:
    return oxide.load(path, device="cpu", n_ctx=n_ctx, parallel=parallel)


def test_batched_step_logits_equal_each_sequence_alone(model_path: Path) -> None:
    lm = _load(model_path).lm
    prompts = _prompts(6, seed=3)
    caches, alone = [lm.new_cache(64) for _ in prompts], [lm.new_cache(64) for _ in prompts]
    for prompt, batched_cache, single_cache in zip(prompts, caches, alone):
        ids = torch.tensor([prompt])
        lm.forward(ids, batched_cache)
        lm.forward(ids, single_cache)
    tokens = torch.tensor([5, 17, 42, 99, 123, 250])
    for step in range(GEMMA_WINDOW + 2):                  # past the window: the rings wrap
        batched = lm.decode_batch(tokens, caches)
        for b, cache in enumerate(alone):
            single = lm.forward(tokens[b:b + 1].view(1, 1), cache, last_only=True)[0, -1]
            assert torch.equal(batched[b], single), f"row {b} differs at step {step}"
        tokens = batched.argmax(-1)


@pytest.mark.parametrize("options", [GREEDY, SAMPLED], ids=["greedy", "seeded"])
def test_generate_on_a_list_equals_each_prompt_alone(model_path: Path, options: SamplingOptions) -> None:
    prompts = _prompts(8, seed=5)
    single = _load(model_path, parallel=1)
    alone = [single.generate(p, max_new_tokens=12, sampling=options, ignore_eos=True) for p in prompts]
    together = _load(model_path, parallel=8).generate(prompts, max_new_tokens=12, sampling=options,
                                                      ignore_eos=True)
    assert [c.token_ids for c in together] == [c.token_ids for c in alone]
    assert len({tuple(c.token_ids) for c in alone}) > 1, "the prompts should lead to different completions"
    assert [c.stats.prompt_tokens for c in together] == [len(p) for p in prompts]


def test_more_prompts_than_slots_wait_their_turn(model_path: Path) -> None:
    prompts = _prompts(5, seed=9)
    narrow = _load(model_path, parallel=2).generate(prompts, max_new_tokens=6, sampling=GREEDY, ignore_eos=True)
    wide = _load(model_path, parallel=8).generate(prompts, max_new_tokens=6, sampling=GREEDY, ignore_eos=True)
    assert [c.token_ids for c in narrow] == [c.token_ids for c in wide]


def test_a_continued_prompt_reuses_the_cache_and_gets_what_a_fresh_prefill_gets(model_path: Path) -> None:
    model, fresh = _load(model_path, parallel=1), _load(model_path, parallel=1)
    first = model.generate(_prompts(1, seed=1)[0], max_new_tokens=4, sampling=GREEDY, ignore_eos=True)
    follow_up = [*_prompts(1, seed=1)[0], *first.token_ids, 7, 8, 9]   # the earlier turn, its reply, more
    reused = model.generate(follow_up, max_new_tokens=8, sampling=GREEDY, ignore_eos=True)
    cold = fresh.generate(follow_up, max_new_tokens=8, sampling=GREEDY, ignore_eos=True)
    # The slot holds the prompt and the reply's tokens but the last (sampled, never run).
    assert reused.stats.cached_tokens == len(_prompts(1, seed=1)[0]) + len(first.token_ids) - 1
    assert cold.stats.cached_tokens == 0
    assert reused.token_ids == cold.token_ids


def test_a_diverging_prompt_is_cut_back_to_the_shared_prefix(model_path: Path) -> None:
    model, fresh = _load(model_path, parallel=1), _load(model_path, parallel=1)
    prompt = [1, 20, 21, 22, 23, 24]
    model.generate(prompt, max_new_tokens=3, sampling=GREEDY, ignore_eos=True)
    other = [1, 20, 21, 22, 90, 91]
    reused = model.generate(other, max_new_tokens=6, sampling=GREEDY, ignore_eos=True)
    assert reused.stats.cached_tokens == 4
    assert reused.token_ids == fresh.generate(other, max_new_tokens=6, sampling=GREEDY, ignore_eos=True).token_ids


def test_a_ring_that_overwrote_the_shared_keys_is_not_reused(tmp_path: Path) -> None:
    """Gemma 3's sliding layers keep GEMMA_WINDOW keys: going back further than that is a full prefill."""
    path = write_gguf(TINY_MODELS["gemma3"].build(), tmp_path / "gemma3.gguf", qtype=GGMLType.Q8_0)
    model, fresh = _load(path, parallel=1), _load(path, parallel=1)
    long = _prompts(1, seed=2)[0] + list(range(30, 30 + 3 * GEMMA_WINDOW))
    model.generate(long, max_new_tokens=2, sampling=GREEDY, ignore_eos=True)
    shorter = long[:GEMMA_WINDOW + 4] + [5]                    # shares a prefix the rings have overwritten
    reused = model.generate(shorter, max_new_tokens=6, sampling=GREEDY, ignore_eos=True)
    assert reused.stats.cached_tokens == 0
    assert reused.token_ids == fresh.generate(shorter, max_new_tokens=6, sampling=GREEDY,
                                              ignore_eos=True).token_ids


def _engine(model: oxide.Model, max_waiting: int = 16) -> Engine:
    return Engine(model.lm, model.tokenizer, model.slots, max_waiting=max_waiting)


def _run(engine: Engine, requests: list[Request]) -> list[list[Event]]:
    events: list[list[Event]] = [[] for _ in requests]
    for request, sink in zip(requests, events):
        engine.submit(request, sink.append)
    while engine.busy():
        engine.step()
    return events


def test_a_busy_slot_lends_its_prefix_to_a_later_prompt(model_path: Path) -> None:
    """Two prompts with one long system prompt, submitted together: the second copies the first's keys when its
    prefill starts (after the first's), and both get what they get alone. Gemma 3's rings (GEMMA_WINDOW keys)
    have by then overwritten keys the shared prefix's end needs, so there the second prefills in full."""
    model, single = _load(model_path, parallel=4), _load(model_path, parallel=1)
    system = _prompts(1, seed=4)[0] + list(range(100, 130))
    prompts = [system + [7, 8], system + [9, 10, 11]]
    events = _run(_engine(model), [Request(p, 6, GREEDY, ignore_eos=True) for p in prompts])
    completions = [sequence[-1].completion for sequence in events]
    assert completions[0].stats.cached_tokens == 0
    shareable = len(system) if model.config.sliding_window == 0 else 0
    assert completions[1].stats.cached_tokens == shareable
    assert model.slots.copied_tokens == shareable
    for prompt, completion in zip(prompts, completions):
        alone = single.generate(prompt, max_new_tokens=6, sampling=GREEDY, ignore_eos=True)
        assert completion.token_ids == alone.token_ids


def test_cancelling_frees_the_slot_at_the_next_step(model_path: Path) -> None:
    model = _load(model_path, parallel=2)
    engine = _engine(model)
    events: list[Event] = []
    ticket = engine.submit(Request(_prompts(1, seed=6)[0], 50, GREEDY, ignore_eos=True), events.append)
    for _ in range(4):
        engine.step()
    assert engine.running == 1 and model.slots.free() == 1
    seen = len(events)
    engine.cancel(ticket)
    engine.step()
    assert engine.running == 0 and model.slots.free() == 2
    assert len(events) == seen, "a cancelled request gets no more events"
    assert engine.metrics.requests_cancelled == 1


def test_a_full_queue_refuses_and_the_engine_keeps_serving(model_path: Path) -> None:
    model = _load(model_path, parallel=1)
    engine = _engine(model, max_waiting=2)
    request = Request(_prompts(1, seed=7)[0], 3, GREEDY, ignore_eos=True)
    sinks: list[list[Event]] = [[], []]
    for sink in sinks:
        engine.submit(request, sink.append)
    with pytest.raises(QueueFullError, match="2 requests are already waiting"):
        engine.submit(request, lambda event: None)
    while engine.busy():
        engine.step()
    assert [len(sink[-1].completion.token_ids) for sink in sinks] == [3, 3]
    engine.submit(request, sinks[0].append)                 # room again
    assert engine.waiting == 1


def test_a_failing_sequence_ends_alone(model_path: Path) -> None:
    """NaN logits for one sequence of a batched step end that one with NumericalError naming its step; the other,
    in the same step, finishes."""
    model = _load(model_path, parallel=2)
    engine = _engine(model)
    prompts = _prompts(2, seed=8)
    real_sample_rows = engine_module.sample_rows
    poisoned_steps: list[int] = []

    def poisoned(samplers, logits: torch.Tensor, histories):
        logits = logits.clone()
        for row, history in enumerate(histories):
            if history[:len(prompts[0])] == prompts[0] and len(history) == len(prompts[0]) + 2:
                logits[row] = float("nan")
                poisoned_steps.append(len(histories))
        return real_sample_rows(samplers, logits, histories)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine_module, "sample_rows", poisoned)
        events = _run(engine, [Request(prompts[0], 5, GREEDY, ignore_eos=True),
                               Request(prompts[1], 5, DEFAULT, ignore_eos=True)])
    assert poisoned_steps == [2], "the poisoned row is one of a batch of two"
    assert isinstance(events[0][-1].error, oxide.NumericalError)
    assert "generation step 2 (position 5 of the sequence): the logits contain NaN" in str(events[0][-1].error)
    assert len(events[1][-1].completion.token_ids) == 5
    assert model.slots.free() == 2


def test_a_batch_of_different_sampling_options_gives_each_what_it_gets_alone(model_path: Path) -> None:
    """One decode step samples its rows together (oxide.sampling.sample_rows); requests with different options
    (top-k draws, greedy, no top-k, penalties) each get the tokens they get alone."""
    options = [DEFAULT, GREEDY, SAMPLED, SamplingOptions(seed=12, top_p=0.5, min_p=0.2, temperature=1.3),
               SamplingOptions(seed=13, repeat_penalty=1.5, frequency_penalty=0.5, presence_penalty=0.3),
               SamplingOptions(seed=14, top_k=3), DEFAULT]
    prompts = _prompts(len(options), seed=15)
    events = _run(_engine(_load(model_path, parallel=8)),
                  [Request(p, 10, o, ignore_eos=True) for p, o in zip(prompts, options)])
    single = _load(model_path, parallel=1)
    alone = [single.generate(p, max_new_tokens=10, sampling=o, ignore_eos=True).token_ids
             for p, o in zip(prompts, options)]
    assert [sequence[-1].completion.token_ids for sequence in events] == alone
    assert len({tuple(tokens) for tokens in alone}) == len(alone), "the requests should get different tokens"


def test_logprobs_are_the_log_softmax_of_the_raw_logits(model_path: Path) -> None:
    model = _load(model_path, parallel=1)
    prompt = _prompts(1, seed=10)[0]
    events = _run(_engine(model), [Request(prompt, 3, GREEDY, ignore_eos=True, logprobs=4)])
    logprobs = [entry for event in events[0] for entry in event.logprobs]
    completion = events[0][-1].completion
    assert [entry.token for entry in logprobs] == completion.token_ids
    expected = torch.log_softmax(model.logits(prompt)[-1], dim=-1)
    first = logprobs[0]
    assert first.logprob == pytest.approx(float(expected[first.token]), abs=1e-5)
    assert [t for t, _ in first.top] == expected.topk(4).indices.tolist()
    assert first.top[0][0] == first.token                      # greedy picks the likeliest
