"""The GLUE task table, in the spirit of transformers' run_glue.py: one row per task."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskSpec:
    name: str                     # our key: cola, sst2, ...
    glue_name: str                # folder in the GLUE download layout
    text_keys: tuple[str, str | None]  # hub column names of the one or two sentences
    num_labels: int               # 1 = regression (STS-B)
    metric: str                   # matthews | accuracy | f1_acc | pearson_spearman
    max_length: int               # Table 7
    template: str                 # prompt for decoder models (Zhong et al. 2023)
    lr: float = 5e-5              # the paper's learning rate (Table 6; WNLI 5e-6)

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1

    @property
    def is_pair(self) -> bool:
        return self.text_keys[1] is not None


_RTE_TEMPLATE = 'Given the sentence "{text_a}", determine if the following statement is entailed: "{text_b}"'

TASKS: dict[str, TaskSpec] = {t.name: t for t in [
    TaskSpec("cola", "CoLA", ("sentence", None), 2, "matthews", 128,
             'For the sentence: "{text_a}", is the sentence grammarly correct?'),
    TaskSpec("sst2", "SST-2", ("sentence", None), 2, "accuracy", 128,
             'For the sentence: "{text_a}", is the sentiment in this sentence positive or negative?'),
    TaskSpec("mrpc", "MRPC", ("sentence1", "sentence2"), 2, "f1_acc", 128,
             'For the sentence pair "{text_a}" and "{text_b}", do these two sentences have the same semantics?'),
    TaskSpec("stsb", "STS-B", ("sentence1", "sentence2"), 1, "pearson_spearman", 256,
             'Determine the similarity between the following two sentences: "{text_a}" and "{text_b}". '
             'The score should be ranging from 0.0 to 5.0, and can be a decimal.'),
    TaskSpec("rte", "RTE", ("sentence1", "sentence2"), 2, "accuracy", 384, _RTE_TEMPLATE),
    # Zhong et al. give no WNLI template; the RTE one fits the same entailment question.
    TaskSpec("wnli", "WNLI", ("sentence1", "sentence2"), 2, "accuracy", 128, _RTE_TEMPLATE, lr=5e-6),
]}


# The paper's column order (its tables and ours).
TASK_ORDER = ("cola", "mrpc", "rte", "sst2", "stsb", "wnli")


def get_task(name: str) -> TaskSpec:
    """Look a task up by name, with an error that lists the known ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}") from None
