"""Counter-based random numbers: splitmix64 bit for bit, the same words eager, compiled and stacked, and integer
draws that are uniform and in range."""
from __future__ import annotations

import pytest
import torch

from ihmodel import counter_rng
from ihmodel.counter_rng import below, bits, mix64, normal, stream_keys, units

MASK = (1 << 64) - 1


def splitmix64_output(state: int) -> int:
    """The reference splitmix64 output function on unsigned Python ints."""
    z = state & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def as_unsigned(value: int) -> int:
    return value & MASK


def test_mix64_is_splitmix64_bit_for_bit():
    # splitmix64 seeded 1234567: its first output is the published 6457827717110365317
    first = mix64(torch.tensor([counter_rng._signed(1234567 + 0x9E3779B97F4A7C15)]))
    assert as_unsigned(first.item()) == 6457827717110365317

    words = torch.randint(-2**63, 2**63 - 1, (10_000,), generator=torch.Generator().manual_seed(0))
    expected = [splitmix64_output(as_unsigned(w)) for w in words.tolist()]
    assert [as_unsigned(w) for w in mix64(words).tolist()] == expected


def test_compiled_words_equal_eager_words():
    keys = stream_keys(torch.tensor([5, 6, 7]), 3)

    assert torch.equal(torch.compile(bits)(keys, 2, 32, 107), bits(keys, 2, 32, 107))


def test_a_keys_words_do_not_depend_on_the_keys_drawn_beside_it():
    keys = stream_keys(torch.tensor([11, 12, 13]), 40)

    alone = bits(keys[1:2], 0, 16, 9)
    stacked = bits(keys, 0, 16, 9)

    assert torch.equal(stacked[1:2], alone)
    assert not torch.equal(stacked[0], stacked[1])


def test_a_tensor_counter_gives_the_keys_of_an_int_counter():
    seeds = torch.tensor([0, 1, 2**40])
    for counter in (0, 1, 62_500, 2**40):
        assert torch.equal(stream_keys(seeds, torch.tensor(counter)), stream_keys(seeds, counter))


def test_draws_of_different_counters_and_purposes_differ():
    seeds = torch.tensor([3])
    words = [bits(stream_keys(seeds, c), p, 4, 4) for c in (0, 1) for p in (0, 1)]

    assert len({tuple(w.flatten().tolist()) for w in words}) == 4


@pytest.mark.parametrize("n", [2, 5, 50, 1623, 2**31 + 11])
def test_below_is_in_range_and_uniform(n):
    z = bits(stream_keys(torch.tensor([9]), 0), 0, 1000, 100).flatten()

    draws = below(z, n)

    assert draws.min() >= 0 and draws.max() < n
    if n <= 50:
        counts = torch.bincount(draws, minlength=n).double()
        expected = len(z) / n
        chi2 = ((counts - expected) ** 2 / expected).sum().item()
        assert chi2 < n + 6 * (2 * n) ** 0.5  # chi-square with n-1 degrees of freedom, far out in its tail
    else:
        assert abs(draws.double().mean().item() / (n - 1) - 0.5) < 0.01


def test_units_are_31_bit_and_normals_are_standard():
    z = bits(stream_keys(torch.tensor([21]), 0), 0, 1000, 200).flatten()

    u = units(z)
    x = normal(z)

    assert u.min() >= 0 and u.max() < 2**31
    assert abs(u.double().mean().item() / 2**31 - 0.5) < 0.005
    assert abs(x.mean().item()) < 0.01 and abs(x.std().item() - 1) < 0.01
    assert torch.isfinite(x).all()


def test_more_lanes_than_a_row_holds_is_refused():
    with pytest.raises(ValueError, match="at most 1048576 random numbers per row"):
        bits(torch.tensor([0]), 0, 1, 2**20 + 1)
