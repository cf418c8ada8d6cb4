"""Task data: GLUE splits from a local folder (GLUE download layout) or the hub, your own data from files
(conf/task/file.yaml), tokenised, in dynamically padded batches.

`prepare_task(config)` reads a run's data once before anything heavy loads, so that bad content is one line
(ConfigError, `path:line: what is wrong`) a second or two after the command starts: GLUE's TSVs through the
quirk-aware reader below (no quoting, a BOM, CoLA without a header), your own CSV, TSV, JSON lines or
`datasets.save_to_disk` folder through the `datasets` library (`file_task`, which also builds the task's
TaskSpec). torch and transformers are imported where batches are made.
"""
from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import io
import math
import random
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping

from .checks import ConfigError, as_float
from .tasks import TaskSpec, default_template, get_task, is_file_task

if TYPE_CHECKING:
    from torch.utils.data import DataLoader
    from transformers import PreTrainedTokenizerBase

HUB_DATASET = "nyu-mll/glue"
SPLITS = {"train": "train", "dev": "validation"}  # our name -> hub split


def glue_file(task: TaskSpec, split: str, glue_dir: str | Path) -> Path:
    return Path(glue_dir) / task.glue_name / f"{split}.tsv"


def check_glue_files(task: TaskSpec, glue_dir: str | Path | None) -> None:
    """Fail early, with the missing path, when a local GLUE folder lacks a task's files."""
    if glue_dir is None:
        return
    if not Path(glue_dir).is_dir():
        raise FileNotFoundError(f"GLUE directory not found: {glue_dir} (set data.glue_dir or GLUE_DIR "
                                f"to a folder in the GLUE download layout, or null to use the hub)")
    for split in SPLITS:
        path = glue_file(task, split, glue_dir)
        if not path.is_file():
            raise FileNotFoundError(f"GLUE file not found: {path} (expected {task.glue_name}/train.tsv "
                                    f"and {task.glue_name}/dev.tsv under {glue_dir})")


def prepare_task(config: Mapping[str, Any]) -> TaskSpec:
    """The run's task, its data read through once and checked, before torch loads (fishtune.run's plan).

    A GLUE task is its row of the table; its two TSVs are read when they come from a folder (the hub's
    are the hub's). A file task is built from config["task"] and its files (`file_task`). Anything wrong
    with the data raises ConfigError: one line naming the file and what is wrong with it."""
    if is_file_task(config["task"]):
        task = file_task(config["task"])
        # A config that records them already (a result file's, run again) must be about these files as they are.
        for key, found in task.recorded().items():
            given = config["task"].get(key, found)
            if given != found:
                raise ConfigError(f"task.{key}={given}: the files now give {found} (changed since this config was "
                                  f"recorded?)")
        return task
    task = get_task(config["task"]["name"])
    glue_dir = config["data"]["glue_dir"]
    if glue_dir is not None:
        try:
            check_glue_files(task, glue_dir)
        except FileNotFoundError as e:
            raise ConfigError(str(e)) from None
        for split in SPLITS:
            read_glue_tsv(task, glue_file(task, split, glue_dir))
    return task


def _glue_label(task: TaskSpec, raw: str) -> float | int:
    """The label as the hub's id (or STS-B's score); ValueError saying what is wrong with `raw`."""
    if task.is_regression:
        try:
            score = float(raw)
        except ValueError:
            raise ValueError(f"score {raw!r} is not a number") from None
        if not math.isfinite(score):
            raise ValueError(f"score {raw!r} is not a finite number")
        if task.label_range and not task.label_range[0] <= score <= task.label_range[1]:
            lo, hi = task.label_range
            raise ValueError(f"score {raw!r} is outside {task.name}'s range {lo:g}..{hi:g}")
        return score
    if raw not in task.labels:
        raise ValueError(f"label {raw!r} is not one of {task.name}'s labels ({', '.join(task.labels)})")
    return task.labels.index(raw)


