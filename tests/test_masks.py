import pytest
import torch

from fishtune.masks import build_mask


def scores(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"a": torch.rand(4, 5, generator=g), "b": torch.rand(7, generator=g), "c": torch.rand(3, 2, generator=g)}


@pytest.mark.parametrize("mode", ["fish", "rand", "rev"])
@pytest.mark.parametrize("k", [0, 1, 13, 33])
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
    with pytest.raises(ValueError, match=r"unknown mask mode 'best'; choose one of: none, fish, rand, rev"):
        build_mask(scores(), 3, "best")
