"""The Triton sampling kernels (``oxide.kernels.sampling``) against :func:`oxide.ops.reference.sample` and
:func:`oxide.ops.reference.sample_filter`.

Without a CUDA device the kernels run under Triton's interpreter (tests/conftest.py), so vocabularies are
small: 1000 ids (one block) and 5000 (five blocks, the last partial). Logits are seeded random normals with
some -inf ids, and ties placed where the chain must break them by id: at the top-k cut, across the top-p
boundary and at the maximum. Every buffer the kernels fill (the id, the processed logits, the top-k scratch)
is poisoned first (NaN, or -7 for integers), so an unwritten element fails.

Tolerances: ``sample_filter`` must keep exactly the reference's set of tokens; the kept values
``(x - max) / T`` come from the same float32 operations, within 1e-6 relative. ``sample`` must pick the
reference's id for uniforms taken mid-way between two steps of the reference's CDF (float32 sums in
another order may move a step by a few ulps, never by half a step).
"""

from __future__ import annotations

import pytest
import torch

import oxide.ops as ops
from oxide.errors import InvalidOptionError
from oxide.kernels import sampling as kernel
from oxide.ops import dispatch, reference
from oxide.ops.reference import SAMPLE_NAN, SAMPLE_NO_FINITE
from oxide.processors import SamplingOptions, TopK
from oxide.sampling import Sampler

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
NEG_INF = float("-inf")


@pytest.fixture(autouse=True)
def poisoned_buffers(monkeypatch):
    def poisoned(shape, dtype, device):
        return torch.full(shape, float("nan") if dtype.is_floating_point else -7, dtype=dtype, device=device)

    monkeypatch.setattr(kernel, "_empty", poisoned)