def _utf8(path: Path, raw: bytes, what: str) -> str:
    """`raw` decoded as UTF-8 (a byte-order mark dropped), or ConfigError naming the first bad byte."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        utf16 = " (a UTF-16 file: save it as UTF-8)" if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise ConfigError(f"{path}: not UTF-8 text: byte 0x{raw[e.start]:02x} at offset {e.start}{utf16}; "
                          f"{what}") from None


def _duplicate(header: list[str]) -> str | None:
    return next((c for i, c in enumerate(header) if c in header[:i]), None)


def _stamp(path: str | Path) -> tuple:
    """What a file's content (a folder's: its files') is taken to be unchanged by: each file's resolved
    path, size and modification time. The key under which a parsed file is kept for this process."""
    p = Path(path)
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    return tuple((str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files)


def read_glue_tsv(task: TaskSpec, path: str | Path) -> list[dict]:
    """Read one GLUE TSV as shipped: UTF-8, no quoting (fields may start with a quote), BOM-tolerant.

    Text that is not UTF-8, a field past csv's size limit, a header that lacks a column or names one twice,
    a malformed row (too few columns, a label outside the task's, an STS-B score that is no number or
    outside 0..5) or a file without examples raises ConfigError as `path:line: what is wrong`.

    Parsed once per process while the file stays the same (_stamp): the plan checks a run's files and the
    data loading reads them again, and a sweep in one process plans every run, finished ones too.
    """
    return [dict(e) for e in _parse_glue_tsv(task, str(path), _stamp(path))]


@functools.lru_cache(maxsize=16)
def _parse_glue_tsv(task: TaskSpec, path: str, stamp: tuple) -> tuple[dict, ...]:
    path = Path(path)
    a, b, y = task.tsv_columns
    has_header = isinstance(a, str)  # the first row names the columns; else they are positions
    text = _utf8(path, path.read_bytes(), "GLUE files are UTF-8 TSV")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    examples = []
    try:
        for row in reader:
            if not row:
                continue
            if has_header and isinstance(a, str):
                if (twice := _duplicate(row)) is not None:
                    raise ConfigError(f"{path}:{reader.line_num}: the header names column {twice!r} twice "
                                      f"(has: {', '.join(row)})")
                missing = [c for c in (a, b, y) if c is not None and c not in row]
                if missing:
                    raise ConfigError(f"{path}:{reader.line_num}: the header lacks column "
                                      f"{', '.join(map(repr, missing))} (has: {', '.join(row)})")
                a, y = row.index(a), row.index(y)
                b = row.index(b) if b is not None else None
                continue
            need = max(c for c in (a, b, y) if c is not None) + 1
            if len(row) < need:
                raise ConfigError(f"{path}:{reader.line_num}: {len(row)} columns, {task.name} needs at least {need}")
            try:
                label = _glue_label(task, row[y])
            except ValueError as e:
                raise ConfigError(f"{path}:{reader.line_num}: {e}") from None
            examples.append({"text_a": row[a], "text_b": row[b] if b is not None else None, "label": label})
    except csv.Error as e:
        if "field limit" in str(e):
            raise ConfigError(f"{path}:{reader.line_num}: a field longer than {csv.field_size_limit():,} characters "
                              f"(Python csv's limit): no GLUE TSV has one") from None
        raise ConfigError(f"{path}:{reader.line_num}: {e}") from None
    if not examples:
        raise ConfigError(f"{path}: no examples (an empty split)")
    return tuple(examples)


# --- your own data ------------------------------------------------------------------------------

# What a file task's file may be, by its name (a folder: datasets.save_to_disk).
FILE_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "json", ".json": "json"}
_FORMAT_NAMES = {"csv": "CSV", "tsv": "TSV", "json": "JSON lines", "disk": "a datasets.save_to_disk folder"}


def file_format(path: str | Path) -> str | None:
    """csv, tsv, json or disk (a folder) for a file task's path; None for any other kind of file."""
    path = Path(path)
    return "disk" if path.is_dir() else FILE_FORMATS.get(path.suffix.lower())


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """datasets without its progress bars and log lines (a file it cannot read is our one line)."""
    import datasets

    level, bars = datasets.logging.get_verbosity(), datasets.is_progress_bar_enabled()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL + 1)
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        datasets.logging.set_verbosity(level)
        if bars:
            datasets.enable_progress_bars()


