"""scripts/gpu-check: without a GPU one line and exit 1; `--dry-run` runs its steps on CPU at tiny
sizes (the plumbing only: no figure is asserted)."""
import json
import os
import subprocess

from conftest import ROOT

SCRIPT = ROOT / "scripts" / "gpu-check"


def _run(*args, **env):
    return subprocess.run([str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env})


def test_without_a_gpu_one_line_and_exit_1(tmp_path):
    out = _run("--out", str(tmp_path), CUDA_VISIBLE_DEVICES="")  # hides any GPU this machine has
    assert out.returncode == 1, out.stdout + out.stderr
    assert out.stdout == "" and len(out.stderr.splitlines()) == 1, out.stdout + out.stderr
    assert out.stderr.startswith("gpu-check: no CUDA GPU visible"), out.stderr
    assert not (tmp_path / "gpu.json").exists()


def test_dry_run_writes_gpu_json_and_the_tables(tmp_path):
    # the paper run and one level of sharing; level 2 cannot fit a 1-second budget and is skipped
    out = _run("--dry-run", "--skip", "bench", "--levels", "1,2", "--budget-s", "1", "--out", str(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads((tmp_path / "gpu.json").read_text())
    assert result["dry_run"] and "bench" not in result
    paper = result["paper_run"]
    assert paper["ok"] and paper["task"] == "rte" and paper["model"] == "tiny_bert" and paper["epochs"] == 1
    one, two = result["sharing"]
    assert one["concurrent"] == 1 and one["ok"] and one["runs_per_hour"] > 0 and one["vs_one"] == 1
    assert two["concurrent"] == 2 and "skipped" in two
    assert "| 1 | " in out.stdout and "| 2 | skipped" in out.stdout and "Paper-profile run (tiny_bert" in out.stdout
    assert (tmp_path / "gpu.md").read_text() in out.stdout and (tmp_path / "gpu" / "paper.log").exists()
