"""What a run config may hold, checked without torch: every bad value is one line, before anything loads.

`check_config(config)` is the first thing `fishtune.run.plan()` does. It imports nothing heavy, so
a bad value is reported about a second after the command starts, not after the 7 s that torch,
transformers, peft and adapters take to import. What needs a model's architecture (layer counts, a
budget k, a rank above the hidden size) or a GPU is checked in plan() after it, and so is what a task's
files hold (fishtune.harness.data.prepare_task, still without torch). `check_hub(config)`
finds a hub model or dataset that cannot be had (offline, not cached, gated) before training starts.

The model sources live here; the model families and what each knows (its heads, layers, default
targets) in fishtune/families.py, the mask modes in fishtune/modes.py (a ModeSpec each), which PEFT
method each family can take and each method's own checks in its MethodSpec (methods.py).
"""
from __future__ import annotations

import math
import os
import re
import socket
import string
from typing import Any, Mapping
from urllib.parse import urlparse

from ..modes import MODES, ModeSpec  # every mask mode, the harness's own (adaptive, head_only) included
from ..families import FAMILIES, MODEL_TYPES, families_by_head
from .checks import ABSENT, ConfigError, as_int, check_choice, check_float, check_int, get, show
from .methods import check_method
from .tasks import TASKS, get_task, is_file_task

# embedded: files shipped in a package (models.EMBEDDED); hub: a checkpoint, `path` a hub id or a local
# folder (what from_pretrained reads); tiny: random weights of `tiny`'s config, for tests.
SOURCES = ("embedded", "hub", "tiny")
AUTO = "auto"  # model.family=auto: the family of the checkpoint's config.json model_type
OWN_DOCS = "docs/OWN.md, \"Your own model\""
PRECISIONS = ("auto", "fp32", "bf16")
# model.head, what the classifier reads -> the families that take it (FamilySpec.heads): the family's own
# pooling (BERT: tanh(pooler(h_CLS)); ModernBERT and LLaMA as their transformers class pools), the masked
# mean of the last hidden states (padding left out), or the last hidden state of [CLS] (models.py builds them).
HEADS = families_by_head()
# --- the vocabularies' own checks (also used where the values are consumed) ---------------------

def _local(path: str) -> bool:
    """Whether a model.path names a local folder rather than a hub id ("org/name" or "name")."""
    return os.path.exists(path) or path.startswith((".", "/", "~")) or path.count("/") > 1


def _checkpoint_config(path: str, download: bool, key: str = "model.path") -> dict | None:
    """The checkpoint's config.json (no weights): a local folder's, or the hub's from the cache, else
    downloaded when `download` (one line when it cannot be had), else None. ConfigError for a file, a
    missing or empty folder."""
    import json

    if _local(path):
        folder = os.path.expanduser(path)
        if os.path.isfile(folder):
            raise ConfigError(f"{key}={path!r} is a file; pass the folder that holds the checkpoint's config.json "
                              f"and weights (what save_pretrained writes)")
        if not os.path.isdir(folder):
            raise ConfigError(f"{key}={path!r}: no such folder")
        if not os.path.isfile(os.path.join(folder, "config.json")):
            raise ConfigError(f"{key}={path!r}: the folder has no config.json, so it is no transformers checkpoint "
                              f"(save one with model.save_pretrained(folder) and tokenizer.save_pretrained(folder))")
        file = os.path.join(folder, "config.json")
    else:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache

        file = try_to_load_from_cache(path, "config.json")
        if not isinstance(file, str):
            if not download:
                return None
            check_hub_model(path, key)  # one line when it cannot be had, else it downloads below
            file = hf_hub_download(path, "config.json")
    try:
        with open(file) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{key}={path!r}: its config.json cannot be read ({e})") from None


def model_name_of(path: str) -> str:
    """A run's model name from a checkpoint's path: the folder's or the hub id's last part, with any
    character but letters, digits, `.` and `_` made `_` (run names split at `-`)."""
    last = os.path.basename(os.path.normpath(os.path.expanduser(path))) or "model"
    return re.sub(r"[^A-Za-z0-9_.]", "_", last)