def options(**fields) -> SamplingOptions:
    """Every stage off (temperature 1) but those given."""
    return SamplingOptions(**{"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "seed": 0, **fields})


def logits_with_ties(seed: int, vocab: int, k: int = 37) -> torch.Tensor:
    """Normals (scale 3) with 2% -inf ids; the k-th largest value copied to 4 more ids spread over the
    vocabulary (a tie across the top-k cut); and the 3rd largest value copied to 3 more ids (a tie group
    near the top, where the top-p boundary is put)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(vocab, generator=g) * 3
    x[torch.randperm(vocab, generator=g)[: vocab // 50]] = NEG_INF
    order = torch.sort(x, descending=True, stable=True).indices
    x[torch.randperm(vocab, generator=g)[:4]] = float(x[order[k - 1]])
    order = torch.sort(x, descending=True, stable=True).indices
    x[order[torch.tensor([5, 9, 13])]] = float(x[order[2]])
    return x


def random_counts(seed: int, vocab: int) -> torch.Tensor:
    """Penalty-window counts: 0 for most ids, 1 to 3 for about one in five."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, 4, (vocab,), generator=g, dtype=torch.int32)
    return torch.where(torch.rand(vocab, generator=g) < 0.2, counts, 0)


def p_inside_tie_group(x: torch.Tensor, top_k: int) -> float:
    """A top-p value whose boundary falls inside the tie group at the 3rd largest logit (after top-k):
    mid-way between the mass before its 2nd member and the mass through it."""
    if top_k:
        x = TopK(top_k)(x, ())
    order = torch.sort(x, descending=True, stable=True).indices
    cum = torch.cumsum(torch.softmax(x.double(), 0)[order], 0)
    tied = (x[order] == x[order[2]]).nonzero().flatten()
    assert len(tied) >= 3
    second = int(tied[1])
    return float(cum[second - 1] + cum[second]) / 2


def assert_same_filter(x: torch.Tensor, counts: torch.Tensor | None, opts: SamplingOptions) -> torch.Tensor:
    got = kernel.sample_filter(x, counts, opts)
    want = reference.sample_filter(x, counts, opts)
    assert got.shape == want.shape and got.dtype == torch.float32 and not got.isnan().any()
    kept = torch.isfinite(want)
    assert torch.equal(torch.isfinite(got), kept), (torch.isfinite(got) ^ kept).nonzero().flatten()
    assert kept.any()
    assert (got[~kept] == NEG_INF).all()
    torch.testing.assert_close(got[kept], want[kept], rtol=1e-6, atol=0)
    return want


def mid_step_uniforms(processed: torch.Tensor, at_most: int) -> list[float]:
    """Uniforms mid-way between consecutive steps of the reference's CDF over the kept tokens (ascending id),
    one per kept token with a step wide enough (1e-4 of the total), evenly thinned to ``at_most``."""
    kept = torch.isfinite(processed)
    cdf = torch.cumsum(torch.softmax(processed[kept].double(), 0), 0)
    before = torch.cat([cdf.new_zeros(1), cdf[:-1]])
    wide = (cdf - before) > 1e-4
    mids = ((before + cdf) / 2)[wide]
    return mids[torch.linspace(0, len(mids) - 1, min(at_most, len(mids))).round().long()].tolist()


# --- sample_filter: each stage alone and the chain ----------------------------------------------------------

K = 37


def stage_cases(vocab: int) -> dict[str, tuple[SamplingOptions, bool]]:
    """name -> (options, whether penalty counts are passed)."""
    x = logits_with_ties(0, vocab)
    return {
        "top_k": (options(top_k=K), False),
        "top_k_1": (options(top_k=1), False),
        "top_k_v_minus_1": (options(top_k=vocab - 1), False),
        "top_p": (options(top_p=p_inside_tie_group(x, 0)), False),
        "min_p": (options(min_p=0.2), False),
        "temperature": (options(temperature=0.7), False),
        "penalties": (options(repeat_penalty=1.3, frequency_penalty=0.2, presence_penalty=0.1), True),
        "penalties_without_counts": (options(repeat_penalty=1.3, frequency_penalty=0.2), False),
        "chain": (options(top_k=K, top_p=p_inside_tie_group(x, K), min_p=0.01, temperature=0.8), False),
        "chain_penalties": (SamplingOptions(repeat_penalty=1.2, frequency_penalty=0.3, presence_penalty=-0.2), True),
        "greedy_penalties": (SamplingOptions(temperature=0.0, repeat_penalty=1.3, frequency_penalty=0.2), True),
    }


@pytest.mark.parametrize("case", list(stage_cases(1000)))
def test_filter_matches_reference(case: str) -> None:
    opts, with_counts = stage_cases(1000)[case]
    x = logits_with_ties(0, 1000)
    assert_same_filter(x, random_counts(1, 1000) if with_counts else None, opts)


def test_filter_ties_are_cut_by_id() -> None:
    """The cases above do cut tie groups: top-k keeps part of the group at its cut, top-p part of its group."""
    x = logits_with_ties(0, 1000)
    at_cut = x == torch.sort(x, descending=True).values[K - 1]
    kept = torch.isfinite(reference.sample_filter(x, None, options(top_k=K)))
    assert 0 < int((kept & at_cut).sum()) < int(at_cut.sum())
    group = x == torch.sort(x, descending=True).values[2]
    kept = torch.isfinite(reference.sample_filter(x, None, options(top_p=p_inside_tie_group(x, 0))))
    assert 0 < int((kept & group).sum()) < int(group.sum())


@pytest.mark.parametrize("case", ["top_k", "top_p", "chain_penalties"])
def test_filter_five_blocks(case: str) -> None:
    opts, with_counts = stage_cases(5000)[case]
    assert_same_filter(logits_with_ties(2, 5000), random_counts(3, 5000) if with_counts else None, opts)


def test_filter_top_k_beyond_the_finite_logits() -> None:
    """Top-k keeps -inf ids when fewer than k are finite; they stay out of play."""
    x = torch.full((1000,), NEG_INF)
    x[torch.randperm(1000, generator=torch.Generator().manual_seed(4))[:20]] = torch.randn(20)
    assert_same_filter(x, None, options(top_k=K, top_p=0.9))


# --- sample --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case, vocab, draws", [("chain", 1000, 10), ("top_p", 1000, 8), ("temperature", 1000, 6),
                                                ("chain_penalties", 5000, 6)])
def test_sample_matches_reference(case: str, vocab: int, draws: int) -> None:
    opts, with_counts = stage_cases(vocab)[case]
    x = logits_with_ties(5, vocab)
    counts = random_counts(6, vocab) if with_counts else None
    picked = set()
    for u in mid_step_uniforms(reference.sample_filter(x, counts, opts), draws):
        u = torch.tensor(u, dtype=torch.float32)
        got = kernel.sample(x, counts, u, opts)
        assert got.shape == () and got.dtype == torch.int64
        assert int(got) == int(reference.sample(x, counts, u, opts)), u
        picked.add(int(got))
    assert len(picked) >= min(draws, 3)


