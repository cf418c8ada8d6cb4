"""Shared test helpers: offline, tiny random models, GLUE fixtures shipped under tests/fixtures."""
import os
from pathlib import Path

# Offline whatever the shell says: the suite never touches the network (tests of the hub's error
# messages set their own environment).
os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch
from omegaconf import OmegaConf

# Tiny models gain nothing from intra-op threads, and on a busy machine spinning threads make a
# forward pass up to a hundred times slower.
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent
GLUE_FIXTURES = ROOT / "tests" / "fixtures" / "glue"
CONF = ROOT / "conf"


def model_cfg(name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONF / "model" / f"{name}.yaml"))


def peft_cfg(name: str = "lora", **over) -> dict:
    return {**OmegaConf.to_container(OmegaConf.load(CONF / "peft" / f"{name}.yaml")), **over}


def tiny_peft_model(model: str = "tiny_bert", task: str = "rte", method: str = "lora", layers: int = 3,
                    seed: int = 0, **peft_over):
    """(model, tokenizer, task spec) with the method inserted on the bottom `layers` layers."""
    from fishtune.harness.methods import insert_method
    from fishtune.harness.models import load_model, load_tokenizer
    from fishtune.harness.tasks import get_task

    cfg, spec = model_cfg(model), get_task(task)
    tok = load_tokenizer(cfg)
    torch.manual_seed(seed)
    m = insert_method(load_model(cfg, spec.num_labels, tok), peft_cfg(method, **peft_over), layers, cfg["family"])
    return m, tok, spec


def loader(tok, spec, split="train", batch_size=8, n=None, template=False, **kw):
    from fishtune.harness import data

    ex = data.subsample(data.load_split(spec, split, GLUE_FIXTURES), n, 0)
    return data.make_loader(data.encode(ex, tok, spec, use_template=template), tok, batch_size, **kw)


def run_config(tmp_path, *overrides: str) -> dict:
    """A resolved run config composed from conf/ with Hydra's compose API, as the CLI would."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"data.glue_dir={GLUE_FIXTURES}", f"paths.runs_dir={tmp_path}",
                                           "model=tiny_bert", *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


def run_cli(monkeypatch, capsys, argv: list[str]) -> tuple[int, list[str]]:
    """(exit code, stderr lines) of `python -m fishtune.run ARGV` called in this process (the CLI's own path:
    its checks, Hydra's composition, the run); a traceback on stderr fails the test."""
    import sys

    from hydra.core.global_hydra import GlobalHydra

    from fishtune.harness import cli

    monkeypatch.setattr(sys, "argv", ["fishtune.run", *argv])
    GlobalHydra.instance().clear()
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        cli.main()
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return stop.value.code, err.strip().splitlines()


def plain_holm(p: list[float]) -> list[float]:
    """Holm's step-down adjustment, written out: the i-th smallest of m p-values times (m - i), made
    non-decreasing along that order, at most 1."""
    order = sorted(range(len(p)), key=lambda i: p[i])
    out, running = [0.0] * len(p), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        out[i] = running
    return out
