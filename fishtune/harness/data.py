"""GLUE splits from a local folder (GLUE download layout) or the hub, tokenised, in dynamically padded batches.

torch and transformers are imported where batches are made, so that fishtune.run can check the GLUE
files before the heavy libraries load.
"""
from __future__ import annotations

import csv
import math
import random
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from .tasks import TaskSpec
from .checks import ConfigError

if TYPE_CHECKING:
    from torch.utils.data import DataLoader
    from transformers import PreTrainedTokenizerBase

HUB_DATASET = "nyu-mll/glue"
SPLITS = {"train": "train", "dev": "validation"}  # our name -> hub split

# Where each task keeps its fields in the GLUE TSVs: (has header, text_a, text_b, label) columns.
# CoLA has no header: source, label, author's mark, sentence. Labels are mapped to the hub's ids.
_TSV_LAYOUT = {
    "cola": (False, 3, None, 1),
    "sst2": (True, "sentence", None, "label"),
    "mrpc": (True, "#1 String", "#2 String", "Quality"),
    "stsb": (True, "sentence1", "sentence2", "score"),
    "rte": (True, "sentence1", "sentence2", "label"),
    "wnli": (True, "sentence1", "sentence2", "label"),
}
_RTE_LABELS = {"entailment": 0, "not_entailment": 1}  # the hub's ids


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


def _label(task: TaskSpec, raw: str) -> float | int:
    """The label as the hub's id (or STS-B's score); ValueError saying what is wrong with `raw`."""
    if task.is_regression:
        try:
            score = float(raw)
        except ValueError:
            raise ValueError(f"score {raw!r} is not a number") from None
        if not math.isfinite(score):
            raise ValueError(f"score {raw!r} is not a finite number")
        return score
    allowed = _RTE_LABELS if task.name == "rte" else {str(i): i for i in range(task.num_labels)}
    if raw not in allowed:
        raise ValueError(f"label {raw!r} is not one of {task.name}'s labels ({', '.join(allowed)})")
    return allowed[raw]


def read_glue_tsv(task: TaskSpec, path: str | Path) -> list[dict]:
    """Read one GLUE TSV as shipped: no quoting (fields may start with a quote), BOM-tolerant.

    A malformed row (too few columns, a label outside the task's, an STS-B score that is no number)
    or a file without examples raises ConfigError as `path:line: what is wrong`.
    """
    has_header, a, b, y = _TSV_LAYOUT[task.name]
    examples = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        for row in reader:
            if not row:
                continue
            if has_header and isinstance(a, str):  # the first row names the columns
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
                label = _label(task, row[y])
            except ValueError as e:
                raise ConfigError(f"{path}:{reader.line_num}: {e}") from None
            examples.append({"text_a": row[a], "text_b": row[b] if b is not None else None, "label": label})
    if not examples:
        raise ConfigError(f"{path}: no examples (an empty split)")
    return examples


def load_split(task: TaskSpec, split: str, glue_dir: str | Path | None = None) -> list[dict]:
    """Examples of one split ('train' or 'dev') as dicts with text_a, text_b and label.

    From `glue_dir` (GLUE download layout) when given, else from the hub dataset nyu-mll/glue.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
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
