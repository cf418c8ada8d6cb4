"""One FISH-Tuning run: `python -m fishtune.run task=rte peft=lora mask=fish budget=2`.

config -> task -> data -> model -> PEFT method on layers -> Fisher -> mask -> masked Adam -> result file.
Everything that can be wrong with a config is checked in `plan()` before any weights are loaded: first
every value without torch (fishtune/harness/validate.py, about a second after the command starts), then the
task's data, still without torch (fishtune/harness/data.py: GLUE's TSVs or your own files), then what
needs the model's architecture. torch, transformers, peft and adapters (~7 s to import) are imported
inside the functions that need them, so that a bad value never waits for them.

The command line and Hydra are fishtune/harness/cli.py's; each run or sweep job it starts comes here
(`run_job`): what a job's outcome was (trained, finished before, failed, left to another sweep) is said in
one line, or, in a sweep, counted and said once at the sweep's end (`SweepEnd`).
"""
from __future__ import annotations

import glob
import json
import logging
import os
import socket
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from omegaconf import DictConfig, OmegaConf

from hydra.experimental.callback import Callback

from ..modes import MODES
from . import claims
from . import data as glue
from . import tracking
from .results import (Diverged, NoSpace, RunFailure, RunResult, Unreadable, check_readable, config_hash, git_commit,
                      identity, identity_problem, json_safe, now_iso, package_versions, read_json, read_result,
                      result_path, run_name, set_aside, write_json_atomic)
from .schedules import run_layers
from .signals import Interrupted, gone_launcher, signals_interrupt, watch_parent
from .tasks import TaskSpec, is_file_task
from .validate import ConfigError, check_config, check_hub, first_mask_mode, resolve_model

# Recorded in the result file when a run executes as a Slurm job (a requeued job keeps its ids).
# SLURM_JOB_GPUS: the node's indices of the job's GPUs; SLURM_SHARDS_ON_NODE: its shards of a shared GPU.
SLURM_KEYS = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT", "SLURM_JOB_PARTITION",
              "SLURM_JOB_GPUS", "SLURM_SHARDS_ON_NODE")


def slurm_ids() -> dict | None:
    """This process's Slurm job ids ({"job_id": ..., "restart_count": ...}) and the GPU it was given:
    cuda_visible_devices as Slurm set it, and gpu_name, torch's name of it when CUDA is present. None
    outside Slurm."""
    ids = {k[6:].lower(): v for k, v in os.environ.items() if k in SLURM_KEYS}
    if not ids:
        return None
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        ids["cuda_visible_devices"] = os.environ["CUDA_VISIBLE_DEVICES"]
    import torch

    try:
        if torch.cuda.is_available():
            ids["gpu_name"] = torch.cuda.get_device_name()
    except Exception:  # noqa: BLE001 - e.g. a failed run's broken CUDA context: the ids still count
        pass
    return ids


@dataclass
class Plan:
    """What a run will do, derived from its config without loading any weights."""
    config: dict
    task: TaskSpec
    family: str
    layers: int
    mode: str
    k: int | None          # trainable entries in all (head included); None = everything inserted
    head: int
    candidates: int
    total: int
    budget_total: int      # all parameters of the original run that sets the budget (the paper's ratio)
    path: Path
    precision_reason: str = ""   # why train.precision is what it is (`auto` resolved by plan)


