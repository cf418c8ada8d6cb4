"""Experiment tracking with wandb: one wandb run per fishtune run.

Runs are grouped by everything except the mask (model, task, method, rank, budget), so a wandb group
holds original, fish, rand and rev side by side; table, method, budget and mask are config keys and tags.
"""
from __future__ import annotations

from typing import Any, Callable


def wandb_group(result_keys: dict[str, Any]) -> str:
    k = result_keys
    return f"{k['model']}-{k['task']}-{k['method']}-r{k['rank']}-b{k['budget']}"


def start(config: dict, keys: dict[str, Any], run_id: str) -> tuple[Callable[[dict], None], Callable[[dict], None]] | None:
    """Open a wandb run when `logger.mode` asks for one; returns (on_epoch, finish) or None.

    `keys`: model, task, method, rank, layers, budget, mask, seed (what a table and the UI slice by).
    """
    logger = config.get("logger") or {}
    if logger.get("mode", "none") in ("none", None):
        return None
    import wandb

    table = logger.get("table")
    tags = [f"method:{keys['method']}", f"budget:{keys['budget']}", f"mask:{keys['mask']}", f"task:{keys['task']}"]
    if table:
        tags.append(f"table:{table}")
    run = wandb.init(project=logger.get("project", "fishtune"), entity=logger.get("entity"), mode=logger["mode"],
                     dir=logger.get("dir") or config["paths"]["runs_dir"], name=run_id, group=wandb_group(keys),
                     job_type=keys["mask"], tags=tags, config={**config, **keys, "table": table}, reinit="finish_previous")

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
