"""The mask modes: one ModeSpec per mode in MODES, read by the library, the harness and the reports.

Importing this module imports no torch (config checks read it before torch loads); the scores'
functions import what they need when they run.

A mode says what ranks the entries (`score`: the empirical Fisher, SNIP's |theta x grad|, or
nothing), how many train (`trains`: k, the original run's count, so budget-matched; everything; or the
head only), which it takes (`pick`: the largest or smallest scores, or at random), where the budget
goes (`allocation`: one ranking over all tensors, fish's count per tensor, or each tensor's share by
size), which zero-score choices it counts (`zero_score`), its row in the study views (`row`), and
whether the library's fish_masks and build_mask take it or only the harness (`library`). The
harness reads the rest: the layers it is inserted on, progressive freezing (adaptive) and the modes a
run may start from (`mask.start`).

Adding a mode: one ModeSpec in MODES and one conf/mask/<name>.yaml (conf/ is also fishtune/conf, a
link). build_mask, fish_masks, the config checks, the run, its result file and the reports follow.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping


@dataclass(frozen=True)
class Score:
    """What ranks a mode's entries. `compute(model, batches, num_samples, loss_fn)` returns, for every
    parameter with requires_grad, a tensor shaped like it, from the first `num_samples` samples of
    `batches` (the harness: fisher.samples training samples), dropout off, the model left as it came."""
    name: str                          # as messages name it: "only 3 ... have a non-zero Fisher score"
    compute: Callable[..., dict]


def _fisher(model, batches, num_samples, loss_fn) -> dict:
    """The empirical Fisher diagonal, sum_n (d loss_n / d theta)^2 (fishtune.fisher.empirical_fisher)."""
    from .fisher import empirical_fisher

    return empirical_fisher(model, batches, num_samples, loss_fn=loss_fn)


def _theta_grad(model, batches, num_samples, loss_fn) -> dict:
    """SNIP's connection sensitivity (Lee et al., 2019) at the inserted weights: |theta_i * dL/dtheta_i|
    with L = sum_n loss_n over the same samples the Fisher reads. One batch gradient per batch (the sum
    of the per-sample gradients, not their squares); left padding moved to the right first, so that each
    sample's loss is its loss alone (fishtune.batching.right_aligned)."""
    import torch

    from .batching import right_aligned
    from .fisher import _batch_size, _per_sample, _take_samples, _to, check_loss_fn, default_loss

    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError("the model has no trainable parameters to score")
    check_loss_fn(loss_fn)
    grads = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    device = next(iter(params.values())).device
    flags = [(m, m.training) for m in model.modules()]  # every module's own flag, as empirical_fisher keeps them
    model.eval()
    try:
        for batch in _take_samples(batches, num_samples):
            batch = _to(right_aligned(batch), device)
            loss = _per_sample(loss_fn or default_loss, model, batch, _batch_size(batch)).sum()
            # autograd.grad leaves any .grad the caller holds as it is
            for name, g in zip(params, torch.autograd.grad(loss, list(params.values()), allow_unused=True)):
                if g is not None:
                    grads[name] += g.float()
    finally:
        for m, training in flags:
            m.training = training
    return {n: (p.detach().float() * grads[n]).abs() for n, p in params.items()}


FISHER = Score("Fisher", _fisher)
THETA_GRAD = Score("|theta x grad|", _theta_grad)

TRAINS = ("k", "all", "head")
PICKS = ("largest", "smallest", "random")
ALLOCATIONS = ("global", "fish", "size")
ZERO_SCORE = ("chosen", "allocation")