def plan(config: dict) -> Plan:
    """Validate a resolved config and derive the run's layers, budget and result path.

    Raises ConfigError (one line: the key, the bad value, what is allowed) before any weights load."""
    # model.family=auto and a null model.name become the checkpoint's (conf/model/custom.yaml): in the
    # config itself, so that the run's name, identity and result file say which model it trained.
    config["model"] = resolve_model(config["model"])
    check_config(config)  # every value, without torch
    task = glue.prepare_task(config)  # the data read through and checked (GLUE's TSVs or your own files), without torch
    if task.files is not None:  # your own data: its labels and its files' content are part of what the run computes
        config = {**config, "task": {**config["task"], **task.recorded()}}
    model_cfg, peft_cfg, mask_cfg = config["model"], config["peft"], config["mask"]
    mode, family = mask_cfg["mode"], model_cfg["family"]
    check_hub(config)  # a hub model or dataset that cannot be had: before anything downloads or trains
    # Only a config that passed the checks above waits for torch, transformers, peft and adapters.
    import torch

    from .methods import METHODS, check_layers, count_on_meta
    from .schedules import original_layers
    from .models import load_tokenizer, model_config
    from .train import resolve_precision

    try:
        device = config["train"]["device"]
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"train.device={device!r}: no CUDA GPU is visible on {socket.gethostname()}; "
                             f"use train.device=auto or cpu")
        budget = int(config["budget"])
        tokenizer = load_tokenizer(model_cfg) if model_cfg["source"] == "tiny" else None
        conf = model_config(model_cfg, task.num_labels, tokenizer)
        if model_cfg["source"] == "tiny" and conf.hidden_size % conf.num_attention_heads:
            raise ConfigError(f"model.tiny: hidden size {conf.hidden_size} is not a multiple of the "
                              f"{conf.num_attention_heads} attention heads")
        positions = getattr(conf, "max_position_embeddings", None)
        if positions is not None and task.max_length > positions:   # a longer input would index past them
            raise ConfigError(f"task.max_length={task.max_length}: {model_cfg['name']} reads at most {positions} "
                              f"tokens")
        depth = conf.num_hidden_layers
        layers = run_layers(peft_cfg, mode, budget, depth)
        check_layers(peft_cfg["name"], layers, depth, model_cfg["name"])  # before counting: the model's name in it
        # A rank (or bottleneck) wider than the hidden size has no meaning: PiSSA's SVD has `hidden` values.
        for key in METHODS[peft_cfg["name"]].widths:
            width = peft_cfg.get(key)
            if width is not None and int(width) > conf.hidden_size:
                raise ConfigError(f"peft.{key}={width}: must be an integer 1..{conf.hidden_size} "
                                 f"({model_cfg['name']}'s hidden size)")
        counts = count_on_meta(conf, peft_cfg, layers, family)
        k, budget_total = None, counts["total"]
        if MODES[mode].trains == "head":
            k = counts["head"]
        elif MODES[first_mask_mode(mask_cfg)].budget_matched:
            k = mask_cfg.get("k")
            if k is None:  # the trainable count of the original run at this budget level
                rank = mask_cfg.get("budget_rank") or peft_cfg.get("rank")
                original = dict(peft_cfg, rank=rank, layers=None)
                original = count_on_meta(conf, original, original_layers(peft_cfg, budget, depth), family)
                k, budget_total = original["trainable"], original["total"]
            k = int(k)
            if not counts["head"] <= k <= counts["trainable"]:
                raise ConfigError(f"budget k={k} is impossible for {peft_cfg['name']} on {layers} layers: it must lie "
                                 f"between the head's {counts['head']} and all {counts['trainable']} inserted entries")
    except FileNotFoundError as e:   # a model's files that are not there; any other error is a bug, with its traceback
        raise ConfigError(str(e).strip("'\"")) from e
    precision_reason = resolve_precision(config["train"])   # before the hash: auto is this machine's
    path = result_path(config["paths"]["runs_dir"], config, layers)
    check_cell_precision(path, config, layers)
    return Plan(config, task, family, layers, mode, k, counts["head"], counts["trainable"] - counts["head"],
                counts["total"], budget_total, path, precision_reason)


class MixedPrecisionError(ConfigError):
    """A run would add the other precision to a folder's finished runs of its study (check_cell_precision)."""


def check_cell_precision(path: Path, config: dict, layers: int) -> None:
    """Refuse (MixedPrecisionError) a run whose folder already holds finished runs of its study in the
    other precision: runs that differ only in seed, mask or budget are the cells and pairs one report
    compares, so they stay in one precision."""
    def cell(c: Mapping) -> dict:
        ident = identity(c)
        return {**{k: v for k, v in ident.items() if k not in ("seed", "mask", "budget")},
                "train": {k: v for k, v in ident["train"].items() if k != "precision"}}

    if path.exists():   # finished: it is skipped, nothing is added
        return
    stem = "-".join(run_name(config, layers).split("-")[:3])   # model-task-method: the rest may differ
    ours, precision = cell(config), config["train"]["precision"]
    other = []
    for f in path.parent.glob(f"{glob.escape(stem)}-L*.json"):
        if f.name.endswith(".failed.json"):
            continue
        r, _ = read_json(f)   # a damaged file is the run's own business (read_result sets it aside)
        if isinstance(r, dict) and isinstance(r.get("config"), dict) and r.get("precision") not in (None, precision) \
                and cell(r["config"]) == ours:
            other.append({**r, "_path": str(f)})
    if other:
        there = other[0]["precision"]
        raise MixedPrecisionError(
            f"{path.parent} already holds {len(other)} finished {there} run(s) of {stem} with this run's settings "
            f"(e.g. {Path(other[0]['_path']).name}); {path.name} would train in {precision}: pass "
            f"train.precision={there} to continue them, or another paths.runs_dir")


