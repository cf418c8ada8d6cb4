"""fishtune: FISH-Tuning (Fisher-information masks inside PEFT methods) and the harness that rebuilds its tables.

The package holds three kinds of code, in one flat folder:

* the library, what your own training code imports (`import fishtune`): the empirical Fisher
  (fisher), masks over any model's trainable parameters (masks), a masked wrapper for any torch
  optimizer (optim), a transformers.Trainer callback (callback), FisherAdapTune-style adaptive
  freezing (adaptive) and length groups that cut padding (batching). It imports nothing from the
  other two kinds (tests/test_api.py checks).
* the harness that runs the paper's experiments from Hydra configs: tasks, data, models, methods,
  schedules, train, run, results, metrics, tracking, sweeps, validate (`python -m fishtune.run ...`).
* the reports built from result files: aggregate, mask_report, sweep_summary, paper, ratios, study,
  study_why, parity, report (the HTML results page).

The library's names are attributes of the package, imported on first use, so that `import
fishtune` stays light (no torch until a name is used):

    masks = fishtune.fish_masks(model, train_loader, k)        # exactly k trainable entries
    fishtune.apply_masks(model, masks)
    opt = fishtune.MaskedOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-3), model, masks)
"""
from __future__ import annotations

from typing import TYPE_CHECKING

# The modes of build_mask and fish_masks; here, torch-free, so that config checks can read them too.
# fish_shuffled and fish_spread split fish into where the budget goes and which entries get it (docs/STUDY.md).
MASK_MODES = ("none", "fish", "rand", "rev", "fish_shuffled", "fish_spread")
# The modes that rank entries by an empirical Fisher (and so need its samples).
FISHER_MODES = ("fish", "rev", "fish_shuffled", "fish_spread")

LIBRARY = ("fisher", "masks", "optim", "callback", "adaptive", "batching")
HARNESS = ("tasks", "data", "models", "methods", "schedules", "train", "run", "results", "metrics", "tracking",
           "sweeps", "validate")
REPORTS = ("aggregate", "mask_report", "sweep_summary", "paper", "ratios", "study", "study_why", "parity", "report")

# name -> the library module that defines it
_EXPORTS = {
    "fish_masks": "masks", "apply_masks": "masks", "original_k": "masks", "trainable_entries": "masks",
    "save_masks": "masks", "load_masks": "masks", "build_mask": "masks", "mask_placement": "masks",
    "empirical_fisher": "fisher", "classification_loss": "fisher",
    "MaskedOptimizer": "optim", "FishMaskCallback": "callback",
}
__all__ = list(_EXPORTS)

if TYPE_CHECKING:
    from .callback import FishMaskCallback
    from .fisher import classification_loss, empirical_fisher
    from .masks import (apply_masks, build_mask, fish_masks, load_masks, mask_placement, original_k, save_masks,
                        trainable_entries)
    from .optim import MaskedOptimizer


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fishtune' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
