"""`mask=adaptive`: progressive freezing of parameter groups by the drift of their Fisher geometry.

Our reimplementation of FisherAdapTune (Rostami et al., 2026) from the paper's description of the
method; no code of theirs is used. During training:

1. every candidate tensor is split into groups (`granularity`: `tensor`, or `rows:N` = N row blocks);
2. a running Fisher diagonal is kept from the training gradients (EMA of squared gradients);
3. every `fisher_interval` steps each group's Fisher, normalised into a probability vector, is
   compared with its reference (the first measurement) by the Jensen-Shannon distance, and an EMA of
   that drift is updated;
4. every `freeze_interval` steps the groups whose drift EMA changed least since the last freeze check
   (change below mean - `threshold_std` x std over the active groups) are frozen for good, at most
   `max_freeze_fraction` of the active groups at a time and never below `min_active_ratio`: their
   gradients are zeroed from then on and their Adam moments dropped, so they never move again.

Our reading of "stabilised": a drift signal that no longer changes has converged; a group whose
Fisher geometry still shifts keeps training. The active set only shrinks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn


def js_distance(p: torch.Tensor, q: torch.Tensor) -> float:
    """Jensen-Shannon distance (natural log) between two non-negative vectors, each normalised to sum 1;
    equals scipy.spatial.distance.jensenshannon. Scale invariant; 0 for identical shapes."""
    p = p.double().flatten().clamp_min(0)
    q = q.double().flatten().clamp_min(0)
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a: torch.Tensor) -> torch.Tensor:  # 0 log 0 = 0
        nz = a > 0
        return (a[nz] * (a[nz] / m[nz]).log()).sum()

    return math.sqrt(max(float(kl(p) + kl(q)) / 2, 0.0))


@dataclass
class AdaptiveSettings:
    granularity: str = "rows:4"       # tensor | rows:N
    fisher_interval: int = 10         # steps between drift measurements
    freeze_interval: int = 50         # steps between freeze decisions
    fisher_decay: float = 0.9         # EMA of squared gradients
    drift_decay: float = 0.7          # EMA of the JS drift
    threshold_std: float = 0.5        # freeze when drift change < mean - threshold_std * std
    max_freeze_fraction: float = 0.25  # of the active groups, per decision
    min_active_ratio: float = 0.1     # never freeze below this share of the starting entries


@dataclass
class _Group:
    name: str                 # parameter name
    rows: slice               # rows of the parameter's leading dimension
    size: int
    active: bool = True
    reference: torch.Tensor | None = None
    drift: float | None = None        # EMA of the JS distance to the reference
    drift_at_check: float | None = None


@dataclass
class AdaptiveFreezer:
    """Called by the training loop after each backward pass, before the optimiser step."""
    model: nn.Module
    start: dict[str, torch.Tensor]    # name -> bool mask of the entries it may train at first
    settings: AdaptiveSettings = field(default_factory=AdaptiveSettings)

    def __post_init__(self):
        params = dict(self.model.named_parameters())
        self.params = {n: params[n] for n in self.start}
        self.allowed = {n: m.to(self.params[n].device, self.params[n].dtype) for n, m in self.start.items()}
        self.fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in self.params.items()}
        self.groups = [g for n, p in self.params.items() for g in self._split(n, p)]
        self.start_entries = self.active_entries()
        self.steps = 0
        self.history: list[dict] = []  # {step, active_ratio}

    def _split(self, name: str, p: torch.Tensor) -> list[_Group]:
        if self.settings.granularity == "tensor" or p.dim() == 0:
            blocks = 1
        elif self.settings.granularity.startswith("rows:"):
            blocks = max(1, min(int(self.settings.granularity[5:]), p.shape[0]))
        else:
            raise ValueError(f"unknown adaptive granularity {self.settings.granularity!r}; choose tensor or rows:N")
        edges = [round(i * p.shape[0] / blocks) for i in range(blocks + 1)] if p.dim() else [0, 1]
        groups = []
        for a, b in zip(edges, edges[1:]):
            rows = slice(a, b)
            size = int(self.start[name][rows].sum()) if p.dim() else int(self.start[name].sum())
            if size:
                groups.append(_Group(name, rows, size))
        return groups

    def active_entries(self) -> int:
        return sum(int(m.sum()) for m in self.allowed.values())

    @property
    def active_ratio(self) -> float:
        """Active entries over the entries the run started with."""
        return self.active_entries() / max(self.start_entries, 1)

    @torch.no_grad()
    def after_backward(self, optimizer: torch.optim.Optimizer) -> None:
        """Update the running Fisher, measure drift / freeze on schedule, then mask the gradients, so
        a group frozen now already gets no update from this step."""
        self.steps += 1
        s = self.settings
        for n, p in self.params.items():
            if p.grad is not None:
                self.fisher[n].mul_(s.fisher_decay).add_(p.grad.float().pow(2) * self.allowed[n], alpha=1 - s.fisher_decay)
        if self.steps % s.fisher_interval == 0:
            self._measure_drift()
        if self.steps % s.freeze_interval == 0:
            self._freeze(optimizer)
        for n, p in self.params.items():
            if p.grad is not None:
                p.grad.mul_(self.allowed[n])
        active = self.active_entries()
        self.history.append({"step": self.steps, "active_entries": active, "active_ratio": active / max(self.start_entries, 1)})

    def _group_fisher(self, g: _Group) -> torch.Tensor:
        return self.fisher[g.name][g.rows][self.start[g.name][g.rows].to(self.fisher[g.name].device)]

    def _measure_drift(self) -> None:
        for g in self.groups:
            if not g.active:
                continue
            f = self._group_fisher(g)
            if float(f.sum()) == 0:
                continue
            if g.reference is None:
                g.reference = f.clone()
                continue
            d = js_distance(f, g.reference)
            g.drift = d if g.drift is None else self.settings.drift_decay * g.drift + (1 - self.settings.drift_decay) * d

    def _freeze(self, optimizer: torch.optim.Optimizer) -> None:
        s = self.settings
        ready = [g for g in self.groups if g.active and g.drift is not None]
        # (change of the drift EMA since the last check, position, group): least change first
        scored = [(abs(g.drift - g.drift_at_check), k, g) for k, g in enumerate(ready) if g.drift_at_check is not None]
        for g in ready:
            g.drift_at_check = g.drift
        if len(scored) < 2:
            return
        changes = torch.tensor([c for c, _, _ in scored], dtype=torch.float64)
        threshold = float(changes.mean() - s.threshold_std * changes.std())
        budget = int(s.max_freeze_fraction * sum(g.active for g in self.groups))
        floor, active = s.min_active_ratio * self.start_entries, self.active_entries()
        for change, _, g in sorted(scored)[:budget]:
            if change >= threshold or active - g.size < floor:
                break
            self._freeze_group(g, optimizer)
            active -= g.size

    def _freeze_group(self, g: _Group, optimizer: torch.optim.Optimizer) -> None:
        g.active = False
        p = self.params[g.name]
        self.allowed[g.name][g.rows] = 0
        state = optimizer.state.get(p)
        if not self.allowed[g.name].any():
            p.requires_grad_(False)  # nothing left to train in this tensor
            p.grad = None
            optimizer.state.pop(p, None)
        elif state:
            for key in ("exp_avg", "exp_avg_sq"):  # dropped for the frozen rows: Adam's update there is 0
                state[key][g.rows] = 0

    def state_dict(self) -> dict:
        """Everything a resumed run needs to freeze exactly as an uninterrupted one would."""
        return {"steps": self.steps, "history": self.history, "fisher": self.fisher,
                "allowed": {n: m.cpu() for n, m in self.allowed.items()},
                "groups": [(g.active, g.reference, g.drift, g.drift_at_check) for g in self.groups]}

    def load_state_dict(self, state: dict) -> None:
        self.steps, self.history = state["steps"], state["history"]
        for n in self.params:
            self.fisher[n].copy_(state["fisher"][n])
            self.allowed[n].copy_(state["allowed"][n])
            if not self.allowed[n].any():
                self.params[n].requires_grad_(False)
        for g, (active, reference, drift, at_check) in zip(self.groups, state["groups"]):
            g.active, g.reference, g.drift, g.drift_at_check = active, reference, drift, at_check