def _device_and_precision(train_cfg: dict) -> tuple[str, bool, str]:
    from .train import choose_precision, resolve_device

    device = resolve_device(train_cfg["device"])
    return (device, *choose_precision(train_cfg["precision"], device))


# Peak memory of one run. On Linux the process's peak RSS (VmHWM) is reset when the run starts, so a
# worker process that runs many runs reports each run's own peak; elsewhere ru_maxrss, the process's.
def reset_peak_memory(device: str) -> str:
    """Start a run's peak-memory window; returns how the peak RSS is measured."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return "VmHWM since the run started"
    except OSError:
        return "ru_maxrss of the process"


def peak_memory(device: str, source: str) -> dict:
    """peak_rss_mb (host), cuda_max_allocated_mb / cuda_max_reserved_mb (None on CPU), and peak_memory_mb:
    the GPU's allocated peak on CUDA, the host's peak RSS on CPU."""
    import resource

    import torch

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    if source.startswith("VmHWM"):
        status = Path("/proc/self/status").read_text()
        rss = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024
    cuda = device.startswith("cuda")
    allocated = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    reserved = torch.cuda.max_memory_reserved() / 2**20 if cuda else None
    return {"peak_memory_mb": allocated if cuda else rss, "peak_rss_mb": rss, "peak_rss_source": source,
            "cuda_max_allocated_mb": allocated, "cuda_max_reserved_mb": reserved}


def fisher_batches(train_set: list[dict], tokenizer, fisher_cfg: dict, seed: int):
    """The Fisher's samples: a seeded choice of `fisher_cfg['samples']` training examples, in
    chunks sorted by length (less padding)."""
    n = int(fisher_cfg["samples"])
    return glue.make_loader(glue.subsample(train_set, n, seed), tokenizer, int(fisher_cfg["chunk_size"]),
                            sort_by_length=True)


@dataclass
class Data:
    """The run's encoded splits and their loaders (step 1 of execute)."""
    tokenizer: Any
    train: list[dict]
    dev: list[dict]
    train_loader: Any
    dev_loader: Any


def load_data(p: Plan) -> Data:
    """The seeded train and dev subsamples, tokenised, in their loaders; dev examples carry `idx`, so
    per-example predictions come back in the subsample's order."""
    from ..families import FAMILIES
    from .models import load_tokenizer

    cfg, seed = p.config, int(p.config["seed"])
    tokenizer = load_tokenizer(cfg["model"])
    template = FAMILIES[cfg["model"]["family"]].decoder  # a decoder reads prompts built from the task templates
    splits = {}
    for split in ("train", "dev"):
        examples = glue.subsample(glue.load_split(p.task, split, cfg["data"]["glue_dir"]), cfg["data"][f"{split}_samples"], seed)
        splits[split] = glue.encode(examples, tokenizer, p.task, use_template=template)
    for i, example in enumerate(splits["dev"]):
        example["idx"] = i
    train_loader = glue.make_loader(splits["train"], tokenizer, int(cfg["train"]["batch_size"]), shuffle=True, seed=seed)
    dev_loader = glue.make_loader(splits["dev"], tokenizer, int(cfg["train"]["eval_batch_size"]), sort_by_length=True)
    return Data(tokenizer, splits["train"], splits["dev"], train_loader, dev_loader)


def build_model(p: Plan, tokenizer, device: str):
    """(model, head, candidates): the model with the method inserted on the plan's layers, on `device`,
    and its trainable parameters split into the head and the method's."""
    from transformers import set_seed

    from .methods import insert_method, split_trainable
    from .models import load_model

    set_seed(int(p.config["seed"]))  # the head's initialisation and the insertion must not depend on data loading
    model = insert_method(load_model(p.config["model"], p.task.num_labels, tokenizer), p.config["peft"], p.layers,
                          p.family)
    model.to(device)
    head, candidates = split_trainable(model, p.family)
    return model, head, candidates


