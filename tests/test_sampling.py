"""Tests for oxide.sampling: option validation, each processor's exact mask or formula,
chain order, reproducibility and the sampled distribution."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from oxide import sampling
from oxide.errors import InvalidOptionError, NumericalError, OxideError
from oxide.ops import reference
from oxide.sampling import (
    MinP,
    Penalties,
    Sampler,
    SamplingOptions,
    Temperature,
    TopK,
    TopP,
    build_processors,
    sample_rows,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
NEG_INF = float("-inf")


def kept(logits: torch.Tensor) -> set[int]:
    """Token ids a processor left in play (finite logits)."""
    return set(torch.nonzero(torch.isfinite(logits)).flatten().tolist())


def log_probs(*probs: float) -> torch.Tensor:
    return torch.tensor([math.log(p) for p in probs], dtype=torch.float32)


def random_logits(gen: torch.Generator, vocab: int, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(vocab, generator=gen) * scale


# --------------------------------------------------------------------------- options


def test_defaults_follow_llama_cpp() -> None:
    o = SamplingOptions()
    assert (o.temperature, o.top_k, o.top_p, o.min_p) == (0.8, 40, 0.95, 0.05)
    assert (o.repeat_penalty, o.repeat_last_n, o.presence_penalty, o.frequency_penalty) == (1.0, 64, 0.0, 0.0)
    assert o.seed is None


def test_greedy_options() -> None:
    g = SamplingOptions.greedy()
    assert g.temperature == 0.0 and g.top_k == 0 and g.top_p == 1.0 and g.min_p == 0.0
    assert [type(p) for p in build_processors(g)] == [Temperature]


@pytest.mark.parametrize(
    "field, value",
    [
        ("temperature", -0.1),
        ("temperature", float("nan")),
        ("temperature", float("inf")),
        ("temperature", "0.8"),
        ("temperature", None),
        ("temperature", True),
        ("top_k", -1),
        ("top_k", 1.5),
        ("top_k", "40"),
        ("top_p", 0.0),
        ("top_p", -0.2),
        ("top_p", 1.01),
        ("top_p", float("nan")),
        ("min_p", -0.01),
        ("min_p", 1.5),
        ("min_p", "0.1"),
        ("repeat_penalty", 0.0),
        ("repeat_penalty", -1.1),
        ("repeat_penalty", float("inf")),
        ("repeat_last_n", -2),
        ("repeat_last_n", 64.0),
        ("presence_penalty", float("nan")),
        ("presence_penalty", float("-inf")),
        ("frequency_penalty", float("inf")),
        ("frequency_penalty", "x"),
        ("seed", -1),
        ("seed", 1.5),
        ("seed", "7"),
        ("seed", 2**64),
    ],
)
def test_invalid_option_raises(field: str, value: object) -> None:
    with pytest.raises(InvalidOptionError) as info:
        SamplingOptions(**{field: value})
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert f"SamplingOptions.{field}=" in message
    assert repr(value) in message
    assert "expected" in message


@pytest.mark.parametrize(
    "kwargs",
    [
        {"temperature": 0},
        {"top_k": 0},
        {"top_p": 1.0},
        {"min_p": 0.0},
        {"min_p": 1.0},
        {"repeat_last_n": -1},
        {"repeat_last_n": 0},
        {"seed": 0},
        {"seed": 2**64 - 1},
        {"presence_penalty": -1.5, "frequency_penalty": -0.5},
    ],
)
def test_edge_values_are_valid(kwargs: dict) -> None:
    options = SamplingOptions(**kwargs)
    for name, value in kwargs.items():
        assert getattr(options, name) == value


def test_numbers_are_normalised() -> None:
    o = SamplingOptions(temperature=np.float32(0.5), top_k=np.int64(7), seed=np.int32(3), repeat_penalty=2)
    assert type(o.temperature) is float and o.temperature == 0.5
    assert type(o.top_k) is int and o.top_k == 7
    assert type(o.seed) is int and o.seed == 3
    assert type(o.repeat_penalty) is float


# --------------------------------------------------------------------------- top-k


@pytest.mark.parametrize(
    "logits, k, expected",
    [
        ([1.0, 3.0, 2.0, 3.0, 0.0], 2, {1, 3}),
        ([1.0, 3.0, 2.0, 3.0, 0.0], 1, {1}),  # tie at the top: lowest id wins
        ([1.0, 3.0, 2.0, 3.0, 0.0], 3, {1, 2, 3}),
        ([5.0, 2.0, 2.0, 2.0, 1.0], 2, {0, 1}),  # tie at the cut: lowest ids fill it
        ([5.0, 2.0, 2.0, 2.0, 1.0], 3, {0, 1, 2}),
        ([5.0, 2.0, 2.0, 2.0, 1.0], 4, {0, 1, 2, 3}),
        ([0.5, -1.0, 0.25], 3, {0, 1, 2}),  # k == V
        ([0.5, -1.0, 0.25], 10, {0, 1, 2}),  # k > V
        ([0.5, -1.0, 0.25], 0, {0, 1, 2}),  # disabled
        ([0.5, NEG_INF, 0.25, NEG_INF], 3, {0, 2}),  # already-removed tokens stay removed
    ],
)
def test_top_k_mask(logits: list[float], k: int, expected: set[int]) -> None:
    x = torch.tensor(logits)
    out = TopK(k)(x, [])
    assert kept(out) == expected
    for i in expected:
        assert out[i] == x[i]


def test_top_k_random_matches_sort() -> None:
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        x = random_logits(gen, 300)
        k = int(torch.randint(1, 300, (1,), generator=gen))
        expected = set(torch.sort(x, descending=True, stable=True).indices[:k].tolist())
        assert kept(TopK(k)(x, [])) == expected


# --------------------------------------------------------------------------- top-p


# probabilities 0.5 (id 0), 0.1 (id 1), 0.25 (id 2), 0.15 (id 3): cumulative in order
# 0 -> 2 -> 3 -> 1 is 0.5, 0.75, 0.9, 1.0
NUCLEUS = (0.5, 0.1, 0.25, 0.15)


@pytest.mark.parametrize(
    "p, expected",
    [
        (1e-6, {0}),
        (0.4999, {0}),
        (0.5001, {0, 2}),
        (0.7499, {0, 2}),
        (0.7501, {0, 2, 3}),
        (0.8999, {0, 2, 3}),
        (0.9001, {0, 1, 2, 3}),
        (0.999, {0, 1, 2, 3}),
        (1.0, {0, 1, 2, 3}),
    ],
)
def test_top_p_mask(p: float, expected: set[int]) -> None:
    x = log_probs(*NUCLEUS) + 1.7  # a shift does not change probabilities
    out = TopP(p)(x, [])
    assert kept(out) == expected
    for i in expected:
        assert out[i] == x[i]


@pytest.mark.parametrize(
    "p, expected",
    # 0.25 and 0.5 are exact in float32: a cumulative mass equal to p is enough (>=)
    [(0.2, {0}), (0.25, {0}), (0.3, {0, 1}), (0.5, {0, 1}), (0.55, {0, 1, 2}), (0.8, {0, 1, 2, 3})],
)
def test_top_p_ties_lowest_id_first(p: float, expected: set[int]) -> None:
    x = torch.full((4,), 0.37)  # uniform: 0.25 each
    assert kept(TopP(p)(x, [])) == expected


def test_top_p_after_removal_uses_remaining_mass() -> None:
    # ids 0 and 2 removed: the remaining 0.1 (id 1) and 0.15 (id 3) renormalise to 0.4 and 0.6
    x = log_probs(*NUCLEUS)
    x[0] = NEG_INF
    x[2] = NEG_INF
    assert kept(TopP(0.55)(x, [])) == {3}
    assert kept(TopP(0.65)(x, [])) == {1, 3}


def test_top_p_random_is_smallest_prefix() -> None:
    gen = torch.Generator().manual_seed(2)
    for _ in range(20):
        x = random_logits(gen, 200)
        p = float(torch.rand((), generator=gen)) * 0.98 + 0.01
        probs = torch.softmax(x.double(), -1)
        order = torch.sort(x, descending=True, stable=True).indices
        total, expected = 0.0, set()
        for i in order.tolist():
            expected.add(i)
            total += float(probs[i])
            if total >= p:
                break
        assert kept(TopP(p)(x, [])) == expected


# --------------------------------------------------------------------------- min-p


@pytest.mark.parametrize(
    "min_p, expected",
    [
        (0.0, {0, 1, 2, 3}),  # disabled
        (0.2, {0, 1, 2, 3}),  # threshold 0.08
        (0.3, {0, 1, 3}),  # threshold 0.12
        (0.6, {0, 3}),  # threshold 0.24
        (0.8, {0}),  # threshold 0.32
        (1.0, {0}),
    ],
)
def test_min_p_mask(min_p: float, expected: set[int]) -> None:
    x = log_probs(0.4, 0.2, 0.1, 0.3) - 0.9
    out = MinP(min_p)(x, [])
    assert kept(out) == expected
    for i in expected:
        assert out[i] == x[i]


def test_min_p_boundary_and_ties() -> None:
    x = torch.tensor([0.0, -1.0, -1.5, 0.0])
    # p_1 / p_max = exp(-1) exactly at the threshold: kept (>=)
    assert kept(MinP(math.exp(-1.0))(x, [])) == {0, 1, 3}
    # min_p = 1 keeps every token tied at the maximum
    assert kept(MinP(1.0)(x, [])) == {0, 3}


# --------------------------------------------------------------------------- penalties


def reference_penalties(
    logits: list[float], history: list[int], rp: float, last_n: int, fp: float, pp: float
) -> list[float]:
    """Plain-Python llama.cpp penalty rule, applied once per distinct token in the window."""
    if last_n == 0:
        return list(logits)
    window = history if last_n == -1 else history[-last_n:]
    out = list(logits)
    for token in set(window):
        if not 0 <= token < len(logits):
            continue
        count = window.count(token)
        value = out[token] * rp if out[token] <= 0 else out[token] / rp
        out[token] = value - (count * fp + pp)
    return out


def test_penalties_hand_computed() -> None:
    x = torch.tensor([2.0, -1.0, 0.5, -3.0])
    out = Penalties(repeat_penalty=2.0, last_n=64, frequency_penalty=0.5, presence_penalty=0.25)(x, [0, 1, 1])
    # id 0: 2/2 - (1*0.5 + 0.25) = 0.25; id 1: -1*2 - (2*0.5 + 0.25) = -3.25; ids 2, 3 unseen
    torch.testing.assert_close(out, torch.tensor([0.25, -3.25, 0.5, -3.0]), rtol=0, atol=0)


def test_repeat_penalty_divides_positive_multiplies_negative() -> None:
    x = torch.tensor([1.5, -1.5, 0.0, 3.0])
    out = Penalties(repeat_penalty=1.5, last_n=-1)(x, [0, 1, 2, 0, 0])
    torch.testing.assert_close(out, torch.tensor([1.0, -2.25, 0.0, 3.0]))


@pytest.mark.parametrize(
    "last_n, expected",
    [
        # window [1, 3, 3]: id 1 once, id 3 twice; id 0 only in the older part
        (3, [-0.5, 1.5 / 2 - 0.5, 3.0, 0.5 / 2 - 0.75]),
        # window [3, 1, 3, 3]: id 3 three times
        (4, [-0.5, 1.5 / 2 - 0.5, 3.0, 0.5 / 2 - 1.0]),
        # whole history: id 0 twice (negative logit, multiplied), id 1 once, id 3 three times
        (-1, [-0.5 * 2 - 0.75, 1.5 / 2 - 0.5, 3.0, 0.5 / 2 - 1.0]),
        (0, [-0.5, 1.5, 3.0, 0.5]),
    ],
)
def test_penalty_window(last_n: int, expected: list[float]) -> None:
    history = [0, 0, 3, 1, 3, 3]
    x = torch.tensor([-0.5, 1.5, 3.0, 0.5])
    penalties = Penalties(repeat_penalty=2.0, last_n=last_n, frequency_penalty=0.25, presence_penalty=0.25)
    torch.testing.assert_close(penalties(x, history), torch.tensor(expected))


def test_penalties_random_match_reference_and_tensor_history() -> None:
    gen = torch.Generator().manual_seed(3)
    for trial in range(30):
        vocab = 50
        x = random_logits(gen, vocab)
        length = int(torch.randint(0, 120, (1,), generator=gen))
        history = torch.randint(0, vocab + 5, (length,), generator=gen)  # some ids out of range
        last_n = [-1, 0, 1, 7, 64, 500][trial % 6]
        rp, fp, pp = 1.0 + float(torch.rand((), generator=gen)), 0.3, -0.2
        expected = reference_penalties(x.tolist(), history.tolist(), rp, last_n, fp, pp)
        proc = Penalties(repeat_penalty=rp, last_n=last_n, frequency_penalty=fp, presence_penalty=pp)
        torch.testing.assert_close(proc(x, history.tolist()), torch.tensor(expected))
        torch.testing.assert_close(proc(x, history), torch.tensor(expected))


# --------------------------------------------------------------------------- temperature and chain


def test_temperature_scales_softmax() -> None:
    gen = torch.Generator().manual_seed(4)
    x = random_logits(gen, 100)
    for t in (0.3, 1.0, 2.5):
        out = Temperature(t)(x, [])
        torch.testing.assert_close(torch.softmax(out, -1), torch.softmax(x / t, -1))
        torch.testing.assert_close(out, (x - x.max()) / t)


def test_tiny_temperature_does_not_overflow() -> None:
    x = torch.tensor([30.0, 29.0, 30.0])
    probs = torch.softmax(Temperature(1e-30)(x, []), -1)
    assert torch.isfinite(probs).all()
    torch.testing.assert_close(probs, torch.tensor([0.5, 0.0, 0.5]))


def test_temperature_zero_keeps_first_max() -> None:
    x = torch.tensor([1.0, 4.0, -2.0, 4.0])
    assert kept(Temperature(0.0)(x, [])) == {1}


def test_chain_order_and_disabled_stages() -> None:
    types = [type(p) for p in build_processors(SamplingOptions())]
    assert types == [TopK, TopP, MinP, Temperature]
    with_pen = SamplingOptions(repeat_penalty=1.1, top_p=1.0, min_p=0.0)
    assert [type(p) for p in build_processors(with_pen)] == [Penalties, TopK, Temperature]
    no_window = SamplingOptions(repeat_penalty=1.1, repeat_last_n=0, top_k=0)
    assert [type(p) for p in build_processors(no_window)] == [TopP, MinP, Temperature]
    greedy_pen = SamplingOptions(temperature=0, frequency_penalty=0.5)
    assert [type(p) for p in build_processors(greedy_pen)] == [Penalties, Temperature]


def test_chain_applies_top_k_before_top_p() -> None:
    # top-p sees the mass renormalised over the top-k survivors: [0.5, 0.25] -> [2/3, 1/3]
    x = log_probs(0.5, 0.25, 0.15, 0.1)
    sampler = Sampler(SamplingOptions(temperature=1.0, top_k=2, top_p=0.6, min_p=0.0))
    assert kept(sampler.process(x)) == {0}
    sampler = Sampler(SamplingOptions(temperature=1.0, top_k=0, top_p=0.6, min_p=0.0))
    assert kept(sampler.process(x)) == {0, 1}


# --------------------------------------------------------------------------- sampler


def draw_sequence(options: SamplingOptions, steps: int = 50, device: str = "cpu") -> list[int]:
    sampler = Sampler(options)
    gen = torch.Generator().manual_seed(99)  # the logits, not the sampler's draws
    history: list[int] = []
    for _ in range(steps):
        token = sampler.sample(random_logits(gen, 500, scale=1.0).to(device), history)
        history.append(token)
    return history


@pytest.mark.parametrize("device", DEVICES)
def test_same_seed_same_tokens(device: str) -> None:
    options = SamplingOptions(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=1234)
    first = draw_sequence(options, device=device)
    assert first == draw_sequence(options, device=device)
    other_seed = SamplingOptions(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=1235)
    assert first != draw_sequence(other_seed, device=device)


def test_draws_follow_the_processed_distribution() -> None:
    """20,000 seeded draws after top-k: each kept token's frequency within 4.5 sigma of its probability,
    the cut tokens never drawn; over the whole vocabulary (no truncation) likewise for the top tokens."""
    probs = torch.tensor([0.05, 0.3, 0.0001, 0.2, 0.15, 0.1, 0.1999])
    for options, kept_ids in ((SamplingOptions(temperature=1.0, top_k=4, top_p=1.0, min_p=0.0, seed=7), [1, 3, 6, 4]),
                              (SamplingOptions(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=8), range(7))):
        sampler = Sampler(options)
        draws = torch.tensor([sampler.sample(probs.log()) for _ in range(20000)])
        counts = torch.bincount(draws, minlength=7).double()
        want = torch.zeros(7, dtype=torch.float64)
        want[list(kept_ids)] = probs.double()[list(kept_ids)]
        want /= want.sum()
        sigma = (20000 * want * (1 - want)).sqrt()
        assert ((counts - 20000 * want).abs() <= 4.5 * sigma + 1).all(), (counts, 20000 * want)


def test_nan_or_no_finite_logits_are_a_clear_error() -> None:
    sampler = Sampler(SamplingOptions(temperature=1.0, seed=1))
    logits = torch.zeros(10)
    logits[3] = float("nan")
    with pytest.raises(OxideError, match="logits contain NaN"):
        sampler.sample(logits)
    with pytest.raises(OxideError, match="no token has a finite logit"):
        Sampler(SamplingOptions(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)).sample(torch.full((10,), -math.inf))
    with pytest.raises(OxideError, match="no token has a finite logit"):   # through top-k and top-p too
        Sampler(SamplingOptions(top_k=3, top_p=0.9)).sample(torch.full((10,), -math.inf))


def test_unseeded_samplers_differ_and_global_rng_untouched() -> None:
    state = torch.get_rng_state()
    options = SamplingOptions(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    assert draw_sequence(options) != draw_sequence(options)
    draw_sequence(SamplingOptions(seed=5, repeat_penalty=1.2))
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("device", DEVICES)
def test_temperature_zero_is_argmax(device: str) -> None:
    gen = torch.Generator().manual_seed(5)
    sampler = Sampler(SamplingOptions(temperature=0.0, seed=3))
    for _ in range(30):
        x = random_logits(gen, 1000).to(device)
        assert sampler.sample(x, []) == int(torch.argmax(x))
    tied = torch.tensor([0.1, 2.0, -1.0, 2.0]).to(device)
    assert sampler.sample(tied, []) == 1


def test_greedy_is_argmax_after_penalties() -> None:
    gen = torch.Generator().manual_seed(6)
    options = SamplingOptions(temperature=0.0, repeat_penalty=1.3, frequency_penalty=0.2, repeat_last_n=8)
    sampler = Sampler(options)
    for _ in range(20):
        x = random_logits(gen, 40)
        history = torch.randint(0, 40, (20,), generator=gen).tolist()
        expected = reference_penalties(x.tolist(), history, 1.3, 8, 0.2, 0.0)
        assert sampler.sample(x, history) == int(np.argmax(expected))


def test_sampler_rejects_batched_logits() -> None:
    with pytest.raises(ValueError, match="1-D logits"):
        Sampler().sample(torch.randn(2, 10), [])


def test_half_precision_logits_accepted() -> None:
    x = torch.randn(64).to(torch.bfloat16)
    token = Sampler(SamplingOptions(seed=1)).sample(x, [])
    assert 0 <= token < 64


@settings(max_examples=150, deadline=None)
@given(
    logits_seed=st.integers(0, 2**31 - 1),
    vocab=st.integers(1, 60),
    scale=st.floats(0.1, 20.0),
    temperature=st.floats(0.05, 3.0),
    top_k=st.integers(0, 70),
    top_p=st.floats(0.01, 1.0),
    min_p=st.floats(0.0, 1.0),
    repeat_penalty=st.floats(0.5, 2.0),
    seed=st.integers(0, 2**32),
)
def test_sampled_token_is_kept(
    logits_seed: int, vocab: int, scale: float, temperature: float, top_k: int,
    top_p: float, min_p: float, repeat_penalty: float, seed: int,
) -> None:
    gen = torch.Generator().manual_seed(logits_seed)
    x = random_logits(gen, vocab, scale)
    history = torch.randint(0, vocab, (10,), generator=gen).tolist()
    options = SamplingOptions(
        temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
        repeat_penalty=repeat_penalty, seed=seed,
    )
    sampler = Sampler(options)
    survivors = kept(sampler.process(x, history))
    assert survivors  # at least one token always stays
    if 0 < top_k < vocab:
        assert len(survivors) <= top_k
    for _ in range(5):
        assert sampler.sample(x, history) in survivors


def empirical(sampler: Sampler, x: torch.Tensor, draws: int) -> np.ndarray:
    counts = np.zeros(x.numel())
    for _ in range(draws):
        counts[sampler.sample(x, [])] += 1
    return counts / draws


def assert_frequencies(freq: np.ndarray, probs: np.ndarray, draws: int) -> None:
    # 5 standard errors per token, plus a floor for tiny probabilities
    tolerance = 5 * np.sqrt(probs * (1 - probs) / draws) + 1e-3
    assert np.all(np.abs(freq - probs) <= tolerance), (freq, probs)


def test_frequencies_match_softmax() -> None:
    draws = 20_000
    x = random_logits(torch.Generator().manual_seed(7), 10, scale=1.0)
    sampler = Sampler(SamplingOptions(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=11))
    probs = torch.softmax(x.double(), -1).numpy()
    assert_frequencies(empirical(sampler, x, draws), probs, draws)


def test_frequencies_match_truncated_tempered_softmax() -> None:
    draws = 20_000
    x = random_logits(torch.Generator().manual_seed(8), 12, scale=1.0)
    sampler = Sampler(SamplingOptions(temperature=0.7, top_k=6, top_p=1.0, min_p=0.0, seed=12))
    top = torch.topk(x, 6).indices
    scaled = torch.full_like(x, NEG_INF, dtype=torch.float64)
    scaled[top] = x[top].double() / 0.7
    probs = torch.softmax(scaled, -1).numpy()
    freq = empirical(sampler, x, draws)
    assert np.all(freq[probs == 0] == 0)
    assert_frequencies(freq, probs, draws)


# --------------------------------------------------------------------------- several rows at once (sample_rows)


def _each_alone(samplers: list[Sampler], logits: torch.Tensor, histories: list[list[int]]) -> list:
    """What ``sample`` gives (or raises) for each row on its own."""
    out: list[int | NumericalError] = []
    for sampler, row, history in zip(samplers, logits, histories):
        try:
            out.append(sampler.sample(row, history))
        except NumericalError as e:
            out.append(e)
    return out


def _comparable(results: list) -> list:
    """Tokens as they are, errors by type and message."""
    return [repr(r) if isinstance(r, Exception) else r for r in results]


def _assert_rows_as_alone(options: list[SamplingOptions], rounds: list[tuple[torch.Tensor, list[list[int]]]]) -> None:
    """Two sets of samplers from ``options``: one samples each round's rows together, the other each row alone."""
    together, alone = [Sampler(o) for o in options], [Sampler(o) for o in options]
    for step, (logits, histories) in enumerate(rounds):
        got = sample_rows(together, logits, histories)
        assert _comparable(got) == _comparable(_each_alone(alone, logits, histories)), f"round {step}"


