"""Sweeps through Hydra launchers: resume of a partly finished sweep, and submitit's local launcher."""
import json
import os
import subprocess
import sys

from conftest import GLUE_FIXTURES, ROOT
from fishtune.harness.results import load_results

TINY = ["model=tiny_bert", "task=rte", f"data.glue_dir={GLUE_FIXTURES}", "train.max_epochs=1", "fisher.samples=8",
        "data.train_samples=16", "data.dev_samples=8"]


def sweep(runs_dir, *overrides):
    out = subprocess.run([sys.executable, "-m", "fishtune.run", "-m", *TINY, f"paths.runs_dir={runs_dir}", *overrides],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout + out.stderr


def test_rerun_of_a_partly_finished_sweep_runs_only_what_is_missing(tmp_path):
    sweep(tmp_path, "mask=none,fish")
    first = {r.mask: r for r in load_results(tmp_path)}
    assert set(first) == {"none", "fish"}
    # as if the sweep had been killed before its fish run finished (its saved mask is reused)
    os.remove(first["fish"].path)
    log = sweep(tmp_path, "mask=none,fish")
    # one line for the sweep, not one per run found: the fish run trained, the none run was there
    assert "fishtune: sweep done: 2 runs: 1 trained, 1 finished before, 0 failed, 0 left to other live sweeps" in log
    assert "skip," not in log and log.count(": best rte score ") == 1
    again = {r.mask: r for r in load_results(tmp_path)}
    assert again["none"].finished_at == first["none"].finished_at  # not run again
    assert again["fish"].history == first["fish"].history  # rerun, bit-for-bit the same result


def test_submitit_local_launcher_runs_two_jobs(tmp_path):
    sweep(tmp_path, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "mask=none,rand")
    results = load_results(tmp_path)
    assert sorted(r.mask for r in results) == ["none", "rand"]
    logs = list((tmp_path / "hydra").rglob("*_log.out"))
    assert len(logs) == 2  # submitit ran each job as its own process, with its own log
    assert all(json.loads(open(r.path).read())["history"] for r in results)