def _read_columns(path: str, text_keys: tuple[str, str | None], label_key: str) -> dict[str, list]:
    """The text and label columns of one file of a file task, read with `datasets` (csv, json or
    load_from_disk): column -> values. ConfigError for an empty file, a header that names a column twice,
    a column the file lacks (naming those it has), or a file `datasets` cannot read. Read once per process
    while the file stays the same (_stamp), as read_glue_tsv."""
    return {c: list(v) for c, v in _columns(str(path), _stamp(path), text_keys, label_key).items()}


@functools.lru_cache(maxsize=16)
def _columns(path: str, stamp: tuple, text_keys: tuple[str, str | None], label_key: str) -> dict[str, tuple]:
    kind, p = file_format(path), Path(path)
    wanted = {c: key for c, key in ((text_keys[0], "task.text"), (text_keys[1], "task.text"), (label_key, "task.label"))
              if c is not None}

    def check(columns: list[str]) -> None:
        if (twice := _duplicate(columns)) is not None:
            raise ConfigError(f"{path}: the header names column {twice!r} twice (has: {', '.join(columns)})")
        for column, key in wanted.items():
            if column not in columns:
                raise ConfigError(f"{path}: no column {column!r} ({key}); its columns: {', '.join(columns)}")

    if kind != "disk" and p.stat().st_size == 0:
        raise ConfigError(f"{path}: an empty file (no examples)")
    options: dict[str, Any] = {}
    if kind in ("csv", "tsv"):
        # The header first, with csv itself: pandas would rename a repeated column (x, x.1) without a word.
        options = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if kind == "tsv" else {}
        with open(path, "rb") as f:
            first = f.readline()
        header = next(csv.reader([_utf8(p, first, f"{_FORMAT_NAMES[kind]} files are read as UTF-8")], **options), [])
        check([c.rstrip("\r\n") for c in header])
        # Every cell as written: no NA guessing ("NA", "null" and "" stay text), texts never read as numbers.
        options.update(na_filter=False, converters={c: str for c in text_keys if c is not None})
    import datasets

    with _quiet_datasets(), tempfile.TemporaryDirectory() as cache:
        try:
            if kind == "disk":
                ds = datasets.load_from_disk(path)
            else:   # a private cache: nothing is left in the user's, and no stale copy of a changed file is read
                builder = "json" if kind == "json" else "csv"
                ds = datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=cache,
                                           keep_in_memory=True, **options)
        except Exception as e:  # noqa: BLE001 - whatever datasets makes of a file it cannot read: one line
            cause = e.__cause__ if e.__cause__ is not None else e
            reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
            if "corresponds to no data" in reason:
                raise ConfigError(f"{path}: no examples (a header only?)") from None
            raise ConfigError(f"{path}: cannot be read as {_FORMAT_NAMES[kind]}: {reason}") from None
        if isinstance(ds, datasets.DatasetDict):
            raise ConfigError(f"{path}: a DatasetDict (splits: {', '.join(ds)}), not one split; give a split's "
                              f"folder, e.g. {p / next(iter(ds))}")
        check(list(ds.column_names))
        if len(ds) == 0:
            raise ConfigError(f"{path}: no examples")
        return {c: tuple(v) for c, v in ds.select_columns(list(wanted)).to_dict().items()}