def resolve_model(cfg: Mapping[str, Any]) -> dict:
    """The model config a run uses: a checkpoint's family read from its config.json when model.family is
    auto (or absent), its name derived from model.path when model.name is null. Refuses (ConfigError) a
    path the source would not read (embedded, tiny), a path that is no checkpoint, a family that does not
    match the checkpoint, and a model_type no FamilySpec knows. A config without auto or null comes back
    equal, so the identity (and result file) of every existing run stays."""
    cfg = dict(cfg)
    source, path = cfg.get("source"), cfg.get("path")
    if source not in SOURCES:
        raise ConfigError(f"unknown model source {source!r}; choose one of: {', '.join(SOURCES)}")
    if source in ("embedded", "tiny") and path is not None:
        what = "its weights come from the package" if source == "embedded" else "it has random weights"
        raise ConfigError(f"model.path={path!r} is not read by model {cfg.get('name')!r} (source {source}: {what}); "
                          f"to train your checkpoint pass model=custom model.path={path}")
    if source == "hub" and not path:
        raise ConfigError(f"model.path is not set, and model {cfg.get('name') or 'custom'!r} reads a checkpoint: pass "
                          f"model.path=FOLDER (a local folder) or model.path=ORG/NAME (a hub id)")
    tokenizer = cfg.get("tokenizer")
    if tokenizer is not None and _local(str(tokenizer)) and not os.path.isdir(os.path.expanduser(str(tokenizer))):
        why = "is a file" if os.path.isfile(os.path.expanduser(str(tokenizer))) else "is no folder"
        raise ConfigError(f"model.tokenizer={tokenizer!r} {why}; pass the folder a tokenizer was saved to "
                          f"(tokenizer.save_pretrained(folder)) or a hub id")
    family = cfg.get("family")
    auto = family in (None, AUTO)
    # A named family is checked against config.json where it is at hand (check_hub, later, says why a hub
    # model cannot be had); auto needs it, from the hub if need be.
    if source == "hub" and (conf := _checkpoint_config(str(path), download=auto)) is not None:
        model_type = conf.get("model_type")
        found = MODEL_TYPES.get(model_type)
        if found is None:
            raise ConfigError(f"model.path={path!r} holds a {model_type!r} model, which no model family of fishtune "
                              f"knows; supported model_types: {', '.join(MODEL_TYPES)} (to add one: {OWN_DOCS})")
        if not auto and family != found:
            raise ConfigError(f"model.family={family!r}, but model.path={path!r} holds a {model_type!r} model "
                              f"(family {found}); pass model.family=auto or leave it out")
        cfg["family"] = found
    elif auto and source != "hub":
        raise ConfigError(f"model.family=auto reads a checkpoint's config.json, and model {cfg.get('name')!r} "
                          f"(source {source}) has none; choose one of: {', '.join(FAMILIES)}")
    if cfg.get("name") is None:
        cfg["name"] = model_name_of(str(path))
    return cfg


def check_model_config(cfg: Mapping[str, Any]) -> None:
    """Reject an unknown family or source, and a head the family cannot take, before anything is loaded.
    `cfg` is resolved (resolve_model): its family is a family's name."""
    if cfg.get("family") not in FAMILIES:
        raise ConfigError(f"unknown model family {cfg.get('family')!r}; choose one of: {', '.join(FAMILIES)}")
    if cfg.get("source") not in SOURCES:
        raise ConfigError(f"unknown model source {cfg.get('source')!r}; choose one of: {', '.join(SOURCES)}")
    if cfg["source"] == "hub" and not cfg.get("path"):
        raise ConfigError(f"model {cfg.get('name')!r} comes from the hub but has no `path` (hub id or folder)")
    head = cfg.get("head") or "pooler"
    if head not in HEADS:
        raise ConfigError(f"unknown model.head {head!r}; choose one of: {', '.join(HEADS)}")
    if head not in FAMILIES[cfg["family"]].heads:
        raise ConfigError(f"model.head={head!r} is not available for the {cfg['family']} family; "
                          f"choose one of: {', '.join(FAMILIES[cfg['family']].heads)}")


def first_mask_mode(mask: Mapping[str, Any]) -> str:
    """The mode that chooses a run's first mask: mask.mode, or for a mode that starts from another
    (ModeSpec.starts; adaptive: mask.start all -> none, fish -> fish, the default the first) that one."""
    spec = MODES[mask["mode"]]
    return spec.starts[mask.get("start") or next(iter(spec.starts))] if spec.starts else spec.name


def uses_fisher(config: Mapping[str, Any]) -> bool:
    """Whether the run scores entries on fisher.samples training samples: its first mask's mode has a
    score (the Fisher modes, adaptive with start=fish, ...)."""
    return MODES[first_mask_mode(config["mask"])].score is not None


