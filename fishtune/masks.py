"""Masks over the candidate parameters: which entries a run trains.

Modes: `none` (train everything), `fish` (the k largest Fisher scores), `rev` (the k smallest),
`rand` (k uniformly at random, seeded). Selection is global over all candidate tensors.
"""
from __future__ import annotations

from typing import Mapping

import torch

MODES = ("none", "fish", "rand", "rev")


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown mask mode {mode!r}; choose one of: {', '.join(MODES)}")


def build_mask(scores: Mapping[str, torch.Tensor], k: int, mode: str, seed: int = 42) -> dict[str, torch.Tensor]:
    """Boolean masks shaped like `scores`, with exactly k True entries in all (mode none: all True).

    Ties are broken deterministically by position: tensors in the order of `scores` (the model's
    parameter order), then row-major index. `rand` ignores the scores' values.
    """
    check_mode(mode)
    names = list(scores)
    shapes = [scores[n].shape for n in names]
    flat = torch.cat([scores[n].detach().reshape(-1).to("cpu", torch.float64) for n in names]) if names \
        else torch.zeros(0, dtype=torch.float64)
    total = flat.numel()
    if mode == "none":
        keep = torch.ones(total, dtype=torch.bool)
    else:
        if not 0 <= k <= total:
            raise ValueError(f"mask budget k={k} is impossible: there are {total} candidate entries (allowed 0..{total})")
        if torch.isnan(flat).any():
            raise ValueError("Fisher scores contain NaN; cannot rank them")
        if mode == "rand":
            order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
        else:  # a stable sort keeps ties in position order
            order = torch.sort(flat, descending=(mode == "fish"), stable=True).indices
        keep = torch.zeros(total, dtype=torch.bool)
        keep[order[:k]] = True
    out, start = {}, 0
    for name, shape in zip(names, shapes):
        n = shape.numel()
        out[name] = keep[start:start + n].reshape(shape)
        start += n
    return out


def save_mask_file(path, masks: Mapping[str, torch.Tensor], fisher_seconds: float = 0.0) -> None:
    """A run's mask beside its result file, with what the Fisher cost (a resumed run reports it)."""
    torch.save({"masks": dict(masks), "fisher_seconds": float(fisher_seconds)}, path)


def load_mask_file(path) -> tuple[dict[str, torch.Tensor], float]:
    """(masks, fisher_seconds) of a mask file; files from before fisher_seconds was kept give 0."""
    saved = torch.load(path)
    if isinstance(saved.get("masks"), dict):
        return saved["masks"], float(saved.get("fisher_seconds", 0.0))
    return saved, 0.0
