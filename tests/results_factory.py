"""The tests' one way to make result files: a real RunResult (or RunFailure), written with to_json().

Every field without a default in fishtune.harness.results must be given here, so a change of the schema
(a field added, renamed or made required) breaks these helpers, not silently the tests that use them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from fishtune.harness.results import RunFailure, RunResult, config_hash, write_json_atomic


def make_result(*, model: str = "minilm", method: str = "lora", task: str = "sst2", mask: str = "none",
                budget: int = 1, seed: int = 1, score: float | None = 70.0, layers: int = 5, rank: int | None = 1,
                config: dict | None = None, history: list[dict] | None = None, best: dict | None = None,
                **fields: Any) -> RunResult:
    """A RunResult with every required field set: `score` is the best epoch's (`best` replaces the
    whole record), `fields` set any other field by name (a name that is no field is a TypeError)."""
    config = config if config is not None else {"model": {"name": model}, "peft": {"name": method, "rank": rank},
                                                "mask": {"mode": mask}, "task": {"name": task}, "budget": budget,
                                                "seed": seed}
    history = history if history is not None else [{"epoch": 1, "train_loss": 0.7, "dev_loss": 0.6,
                                                    "metrics": {"score": score}, "score": score}]
    best = best if best is not None else {"epoch": len(history), "score": score, "metrics": {}, "dev_loss": 0.6}
    values: dict[str, Any] = dict(
        run_id=f"{model}-{task}-{method}-L{layers}-{mask}-b{budget}-s{seed}", config_hash=config_hash(config),
        config=config, model=model, task=task, method=method, layers=layers, rank=rank, mask=mask, budget=budget,
        seed=seed, trainable=3074, total=22_700_000, ratio_pct=0.0135, budget_ratio_pct=0.0135, lr=5e-3,
        train_examples=100, dev_examples=50, history=history, best=best, stop_reason="max_epochs",
        fisher_seconds=0.0, train_seconds=10.0, samples_per_second=40.0, device="cpu", host="test",
        versions={}, finished_at="2026-01-01T00:00:00+00:00")
    return RunResult(**{**values, **fields})


def write_result(path_or_dir: str | Path, result: RunResult | None = None, **fields: Any) -> RunResult:
    """Write `result` (else make_result(**fields)) as fishtune.run would: to `path_or_dir` when it names a
    .json file, else to `<run_id>.json` in that folder. Returns the result, its `path` set."""
    result = result if result is not None else make_result(**fields)
    path = Path(path_or_dir)
    if path.suffix != ".json":
        path = path / f"{result.run_id}.json"
    write_json_atomic(path, result.to_json())
    result.path = str(path)
    return result


def write_failure(path: str | Path, *, config: dict | None = None, error: str = "RuntimeError: boom",
                  **fields: Any) -> RunFailure:
    """Write a `<run>.failed.json` as fishtune.harness.run.record_failure would (the reason defaults to
    the error's first line)."""
    failure = RunFailure(config=config or {}, reason=fields.pop("reason", error.splitlines()[0]), error=error,
                         **fields)
    write_json_atomic(path, failure.to_json())
    failure.path = str(path)
    return failure
