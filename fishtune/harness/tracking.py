"""Experiment tracking with wandb: one wandb run per fishtune run.

A wandb group holds the runs that differ only in their mask and seed, so that original, fish, rand and rev
stand side by side and nothing else does: model, task, method, rank, budget, the profile (Hydra's choice,
left out for a run not started through Hydra), the training data size (`data.train_samples`, `all` when
null) and the learning rate the run trains with (and the classifier's, when `train.head_lr_scale` gives
it its own), e.g. `minilm-sst2-lora-r1-b1-study-n1000-lr0.005`: a quick and a study run of one cell are in
groups of their own. The config sent is the run's resolved config as it is (`mask`, `model` and `task`
stay dicts: filter by `mask.mode`) with the keys a table slices by that it has no top-level key for
(method, layers, rank), the profile, the learning rate and the table; the tags name method, budget, mask,
task and table.

wandb prints nothing itself (silent, console capture off; its ~28 lines a run buried the result line): the
one line is fishtune's, before training, `fishtune: wandb: <the run's URL>` online, or `fishtune: wandb:
offline run in <folder> (`wandb sync` it to upload)`.
"""
from __future__ import annotations

from typing import Any, Callable


def hydra_profile() -> str | None:
    """The profile Hydra composed this run with (`profile=quick`, or an experiment's), or None outside Hydra
    (a config composed with the compose API, or written by hand)."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.choices.get("profile") if HydraConfig.initialized() else None


def wandb_group(keys: dict[str, Any]) -> str:
    """The group of a run: `keys` as start() sends them (model, task, method, rank, budget, profile,
    train_samples, lr, head_lr)."""
    k = keys
    parts = [k["model"], k["task"], k["method"], f"r{k['rank']}", f"b{k['budget']}",
             *([k["profile"]] if k.get("profile") else []),
             f"n{'all' if k['train_samples'] is None else k['train_samples']}", f"lr{k['lr']:g}",
             *([f"head{k['head_lr']:g}"] if k.get("head_lr") is not None else [])]
    return "-".join(str(p) for p in parts)


def start(config: dict, keys: dict[str, Any], run_id: str, lr: float,
          head_lr: float | None = None) -> tuple[Callable[[dict], None], Callable[[dict], None]] | None:
    """Open a wandb run when `logger.mode` asks for one and print where it is logged; returns
    (on_epoch, finish) or None.

    `keys`: model, task, method, rank, layers, budget, mask, seed (what a table and the UI slice by);
    `lr`: the learning rate the run trains with; `head_lr`: the classifier's, where it has its own."""
    logger = config.get("logger") or {}
    if logger.get("mode", "none") in ("none", None):
        return None
    import wandb

    table = logger.get("table")
    extra = {"profile": hydra_profile(), "lr": lr, "head_lr": head_lr, "table": table}
    group = wandb_group({**keys, **extra, "train_samples": config["data"]["train_samples"]})
    tags = [f"method:{keys['method']}", f"budget:{keys['budget']}", f"mask:{keys['mask']}", f"task:{keys['task']}"]
    if table:
        tags.append(f"table:{table}")
    # The config's own groups (model, task, mask: dicts) win over the flat keys of the same name.
    sent = {**config, **{k: v for k, v in keys.items() if k not in config}, **extra}
    run = wandb.init(project=logger.get("project", "fishtune"), entity=logger.get("entity"), mode=logger["mode"],
                     dir=logger.get("dir") or config["paths"]["runs_dir"], name=run_id, group=group,
                     job_type=keys["mask"], tags=tags, config=sent, reinit="finish_previous",
                     settings=wandb.Settings(silent=True, console="off"))
    if run.offline:
        print(f"fishtune: wandb: offline run in {run.settings.sync_dir} (`wandb sync` it to upload)")
    elif not run.disabled:
        print(f"fishtune: wandb: {run.url}")

    def on_epoch(record: dict) -> None:
        run.log({"epoch": record["epoch"], "train_loss": record["train_loss"], "dev_loss": record["dev_loss"],
                 "dev_score": record["score"], **{f"dev_{k}": v for k, v in record["metrics"].items()}},
                step=record["epoch"])

    def finish(result: dict) -> None:
        run.summary.update({"best_score": result["best"]["score"], "best_epoch": result["best"]["epoch"],
                            "trainable": result["trainable"], "ratio_pct": result["ratio_pct"],
                            "stop_reason": result["stop_reason"], "fisher_seconds": result["fisher_seconds"],
                            "samples_per_second": result["samples_per_second"]})
        run.finish()

    return on_epoch, finish