def check_mask_mode(config: Mapping[str, Any]) -> ModeSpec:
    """mask.mode's spec (and mask.start's value where the mode starts from another), or ConfigError."""
    mode = get(config, "mask.mode")
    spec = MODES.get(mode) if isinstance(mode, str) else None
    if spec is None:
        raise ConfigError(f"unknown mask mode {show(mode)}; choose one of: {', '.join(MODES)}")
    if spec.starts:
        check_choice(config, "mask.start", tuple(spec.starts), optional=True)
    return spec


# --- the whole config ---------------------------------------------------------------------------

def check_config(config: Mapping[str, Any]) -> None:
    """Check every value of a resolved run config that needs no model; raise ConfigError on the first
    bad one, naming the key, the value and what is allowed."""
    check_task(config)
    model, peft = resolve_model(get(config, "model")), get(config, "peft")
    check_model_config(model)
    mode_spec = check_mask_mode(config)
    mode = mode_spec.name
    spec = check_method(get(config, "peft.name"), model["family"])

    # Where the method goes and the budget level that picks the original run's layers.
    levels = peft.get("budget_layers")
    if not isinstance(levels, list) or not levels or any(as_int(x) is None or as_int(x) < 1 for x in levels):
        raise ConfigError(f"peft.budget_layers={show(levels)}: must be a non-empty list of layer counts >= 1")
    budget = as_int(get(config, "budget"))
    if budget is None or not 1 <= budget <= len(levels):
        raise ConfigError(f"unknown budget level {show(config['budget'])}; choose one of: "
                          f"{', '.join(map(str, range(1, len(levels) + 1)))}")
    check_int(config, "peft.fish_layers", 1)
    check_int(config, "peft.layers", 1, null="the budget level's layers", optional=True)
    spec.check(config)  # the method's own values (rank, prefix length, ...: fishtune/harness/methods.py)
    # A budget-matched mode reads mask.k and mask.budget_rank, and so does one that may start from one.
    if any(MODES[m].budget_matched for m in (mode, *mode_spec.starts.values())):
        check_int(config, "mask.k", 1, null="the original run's trainable count", optional=True)
        check_int(config, "mask.budget_rank", 1, null="peft.rank", optional=True)
    if mode_spec.freezes:
        # Absent: AdaptiveSettings' own default (fishtune/adaptive.py), which the yaml repeats.
        granularity = get(config, "mask.granularity", ABSENT)
        if granularity is not ABSENT and granularity != "tensor" and not re.fullmatch(r"rows:[1-9]\d*", str(granularity)):
            raise ConfigError(f"mask.granularity={show(granularity)}: choose tensor or rows:N (N >= 1)")
        check_int(config, "mask.fisher_interval", 1, optional=True)
        check_int(config, "mask.freeze_interval", 1, optional=True)
        check_float(config, "mask.fisher_decay", 0, above=False, hi=1, below=True, optional=True)
        check_float(config, "mask.drift_decay", 0, above=False, hi=1, below=True, optional=True)
        check_float(config, "mask.threshold_std", -math.inf, above=True, optional=True)
        check_float(config, "mask.max_freeze_fraction", 0, above=True, hi=1, optional=True)
        check_float(config, "mask.min_active_ratio", 0, above=False, hi=1, optional=True)

    # numpy's seed takes 0..2**32-1, and transformers.set_seed seeds numpy.
    check_int(config, "seed", 0, 2**32 - 1)
    glue_dir = get(config, "data.glue_dir")
    if glue_dir is not None and not isinstance(glue_dir, str):
        raise ConfigError(f"data.glue_dir={show(glue_dir)}: must be a folder path, or null (the hub dataset)")
    check_int(config, "data.train_samples", 1, null="all")
    check_int(config, "data.dev_samples", 1, null="all")
    check_int(config, "train.batch_size", 1)
    check_int(config, "train.eval_batch_size", 1)
    check_float(config, "train.lr", 0, above=True, null="the task table's")
    check_float(config, "train.lr_scale", 0, above=True)
    check_float(config, "train.head_lr_scale", 0, above=True, null="train.lr_scale", optional=True)
    check_float(config, "train.weight_decay", 0, above=False)
    check_int(config, "train.max_epochs", 1)
    # 0 would stop after the first epoch whatever it scored: train.max_epochs=1 says that plainly.
    check_int(config, "train.patience", 1, why=" (epochs without a better dev score before stopping)")
    check_choice(config, "train.precision", PRECISIONS)
    device = get(config, "train.device")
    if not (device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", str(device))):
        raise ConfigError(f"train.device={show(device)}: choose one of: auto, cpu, cuda, cuda:N")
    check_claim(config)
    if uses_fisher(config):
        score = MODES[first_mask_mode(config["mask"])].score.name
        why = f" (mask={mode} ranks entries by a {score} estimated on that many training samples)"
        check_int(config, "fisher.samples", 1, why=why)
        check_int(config, "fisher.chunk_size", 1, why=" (samples per backward pass of the Fisher)")


def check_task(config: Mapping[str, Any]) -> None:
    """task.*: a GLUE task's name, or a file task's keys (conf/task/file.yaml): a name of its own, two
    files of a known kind that exist, one or two text columns and a label column, the kind, a metric for
    that kind, max_length, the template's fields, lr. What is in the files is read in the run's plan
    (fishtune.harness.data.prepare_task), before torch."""
    from .data import FILE_FORMATS, file_format
    from .metrics import ALIASES, METRICS, REGRESSION_METRICS

    task = get(config, "task")
    if not is_file_task(task):
        try:
            get_task(get(config, "task.name"))
        except ValueError as e:
            raise ConfigError(str(e)) from None
        return
    name = task.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_]+", name):
        raise ConfigError(f"task.name={show(name)}: must be letters, digits and _ (it is part of each result "
                          f"file's name)")
    if name in TASKS:
        raise ConfigError(f"task.name={name!r} is a GLUE task's name: the tables would take your data for "
                          f"GLUE's; choose another")
    kinds = f"{', '.join(FILE_FORMATS)} or a datasets.save_to_disk folder"
    for key, what in (("train", "training"), ("dev", "dev")):
        path = task.get(key)
        if not isinstance(path, str) or not path:
            raise ConfigError(f"task.{key}={show(path)}: give the {what} data: a path to a {kinds}")
        if not os.path.exists(path):
            raise ConfigError(f"task.{key}={path!r}: no such file or folder")
        if file_format(path) is None:
            raise ConfigError(f"task.{key}={path!r}: unknown kind of file; use {kinds}")
    text = task.get("text")
    texts = [text] if isinstance(text, str) else text
    if not (isinstance(texts, list) and 1 <= len(texts) <= 2 and all(isinstance(t, str) and t for t in texts)):
        raise ConfigError(f"task.text={show(text)}: one column name, or a list of two ([premise,hypothesis])")
    if len(texts) == 2 and texts[0] == texts[1]:
        raise ConfigError(f"task.text={texts}: names column {texts[0]!r} twice")
    label = task.get("label")
    if not isinstance(label, str) or not label:
        raise ConfigError(f"task.label={show(label)}: must be the label column's name")
    if label in texts:
        raise ConfigError(f"task.label={label!r} is also a text column (task.text)")
    kind = check_choice(config, "task.kind", ("classification", "regression"))
    metric = task.get("metric")
    allowed = [m for m in [*METRICS, *ALIASES] if (ALIASES.get(m, m) in REGRESSION_METRICS) == (kind == "regression")]
    if metric is not None and metric not in allowed:
        other = " (a metric of the other task.kind)" if metric in METRICS or metric in ALIASES else ""
        raise ConfigError(f"task.metric={show(metric)}{other}: a {kind} takes one of: {', '.join(allowed)}, "
                          f"or null ({'pearson_spearman' if kind == 'regression' else 'accuracy'})")
    check_int(config, "task.max_length", 1, why=" (tokens per example; longer ones are cut)")
    template = task.get("template")
    if template is not None:
        fields = {"text_a", "text_b"} if len(texts) == 2 else {"text_a"}
        try:
            used = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None} \
                if isinstance(template, str) else None
        except ValueError:
            used = None
        if used is None or not used <= fields or "text_a" not in used:
            raise ConfigError(f"task.template={show(template)}: a text with {{text_a}}"
                              f"{' and {text_b}' if len(texts) == 2 else ''} and no other {{field}} "
                              f"(write a literal brace twice), or null (the generic prompt)")
    check_float(config, "task.lr", 0, above=True)


