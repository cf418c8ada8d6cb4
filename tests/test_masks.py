from fractions import Fraction

import pytest
import torch

from fishtune.masks import build_mask, mask_placement


def scores(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"a": torch.rand(4, 5, generator=g), "b": torch.rand(7, generator=g), "c": torch.rand(3, 2, generator=g)}


@pytest.mark.parametrize("mode", ["fish", "rand", "rev", "fish_shuffled", "fish_spread"])
@pytest.mark.parametrize("k", [0, 1, 13, 32, 33])
def test_exactly_k_entries(mode, k):
    m = build_mask(scores(), k, mode)
    assert sum(int(v.sum()) for v in m.values()) == k
    assert {n: v.shape for n, v in m.items()} == {n: v.shape for n, v in scores().items()}
    assert all(v.dtype == torch.bool for v in m.values())


def test_fish_is_global_top_k_and_rev_bottom_k():
    s = scores()
    flat = torch.cat([v.flatten() for v in s.values()])
    for mode, pick in (("fish", flat.topk(10).values), ("rev", (-flat).topk(10).values.neg())):
        chosen = torch.cat([v[build_mask(s, 10, mode)[n]] for n, v in s.items()])
        assert torch.equal(chosen.sort().values, pick.sort().values)


def test_modes_differ_and_are_deterministic():
    s = scores()
    masks = {mode: build_mask(s, 12, mode, seed=42) for mode in ("fish", "rand", "rev")}
    flat = {mode: torch.cat([v.flatten() for v in m.values()]) for mode, m in masks.items()}
    assert not torch.equal(flat["fish"], flat["rand"]) and not torch.equal(flat["fish"], flat["rev"])
    assert not (flat["fish"] & flat["rev"]).any()  # 12 + 12 < 33: top and bottom never meet
    for mode in masks:
        again = torch.cat([v.flatten() for v in build_mask(s, 12, mode, seed=42).values()])
        assert torch.equal(again, flat[mode])
    other_seed = torch.cat([v.flatten() for v in build_mask(s, 12, "rand", seed=7).values()])
    assert not torch.equal(other_seed, flat["rand"])


def test_ties_break_by_position():
    s = {"x": torch.zeros(3), "y": torch.zeros(2, 2)}
    m = build_mask(s, 4, "fish")
    assert m["x"].tolist() == [True, True, True] and m["y"].tolist() == [[True, False], [False, False]]
    m = build_mask(s, 2, "rev")
    assert m["x"].tolist() == [True, True, False] and not m["y"].any()


def test_none_keeps_everything_and_bad_input_is_refused():
    assert all(v.all() for v in build_mask(scores(), 0, "none").values())
    with pytest.raises(ValueError, match=r"k=34 is impossible: there are 33 candidate entries"):
        build_mask(scores(), 34, "fish")
    with pytest.raises(ValueError, match=r"unknown mask mode 'best'; choose one of: none, fish, rand, rev, fish_shuffled, fish_spread"):
        build_mask(scores(), 3, "best")


def counts(masks):
    return {n: int(m.sum()) for n, m in masks.items()}


def big_scores(seed=0):
    g = torch.Generator().manual_seed(seed)
    # tensors of unequal size and scale, so that fish's allocation is far from proportional
    return {"q": torch.rand(8, 16, generator=g) * 10, "k": torch.rand(8, 16, generator=g), "b": torch.rand(5, generator=g),
            "v": torch.rand(3, 7, generator=g) * 3}


@pytest.mark.parametrize("k", [1, 17, 100, 250])
def test_fish_shuffled_keeps_fish_counts_per_tensor_with_random_entries(k):
    s = big_scores()
    fish, shuffled = build_mask(s, k, "fish"), build_mask(s, k, "fish_shuffled", seed=3)
    assert counts(shuffled) == counts(fish)
    assert counts(build_mask(s, k, "fish_shuffled", seed=4)) == counts(fish)
    assert all(torch.equal(shuffled[n], m) for n, m in build_mask(s, k, "fish_shuffled", seed=3).items())
    # random within each tensor: not fish's entries, and another seed draws others
    assert any(not torch.equal(shuffled[n], fish[n]) for n in s if 0 < counts(fish)[n] < s[n].numel())
    other = build_mask(s, k, "fish_shuffled", seed=4)
    assert any(not torch.equal(shuffled[n], other[n]) for n in s if 0 < counts(fish)[n] < s[n].numel())