def _raw_rows(path: str, text_keys: tuple[str, str | None], label_key: str) -> tuple[list[dict], list]:
    """The texts of each example ({text_a, text_b}) and the raw label values of one file task file."""
    columns = _read_columns(path, text_keys, label_key)
    texts = {}
    for field, column in zip(("text_a", "text_b"), text_keys):
        if column is None:
            continue
        values = columns[column]
        if (i := next((i for i, v in enumerate(values) if v is None), None)) is not None:
            raise ConfigError(f"{path}: example {i + 1} has no text in column {column!r} (null)")
        texts[field] = [v if isinstance(v, str) else str(v) for v in values]
    n = len(columns[label_key])
    rows = [{"text_a": texts["text_a"][i], "text_b": texts["text_b"][i] if "text_b" in texts else None}
            for i in range(n)]
    return rows, columns[label_key]


def _no_label(value: Any) -> bool:
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


def _class_labels(path: str, column: str, raw: list) -> list:
    """The distinct labels of a classification file, checked: none missing, not numbers and text mixed."""
    if (i := next((i for i, v in enumerate(raw) if _no_label(v)), None)) is not None:
        raise ConfigError(f"{path}: example {i + 1} has no label in column {column!r}")
    text = next((v for v in raw if isinstance(v, str)), None)
    number = next((v for v in raw if not isinstance(v, str)), None)
    if text is not None and number is not None:
        raise ConfigError(f"{path}: column {column!r} mixes numbers and text as labels (e.g. {number!r} and "
                          f"{text!r}); write them all one way")
    return list(dict.fromkeys(raw))


def _scores(path: str, column: str, raw: list) -> list[float]:
    """A regression file's labels as numbers; ConfigError naming the first that is none."""
    scores = []
    for i, v in enumerate(raw):
        x = as_float(v)
        if x is None:
            raise ConfigError(f"{path}: column {column!r} holds {v!r} in example {i + 1}, not a finite number "
                              f"(task.kind=regression needs a number in every row)")
        scores.append(x)
    return scores


def _with_labels(task: TaskSpec, path: str, rows: list[dict], raw: list) -> list[dict]:
    """The examples with their label: a regression score, or the label's id (its position in task.labels).
    ConfigError naming the labels the training file never has."""
    if task.is_regression:
        labels = _scores(path, task.label_key, raw)
    else:
        ids = {v: i for i, v in enumerate(task.labels)}
        unseen = [v for v in _class_labels(path, task.label_key, raw) if v not in ids]
        if unseen:
            more = f" and {len(unseen) - 10} more" if len(unseen) > 10 else ""
            raise ConfigError(f"{path}: column {task.label_key!r} holds label(s) the training file {task.files[0]} "
                              f"never has: {', '.join(map(repr, unseen[:10]))}{more} (it has: "
                              f"{', '.join(map(repr, task.labels))})")
        labels = [ids[v] for v in raw]
    return [{**row, "label": label} for row, label in zip(rows, labels)]


def content_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes; of a folder, of every file in it (relative name and bytes, in name order)."""
    path, digest = Path(path), hashlib.sha256()
    files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            digest.update(f.relative_to(path).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def file_task(cfg: Mapping[str, Any]) -> TaskSpec:
    """The TaskSpec of a task defined by files (a config's `task` node, conf/task/file.yaml; its values
    checked by validate.check_config): both files read and checked, the labels of a classification
    read from the training file and ordered (numbers by value, text alphabetically; an id is a label's
    position), the files' content hashed. ConfigError (one line) for anything wrong with the data."""
    from .metrics import metric_name

    text = cfg["text"]
    texts = [text] if isinstance(text, str) else list(text)
    text_keys = (texts[0], texts[1] if len(texts) > 1 else None)
    regression = cfg["kind"] == "regression"
    label = cfg["label"]
    train_rows, train_raw = _raw_rows(cfg["train"], text_keys, label)
    labels = None
    if not regression:
        labels = tuple(sorted(_class_labels(cfg["train"], label, train_raw)))
        if len(labels) < 2:
            raise ConfigError(f"{cfg['train']}: column {label!r} holds one label only ({labels[0]!r}); a classifier "
                              f"needs two or more (or task.kind=regression for numbers)")
    metric = cfg.get("metric")
    task = TaskSpec(name=cfg["name"], text_keys=text_keys, labels=labels,
                    metric=metric_name(metric) if metric else ("pearson_spearman" if regression else "accuracy"),
                    max_length=int(cfg["max_length"]), lr=float(cfg["lr"]),
                    template=cfg.get("template") or default_template(text_keys[1] is not None, regression),
                    files=(cfg["train"], cfg["dev"]), label_key=label,
                    sha256=(content_sha256(cfg["train"]), content_sha256(cfg["dev"])))
    _with_labels(task, cfg["train"], train_rows, train_raw)   # a regression's scores are numbers
    _with_labels(task, cfg["dev"], *_raw_rows(cfg["dev"], text_keys, label))
    return task