def choose_mask(p: Plan, model, head: dict, candidates: dict, data: Data,
                guard: Callable[[], None] | None = None) -> tuple[dict, float, int | None]:
    """(masks over the method's tensors, seconds the Fisher took, chosen entries whose Fisher score is
    zero: None without a Fisher). A resumed run keeps the mask file it started with; a new mask is saved
    beside the result file before training (if `guard`, the run's claim check, lets it)."""
    import warnings

    import torch

    from ..masks import ZeroFisherWarning, fish_masks
    from .results import find_mask_file, mask_path, read_mask_file, save_mask_file

    cfg, seed = p.config, int(p.config["seed"])
    mask_file = mask_path(p.path)
    select = first_mask_mode(cfg["mask"])
    # Not budget-matched: everything inserted trains (none; adaptive then freezes groups), or none of it (head_only).
    if not MODES[select].budget_matched:
        everything = MODES[select].trains == "all"
        return {n: torch.full_like(q, everything, dtype=torch.bool) for n, q in candidates.items()}, 0.0, None
    if (saved := read_mask_file(find_mask_file(p.path), candidates)) is not None:   # an older run's .mask.pt too
        return saved
    if (stale := p.path.with_suffix(".ckpt.pt")).exists():  # trained under a mask that is gone: start over
        set_aside(stale, "its run's mask file is missing or damaged, so its training cannot continue")
    t0 = time.perf_counter()
    batches = fisher_batches(data.train, data.tokenizer, cfg["fisher"], seed) if MODES[select].score is not None else None
    # The warning's count goes into the result file; it is caught here whatever the filters say (a repeated
    # message would otherwise be shown, and so recorded, only once per process), then warned again below.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ZeroFisherWarning)
        masks = fish_masks(model, batches, p.k, select, num_samples=int(cfg["fisher"]["samples"]), seed=seed,
                           head=list(head))
    zero = [w for w in caught if issubclass(w.category, ZeroFisherWarning)]
    for w in caught:  # through the caller's filters: shown, ignored, or an error that fails the run
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    masks = {n: masks[n] for n in candidates}  # the mask file keeps the method's entries; the head trains in full
    fisher_seconds = time.perf_counter() - t0 if batches is not None else 0.0
    zero_filled = (zero[0].message.filled if zero else 0) if batches is not None else None
    save_mask_file(mask_file, masks, fisher_seconds, zero_filled, guard)
    return masks, fisher_seconds, zero_filled


def result_keys(p: Plan) -> dict[str, Any]:
    """The values a table, a sweep and wandb slice runs by."""
    cfg = p.config
    return {"model": cfg["model"]["name"], "task": p.task.name, "method": cfg["peft"]["name"], "layers": p.layers,
            "rank": cfg["peft"].get("rank"), "mask": p.mode, "budget": int(cfg["budget"]), "seed": int(cfg["seed"])}