def _sample_rows_watched(samplers: list[Sampler], logits: torch.Tensor, histories: list[list[int]],
                         monkeypatch: pytest.MonkeyPatch) -> tuple[list, list[int]]:
    """``sample_rows``, and the rows it hands to :func:`oxide.ops.sample` one by one."""
    seen: list[int] = []
    real = Sampler._chosen

    def chosen(self: Sampler, row: torch.Tensor, history, u: torch.Tensor) -> torch.Tensor:
        seen.append(row.data_ptr())
        return real(self, row, history, u)

    with monkeypatch.context() as patch:
        patch.setattr(Sampler, "_chosen", chosen)
        results = sample_rows(samplers, logits, histories)
    return results, sorted(i for i in range(len(logits)) if logits[i].data_ptr() in seen)


def _option_pool(seed: int, vocab: int) -> list[SamplingOptions]:
    return [
        SamplingOptions(seed=seed),                                                   # the server's defaults
        SamplingOptions(seed=seed + 1, top_k=5, top_p=0.5, temperature=1.5),
        SamplingOptions(seed=seed + 2, top_k=1),
        SamplingOptions(seed=seed + 3, top_k=100, min_p=0.2, temperature=0.3),
        SamplingOptions(seed=seed + 4, top_p=1.0, min_p=0.0),
        SamplingOptions(seed=seed + 5, temperature=1e-39),          # (l - l_max) / T overflows to -inf
        SamplingOptions(seed=seed + 6, temperature=0.0),
        SamplingOptions(seed=seed + 7, top_k=0),
        SamplingOptions(seed=seed + 8, repeat_penalty=1.3, frequency_penalty=0.2, presence_penalty=0.1),
        SamplingOptions(seed=seed + 9, top_k=vocab + 3),
        SamplingOptions(seed=seed + 10, top_k=41, top_p=0.99, min_p=0.0, temperature=2.0),
    ]