def hamilton(sizes, k):
    """Largest-remainder apportionment with exact fractions: the independent reference."""
    total = sum(sizes)
    quotas = [Fraction(k * n, total) for n in sizes]
    out = [int(q) for q in quotas]  # floor
    by_remainder = sorted(range(len(sizes)), key=lambda i: (-(quotas[i] - out[i]), i))
    for i in by_remainder[:k - sum(out)]:
        out[i] += 1
    return out


@pytest.mark.parametrize("k", [0, 1, 17, 100, 250, 282])
def test_fish_spread_allocates_by_size_and_takes_the_top_fisher_entries_within(k):
    s = big_scores()
    spread = build_mask(s, k, "fish_spread")
    assert list(counts(spread).values()) == hamilton([v.numel() for v in s.values()], k)
    assert sum(counts(spread).values()) == k
    for n, v in s.items():
        c = counts(spread)[n]
        if c:  # the chosen are that tensor's c largest scores
            assert torch.equal(v[spread[n]].sort().values, v.flatten().topk(c).values.sort().values)
    # rand gets the same allocation on average: its mean count per tensor over seeds is near the quota
    mean = {n: sum(counts(build_mask(s, 100, "rand", seed=i))[n] for i in range(200)) / 200 for n in s}
    for n, c in zip(s, hamilton([v.numel() for v in s.values()], 100)):
        assert abs(mean[n] - c) < 2.0


def top_entries(v, c):
    """Flat indices of the c largest scores of one tensor, slowly: a plain Python sort of (score, index),
    ties to the earlier index."""
    values = v.flatten().tolist()
    return set(sorted(range(len(values)), key=lambda i: (-values[i], i))[:c])


def chosen_entries(mask):
    return set(torch.nonzero(mask.flatten()).flatten().tolist())


@pytest.mark.parametrize("k", [17, 60, 250])
def test_the_four_modes_are_the_2x2_design(k):
    """Where the budget goes x which entries get it: fish = (by Fisher, top entries), fish_shuffled =
    (by Fisher, random entries), fish_spread = (by size, top entries), rand = (by size on average, random
    entries; test_fish_spread_... checks its mean). Each cell against a slow reference on known scores
    whose tensors differ in scale, so that the Fisher allocation is far from the size allocation."""
    s = big_scores()
    sizes = {n: v.numel() for n, v in s.items()}
    # Fisher allocation: how many of the global top-k (a plain sort over every entry) fall in each tensor.
    ranked = sorted(((v.flatten()[i].item(), n) for n, v in s.items() for i in range(sizes[n])), key=lambda t: -t[0])
    by_fisher = {n: sum(1 for _, m in ranked[:k] if m == n) for n in s}
    by_size = dict(zip(s, hamilton(list(sizes.values()), k)))
    assert by_fisher != by_size  # else the two rows of the design could not be told apart here
    masks = {mode: build_mask(s, k, mode, seed=3) for mode in ("fish", "fish_shuffled", "fish_spread")}
    assert all(sum(counts(m).values()) == k for m in masks.values())

    # where the budget goes
    assert counts(masks["fish"]) == counts(masks["fish_shuffled"]) == by_fisher
    assert counts(masks["fish_spread"]) == by_size
    # which entries get it: the top ones of each tensor ...
    for mode, allocation in (("fish", by_fisher), ("fish_spread", by_size)):
        assert {n: chosen_entries(masks[mode][n]) for n in s} == {n: top_entries(s[n], allocation[n]) for n in s}, mode
    # ... or random ones: over seeds, the share of a tensor's c picks that land on its top c is c / n on
    # average (hypergeometric), where the top entries would give 1.
    partial = [n for n in s if 0 < by_fisher[n] < sizes[n]]
    assert partial
    for n in partial:
        c, top = by_fisher[n], top_entries(s[n], by_fisher[n])
        shares = [len(chosen_entries(build_mask(s, k, "fish_shuffled", seed=i)[n]) & top) / c for i in range(100)]
        assert abs(sum(shares) / len(shares) - c / sizes[n]) < 0.1, n


def test_mask_placement_counts_per_tensor_with_layer_and_module():
    masks = {"base_model.model.bert.encoder.layer.3.attention.self.query.lora_A.default.weight": torch.tensor([True, False]),
             "base_model.model.classifier.modules_to_save.default.weight": torch.ones(2, 3, dtype=torch.bool)}
    assert mask_placement(masks) == [
        {"name": list(masks)[0], "layer": 3, "module": "query.lora_A", "chosen": 1, "entries": 2},
        {"name": list(masks)[1], "layer": None, "module": "other", "chosen": 6, "entries": 6}]