def execute(p: Plan, progress: bool = True, on_epoch: Callable[[dict], Any] | None = None,
            claim: claims.Claim | None = None) -> dict:
    """Run the plan and write its result file; returns the result (RunResult.to_json()).

    The steps: data, model, mask, train, write. `on_epoch` sees each epoch's record. With the run's `claim`,
    it heartbeats after each epoch, training stops once the claim is lost (claims.ClaimLost), and the mask,
    the checkpoints and the result are written only while the claim is still this process's."""
    import torch
    from transformers import set_seed

    from ..adaptive import AdaptiveFreezer, AdaptiveSettings
    from ..masks import apply_masks, mask_placement
    from .train import TrainSettings, train

    cfg = p.config
    commit = git_commit()  # the code this run starts with, not whatever HEAD is when it ends
    device, bf16, precision_reason = _device_and_precision(cfg["train"])
    precision_reason = p.precision_reason or precision_reason
    memory_source = reset_peak_memory(device)
    p.path.parent.mkdir(parents=True, exist_ok=True)
    set_seed(int(cfg["seed"]))

    data = load_data(p)
    model, head, candidates = build_model(p, data.tokenizer, device)
    guard = claim.check if claim is not None else None
    masks, fisher_seconds, zero_fisher_filled = choose_mask(p, model, head, candidates, data, guard)
    trainable = apply_masks(model, masks)
    freezer = None
    if MODES[p.mode].freezes:
        freezer = AdaptiveFreezer(model, masks, AdaptiveSettings(**{
            k: cfg["mask"][k] for k in AdaptiveSettings.__dataclass_fields__ if k in cfg["mask"]}))

    base_lr = float(cfg["train"]["lr"] or p.task.lr)
    lr = base_lr * float(cfg["train"]["lr_scale"])
    head_scale = cfg["train"].get("head_lr_scale")
    head_lr = None if head_scale is None else base_lr * float(head_scale)
    settings = TrainSettings(lr=lr, weight_decay=float(cfg["train"]["weight_decay"]),
                             max_epochs=int(cfg["train"]["max_epochs"]), patience=int(cfg["train"]["patience"]),
                             device=device, bf16=bf16, progress=progress, head_lr=head_lr)
    keys = result_keys(p)
    tracker = tracking.start(cfg, keys, p.path.stem, lr=lr, head_lr=head_lr)
    listeners = [f for f in (tracker[0] if tracker else None, on_epoch, claim and claim.beat) if f]

    def each_epoch(record: dict) -> None:
        for listener in listeners:
            listener(record)

    checkpoint = p.path.with_suffix(".ckpt.pt")
    # A requeued (or rerun) job continues after the last epoch its checkpoint holds.
    outcome = train(model, data.train_loader, data.dev_loader, p.task, settings, masks, checkpoint=checkpoint,
                    on_epoch=each_epoch if listeners else None, freezer=freezer, claim=claim)

    result = RunResult(
        run_id=p.path.stem, config_hash=config_hash(cfg), config=cfg, **keys,
        trainable=trainable, head_entries=p.head, total=p.total, ratio_pct=100 * trainable / p.total,
        # Where the mask put its entries (the one it started with), per tensor of the method; the head
        # trains in full. Placement claims are checked from the result files, without the mask files.
        placement=mask_placement(masks),
        # The paper prints one ratio per budget row: the trainable count over the original run's model.
        budget_ratio_pct=100 * trainable / p.budget_total, lr=lr,
        train_examples=len(data.train), dev_examples=len(data.dev),
        history=outcome.history, best=outcome.best, stop_reason=outcome.stop_reason,
        # Per dev example, in the order of the seeded dev subsample: paired tests between runs.
        dev_labels=[e["labels"] for e in data.dev], dev_predictions=outcome.best_predictions,
        fisher_seconds=fisher_seconds, zero_fisher_filled=zero_fisher_filled, train_seconds=outcome.train_seconds,
        samples_per_second=outcome.samples_seen / max(outcome.train_seconds, 1e-9),
        tokens_per_second=outcome.tokens_seen / max(outcome.train_seconds, 1e-9),
        throughput=outcome.throughput,
        threads=torch.get_num_threads(), **peak_memory(device, memory_source),
        device=device, precision="bf16" if bf16 else "fp32", precision_reason=precision_reason,
        host=socket.gethostname(),
        slurm=slurm_ids(), resumed_from_epoch=outcome.resumed_from_epoch,
        versions=package_versions(), git_commit=commit, finished_at=now_iso(),
    )
    if freezer is not None:  # the active set shrinks: report where it ended and its mean over steps
        active = [h["active_entries"] for h in freezer.history]
        result.trainable_final = p.head + freezer.active_entries()
        result.ratio_pct_final = 100 * (p.head + freezer.active_entries()) / p.total
        result.ratio_pct_mean = 100 * (p.head + sum(active) / max(len(active), 1)) / p.total
        result.active_ratio_history = [h["active_ratio"] for h in outcome.history]
    return write_result(p, result, tracker, guard)


def write_result(p: Plan, result: RunResult, tracker=None, guard: Callable[[], None] | None = None) -> dict:
    """Write the result file (atomically; only if `guard`, the claim's check, lets it), drop the run's
    checkpoint and any earlier failure or interrupt record."""
    out = result.to_json()
    write_json_atomic(p.path, out, guard)
    p.path.with_suffix(".ckpt.pt").unlink(missing_ok=True)
    p.path.with_suffix(".failed.json").unlink(missing_ok=True)  # an earlier failure of this run is history
    p.path.with_suffix(INTERRUPTED).unlink(missing_ok=True)
    if tracker:
        tracker[1](out)
    return out