def load_split(task: TaskSpec, split: str, glue_dir: str | Path | None = None) -> list[dict]:
    """Examples of one split ('train' or 'dev') as dicts with text_a, text_b and label.

    A file task's from its file; a GLUE task's from `glue_dir` (GLUE download layout) when given, else
    from the hub dataset nyu-mll/glue.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    if task.files is not None:
        path = task.files[list(SPLITS).index(split)]
        return _with_labels(task, path, *_raw_rows(path, task.text_keys, task.label_key))
    if glue_dir is not None:
        check_glue_files(task, glue_dir)
        return read_glue_tsv(task, glue_file(task, split, glue_dir))
    import datasets  # imported here: a local run never touches the hub machinery

    ds = datasets.load_dataset(HUB_DATASET, task.name, split=SPLITS[split])
    ka, kb = task.text_keys
    return [{"text_a": r[ka], "text_b": r[kb] if kb else None, "label": r["label"]} for r in ds]


def subsample(examples: list[dict], n: int | None, seed: int) -> list[dict]:
    """A seeded subset of n examples in their original order (all of them when n is None or larger)."""
    if n is None or n >= len(examples):
        return examples
    keep = sorted(random.Random(seed).sample(range(len(examples)), n))
    return [examples[i] for i in keep]


def encode(examples: Iterable[dict], tokenizer: PreTrainedTokenizerBase, task: TaskSpec,
           use_template: bool = False) -> list[dict]:
    """Tokenise without padding (batches are padded later, to their own longest example).

    Decoder models read one prompt built from the task's template; encoders read the sentence pair.
    """
    encoded = []
    for ex in examples:
        if use_template:
            args = (task.template.format(text_a=ex["text_a"], text_b=ex["text_b"]),)
        else:
            args = (ex["text_a"],) if ex["text_b"] is None else (ex["text_a"], ex["text_b"])
        item = dict(tokenizer(*args, truncation=True, max_length=task.max_length))
        item["labels"] = ex["label"]
        encoded.append(item)
    return encoded


def make_loader(encoded: list[dict], tokenizer: PreTrainedTokenizerBase, batch_size: int,
                shuffle: bool = False, seed: int = 0, sort_by_length: bool = False) -> DataLoader:
    """Batches padded to their longest member. `sort_by_length` groups similar lengths (evaluation,
    Fisher) so little padding is computed; order does not change any per-example result."""
    import torch
    from torch.utils.data import DataLoader
    from transformers import DataCollatorWithPadding

    if sort_by_length:
        encoded = sorted(encoded, key=lambda e: len(e["input_ids"]))
    # Always an own generator: without one, every pass over a DataLoader draws from torch's global
    # RNG, and whether a Fisher pass ran would shift the dropout of the training that follows.
    return DataLoader(encoded, batch_size=batch_size, shuffle=shuffle, generator=torch.Generator().manual_seed(seed),
                      collate_fn=DataCollatorWithPadding(tokenizer))
