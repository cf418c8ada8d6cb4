"""fishtune: FISH-Tuning (Fisher-information masks inside PEFT methods) and the harness that rebuilds its tables.

Three kinds of code, one place each:

* the library, at the package root, what your own training code imports (`import fishtune`): the
  empirical Fisher (fisher), masks over any model's trainable parameters (masks), a masked wrapper for
  any torch optimizer (optim), a transformers.Trainer callback (callback), FisherAdapTune-style adaptive
  freezing (adaptive), length groups that cut padding (batching) and the facts of the model families
  (families: layer names, heads, default targets) and the mask modes (modes), both torch-free and read
  by masks and the harness. It
  imports nothing from the other two kinds (tests/test_api.py checks).
* fishtune/harness/: runs the paper's experiments from Hydra configs (the repository's conf/, shipped
  with the package as fishtune/conf). It imports the library, never the reports.
* fishtune/reports/: tables, figures and summaries built from result files. They import the library
  and the harness's tables and result files, never its training loop (harness.train, harness.run).

Every other module at the root is an entry point, a few lines that run the `main` of the module of
the same name in harness/ or reports/, so that the commands stay short: `python -m fishtune.run` (one
run or a sweep), `python -m fishtune.report` (the HTML results page), and so on (README, Makefile).

The library's names are attributes of the package, imported on first use, so that `import
fishtune` stays light (no torch until a name is used):

    masks = fishtune.fish_masks(model, train_loader, k)        # exactly k trainable entries
    fishtune.apply_masks(model, masks)
    opt = fishtune.MaskedOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-3), model, masks)
"""
from __future__ import annotations

from typing import TYPE_CHECKING

# The mask modes (fishtune/modes.py, torch-free: a ModeSpec each in MODES), as attributes of the package.
from .modes import FISHER_MODES, MASK_MODES, MODES, ModeSpec, check_mode  # noqa: F401

# The library's modules at the root; the others there are entry points (not a kind of their own: each
# only runs the `main` of harness/NAME.py or reports/NAME.py).
LIBRARY = ("fisher", "masks", "optim", "callback", "adaptive", "batching", "families", "modes")

# name -> the library module that defines it
_EXPORTS = {
    "fish_masks": "masks", "apply_masks": "masks", "original_k": "masks", "trainable_entries": "masks",
    "save_masks": "masks", "load_masks": "masks", "build_mask": "masks", "mask_placement": "masks",
    "ZeroFisherWarning": "masks", "StrayTrainableWarning": "masks", "default_head": "masks", "head_names": "masks",
    "empirical_fisher": "fisher", "classification_loss": "fisher", "default_loss": "fisher",
    "MaskedOptimizer": "optim", "FishMaskCallback": "callback",
}
__all__ = list(_EXPORTS)

if TYPE_CHECKING:
    from .callback import FishMaskCallback
    from .fisher import classification_loss, default_loss, empirical_fisher
    from .masks import (StrayTrainableWarning, ZeroFisherWarning, apply_masks, build_mask, default_head, fish_masks,
                        head_names, load_masks, mask_placement, original_k, save_masks, trainable_entries)
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