def finished(p: Plan) -> dict | None:
    """The run's result when its file is there (and readable) and force is off, else None."""
    if p.path.exists() and not p.config.get("force"):
        return read_result(p.path)  # None: damaged, set aside with a warning, and the run is redone
    return None


def finished_file(config: dict) -> Path | None:
    """The result file of a config when its run is finished there (a valid result, as `finished` would find
    it, force off), found from the config alone: no torch (unless train.precision is auto, which this
    machine decides, or train.device asks for CUDA), no model, no data read, nothing written or set aside. None when the run is
    not finished, or when that cannot be told so cheaply (a config that fails its checks, a task of your
    own files, a method's layer schedule that the model's depth would change): `plan` then decides.
    Used before a sweep is launched (sweeps.finished_jobs)."""
    if config.get("force") or is_file_task(config.get("task")):
        return None
    try:
        config = {**config, "model": resolve_model(config["model"])}
        check_config(config)
        train_cfg = config["train"]
        if train_cfg["precision"] == "auto" or str(train_cfg["device"]).startswith("cuda"):
            import torch

            from .train import resolve_precision

            if str(train_cfg["device"]).startswith("cuda") and not torch.cuda.is_available():
                return None   # plan says it, in one line
            config = {**config, "train": dict(train_cfg)}
            resolve_precision(config["train"])
        # The layers as the schedule names them: a model too shallow for it would change them, and then no
        # file of this name is the run's (plan fits the schedule to the model, and names the file so).
        layers = run_layers(config["peft"], config["mask"]["mode"], int(config["budget"]))
        path = result_path(config["paths"]["runs_dir"], config, layers)
        if not path.is_file():
            return None
        check_readable(path)
        data, why = read_json(path)
        if why is not None or identity_problem(RunResult.from_json(data, path), path)[1] is not None:
            return None   # read_result sets it aside when the run comes to it
    except (ConfigError, Unreadable, TypeError, ValueError, KeyError):
        return None
    return path


def train_or_find(config: dict | DictConfig, progress: bool = True) -> tuple[dict, bool]:
    """(the run's result, whether this call trained it): `run`'s, which see."""
    if isinstance(config, DictConfig):
        config = OmegaConf.to_container(config, resolve=True)
    p = plan(config)
    if (existing := finished(p)) is not None:
        return existing, False
    # A read-only runs folder serves finished runs; one still to train cannot be written there.
    folder = next((d for d in (p.path.parent, *p.path.parents) if d.exists()), None)
    if folder is not None and not os.access(folder, os.W_OK):
        raise ConfigError(f"paths.runs_dir: {folder} is not writable, and {p.path.name} is not finished there "
                          f"(a read-only runs folder serves only finished runs)")
    settings = config["claim"]
    if not settings["enabled"]:
        return _execute_own(p, progress=progress), True
    claim = claims.acquire(p.path, float(settings["timeout_s"]), float(settings["heartbeat_s"]))
    if isinstance(claim, claims.Busy):
        raise claims.ClaimedElsewhere(claim, p.path)
    with claim:  # heartbeats while it trains; released however the run ends
        # Another sweep may have finished the run between the look above and the claim.
        if (existing := finished(p)) is not None:
            return existing, False
        claims.remove_abandoned_temps(p.path, float(settings["timeout_s"]))  # of writers killed mid-write
        return _execute_own(p, progress=progress, claim=claim), True


def run(config: dict | DictConfig, progress: bool = True) -> dict:
    """Plan and execute one run, or return the existing result (quietly) when its file is already there.

    The run is claimed while it trains (claim.enabled; fishtune/harness/claims.py): a run that another
    live sweep has claimed raises claims.ClaimedElsewhere and is not touched; a run whose claim is lost
    while it trains raises claims.ClaimLost, having written nothing. A result, mask or checkpoint this user
    may not read raises results.Unreadable (the run is left alone). Interrupted (SIGTERM, SIGINT under
    `signals_interrupt`) leaves with the claim released and `run` set to the result path."""
    return train_or_find(config, progress)[0]


def _execute_own(p: Plan, **kwargs: Any) -> dict:
    """execute, by the process whose run it is: an interrupt names the run (its interrupt is recorded)."""
    try:
        return execute(p, **kwargs)
    except Interrupted as e:
        e.run = p.path
        raise



