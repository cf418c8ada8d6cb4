"""Tasks: the GLUE table (one row per task, in the spirit of transformers' run_glue.py) and your own data.

A GLUE task is a row of TASKS: its files are GLUE's TSVs (`glue_name`/train.tsv and dev.tsv, the columns
in `tsv_columns`) or the hub's nyu-mll/glue. A task of your own (conf/task/file.yaml, docs/OWN.md) is no
row: `fishtune.harness.data.file_task` builds its TaskSpec at run time from the config's `task` node and
its two files, with the labels read from the training file. Both go down the same code path from there.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class TaskSpec:
    name: str                     # our key: cola, sst2, ... or the name a file task is given
    text_keys: tuple[str, str | None]  # columns of the one or two texts (GLUE: the hub's names)
    labels: tuple | None          # the label values in id order (id = position); None: regression
    metric: str                   # a key of fishtune.harness.metrics.METRICS
    max_length: int               # tokens per example (GLUE: Table 7)
    template: str                 # prompt for decoder models (Zhong et al. 2023), {text_a} and {text_b}
    lr: float = 5e-5              # the paper's learning rate (Table 6; WNLI 5e-6); a file task's task.lr
    # A GLUE task: its folder in the GLUE download layout, and where its TSVs keep text_a, text_b and the
    # label: header names, or positions for a file without a header (CoLA).
    glue_name: str | None = None
    tsv_columns: tuple | None = None
    label_range: tuple[float, float] | None = None   # what a regression label may be (STS-B 0..5)
    # A file task: its train and dev file (or datasets.save_to_disk folder), their label column, and
    # the sha256 of their content (a changed file is another computation).
    files: tuple[str, str] | None = None
    label_key: str = "label"
    sha256: tuple[str, str] | None = None

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_labels(self) -> int:
        """The classifier's outputs: 1 for regression (a score), else one per label."""
        return 1 if self.labels is None else len(self.labels)

    @property
    def is_pair(self) -> bool:
        return self.text_keys[1] is not None

    def recorded(self) -> dict[str, Any]:
        """What a file task adds to its run's config, and so to the run's identity, file name and result:
        the labels in id order (null for regression) and the sha256 of each file's content."""
        return {"labels": None if self.labels is None else list(self.labels),
                "sha256": dict(zip(("train", "dev"), self.sha256 or (None, None)))}


_RTE_TEMPLATE = 'Given the sentence "{text_a}", determine if the following statement is entailed: "{text_b}"'
_BINARY = ("0", "1")   # the label as GLUE's TSVs write it; its position is the hub's id

TASKS: dict[str, TaskSpec] = {t.name: t for t in [
    TaskSpec("cola", ("sentence", None), _BINARY, "matthews", 128,
             'For the sentence: "{text_a}", is the sentence grammarly correct?',
             glue_name="CoLA", tsv_columns=(3, None, 1)),   # no header: source, label, author's mark, sentence
    TaskSpec("sst2", ("sentence", None), _BINARY, "accuracy", 128,
             'For the sentence: "{text_a}", is the sentiment in this sentence positive or negative?',
             glue_name="SST-2", tsv_columns=("sentence", None, "label")),
    TaskSpec("mrpc", ("sentence1", "sentence2"), _BINARY, "f1_acc", 128,
             'For the sentence pair "{text_a}" and "{text_b}", do these two sentences have the same semantics?',
             glue_name="MRPC", tsv_columns=("#1 String", "#2 String", "Quality")),
    TaskSpec("stsb", ("sentence1", "sentence2"), None, "pearson_spearman", 256,
             'Determine the similarity between the following two sentences: "{text_a}" and "{text_b}". '
             'The score should be ranging from 0.0 to 5.0, and can be a decimal.',
             glue_name="STS-B", tsv_columns=("sentence1", "sentence2", "score"), label_range=(0.0, 5.0)),
    TaskSpec("rte", ("sentence1", "sentence2"), ("entailment", "not_entailment"), "accuracy", 384, _RTE_TEMPLATE,
             glue_name="RTE", tsv_columns=("sentence1", "sentence2", "label")),
    # Zhong et al. give no WNLI template; the RTE one fits the same entailment question.
    TaskSpec("wnli", ("sentence1", "sentence2"), _BINARY, "accuracy", 128, _RTE_TEMPLATE, lr=5e-6,
             glue_name="WNLI", tsv_columns=("sentence1", "sentence2", "label")),
]}


# The paper's column order (its tables and ours).
TASK_ORDER = ("cola", "mrpc", "rte", "sst2", "stsb", "wnli")


def get_task(name: str) -> TaskSpec:
    """Look a GLUE task up by name, with an error that lists the known ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)} "
                         f"(or task=file for your own data)") from None


def is_file_task(task_cfg: Mapping[str, Any]) -> bool:
    """Whether a config's `task` node defines a task by its files (conf/task/file.yaml) rather than
    naming a GLUE task."""
    return isinstance(task_cfg, Mapping) and "train" in task_cfg


def default_template(pair: bool, regression: bool) -> str:
    """The prompt a decoder model reads for a file task without task.template (docs/OWN.md)."""
    asked = "score" if regression else "label"
    if pair:
        return f'For the text pair "{{text_a}}" and "{{text_b}}", what is their {asked}?'
    return f'For the text "{{text_a}}", what is its {asked}?'
