"""Masks over the candidate parameters: which entries a run trains.

Modes: `none` (train everything), `fish` (the k largest Fisher scores), `rev` (the k smallest),
`rand` (k uniformly at random, seeded). Selection is global over all candidate tensors.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch

from .results import set_aside
from .validate import MASK_MODES as MODES, check_mode  # the vocabulary, checked without torch


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


def read_mask_file(path: Path, like: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], float] | None:
    """load_mask_file for a run that resumes: None when there is no file, or when it is damaged (unreadable,
    truncated, or not shaped like the run's candidate tensors `like`); a damaged one is set aside as
    `<name>.damaged` with a warning, and the run builds its mask again."""
    if not path.exists():
        return None
    try:
        masks, fisher_seconds = load_mask_file(path)
        if set(masks) != set(like) or any(tuple(masks[n].shape) != tuple(q.shape) for n, q in like.items()):
            raise ValueError("its tensors are not the run's candidates")
    except Exception as e:  # noqa: BLE001 - whatever torch.load makes of a broken file, it cannot be used
        set_aside(path, f"{type(e).__name__}: {e}".splitlines()[0][:200] + "; the mask is built again")
        return None
    return masks, fisher_seconds


def load_mask_file(path) -> tuple[dict[str, torch.Tensor], float]:
    """(masks, fisher_seconds) of a mask file; files from before fisher_seconds was kept give 0."""
    saved = torch.load(path)
    if isinstance(saved.get("masks"), dict):
        return saved["masks"], float(saved.get("fisher_seconds", 0.0))
    return saved, 0.0