def failure_reason(error: BaseException) -> str:
    """One line saying why a run failed: bad input and divergence say it themselves, anything else is
    named by its type."""
    text = str(error) if isinstance(error, (ConfigError, Diverged, NoSpace, Interrupted)) \
        else f"{type(error).__name__}: {error}"
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


def record_failure(config: dict, error: BaseException, path: Path | None = None) -> Path | None:
    """Write `<run>.failed.json` (the reason, the error and its traceback) beside where the result would be;
    an Interrupted run writes `<run>.interrupted.json` (status interrupted, no traceback: not a failure,
    and no report counts it as one). None when the record cannot be written (a full disk)."""
    interrupted = isinstance(error, Interrupted)
    if path is None:
        try:
            path = plan(config).path
        except ConfigError:
            path = Path(config["paths"]["runs_dir"]) / f"invalid-{config_hash(config)}.json"
    path = path.with_suffix(INTERRUPTED if interrupted else ".failed.json")
    failure = RunFailure(status="interrupted" if interrupted else "failed", config=json_safe(config),
                         reason=failure_reason(error), error=f"{type(error).__name__}: {error}",
                         traceback=None if interrupted else traceback.format_exception(error),
                         host=socket.gethostname(), slurm=slurm_ids(), finished_at=now_iso())
    try:
        write_json_atomic(path, failure.to_json())
    except OSError:   # NoSpace among them, or a read-only runs folder: the line printed says it
        return None
    return path


def _details(path: Path | None) -> str:
    return f"details in {path}" if path is not None else "no record written (a full disk or a read-only folder)"


# Beside the result file, instead of it, when a run was stopped by SIGTERM or SIGINT (record_failure).
INTERRUPTED = ".interrupted.json"
# Written in the sweep's folder when a run would mix precisions (MixedPrecisionError): later jobs skip.
STOPPED = "stopped_mixed_precision.json"
# Written in each sweep job's Hydra folder: what came of its run (SweepJob.note), counted by SweepEnd.
OUTCOME = "fishtune_outcome.json"


@dataclass
class SweepJob:
    """A job of a sweep: the sweep's folder and the job's own (Hydra's), and whether it is a worker of a
    local parallel sweep (joblib), which stops when its launcher is gone."""
    sweep_dir: Path
    job_dir: Path
    parallel: bool = False

    def note(self, outcome: str, **details: Any) -> None:
        """Record the job's outcome (trained, finished, failed, left, not_ours, stopped, lost) for SweepEnd."""
        write_json_atomic(self.job_dir / OUTCOME, {"outcome": outcome, **details})


def quiet_libraries() -> None:
    """Mute the INFO lines of the libraries a run calls (adapters' "Adding adapter ...", transformers'),
    which Hydra's logging would print for every run: their warnings still show."""
    for name in ("adapters", "transformers"):
        logging.getLogger(name).setLevel(logging.WARNING)