@dataclass(frozen=True)
class ModeSpec:
    """One mask mode: what it scores, what it trains, and who reads it (module docstring)."""
    name: str
    # What ranks the entries, estimated on fisher.samples training samples; None: the mode reads no samples
    # (its fisher_seconds is 0 and its result file has no zero_fisher_filled).
    score: Score | None = None
    # k: k entries, the original run's trainable count at the budget level (mask.k, mask.budget_rank), so
    # budget-matched; all: everything inserted trains; head: the method is inserted and frozen, only the head trains.
    trains: str = "k"
    # With trains=k, the entries taken: the largest or smallest scores (ties to the earlier tensor and
    # index), or uniformly at random (seeded).
    pick: str | None = None
    # Where the budget goes: global (one ranking over all tensors), fish (as many per tensor as the
    # global top k by score), size (each tensor's share of k by its size); `pick` then acts per tensor.
    allocation: str = "global"
    # The chosen entries whose score is zero that the run warns of (fishtune.ZeroFisherWarning) and counts
    # (zero_fisher_filled): chosen (its own: a largest-score pick reaches zero only when k exceeds the
    # non-zero scores), allocation (those of the global top k its counts come from: its picks are random by
    # design), None (none: it takes the smallest on purpose; 0 is recorded when it has a score).
    zero_score: str | None = None
    row: str | None = None            # its row label in the study views (fishtune.reports.ROWS); None: not shown
    library: bool = True              # fish_masks and build_mask take it; False: the harness's only
    original_layers: bool = False     # inserted on the original run's layers (peft.budget_layers), else peft.fish_layers
    freezes: bool = False             # freezes parameter groups while training (fishtune/adaptive.py; settings mask.*)
    # mask.start -> the mode whose mask training starts from (the first is the default); empty: its own
    starts: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key, value, allowed in (("trains", self.trains, TRAINS), ("allocation", self.allocation, ALLOCATIONS),
                                    ("pick", self.pick, (*PICKS, None)), ("zero_score", self.zero_score, (*ZERO_SCORE, None))):
            if value not in allowed:
                raise ValueError(f"mode {self.name}: {key}={value!r}; choose one of: {', '.join(map(str, allowed))}")
        if (self.pick is None) != (self.trains != "k"):
            raise ValueError(f"mode {self.name}: a pick is needed with trains='k' and only then")
        if self.score is None and (self.pick in ("largest", "smallest") or self.allocation == "fish" or self.zero_score):
            raise ValueError(f"mode {self.name}: pick={self.pick}, allocation={self.allocation}, zero_score="
                             f"{self.zero_score} read scores, and it has no score")

    @property
    def budget_matched(self) -> bool:
        """Whether it trains k entries, the original run's count (mask.k and mask.budget_rank apply)."""
        return self.trains == "k"


# The modes, in the order of messages and of the study's rows.
MODES: dict[str, ModeSpec] = {spec.name: spec for spec in (
    ModeSpec("none", trains="all", original_layers=True, row="original"),      # the original PEFT run
    ModeSpec("fish", FISHER, pick="largest", zero_score="chosen", row="fish"),  # FISH-Tuning
    ModeSpec("rand", pick="random", row="rand"),
    ModeSpec("rev", FISHER, pick="smallest", row="rev"),
    # fish_shuffled and fish_spread split fish into where the budget goes and which entries get it (docs/STUDY.md).
    ModeSpec("fish_shuffled", FISHER, pick="random", allocation="fish", zero_score="allocation"),
    ModeSpec("fish_spread", FISHER, pick="largest", allocation="size", zero_score="chosen"),
    # FisherAdapTune-style freezing (fishtune/adaptive.py) from everything inserted, or from the fish mask.
    ModeSpec("adaptive", trains="all", freezes=True, starts={"all": "none", "fish": "fish"}, row="adaptive",
             library=False),
    # The reference an original run must beat: its method inserted and frozen, only the head trains.
    ModeSpec("head_only", trains="head", original_layers=True, row="head only", library=False),
    ModeSpec("snip", THETA_GRAD, pick="largest", zero_score="chosen", row="snip"),  # SNIP's saliency at init
)}

# As shipped, for code that imported them before MODES: the library's modes, and those ranking by a Fisher.
MASK_MODES = tuple(name for name, spec in MODES.items() if spec.library)
FISHER_MODES = tuple(name for name, spec in MODES.items() if spec.score is FISHER)


def check_mode(mode: str) -> ModeSpec:
    """The spec of a mode fish_masks and build_mask take; ValueError naming them for any other."""
    spec = MODES.get(mode)
    if spec is None or not spec.library:
        known = ", ".join(name for name, s in MODES.items() if s.library)
        why = f"mask mode {mode!r} is the harness's only (fishtune.run)" if spec else f"unknown mask mode {mode!r}"
        raise ValueError(f"{why}; choose one of: {known}")
    return spec