def test_greedy_is_the_first_maximum() -> None:
    greedy = SamplingOptions(temperature=0.0, repeat_penalty=1.3, frequency_penalty=0.2)
    x, counts = logits_with_ties(7, 5000), random_counts(8, 5000)
    u = torch.tensor(0.5)
    assert int(kernel.sample(x, counts, u, greedy)) == int(reference.sample(x, counts, u, greedy))
    tied = torch.tensor([0.1, 2.0, -1.0, 2.0] * 300)
    assert int(kernel.sample(tied, None, torch.tensor(0.5), SamplingOptions.greedy())) == 1
    tied[1100] = 3.0   # in the second block
    assert int(kernel.sample(tied, None, torch.tensor(0.5), SamplingOptions.greedy())) == 1100


@pytest.mark.filterwarnings("ignore:invalid value encountered")   # the interpreter's numpy: -inf - -inf
def test_invalid_logits_give_the_reference_codes() -> None:
    x = torch.randn(1000)
    x[700] = float("nan")
    for opts in (SamplingOptions(), options()):
        assert int(kernel.sample(x, None, torch.tensor(0.5), opts)) == SAMPLE_NAN
    assert int(kernel.sample(x, None, torch.tensor(0.5), SamplingOptions.greedy())) == 700   # argmax: NaN first
    void = torch.full((1000,), NEG_INF)
    for opts in (SamplingOptions(), options()):
        assert int(kernel.sample(void, None, torch.tensor(0.5), opts)) == SAMPLE_NO_FINITE
        assert int(reference.sample(void, None, torch.tensor(0.5), opts)) == SAMPLE_NO_FINITE


def test_bad_arguments_name_the_value() -> None:
    x = torch.randn(100)
    with pytest.raises(InvalidOptionError, match="counts"):
        kernel.sample(x, torch.zeros(100, dtype=torch.int64), torch.tensor(0.5), SamplingOptions(repeat_penalty=1.1))
    with pytest.raises(InvalidOptionError, match="u must be"):
        kernel.sample(x, None, 0.5, SamplingOptions())
    with pytest.raises(InvalidOptionError, match="logits"):
        kernel.sample_filter(x.reshape(10, 10), None, SamplingOptions())


def test_sampler_through_the_kernel(monkeypatch) -> None:
    """``OXIDE_IMPL=triton`` sends the Sampler's draws to the kernel: equal seeds give equal ids, the same ids as
    the reference's (the same uniforms), and another seed other ids."""
    opts = SamplingOptions(temperature=1.5, top_k=200, top_p=0.98, min_p=0.0, repeat_penalty=1.1, seed=21)
    g = torch.Generator().manual_seed(9)
    steps = [torch.randn(1000, generator=g) for _ in range(4)]

    def run(impl: str, seed_options: SamplingOptions) -> list[int]:
        monkeypatch.setenv("OXIDE_IMPL", impl)
        monkeypatch.setattr(dispatch, "_RESOLVED", {})
        assert dispatch.chosen_name("sample", "cpu", torch.float32) == impl
        sampler, history = Sampler(seed_options), [3, 5, 3]
        for x in steps:
            history.append(sampler.sample(x, history))
        return history[3:]

    first = run("triton", opts)
    assert first == run("triton", opts) == run("torch", opts)
    assert first != run("triton", SamplingOptions(**{**opts.__dict__, "seed": 22}))


# --- CUDA: a real vocabulary ------------------------------------------------------------------------------------

@cuda
@pytest.mark.parametrize("case", ["top_k", "top_p", "min_p", "chain", "chain_penalties", "greedy_penalties"])
def test_full_vocabulary_cuda(case: str) -> None:
    vocab = 262_144
    opts, with_counts = stage_cases(vocab)[case]
    x = logits_with_ties(0, vocab).cuda()
    counts = random_counts(1, vocab).cuda() if with_counts else None
    want = assert_same_filter(x, counts, opts)
    for u in mid_step_uniforms(want, 20):
        u = torch.tensor(u, dtype=torch.float32, device="cuda")
        assert int(kernel.sample(x, counts, u, opts)) == int(reference.sample(x, counts, u, opts))
    assert ops.sample(x, counts, u, opts).device == x.device
