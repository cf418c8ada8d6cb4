"""Result files: one JSON per run, written atomically, keyed by the config that produced it.

A result file is the unit of resume and aggregation. `RunResult` is its type: its fields, in the
order a file holds them, say what each key means (`RunResult.to_json()` is what a run writes,
`RunResult.from_json()` what every reader reads through). `metrics` hold the task's numbers x100
(matthews | accuracy | f1 | pearson | spearman) and `score` is the single number a table shows for
the task. Every number in a result file is finite (it is written with allow_nan=False;
fishtune.harness.metrics defines each metric for constant predictions).

Schemas: 2 since the harness and the reports moved into their folders (the file's content is the same,
its `schema` says which code wrote it); 1 before. Both load: what files of schema 1 written before a
key existed lack, `from_json` fills in (the only place that knows about older files). A field without a
default is required: a file that lacks one is damaged, never read with a None in its place.

A run that fails writes `<run>.failed.json` instead (`RunFailure`, fishtune.harness.run.record_failure):
status, config, `reason` (one line, e.g. "diverged: non-finite loss at epoch 3, step 7"), error,
traceback, host, slurm, finished_at.

Identity. A result file is named `<run_name>-<config hash>.json` and records that name as its run_id and
the hash as its config_hash; the hash is that of what the run computes (`identity`: the config less where
files go, values as Hydra reads them unquoted, so seed='42' and seed=42 are one run). Every read checks
the three against each other and against the config inside (`identity_problem`).

A file that cannot stand for its run is never fatal and never counted: unreadable or truncated, no
result (a JSON list, a config dump, an unknown schema), against the schema (a required field missing,
a null or empty `best`, a score that is a string or NaN, a best score its history does not have:
RunResult.check), or not its computation's (renamed, copied onto another run's name, its config
edited). A run sets its own such result, mask or checkpoint aside as `<name>.damaged`, with the reason,
and runs again (read_result); the loaders here, which the reports read through, skip each one and name
it with why, and count one file per computation per folder.

The loaders return the types: `load_results` RunResults, `load_failures` RunFailures, each with the
`path` it was read from; `finished_runs` is the one test of which results the reports count.

Shared folders: every file a run writes (result, failure record, mask, checkpoint) is written to a temporary
file of its own (`.<name>.<pid>@<host>.<random>.tmp`) and renamed into place, with the mode any file gets
under the writer's umask (0o666 & ~umask: `umask 002` makes it group-writable). A file this user may not
read (another user's, written under a private umask) is never taken for damage: `Unreadable` names it and
its owner, and the run is left alone. A full disk (or quota) is `NoSpace`: "no space left on device: <path>".
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import math
import os
import re
import secrets
import socket
import subprocess
import sys
import types
import typing
from collections import defaultdict
from dataclasses import MISSING, dataclass, field, fields
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping

SCHEMA = 2                # what new result files are written with
SCHEMAS = (1, 2)          # what loads (RunResult.from_json)
# Keys that do not change what a run computes: excluded from its identity.
_NOT_IDENTITY = ("paths", "force", "claim", "logger", "hydra")
DAMAGED = ".damaged"  # suffix of a file set aside because it could not be read


class Diverged(RuntimeError):
    """The training loss became NaN or infinite: the run stops at once and is recorded as failed."""


class NotAResult(ValueError):
    """A JSON file that is no fishtune result at all (no known `schema`): a config dump, a failure record."""


class Unreadable(PermissionError):
    """A run's file that this user may not read (another user's, written under a private umask): never
    set aside or retrained; the run is left to its owner."""

    def __init__(self, path: str | Path):
        self.path, self.owner = Path(path), file_owner(path)
        super().__init__(errno.EACCES, f"cannot read {self.path}: permission denied (owned by {self.owner}); "
                                       f"the run is left alone")

    def __str__(self) -> str:
        return self.strerror


class NoSpace(OSError):
    """A write found the disk (or the user's quota) full: the run fails with 'no space left on device: <path>'."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        super().__init__(errno.ENOSPC, f"no space left on device: {self.path}")

    def __str__(self) -> str:
        return self.strerror


# The keys an adaptive run adds; absent (not null) in every other result file.
ADAPTIVE_KEYS = ("trainable_final", "ratio_pct_final", "ratio_pct_mean", "active_ratio_history")
# Keys written only when set (zero_fisher_filled: a run whose mode has a score, ModeSpec.score); older files lack them.
_OPTIONAL_KEYS = (*ADAPTIVE_KEYS, "zero_fisher_filled")


@dataclass(kw_only=True)
class RunResult:
    """One finished run, as its result file holds it (fields in file order; null where not measured)."""
    schema: int = SCHEMA
    run_id: str
    config_hash: str
    config: dict                       # the resolved config
    # what a table and a sweep slice by
    model: str
    task: str
    method: str
    layers: int                        # layers the method is inserted on
    rank: int | None
    mask: str
    budget: int
    seed: int
    trainable: int                     # trainable entries, head included
    head_entries: int | None = None
    total: int                         # all parameters of the model with the method inserted
    ratio_pct: float
    # the mask's entries per tensor of the method: [{name, layer, module, chosen, entries}]
    placement: list[dict] | None = None
    budget_ratio_pct: float            # trainable over the original run's model (the paper's ratio)
    lr: float
    train_examples: int
    dev_examples: int
    history: list[dict]                # per epoch: epoch, train_loss, dev_loss, metrics, score (+ active_ratio)
    best: dict                         # epoch, score, metrics, dev_loss of the best epoch
    stop_reason: str                   # early_stopping | max_epochs
    # per dev example, in the seeded subsample's order; predictions of the best epoch
    dev_labels: list | None = None
    dev_predictions: list | None = None
    fisher_seconds: float              # seconds the mask's score took (ModeSpec.score: the Fisher, ...); 0 without one
    # a scoring mode's chosen entries whose score is zero (k beyond the non-zero scores, filled by position:
    # fishtune.ZeroFisherWarning), as its ModeSpec.zero_score counts them (0 for rev, which counts none);
    # absent for modes that read no samples (ModeSpec.score None: none, rand, head_only) and in older files
    zero_fisher_filled: int | None = None
    train_seconds: float
    samples_per_second: float
    tokens_per_second: float | None = None   # training tokens, padding left out
    throughput: list[dict] | None = None     # per epoch: epoch, train_seconds, samples_per_second, tokens_per_second
    threads: int | None = None
    peak_memory_mb: float | None = None      # GPU: max allocated; CPU: peak RSS
    peak_rss_mb: float | None = None
    peak_rss_source: str | None = None
    cuda_max_allocated_mb: float | None = None
    cuda_max_reserved_mb: float | None = None
    device: str
    precision: str | None = None             # fp32 | bf16
    precision_reason: str | None = None
    host: str
    slurm: dict | None = None                # job ids and GPU, outside Slurm null
    resumed_from_epoch: int | None = None    # the checkpoint a requeued or restarted run continued from
    versions: dict
    git_commit: str | None = None            # HEAD when the run started
    finished_at: str
    # adaptive runs only (ADAPTIVE_KEYS)
    trainable_final: int | None = None
    ratio_pct_final: float | None = None
    ratio_pct_mean: float | None = None
    active_ratio_history: list[float] | None = None
    # keys of no field (a migration's note): kept, and written back after the others
    extra: dict = field(default_factory=dict)
    # where the result was read from (load_results); no part of the file
    path: str | None = field(default=None, compare=False)

    @property
    def score(self) -> float | None:
        """The best epoch's score (x100), the number a table shows; None for a run without one."""
        return self.best.get("score") if isinstance(self.best, Mapping) else None

    def to_json(self) -> dict[str, Any]:
        """The result file's content: every field in order, the adaptive ones and zero_fisher_filled only
        when set, then `extra`."""
        out = {name: getattr(self, name) for name in FILE_KEYS}
        for key in _OPTIONAL_KEYS:
            if out[key] is None:
                del out[key]
        return {**out, **self.extra}

    @classmethod
    def from_json(cls, data: Any, path: str | Path | None = None) -> RunResult:
        """A result file's content as a RunResult, for every schema in SCHEMAS: NotAResult when it is no
        fishtune result (a list, an unknown schema), ValueError when it breaks the schema (a required field
        missing, a field of the wrong type, a null or empty `best`, a score that is no finite number, NaN
        anywhere, a best score that is not its epoch's in the history). What older files lack is filled in
        here, and only here."""
        if not isinstance(data, Mapping):
            raise NotAResult(f"not a fishtune result: a JSON {_json_kind(data)}")
        if "schema" not in data:
            raise NotAResult("not a fishtune result: no `schema`")
        if data["schema"] not in SCHEMAS:
            raise NotAResult(f"unknown schema {data['schema']!r} (this fishtune reads "
                             f"{', '.join(map(str, SCHEMAS))})")
        data = dict(data)
        for key in ("model", "method", "mask"):  # the earliest files stored the config node
            if isinstance(data.get(key), Mapping):
                data[key] = data[key].get("name", data[key].get("mode"))
        # Files from before budget_ratio_pct had one ratio, over the run's own model.
        if "ratio_pct" in data:
            data.setdefault("budget_ratio_pct", data["ratio_pct"])
        result = cls(**_known(cls, data, FILE_KEYS), path=None if path is None else str(path),
                     extra={k: v for k, v in data.items() if k not in FILE_KEYS and not k.startswith("_")})
        result.check()
        return result

    def check(self) -> None:
        """ValueError naming the first thing that breaks the schema: a field of the wrong type (the
        annotations above), a number that is not finite, a `best` without a score, or a best score that is
        not the score its epoch has in the history (edited by hand)."""
        hints, types_of = _field_types(), {f.name: f.type for f in fields(self)}
        for name in TYPED_KEYS:
            if not _is_a(getattr(self, name), hints[name]):
                raise ValueError(f"{name} is {_shown(getattr(self, name))}, not {types_of[name]}")
        try:   # json's C encoder finds a NaN quickly; only then is it looked for, to name where it is
            json.dumps(self.to_json(), allow_nan=False, default=str)
        except ValueError:
            raise ValueError(f"{_not_finite(self.to_json())} is not a finite number (NaN or infinite)") from None
        if "score" not in self.best:
            raise ValueError("best has no score")
        score = self.best["score"]
        if score is None:
            return   # no best epoch: finished_runs leaves it out and says so
        if not _is_a(score, float):
            raise ValueError(f"best.score is {_shown(score)}, not a number")
        # every run records each epoch's score in its history: a best score its epoch does not have was edited
        epoch = self.best.get("epoch")
        said = [h["score"] for h in self.history
                if isinstance(h, Mapping) and h.get("epoch") == epoch and _is_a(h.get("score"), float)]
        if said and not math.isclose(said[0], score, rel_tol=1e-9, abs_tol=1e-9):
            raise ValueError(f"best.score {score!r} is not what its history says of epoch {epoch!r} "
                             f"({said[0]!r}): edited by hand?")


def _json_kind(value: Any) -> str:
    return {list: "list", str: "string", bool: "boolean", int: "number", float: "number"}.get(type(value), "null")


def _shown(value: Any) -> str:
    """A value for a one-line message: JSON's spelling (a string quoted as Python does), cut at 40."""
    text = repr(value) if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


@lru_cache(maxsize=1)
def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(RunResult)


def _is_a(value: Any, hint: Any) -> bool:
    """Whether a value read from JSON fits a field's annotation (int | None, list[dict], float, ...); a
    float field takes an int (JSON writes 0.0 as 0 in some writers), no number field takes a bool."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_is_a(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    hint = typing.get_origin(hint) or hint
    if hint is Any:
        return True
    if isinstance(value, bool) and hint in (int, float):
        return False
    if hint is float:
        return isinstance(value, (int, float))
    return isinstance(value, hint)


def _not_finite(value: Any, where: str = "") -> str | None:
    """The key path of the first NaN or infinity in `value` (a JSON document), or None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else (where or "the value")
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = ((f"[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    for k, v in items:
        found = _not_finite(v, f"{where}{k}" if str(k).startswith("[") or not where else f"{where}.{k}")
        if found is not None:
            return found
    return None


# The fields whose type RunResult.check checks: what a run is, and what every report reads of it. Cost
# and bookkeeping fields are left as found (files of schema 1 hold null where a key came later).
SLICE_KEYS = ("model", "task", "method", "layers", "rank", "mask", "budget", "seed", "lr")   # what reports slice by
TYPED_KEYS = ("schema", "run_id", "config_hash", "config", *SLICE_KEYS, "history", "best")

# The keys a result file may hold, in file order (RunResult's fields but the two that are not in it).
FILE_KEYS = tuple(f.name for f in fields(RunResult) if f.name not in ("extra", "path"))


def required_keys(cls: type) -> tuple[str, ...]:
    """The fields of a record type without a default: what a file of that type must hold."""
    return tuple(f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING)


def _known(cls: type, data: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """The values of `keys` that `data` holds (absent optional ones take their defaults); ValueError
    naming the required fields it lacks."""
    lacking = [k for k in required_keys(cls) if k not in data]
    if lacking:
        raise ValueError(f"lacks required field(s) {', '.join(lacking)}")
    return {k: data[k] for k in keys if k in data}


@dataclass(kw_only=True)
class RunFailure:
    """One failed run, as its `<run>.failed.json` holds it (fishtune.harness.run.record_failure)."""
    status: str = "failed"
    config: dict
    reason: str                               # one line: why it failed
    error: str                                # the exception, "Type: message"
    traceback: list[str] | str | None = None
    host: str | None = None
    slurm: dict | None = None
    finished_at: str | None = None
    path: str | None = field(default=None, compare=False)   # where it was read from (load_failures)

    def to_json(self) -> dict[str, Any]:
        """The failure record's content, every field but `path` in order."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "path"}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], path: str | Path | None = None) -> RunFailure:
        """A failure record's content as a RunFailure; ValueError when it is none or lacks a field.
        Records from before `reason` was kept: the error's first line."""
        if not isinstance(data, Mapping):
            raise ValueError("not a failure record")
        data = dict(data)
        if not data.get("reason") and data.get("error"):
            data["reason"] = str(data["error"]).splitlines()[0]
        keys = [f.name for f in fields(cls) if f.name != "path"]
        return cls(**_known(cls, data, keys), path=None if path is None else str(path))


# --- identity: what a run computes ------------------------------------------------------------------
#
# A run's identity is its config less what does not change what it computes, each value as Hydra would
# have read it unquoted: `seed='42'` (quoted, or from an environment variable) and `seed=42` are one run.
# A string stays a string where conf/ gives its key strings (task.name, model.path); elsewhere a string
# that is a number becomes that number, and 'true'/'false' a bool where conf/ gives the key bools.
# Numbers keep their kind: 400 and 400.0 are one value to Python but not to the hash, and the committed
# runs were named with whichever Hydra read (train.head_lr_scale: 400 in the study's sweeps), so turning
# one into the other would rename them. A config whose values already have their types hashes as before.


@lru_cache(maxsize=1)
def conf_types() -> dict[str, frozenset[type]]:
    """Every key of a run's config that conf/'s files hold ('peft.rank'; a list's items as
    'peft.budget_layers[]') -> the types of the values they give it (null left out: train.lr has none);
    hydra/ and `defaults` lists are no part of a run's config."""
    import yaml

    from . import CONF_DIR

    found: dict[str, set[type]] = defaultdict(set)

    def walk(node: Mapping, prefix: str) -> None:
        for k, v in node.items():
            key = f"{prefix}{k}"
            if isinstance(v, Mapping):
                walk(v, key + ".")
            elif isinstance(v, list):
                found[key + "[]"].update(type(x) for x in v if x is not None and not isinstance(x, (dict, list)))
            else:   # a key conf/ leaves null is known too, of no kind
                found[key].update([type(v)] if v is not None else [])

    for f in sorted(CONF_DIR.rglob("*.yaml")):
        rel = f.relative_to(CONF_DIR)
        if rel.parts[0] == "hydra":
            continue
        text = f.read_text()
        data = yaml.safe_load(text) or {}
        header = [line for line in text.splitlines() if line.startswith("#")][:3]
        package = "" if len(rel.parts) == 1 or any("@package _global_" in line for line in header) \
            else ".".join(rel.parts[:-1]) + "."
        walk({k: v for k, v in data.items() if k not in ("defaults", "hydra")}, package)
    return {k: frozenset(v) for k, v in found.items()}


def _number(text: str) -> int | float | None:
    """A string as the number Hydra would have read had it not been quoted ('42' -> 42, '5e-5' -> 5e-05);
    None when it is none (or not finite)."""
    text = text.strip()
    if re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    try:
        x = float(text)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def _typed(value: Any, kinds: frozenset[type] | None) -> Any:
    """A string `value` as Hydra would have read it unquoted, for a key whose values in conf/ are of
    `kinds` (none: conf/ leaves it null or lacks it); any other value as it is."""
    if not isinstance(value, str) or (kinds and str in kinds):
        return value
    if kinds == {bool}:
        return {"true": True, "false": False}.get(value.strip().lower(), value)
    number = _number(value)
    return value if number is None else number


def normalise(config: Mapping[str, Any], prefix: str = "") -> dict:
    """`config` with each string value that Hydra would have read unquoted as a number (or a bool) made
    that value (_typed): seed='42' -> 42, train.lr='5e-5' -> 5e-05, but task.name stays a string."""
    kinds = conf_types()
    out = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out[k] = normalise(v, key + ".")
        elif isinstance(v, list):
            out[k] = [_typed(x, kinds.get(key + "[]")) for x in v]
        else:
            out[k] = _typed(v, kinds.get(key))
    return out


def _identity_of(config: Mapping[str, Any]) -> dict:
    out = {k: v for k, v in config.items() if k not in _NOT_IDENTITY}
    # The pooler head is what every run had before `model.head` existed: naming it keeps their identity.
    if isinstance(out.get("model"), Mapping) and out["model"].get("head") == "pooler":
        out["model"] = {k: v for k, v in out["model"].items() if k != "head"}
    # A head rate of null is the one rate every run had before the key existed.
    if isinstance(out.get("train"), Mapping) and out["train"].get("head_lr_scale", 0) is None:
        out["train"] = {k: v for k, v in out["train"].items() if k != "head_lr_scale"}
    if isinstance(out.get("data"), Mapping):  # where GLUE is read from does not change the run
        out["data"] = {k: v for k, v in out["data"].items() if k != "glue_dir"}
    return out


def identity(config: Mapping[str, Any]) -> dict:
    """The part of a run's config that decides what it computes (not where files go or are read from),
    its values normalised to their types (`normalise`)."""
    return _identity_of(normalise(config))


def _digest(ident: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:10]


def config_hash(config: Mapping[str, Any]) -> str:
    """The 10 hex digits that name what a run computes: the hash of its identity."""
    return _digest(identity(config))


def run_name(config: Mapping[str, Any], layers: int) -> str:
    """Readable part of a run's file name; the config hash keeps two configs from sharing one."""
    config = normalise(config)
    mask = config["mask"]["mode"]
    budget = f"-b{config['budget']}" if mask != "none" else ""
    rank = config["peft"].get("rank")
    return (f"{config['model']['name']}-{config['task']['name']}-{config['peft']['name']}"
            f"-L{layers}{f'-r{rank}' if rank is not None else ''}-{mask}{budget}-s{config['seed']}")


_NAME_HASH = re.compile(r"-([0-9a-f]{10})$")


def identity_problem(result: RunResult, path: str | Path) -> tuple[str, str | None]:
    """(the config hash of what `result` computed, why the file at `path` cannot stand for it or None).
    A run records the hash of its config and names its file `<run_id>.json`, its run_id ending in that
    hash: a config edited after the run, or a file renamed or copied onto another run's name, breaks one
    of them. (A file under a name fishtune never gives, without a hash, is left to the loaders: a copy
    beside its original is a second file of one computation.) Files written before values were
    normalised keep the hash of their config as it was written."""
    path = Path(path)
    ours = config_hash(result.config)
    as_written = _digest(_identity_of(result.config))   # the same unless the config holds '42' for 42
    if result.config_hash not in (ours, as_written):
        return ours, (f"its config_hash {result.config_hash} is not the hash of its config ({ours}): "
                      f"the config or the hash was edited")
    named = _NAME_HASH.search(path.stem)
    if named and named.group(1) != result.config_hash:
        return ours, (f"its name's hash {named.group(1)} is not its config's ({result.config_hash}): "
                      f"copied onto another run's name")
    if named and path.stem != result.run_id:
        return ours, f"its name is not its run_id {result.run_id}: renamed or copied onto another run's name"
    return ours, None


def result_path(runs_dir: str | Path, config: Mapping[str, Any], layers: int) -> Path:
    return Path(runs_dir) / f"{run_name(config, layers)}-{config_hash(config)}.json"


def file_owner(path: str | Path) -> str:
    """The user name of a file's owner (its uid when the name is unknown here; '?' when it cannot be seen)."""
    import pwd

    try:
        uid = os.stat(path).st_uid
    except OSError:
        return "?"
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def temp_prefix(path: str | Path) -> str:
    """Start of the temporary files written for `path`: `.<name>.<pid>@<host>.`, then a random part and
    `.tmp`. Each writer (process, and call) has its own, and the pid and host say whether it still runs."""
    path = Path(path)
    return f".{path.name}.{os.getpid()}@{socket.gethostname()}."


def temp_writer(path: str | Path, temp: str | Path) -> tuple[int, str] | None:
    """(pid, host) of the writer of a temporary file of `path` (named by temp_prefix), None if it is none."""
    name, head = Path(temp).name, f".{Path(path).name}."
    if not (name.startswith(head) and name.endswith(".tmp")):
        return None
    writer = name[len(head):-len(".tmp")].rsplit(".", 1)[0]
    pid, _, host = writer.partition("@")
    return (int(pid), host) if pid.isdigit() and host else None


def write_atomic(path: str | Path, data: bytes | memoryview, guard: Callable[[], None] | None = None) -> None:
    """Write `data` to a temporary file of this writer's own beside `path` (mode 0o666 & ~umask), then
    rename it over `path`: a crash never leaves half a file, and writers never share a temporary file.
    `guard` is called just before the rename: if it raises (the run's claim is lost), nothing is replaced.
    The temporary file is removed whatever stops the write (an error, a signal's exception); a full disk
    or quota raises NoSpace."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Named before it exists (not mkstemp): a signal's exception raised the moment the file is created
        # still finds `tmp` set and removes it. O_EXCL: never another writer's file; 0o666 under the umask.
        tmp = path.with_name(f"{temp_prefix(path)}{secrets.token_hex(8)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if guard is not None:
            guard()
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and not isinstance(e, FileExistsError):   # that one is not ours to remove
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and not isinstance(e, NoSpace) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise NoSpace(path) from e
        raise


def write_json_atomic(path: str | Path, data: Mapping[str, Any], guard: Callable[[], None] | None = None) -> None:
    """Write JSON atomically (write_atomic). NaN and infinity are refused (ValueError) before any file is
    made: they are not JSON, and no result may hold them."""
    blob = json.dumps(data, indent=1, default=str, allow_nan=False).encode()
    write_atomic(path, blob, guard)


def save_torch_atomic(path: str | Path, obj: Any, guard: Callable[[], None] | None = None) -> None:
    """torch.save, atomically (write_atomic). Serialised in memory first, so that a full disk is an OSError
    of Python's own write (NoSpace), not torch's "unexpected pos" from inside its zip writer."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomic(path, buffer.getbuffer(), guard)


def json_safe(value: Any) -> Any:
    """`value` with every NaN or infinite float written as a string ("inf"), for records that must keep
    whatever a failed run was given (a config with train.lr=inf) and still be JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def set_aside(path: str | Path, why: str) -> Path:
    """Rename a damaged file to `<name>.damaged` (replacing an older one) and warn on stderr, so that
    the run that owns it starts over and the evidence stays for a look."""
    path = Path(path)
    aside = path.with_name(path.name + DAMAGED)
    os.replace(path, aside)
    print(f"fishtune: warning: {path} is damaged ({why}); set aside as {aside.name}", file=sys.stderr)
    return aside


def check_readable(path: str | Path) -> None:
    """Raise Unreadable when this user may not read the file at `path` (one that is absent is no matter)."""
    try:
        with open(path, "rb"):
            pass
    except PermissionError:
        raise Unreadable(path) from None
    except FileNotFoundError:
        pass


def read_json(path: Path) -> tuple[Any, str | None]:
    """(data, None), or (None, why) when the file cannot be read as JSON (truncated, not text, or another
    user's that this one may not read: 'permission denied (owned by NAME)')."""
    try:
        return json.loads(path.read_bytes()), None
    except PermissionError:  # another user's file, not a damaged one
        return None, f"permission denied (owned by {file_owner(path)})"
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return None, f"{type(e).__name__}: {e}".splitlines()[0]


def read_result(path: str | Path) -> dict | None:
    """The result file at `path` as the run returns it (RunResult.to_json(): the current schema's
    dict), or None when it cannot stand for its run: truncated, not a result, against the schema
    (RunResult.from_json), or not this computation's (identity_problem: renamed, copied onto another run's
    name, its config edited). Then it is set aside with a warning and its run is redone. Unreadable when
    this user may not read it (never set aside: another user's file)."""
    path = Path(path)
    check_readable(path)
    data, why = read_json(path)
    if why is None:
        try:
            result = RunResult.from_json(data, path)
            _, why = identity_problem(result, path)
            if why is None:
                return result.to_json()
        except (TypeError, ValueError) as e:
            why = str(e)
    set_aside(path, f"{why}; the run is redone")
    return None


# Folders of a runs folder that hold no records of runs: Hydra's and wandb's own files, hidden ones
# (.submitit, .hydra). Every other *.json under a runs folder is a result, or is named as skipped.
_NOT_RECORDS = ("hydra", "wandb")


def record_files(runs_dir: str | Path, pattern: str) -> list[Path]:
    """The files matching `pattern` under `runs_dir` (recursively) that records of runs may be: not in
    Hydra's, wandb's or hidden folders."""
    runs_dir = Path(runs_dir)
    return [p for p in sorted(runs_dir.rglob(pattern))
            if not any(part in _NOT_RECORDS or part.startswith(".") for part in p.relative_to(runs_dir).parts[:-1])]


def load_results(runs_dir: str | Path, damaged: list[str] | None = None) -> list[RunResult]:
    """Every result file under `runs_dir` (recursively, record_files) as a RunResult (in the current
    schema's shape, whatever schema wrote it) with its `path`. Skipped, each with 'path: why' appended to
    `damaged` (or, without it, a warning on stderr): a file that cannot be read, is no result (a list, a
    config dump, an unknown schema) or breaks the schema (RunResult.from_json); a file that does not stand
    for the computation its config names (identity_problem); and every file but one of a computation that
    has several in one folder (the one whose name its config gives, else the newest), so that no run is
    counted twice."""
    paths = [p for p in record_files(runs_dir, "*.json") if not p.name.endswith(".failed.json")]
    problems: list[str] = []
    found: dict[tuple, list[RunResult]] = defaultdict(list)
    for path in paths:
        data, why = read_json(path)
        if why is None:
            try:
                result = RunResult.from_json(data, path)
                ours, why = identity_problem(result, path)
                if why is None:   # one computation: its config's identity and what it is reported as
                    found[(path.parent, ours, *(getattr(result, k) for k in SLICE_KEYS))].append(result)
                    continue
            except (TypeError, ValueError) as e:
                why = str(e)
        problems.append(f"{path}: {why}")
    out = []
    for (_, ours, *_), group in found.items():
        # the file named by its config's normalised hash, else the newest
        group.sort(key=lambda r: (Path(r.path).stem.endswith(ours), str(r.finished_at)))
        out.append(group[-1])
        problems += [f"{r.path}: the same computation (config hash {ours}) as {Path(group[-1].path).name}: "
                     f"not counted twice" for r in group[:-1]]
    _tell(problems, damaged)
    return sorted(out, key=lambda r: str(r.path))


def _tell(problems: list[str], damaged: list[str] | None) -> None:
    if damaged is not None:
        damaged.extend(sorted(problems))
    else:
        for line in sorted(problems):
            print(f"fishtune: warning: skipped {line}", file=sys.stderr)


def load_failures(runs_dir: str | Path, damaged: list[str] | None = None) -> list[RunFailure]:
    """The `*.failed.json` records of runs that failed as RunFailures (reason, error and traceback);
    unreadable ones are skipped and named, as for load_results."""
    out, problems = [], []
    for path in record_files(runs_dir, "*.failed.json"):
        data, why = read_json(path)
        if why is None:
            try:
                out.append(RunFailure.from_json(data, path))
                continue
            except (TypeError, ValueError) as e:
                why = str(e)
        problems.append(f"{path}: {why}")
    _tell(problems, damaged)
    return out


def finished_runs(results: Iterable[RunResult], skipped: list[str] | None = None) -> list[RunResult]:
    """The results every report counts: runs that reached a best epoch (a best score). With `skipped`,
    'path: no best score' is appended to it for each other one."""
    out = []
    for r in results:
        if r.score is not None:
            out.append(r)
        elif skipped is not None:
            skipped.append(f"{r.path or r.run_id}: no best score")
    return out


# A run's mask file, `<run>.mask.safetensors` beside its result file: the library's format (fishtune.masks:
# save_masks / load_masks, one bool tensor per parameter of the method, metadata `format` and `chosen`)
# with what its Fisher cost in the metadata (strings): `fisher_seconds`, and `zero_fisher_filled` where
# the mask read a Fisher. Runs before safetensors saved `<run>.mask.pt` (torch.save); such files are still
# read (a resumed run, the reports), never written. torch is imported only where a mask is read or written.
MASK_SUFFIX = ".mask.safetensors"
OLD_MASK_SUFFIX = ".mask.pt"


def mask_path(result: str | Path) -> Path:
    """Where the run whose result file is `result` saves its mask (`<run>.mask.safetensors`)."""
    return Path(result).with_suffix(MASK_SUFFIX)


def find_mask_file(result: str | Path) -> Path | None:
    """The mask file saved beside the result file `result`: `<run>.mask.safetensors`, else an older run's
    `<run>.mask.pt`; None when there is neither."""
    for path in (mask_path(result), Path(result).with_suffix(OLD_MASK_SUFFIX)):
        if path.exists():
            return path
    return None


def save_mask_file(path, masks: Mapping[str, Any], fisher_seconds: float = 0.0,
                   zero_fisher_filled: int | None = None, guard: Callable[[], None] | None = None) -> None:
    """A run's mask at `path` (mask_path), atomically and under the umask like every file a run writes
    (write_atomic; `guard` as there), with what the Fisher cost and how many of its entries had a zero
    Fisher score (a resumed run reports both)."""
    from ..masks import mask_file_bytes

    extra = {} if zero_fisher_filled is None else {"zero_fisher_filled": int(zero_fisher_filled)}
    write_atomic(path, mask_file_bytes(masks, fisher_seconds=float(fisher_seconds), **extra), guard)


def read_mask_file(path: Path | None, like: Mapping[str, Any]) -> tuple[dict[str, Any], float, int | None] | None:
    """(masks, fisher_seconds, zero_fisher_filled) for a run that resumes, the masks in the order and on the
    devices of the run's candidate tensors `like`: None when there is no file (`path` None or absent), or
    when it is damaged (unreadable, truncated, or not shaped like `like`); a damaged one is set aside as
    `<name>.damaged` with a warning, and the run builds its mask again."""
    if path is None or not path.exists():
        return None
    check_readable(path)
    try:
        saved = _mask_record(path)
        masks = saved["masks"]
        if set(masks) != set(like) or any(tuple(masks[n].shape) != tuple(q.shape) for n, q in like.items()):
            raise ValueError("its tensors are not the run's candidates")
    except Exception as e:  # noqa: BLE001 - whatever safetensors or torch.load make of a broken file, it cannot be used
        set_aside(path, f"{type(e).__name__}: {e}".splitlines()[0][:200] + "; the mask is built again")
        return None
    import torch

    masks = {n: masks[n].to(q.device, torch.bool) for n, q in like.items()}
    return masks, saved["fisher_seconds"], saved["zero_fisher_filled"]


def _mask_record(path) -> dict[str, Any]:
    """A mask file as {masks, fisher_seconds, zero_fisher_filled}. safetensors: read as the library reads
    it (fishtune.masks.load_masks), the rest from its metadata. An older `.mask.pt`: torch.load; what the
    earliest of those lack is 0 and None."""
    path = Path(path)
    if path.name.endswith(MASK_SUFFIX):
        from safetensors import safe_open

        from ..masks import load_masks

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != "fishtune-masks":
            raise ValueError(f"no fishtune mask file (metadata format={meta.get('format')!r})")
        zero = meta.get("zero_fisher_filled")
        return {"masks": load_masks(path), "fisher_seconds": float(meta.get("fisher_seconds", 0.0)),
                "zero_fisher_filled": None if zero is None else int(zero)}
    import torch

    saved = torch.load(path)
    if not isinstance(saved.get("masks"), dict):  # the earliest files: the masks alone
        saved = {"masks": saved}
    return {"masks": saved["masks"], "fisher_seconds": float(saved.get("fisher_seconds", 0.0)),
            "zero_fisher_filled": saved.get("zero_fisher_filled")}


def load_mask_file(path) -> tuple[dict[str, Any], float]:
    """(masks, fisher_seconds) of a mask file, `<run>.mask.safetensors` or an older `<run>.mask.pt`
    (find_mask_file); files from before fisher_seconds was kept give 0."""
    saved = _mask_record(path)
    return saved["masks"], saved["fisher_seconds"]


def set_aside_files(runs_dir: str | Path) -> list[Path]:
    """The files under `runs_dir` that runs set aside as damaged (`*.damaged`)."""
    return sorted(Path(runs_dir).rglob(f"*{DAMAGED}"))


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "transformers", "peft", "adapters", "datasets", "hydra-core", "numpy", "fishtune"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                              timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