@pytest.mark.parametrize("vocab", [3000, 4096, 50])
def test_sample_rows_gives_each_row_what_it_gets_alone(vocab: int) -> None:
    """Random logits (some rounded, so that ties fall at and inside the top-k cut), 1 to 16 rows of mixed
    options, three steps each: the same tokens as each row sampled alone, with the same generator draws."""
    gen = torch.Generator().manual_seed(vocab)
    for trial in range(12):
        rows = int(torch.randint(1, 17, (), generator=gen))
        pool = _option_pool(100 * trial, vocab)
        options = [pool[int(i)] for i in torch.randint(0, len(pool), (rows,), generator=gen)]
        rounds = []
        for _ in range(3):
            logits = torch.randn(rows, vocab, generator=gen) * float(torch.empty(()).uniform_(0.1, 8.0, generator=gen))
            if trial % 2:
                logits = (logits * 4).round() / 4
            histories = [torch.randint(0, vocab, (int(torch.randint(0, 80, (), generator=gen)),),
                                       generator=gen).tolist() for _ in range(rows)]
            rounds.append((logits, histories))
        _assert_rows_as_alone(options, rounds)


def test_rows_that_draw_from_top_k_are_sampled_together(monkeypatch: pytest.MonkeyPatch) -> None:
    """Default options: every row is served together unless its k-th and (k+1)-th largest logits tie (-inf
    included) or its options are not a plain top-k draw; and the tokens are those of each row alone, whether the
    largest logits lie in whole chunks or past the last one."""
    gen = torch.Generator().manual_seed(3)
    vocab, k = 3000, SamplingOptions().top_k                     # 46 whole chunks of 64, then 56 logits
    logits = torch.randn(16, vocab, generator=gen) * 2.0
    logits[5, -56:] += 6.0                                       # row 5's top-k lies past the last whole chunk
    for row in (3, 7):                                           # a tie at the cut
        order = logits[row].argsort(descending=True)
        logits[row, order[k]] = logits[row, order[k - 1]]
    logits[9, 40:] = float("-inf")                               # 40 finite logits: the (k+1)-th is -inf
    logits[10, 39:] = float("-inf")                              # 39: the k-th is -inf, tied with the (k+1)-th
    logits[11, 100] = logits[11].max()                           # a tie at the top, inside the cut
    histories = [[1, 2, 3]] * 16
    options = [SamplingOptions(seed=row) for row in range(16)]
    others = {12: SamplingOptions(seed=12, repeat_penalty=1.2), 13: SamplingOptions(seed=13, temperature=0.0),
              14: SamplingOptions(seed=14, top_k=0)}
    for options, alone in ((options, [3, 7, 10]), ([others.get(i, o) for i, o in enumerate(options)],
                                                    [3, 7, 10, 12, 13, 14])):
        results, watched = _sample_rows_watched([Sampler(o) for o in options], logits, histories, monkeypatch)
        assert watched == alone
        assert _comparable(results) == _comparable(_each_alone([Sampler(o) for o in options], logits, histories))