def check_claim(config: Mapping[str, Any]) -> None:
    """claim.* (fishtune/harness/claims.py): a switch, and a heartbeat well inside the timeout."""
    enabled = get(config, "claim.enabled")
    if not isinstance(enabled, bool):
        raise ConfigError(f"claim.enabled={show(enabled)}: must be true or false")
    heartbeat = check_float(config, "claim.heartbeat_s", 0, above=True)
    timeout = check_float(config, "claim.timeout_s", 0, above=True)
    if timeout < 2 * heartbeat:  # one late heartbeat must not make a live owner look gone
        raise ConfigError(f"claim.timeout_s={timeout:g}: must be at least twice claim.heartbeat_s={heartbeat:g}")


# --- the hub ------------------------------------------------------------------------------------

def _offline(*names: str) -> str | None:
    """The first of these environment variables that is set to a true value (huggingface_hub's reading)."""
    for name in names:
        if os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return name
    return None


def _hub_unreachable() -> str | None:
    """Why the hub cannot be reached (None when it can, or when a proxy decides): one TCP connect, so a
    machine without internet hears it in seconds instead of after the libraries' retries (~30 s)."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((url.hostname, url.port or (80 if url.scheme == "http" else 443)), timeout=5).close()
    except OSError as e:
        return f"{url.hostname} cannot be reached from this machine ({e.strerror or e})"
    return None


_LOCAL_FIX = "or set {key} to a local folder"


def check_hub_model(repo_id: str, key: str = "model.path") -> None:
    """A hub model that cannot be had (not cached and offline, unreachable, gated, missing) -> one line
    naming it, why, and the fix. A model whose config.json is in the local cache passes."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
        return
    local = _LOCAL_FIX.format(key=key)
    head = f"hub model {repo_id!r} cannot be had"
    if offline := _offline("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        raise ConfigError(f"{head}: it is not in the local cache and {offline}=1 forbids downloading; "
                          f"run with {offline}=0 to download it, {local}")
    if why := _hub_unreachable():
        raise ConfigError(f"{head}: it is not in the local cache and {why}; download it where the hub is "
                          f"reachable and copy the cache over, {local}")
    try:
        hf_hub_download(repo_id, "config.json")
    except GatedRepoError:
        raise ConfigError(f"{head}: it is gated and this machine has no access; accept its licence on "
                          f"huggingface.co, then `huggingface-cli login` or set HF_TOKEN, {local}") from None
    except RepositoryNotFoundError:
        raise ConfigError(f"{head}: no such repository on the hub (or it is private: `huggingface-cli login` "
                          f"or HF_TOKEN); check {key}, {local}") from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{head}: {reason}; {local}") from None