def run_job(config: dict, sweep: SweepJob | None = None) -> None:
    """One run of the command line (`sweep` None), or one job of a sweep, and what is said of it.

    A run that trained says its result in one line. On its own, a finished run says where its file is, bad
    input is one line and exit 2, a diverged run or a full disk one line and exit 1. In a sweep every outcome
    is noted for the sweep's one line at its end (SweepEnd): a finished run says nothing, a failure is
    recorded (`<run>.failed.json`) and said in one line, and the sweep goes on."""
    quiet_libraries()
    stop = sweep.sweep_dir / STOPPED if sweep is not None else None
    if stop is not None and stop.exists():   # an earlier job found precisions about to mix: nothing more trains
        sweep.note("stopped")
        return
    if sweep is not None and sweep.parallel:
        watch_parent()   # a worker of a local parallel sweep: it stops when its launcher is killed
    try:
        with signals_interrupt():
            result, trained = train_or_find(config)
    except claims.ClaimedElsewhere as e:  # not this sweep's to train
        if sweep is None:
            print(f"fishtune: skip, claimed by another live sweep: {e.result} ({e.busy.describe()})")
        else:
            sweep.note("left", run=str(e.result), owner=e.busy.describe())
        return
    except claims.ClaimLost:   # said in one line by the claim; the run is another owner's now
        if sweep is not None:
            sweep.note("lost")
        return
    except Unreadable as e:   # another user's file: never taken for damage, never retrained
        if sweep is None:
            print(f"fishtune: skip, {e}", file=sys.stderr)
        else:
            sweep.note("not_ours", run=str(e.path), owner=e.owner)
        return
    except Interrupted as e:   # the claim is released and the temporary files are gone by now
        path = record_failure(config, e, e.run) if e.run is not None else None
        why = f" (the sweep's launcher, pid {gone_launcher()}, is gone)" if gone_launcher() else ""
        print(f"fishtune: {e}{why}: " + (f"{e.run.name} stopped and released its claim; {_details(path)}"
                                         if e.run is not None else "no run was training"), file=sys.stderr)
        sys.stderr.flush()
        if gone_launcher():   # a parallel sweep's worker whose launcher is gone: nobody to report to
            os._exit(128 + e.signum)
        raise SystemExit(128 + e.signum) from None
    except MixedPrecisionError as e:   # the sweep stops: every later run would mix precisions the same way
        print(f"fishtune: error: {e}", file=sys.stderr)
        if stop is None:
            sys.exit(2)
        write_json_atomic(stop, {"reason": str(e), "run": json_safe(config)})
        sweep.note("stopped")
        return
    except Exception as e:  # noqa: BLE001 - a sweep records every failure and goes on with the next run
        if sweep is not None:
            path = record_failure(config, e)
            print(f"fishtune: FAILED ({failure_reason(e)}); {_details(path)}", file=sys.stderr)
            sweep.note("failed", run=None if path is None else str(path), reason=failure_reason(e))
            return
        if isinstance(e, ConfigError):
            print(f"fishtune: error: {e}", file=sys.stderr)
            sys.exit(2)
        if isinstance(e, (Diverged, NoSpace)):  # not a bug: the run is recorded as failed, in one line
            path = record_failure(config, e)
            print(f"fishtune: FAILED: {failure_reason(e)}; {_details(path)}", file=sys.stderr)
            sys.exit(1)
        raise
    path = Path(config["paths"]["runs_dir"]) / f"{result['run_id']}.json"
    if trained:
        best = result["best"]
        print(f"fishtune: {result['run_id']}: best {result['task']} score {best['score']:.2f} at epoch "
              f"{best['epoch']} ({result['stop_reason']}), trainable {result['trainable']} = "
              f"{result['ratio_pct']:.4f}%")
    elif sweep is None:
        print(f"fishtune: finished already: {path} (force=true trains it again)")
    if sweep is not None:
        sweep.note("trained" if trained else "finished", run=str(path))


def sweep_done(outcomes: list[str]) -> str:
    """The one line a sweep ends with: how many of its runs trained, were finished before, failed, or were
    left to other live sweeps (and, when any, not ours, stopped, or lost to another owner)."""
    n, count = len(outcomes), Counter(outcomes)
    said = [f"{count['trained']} trained", f"{count['finished']} finished before", f"{count['failed']} failed",
            f"{count['left']} left to other live sweeps"]
    said += [f"{count[k]} {what}" for k, what in (("not_ours", "not ours"), ("stopped", "not run (the sweep stopped)"),
                                                   ("lost", "lost to another owner")) if count[k]]
    return f"fishtune: sweep done: {n} run{'' if n == 1 else 's'}: {', '.join(said)}"


class SweepEnd(Callback):
    """Hydra callback (conf/config.yaml): at the end of a sweep, in the process that launched it (also for
    Slurm arrays), say in one line what came of its runs (sweep_done), then name the runs it left to other
    live sweeps and those it may not read."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        notes = [json.loads(f.read_text()) for f in sorted(sweep_dir.rglob(OUTCOME))]
        print(sweep_done([n["outcome"] for n in notes]))
        if left := [n for n in notes if n["outcome"] == "left"]:
            print("fishtune: left to other live sweeps (python -m fishtune.sweep_summary shows them in progress):")
            for item in left:
                print(f"  {Path(item['run']).name}: {item['owner']}")
        if not_ours := [n for n in notes if n["outcome"] == "not_ours"]:
            print(f"fishtune: {len(not_ours)} run{'' if len(not_ours) == 1 else 's'} not ours: another user's file "
                  f"this user may not read (left alone):")
            for item in not_ours:
                print(f"  {Path(item['run']).name}: owned by {item['owner']}")
        if (sweep_dir / STOPPED).exists():
            print(f"fishtune: error: the sweep stopped: {json.loads((sweep_dir / STOPPED).read_text())['reason']}",
                  file=sys.stderr)
            sys.exit(2)
