"""Cutting padding out of a batch without changing what is computed for any sample.

A dynamically padded batch is as long as its longest sample; on GLUE most samples are far shorter
(SST-2: random batches of 32 are ~3x longer than their mean sample). In a right-padded batch the
columns past a sample's length are padding that the attention mask hides from every real token, so
a sample's outputs, loss and gradients do not depend on them, nor on the other samples of the batch
(transformers have no batch-norm). `length_groups` therefore splits a batch into groups of similar
length, each cut to its own longest sample: the per-sample results stay the same (up to float
rounding), only less padding is computed. The batch itself (which samples share one optimiser step)
is left alone, which is what keeps training results honest.

On CPU the cost of a forward/backward grows with its padded tokens, and a group of a few hundred
tokens already keeps the matrix products fast: splitting pays (bert-base on 2 cores: the Fisher of
128 RTE samples ~1.4x faster, an SST-2 training step ~2x faster; docs/BENCH.md). On GPU a batch
this size is bound by kernel launches, not by its tokens, so batches are left whole there.
"""
from __future__ import annotations

import math
from typing import Mapping

import torch

# What one more forward/backward costs on CPU, in tokens' worth of work, for bert-base: measured on
# 2 threads, best for SST-2 training batches (a step 2x faster than unsplit) and as good as 128-512
# for RTE Fisher chunks (~1.4x faster); far less makes the groups so small that matrix products slow.
COST_TOKENS_BERT_BASE = 64


def group_cost_tokens(model) -> float:
    """One more forward/backward of `model` on CPU, in tokens' worth of work.

    A pass has a fixed cost (Python, op dispatch, small matrix products running below speed) while
    a token costs more the wider the model: scaled from bert-base by 768 / hidden_size (MiniLM, 384
    wide: 128, where 64 and 256 were measured within 10 % of each other; a tiny test model, 32
    wide, is practically never split). Deliberately not scaled by the thread count, although the
    best value grows with it: the groups decide which dropout masks a training step draws, so they
    must follow from the config and the data alone, for the same results on every CPU.
    No `hidden_size` in the config: never split.
    """
    hidden = getattr(getattr(model, "config", None), "hidden_size", None)
    if not hidden:
        return math.inf
    return COST_TOKENS_BERT_BASE * 768 / hidden


# Batch entries that are no model input: the targets, and an example's position (which evaluation
# carries to restore the order).
NOT_INPUTS = ("labels", "idx")


def model_inputs(batch: Mapping[str, torch.Tensor], device: torch.device | str) -> tuple[dict, torch.Tensor]:
    """(the model's keyword inputs, the labels) of a collated batch, on `device` (NOT_INPUTS left out)."""
    inputs = {k: v.to(device) for k, v in batch.items() if k not in NOT_INPUTS}
    return inputs, batch["labels"].to(device)


def right_aligned(batch: Mapping[str, torch.Tensor]) -> dict:
    """`batch` with left padding moved to the right: in every tensor laid out like a 2-D
    `attention_mask` (input_ids, labels, token_type_ids, ...), each row's real tokens first, in their
    order, then its padding. Any other batch comes back as it is (as a new dict).

    Without position_ids a model numbers a row's columns 0, 1, ..., so a left-padded sample is seen at
    positions shifted by its padding, and GPT-2's learned position embeddings give it other outputs
    than the sample alone (rotary embeddings differ only by rounding). Right-aligned, a sample is at
    positions 0..L-1 as when it is alone, which keeps a per-sample quantity (the Fisher) independent of
    the batch it is in, and length_groups can then cut the padding."""
    mask = batch.get("attention_mask")
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
        return dict(batch)
    lengths = mask.sum(1)
    if _right_padded(mask, lengths) or not torch.equal(
            mask.bool(), torch.arange(mask.shape[1], device=mask.device) >= mask.shape[1] - lengths[:, None]):
        return dict(batch)  # right-padded already, or padding of another layout: left alone
    # The columns of each row in their new order: its real tokens (mask 1), then its padding.
    order = torch.argsort((mask == 0).to(torch.int8), dim=1, stable=True)
    rows = torch.arange(mask.shape[0], device=mask.device)[:, None]
    return {k: v[rows, order] if isinstance(v, torch.Tensor) and v.shape[:2] == mask.shape else v
            for k, v in batch.items()}


def _right_padded(mask: torch.Tensor, lengths: torch.Tensor) -> bool:
    """Every row is ones then zeros (also true for a batch without padding)."""
    return torch.equal(mask.bool(), torch.arange(mask.shape[1], device=mask.device) < lengths[:, None])


def length_groups(batch: Mapping[str, torch.Tensor], device: torch.device | str,
                  cost_tokens: float) -> list[dict]:
    """`batch` as sub-batches of samples of similar length, each cut to its own longest sample.

    Only on CPU, and only for right-padded batches with a 2-D `attention_mask`; otherwise (or when
    nothing is gained) the batch comes back whole, as the one element of the list. Tensors shaped
    like the attention mask are cut in both dimensions, tensors with one row per sample are indexed
    by rows, anything else is passed through. Groups are optimal: dynamic programming over the
    samples sorted by length minimises padded tokens plus `cost_tokens` per group
    (group_cost_tokens(model) for the model that computes them).
    """
    mask = batch.get("attention_mask")
    if torch.device(device).type != "cpu" or mask is None or mask.dim() != 2 or not math.isfinite(cost_tokens):
        return [dict(batch)]
    lengths = mask.sum(1)
    if not _right_padded(mask, lengths):
        return [dict(batch)]
    order = torch.argsort(lengths, stable=True)
    lens = lengths[order].tolist()
    n = len(lens)
    # best[j]: least cost of the j shortest samples; a group (i, j] is padded to lens[j - 1].
    best, cut = [0.0] + [math.inf] * n, [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):
            cost = best[i] + (j - i) * lens[j - 1] + cost_tokens
            if cost < best[j]:
                best[j], cut[j] = cost, i
    bounds, j = [], n
    while j:
        bounds.append((cut[j], j))
        j = cut[j]
    if len(bounds) == 1 and lens[-1] == mask.shape[1]:
        return [dict(batch)]  # one group, no padding column to cut: the batch as it is

    def take(v: torch.Tensor, rows: torch.Tensor, width: int):
        if v.shape[:2] == mask.shape:
            return v[rows, :width]
        return v[rows] if v.dim() >= 1 and v.shape[0] == n else v

    groups = []
    for i, j in reversed(bounds):
        rows = order[i:j]
        groups.append({k: take(v, rows, lens[j - 1]) for k, v in batch.items()})
    return groups