def check_hub_dataset(repo_id: str, name: str) -> None:
    """The hub dataset (data.glue_dir=null) that cannot be had -> one line naming it, why and the fix."""
    head = f"hub dataset {repo_id!r} ({name}) cannot be had"
    local = "or set data.glue_dir (or GLUE_DIR) to a folder in the GLUE download layout"
    offline = _offline("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    if not offline and (why := _hub_unreachable()):
        raise ConfigError(f"{head}: {why}; {local}")
    import datasets  # here: only hub runs need it (about a second to import)

    try:
        datasets.load_dataset_builder(repo_id, name)
    except ConnectionError:
        if offline:
            raise ConfigError(f"{head}: it is not in the local cache and {offline}=1 forbids downloading; "
                              f"run with {offline}=0 to download it, {local}") from None
        raise ConfigError(f"{head}: the hub cannot be reached; {local}") from None
    except Exception as e:  # noqa: BLE001 - gated, missing, a broken cache: all end in the same one line
        gated = "gated" in str(e).lower()
        reason = ("it is gated: `huggingface-cli login` or set HF_TOKEN" if gated
                  else (str(e).strip().splitlines() or [type(e).__name__])[0])
        raise ConfigError(f"{head}: {reason}; {local}") from None


def check_hub(config: Mapping[str, Any]) -> None:
    """A hub model or the hub GLUE dataset this run needs and cannot have: one line before training."""
    model = config["model"]
    if model["source"] == "hub" and not os.path.isdir(str(model["path"])):
        check_hub_model(model["path"])
    if model.get("tokenizer") and not os.path.isdir(str(model["tokenizer"])):
        check_hub_model(model["tokenizer"], key="model.tokenizer")
    if config["data"]["glue_dir"] is None and not is_file_task(config["task"]):
        from .data import HUB_DATASET

        check_hub_dataset(HUB_DATASET, config["task"]["name"])
