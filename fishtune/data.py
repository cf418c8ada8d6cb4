"""GLUE splits from a local folder (GLUE download layout) or the hub, tokenised, in dynamically padded batches."""
from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Iterable

import torch
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from .tasks import TaskSpec

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
    if task.is_regression:
        return float(raw)
    if task.name == "rte":
        return _RTE_LABELS[raw]
    return int(raw)


def read_glue_tsv(task: TaskSpec, path: str | Path) -> list[dict]:
    """Read one GLUE TSV as shipped: no quoting (fields may start with a quote), BOM-tolerant."""
    has_header, a, b, y = _TSV_LAYOUT[task.name]
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if has_header:
        header, rows = rows[0], rows[1:]
        a, y = header.index(a), header.index(y)
        b = header.index(b) if b is not None else None
    return [{"text_a": r[a], "text_b": r[b] if b is not None else None, "label": _label(task, r[y])}
            for r in rows if r]


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
    if sort_by_length:
        encoded = sorted(encoded, key=lambda e: len(e["input_ids"]))
    # Always an own generator: without one, every pass over a DataLoader draws from torch's global
    # RNG, and whether a Fisher pass ran would shift the dropout of the training that follows.
    return DataLoader(encoded, batch_size=batch_size, shuffle=shuffle, generator=torch.Generator().manual_seed(seed),
                      collate_fn=DataCollatorWithPadding(tokenizer))