@pytest.mark.parametrize("kind", ["default", "greedy", "penalties", "no top-k"])
def test_sample_rows_fails_only_the_failing_rows(kind: str) -> None:
    """NaN, +inf and all -inf rows get the NumericalError ``sample`` raises for them; the other rows their tokens,
    and the next step's draws stay in step with sampling alone."""
    base = {"default": {}, "greedy": {"temperature": 0.0}, "penalties": {"repeat_penalty": 1.5},
            "no top-k": {"top_k": 0}}[kind]
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(6, 3000, generator=gen)
    logits[1, 17] = float("nan")
    logits[2] = float("-inf")
    logits[4, 2999] = float("inf")
    options = [SamplingOptions(seed=row, **base) for row in range(6)]
    histories = [[17, 2999, 5]] * 6
    results = sample_rows([Sampler(o) for o in options], logits, histories)
    assert [type(r).__name__ for r in results] == ["int", "NumericalError", "NumericalError", "int", "NumericalError",
                                                   "int"]
    assert "NaN" in str(results[1]) and "no token has a finite logit" in str(results[2]) and "+inf" in str(results[4])
    _assert_rows_as_alone(options, [(logits, histories), (torch.randn(6, 3000, generator=gen), histories)])


def test_largest_gives_the_values_topk_gives() -> None:
    """The chunk search of sample_rows: the ``count`` largest values exactly as topk gives them, ties and -inf
    included, at ids that hold them."""
    gen = torch.Generator().manual_seed(5)
    for vocab, count in ((3000, 41), (3000, 1), (4096, 60), (2624, 41), (100, 41)):
        logits = (torch.randn(8, vocab, generator=gen) * 3).round()             # many ties
        logits[2, : vocab // 2] = float("-inf")
        logits[3, 1000 % vocab:] = float("-inf")
        logits[4] = 1.0
        index = torch.tensor([0, 2, 3, 4, 6])
        chunk_max, peaks = sampling._chunk_maxima(logits)
        assert torch.equal(peaks, logits.amax(dim=-1))
        values, ids = sampling._largest(logits, index, chunk_max[index], count)
        assert torch.equal(values, torch.topk(logits[index], count, dim=-1).values)
        assert torch.equal(logits[index].gather(1, ids), values)
        assert all(len(set(row)) == count for row in ids.tolist())


def test_sample_rows_checks_its_arguments() -> None:
    with pytest.raises(InvalidOptionError, match="logits of shape \\(10,\\)"):
        sample_rows([Sampler()], torch.randn(10), [[]])
    with pytest.raises(InvalidOptionError, match="2 samplers and 3 histories"):
        sample_rows([Sampler(), Sampler()], torch.randn(3, 10), [[], [], []])


def test_draws_together_pick_what_the_reference_picks_at_the_cdf_steps() -> None:
    """The draw of sample_rows over rows with tokens out of play (-inf), with each uniform put at, or one float
    either side of, a step of the reference's cdf (where a cdf a few ulps off picks another token): the reference's
    position in every row."""
    gen = torch.Generator().manual_seed(6)
    plain = SamplingOptions(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)   # the draw only
    logits = torch.randn(64, 41, generator=gen) * 3
    logits[torch.rand(64, 41, generator=gen) < torch.rand(64, 1, generator=gen)] = float("-inf")
    logits[:, 7] = 0.5                                                         # every row has one in play
    processed = Temperature(1.0)(logits, ())                                  # what the reference's draw sees
    u = torch.empty(64)
    for row, x in enumerate(processed):
        cdf = torch.cumsum(torch.softmax(x[x > NEG_INF], dim=-1), dim=-1)
        step = cdf[int(torch.randint(0, len(cdf), (), generator=gen))] / cdf[-1]
        toward = torch.tensor([0.0, float(step), 1.0][row % 3])
        u[row] = torch.nextafter(step, toward).clamp(max=1 - 2**-24)
    expected = [int(reference.sample(x, None, u[row], plain)) for row, x in enumerate(logits)]
    assert sampling._draw_rows(processed, u).tolist() == expected
