"""A run's mask file: `<run>.mask.safetensors` in the library's format, written under the umask; an older
run's `<run>.mask.pt` is still read."""
import os

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import run_config
from fishtune import load_masks
from fishtune.harness import train as train_module
from fishtune.harness.results import OLD_MASK_SUFFIX, load_mask_file, mask_path
from fishtune.harness.run import plan, run

QUICK = ["train.max_epochs=2", "fisher.samples=16", "data.train_samples=24", "data.dev_samples=12"]


def spy_on_training(monkeypatch) -> list[dict]:
    """The masks each run hands to training (fishtune.harness.train.train), as copies."""
    seen, real_train = [], train_module.train

    def spying(model, train_loader, dev_loader, task, settings, masks=None, **kwargs):
        seen.append({n: m.detach().clone() for n, m in (masks or {}).items()})
        return real_train(model, train_loader, dev_loader, task, settings, masks, **kwargs)
    monkeypatch.setattr(train_module, "train", spying)
    return seen


def test_a_runs_mask_file_is_safetensors_holding_the_mask_it_trained_with(tmp_path, monkeypatch):
    trained = spy_on_training(monkeypatch)
    cfg = run_config(tmp_path, "task=mrpc", "mask=fish", *QUICK)
    old = os.umask(0o027)
    try:
        result = run(cfg, progress=False)
    finally:
        os.umask(old)
    path = plan(cfg).path
    mask = mask_path(path)
    assert mask.name == path.stem + ".mask.safetensors" and not path.with_suffix(OLD_MASK_SUFFIX).exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == sorted([path.name, mask.name])
    # the mode 0o666 & ~umask, like the result file beside it (not mkstemp's 0o600)
    assert mask.stat().st_mode & 0o777 == path.stat().st_mode & 0o777 == 0o640

    saved = load_file(mask)   # safetensors' own reader: exactly the masks training got, as bool tensors
    (masks,) = trained
    assert set(saved) == set(masks) and all(saved[n].dtype == torch.bool for n in saved)
    assert all(torch.equal(saved[n], masks[n].cpu()) for n in masks)
    assert sum(int(m.sum()) for m in saved.values()) == result["trainable"] - result["head_entries"]
    assert all(torch.equal(t, saved[n]) for n, t in load_masks(mask).items())   # the library reads it too
    with safe_open(str(mask), "pt") as f:
        meta = f.metadata()
    assert meta == {"format": "fishtune-masks", "chosen": str(result["trainable"] - result["head_entries"]),
                    "fisher_seconds": repr(result["fisher_seconds"]),
                    "zero_fisher_filled": str(result["zero_fisher_filled"])}
    assert load_mask_file(mask)[1] == result["fisher_seconds"]


def test_a_run_that_resumes_reads_an_older_runs_mask_pt(tmp_path, monkeypatch):
    trained = spy_on_training(monkeypatch)
    cfg = run_config(tmp_path, "task=rte", "mask=fish", *QUICK)
    first = run(cfg, progress=False)
    path = plan(cfg).path
    masks = load_file(mask_path(path))
    # As a run before safetensors left it: a .mask.pt (torch.save) and no result; its Fisher "cost" 123 s,
    # so that a Fisher estimated again would show.
    torch.save({"masks": masks, "fisher_seconds": 123.0, "zero_fisher_filled": 0}, path.with_suffix(OLD_MASK_SUFFIX))
    mask_path(path).unlink()
    path.unlink()
    second = run(cfg, progress=False)
    assert second["fisher_seconds"] == 123.0 and second["zero_fisher_filled"] == 0
    assert all(torch.equal(trained[1][n], trained[0][n]) for n in trained[0]) and trained[1].keys() == trained[0].keys()
    assert second["placement"] == first["placement"] and second["history"] == first["history"]
    assert not mask_path(path).exists()   # read, not converted: the old file stays the run's mask
