"""What fishtune does on a real GPU, in one go: `scripts/gpu-check` (under 8 minutes on an H100).

  1. paper run   one paper-profile run of a small task: profile=paper model=bert_base_random
                 task=rte mask=fish, bounded to --paper-epochs epochs (GLUE from $GLUE_DIR)
  2. bench       benchmarks/bench.py in bf16 on bert_base_random: what `make bench
                 BENCH_ARGS='--precision bf16'` runs (docs/BENCH.md)
  3. sharing     1, 2, 4 and 8 bert-base LoRA runs started at once on the one GPU, as Slurm starts
                 them when they share it (gres shard or mps, docs/SLURM.md): runs per hour of each
                 level, from the wall time until the last run of the level has finished. Each run is
                 a real `python -m fishtune.run` of --share-samples SST-2 sentences, one epoch.
                 A level that could not finish inside --budget-s (at worst N times the level-1 time)
                 is skipped and says so.

Writes OUT/gpu.json and OUT/gpu.md (default OUT: results; the runs, logs and bench files go to
runs/gpu-check/) and prints the tables for the README. Exit status 0 when every step ran, 1 when one failed or there is
no GPU: without one it prints one line and measures nothing. `--dry-run` runs the same steps on the
CPU on tiny sizes (tiny_bert, the test fixtures) to check this script itself; its figures mean nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "glue"


def log(msg: str) -> None:
    print(f"[gpu-check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--glue-dir", default=os.environ.get("GLUE_DIR", str(ROOT.parent / "shared" / "glue_data")))
    p.add_argument("--out", default=None, help="gpu.json and gpu.md go here (default: results; with --dry-run "
                   "a new temporary folder)")
    p.add_argument("--work", default=None, help="the runs, logs and bench files (default: runs/gpu-check; "
                   "with --dry-run OUT/gpu)")
    p.add_argument("--levels", default="1,2,4,8", help="runs at once on the GPU, comma list")
    p.add_argument("--share-samples", type=int, default=16384, help="SST-2 training sentences per sharing run")
    p.add_argument("--paper-task", default="rte")
    p.add_argument("--paper-epochs", type=int, default=3)
    p.add_argument("--budget-s", type=float, default=450, help="seconds for all steps; later levels are skipped")
    p.add_argument("--skip", default="", help="steps to leave out, comma list of paper,bench,sharing")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: checks the script, not the GPU")
    return p.parse_args(argv)


class GpuMonitor:
    """Samples nvidia-smi's utilization and memory of one GPU every half second while in `with`."""

    def __init__(self, index: str | None):
        self.cmd = None
        if shutil.which("nvidia-smi") and index is not None:
            self.cmd = ["nvidia-smi", "-i", index, "--query-gpu=utilization.gpu,memory.used",
                        "--format=csv,noheader,nounits"]
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            try:
                out = subprocess.run(self.cmd, capture_output=True, text=True, timeout=5).stdout
                util, mem = (float(x) for x in out.strip().splitlines()[0].split(","))
                self.samples.append((util, mem))
            except Exception:  # noqa: BLE001 - figures are a bonus; never fail a check on them
                pass

    def __enter__(self):
        if self.cmd:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self.cmd:
            self._thread.join(timeout=10)

    def summary(self) -> dict:
        if not self.samples:
            return {"gpu_util_mean_pct": None, "gpu_mem_max_mb": None}
        return {"gpu_util_mean_pct": round(statistics.mean(u for u, _ in self.samples), 1),
                "gpu_mem_max_mb": max(m for _, m in self.samples)}


def machine_info(dry: bool) -> dict:
    import torch

    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "cpus": os.cpu_count(),
            "python": platform.python_version(), "host": platform.node(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
    if not dry:
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0), gpu_memory_gb=round(props.total_memory / 2**30, 1),
                    gpus_visible=torch.cuda.device_count(), bf16=torch.cuda.is_bf16_supported())
        if shutil.which("nvidia-smi"):
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True).stdout.strip().splitlines()
            info["driver"] = out[0] if out else None
    else:
        info.update(gpu=None, bf16=False)
    return info


def _run_args(dry: bool, glue_dir: str) -> list[str]:
    if dry:
        return ["model=tiny_bert", f"data.glue_dir={FIXTURES}", "fisher.samples=16", "train.batch_size=8"]
    return ["model=bert_base_random", f"data.glue_dir={glue_dir}"]


def _fishtune(runs_dir: Path, overrides: list[str], tag: str) -> list[str]:
    """A fishtune run; its own Hydra dir (runs started in the same second would share the default)."""
    return [sys.executable, "-m", "fishtune.run", "profile=paper", *overrides, f"paths.runs_dir={runs_dir}",
            f"hydra.run.dir={runs_dir}/hydra/{tag}", "force=true"]


def _results(runs_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(runs_dir.glob("*.json"))]


def paper_run(args, work: Path) -> dict:
    runs = work / "paper"
    epochs = 1 if args.dry_run else args.paper_epochs
    overrides = [*_run_args(args.dry_run, args.glue_dir), f"task={args.paper_task}", "mask=fish",
                 f"train.max_epochs={epochs}", f"train.patience={epochs}"]
    log(f"paper run: {' '.join(overrides)}")
    t0 = time.perf_counter()
    with open(work / "paper.log", "w") as f:
        rc = subprocess.run(_fishtune(runs, overrides, "paper"), cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    found = _results(runs)
    if rc != 0 or len(found) != 1:
        return {"ok": False, "error": f"exit {rc}, {len(found)} result files; see {work / 'paper.log'}",
                "wall_s": round(wall, 1)}
    r = found[0]
    out = {"ok": True, "wall_s": round(wall, 1), "run_id": r["run_id"], "task": r["task"], "model": r["model"],
           "epochs": len(r["history"]), "best_score": r["best"]["score"], "device": r["device"],
           "precision": r["precision"], "fisher_seconds": round(r["fisher_seconds"], 2),
           "train_seconds": round(r["train_seconds"], 1), "seconds_per_epoch": round(r["train_seconds"] / len(r["history"]), 2),
           "train_samples_per_s": round(r["samples_per_second"], 1), "trainable": r["trainable"],
           "train_examples": r["train_examples"]}
    log(f"paper run: {out['epochs']} epochs in {out['train_seconds']} s ({out['train_samples_per_s']} samples/s, "
        f"{out['precision']}), Fisher {out['fisher_seconds']} s, wall {out['wall_s']} s")
    return out


def bench(args, work: Path) -> dict:
    out_dir = work / "bench"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--out", str(out_dir)]
    if args.dry_run:
        cmd += ["--model", "tiny_bert", "--glue-dir", str(FIXTURES), "--fisher-samples", "16", "--chunk-size", "8",
                "--batch-size", "4", "--train-steps", "3", "--fixed-steps", "2"]
    else:
        cmd += ["--model", "bert_base_random", "--precision", "bf16", "--glue-dir", args.glue_dir]
    log(f"bench: {' '.join(cmd[1:])}")
    t0 = time.perf_counter()
    with open(work / "bench.log", "w") as f:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    path = out_dir / "bench.json"
    if not path.exists():
        return {"ok": False, "error": f"exit {rc}, no bench.json; see {work / 'bench.log'}", "wall_s": round(wall, 1)}
    b = json.loads(path.read_text())
    t = b["train"]
    out = {"ok": rc == 0, "wall_s": round(wall, 1), "figures": b["figures"], "checks": b["checks"],
           "bf16": b["settings"]["bf16"], "device": b["machine"]["device"], "model": b["settings"]["model"],
           "fisher_samples": b["fisher"]["samples"], "batch_size": t["batch_size"],
           "fisher_seconds": b["fisher"]["seconds"], "fisher_peak_mb": b["fisher"]["peak_mb"],
           "train_samples_per_s": t["samples_per_second"], "train_peak_mb": t["peak_mb"],
           "median_step_seconds": t["median_step_seconds"], "markdown": str(out_dir / "bench.md")}
    log(f"bench: {', '.join(f'{k} {v:.3g}' for k, v in b['figures'].items())} ({wall:.0f} s)")
    return out


def sharing(args, work: Path, levels: list[int], deadline: float, gpu_index: str | None) -> list[dict]:
    rows: list[dict] = []
    per_run_wall = None  # level 1's wall time: a level of N runs takes at most about N times that
    samples = 8 if args.dry_run else args.share_samples
    for n in levels:
        left = deadline - time.perf_counter()
        if per_run_wall is not None and n * per_run_wall > left:
            log(f"sharing: {n} at once skipped: could take up to {n * per_run_wall:.0f} s, {left:.0f} s left")
            rows.append({"concurrent": n, "skipped": f"could take up to {n * per_run_wall:.0f} s, {left:.0f} s left"})
            continue
        runs = work / f"share{n}"
        overrides = [*_run_args(args.dry_run, args.glue_dir), "task=sst2", "peft=lora", "mask=none",
                     f"data.train_samples={samples}", "data.dev_samples=256", "train.max_epochs=1",
                     "train.patience=1"]
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // n))}
        log(f"sharing: {n} run(s) at once, {samples} SST-2 sentences each")
        procs, logs = [], []
        t0 = time.perf_counter()
        with GpuMonitor(gpu_index) as mon:
            for i in range(n):
                logs.append(open(runs.with_name(f"{runs.name}_{i}.log"), "w"))
                procs.append(subprocess.Popen(_fishtune(runs, [*overrides, f"seed={i + 1}"], f"run{i}"), cwd=ROOT, env=env,
                                              stdout=logs[-1], stderr=subprocess.STDOUT))
            codes = [p.wait() for p in procs]
        wall = time.perf_counter() - t0
        for f in logs:
            f.close()
        found = _results(runs)
        row = {"concurrent": n, "wall_s": round(wall, 1), "runs_per_hour": round(n * 3600 / wall, 1),
               "ok": all(c == 0 for c in codes) and len(found) == n, **mon.summary()}
        if found:
            sps = [r["samples_per_second"] for r in found]
            row.update(train_samples_per_s_per_run=round(statistics.mean(sps), 1),
                       train_samples_per_s_all=round(sum(sps), 1),
                       train_seconds_mean=round(statistics.mean(r["train_seconds"] for r in found), 1),
                       precision=found[0]["precision"], device=found[0]["device"])
        if not row["ok"]:
            row["error"] = f"exit codes {codes}, {len(found)} result files; logs {runs.parent}/{runs.name}_*.log"
        if n == 1 and row["ok"]:
            per_run_wall = wall
        rows.append(row)
        log(f"sharing: {n} at once: {row['runs_per_hour']} runs/h (wall {row['wall_s']} s)"
            + ("" if row["ok"] else f"; FAILED: {row['error']}"))
    base = next((r["runs_per_hour"] for r in rows if r.get("concurrent") == 1 and r.get("ok")), None)
    for r in rows:
        if base and "runs_per_hour" in r:
            r["vs_one"] = round(r["runs_per_hour"] / base, 2)
    return rows


def tables(result: dict) -> str:
    m = result["machine"]
    where = m.get("gpu") or "CPU (dry run: the figures mean nothing)"
    if m.get("gpu_memory_gb"):
        where += f" ({m['gpu_memory_gb']} GB)"
    where += f", torch {m['torch']}"
    if m.get("cuda"):
        where += f", CUDA {m['cuda']}"
    if m.get("driver"):
        where += f", driver {m['driver']}"
    lines = [f"GPU check on {where}; {result['total_seconds']:.0f} s in all.", ""]
    p = result.get("paper_run")
    if p:
        if p["ok"]:
            lines += [f"Paper-profile run ({p['model']}, {p['task']}, mask=fish, epochs: {p['epochs']}, {p['precision']}): "
                      f"Fisher {p['fisher_seconds']} s, {p['seconds_per_epoch']} s per epoch "
                      f"({p['train_samples_per_s']} training samples/s), {p['wall_s']} s with start-up.", ""]
        else:
            lines += [f"Paper-profile run: FAILED ({p['error']})", ""]
    b = result.get("bench")
    if b:
        if "figures" in b:
            f, sps = b["figures"], b["train_samples_per_s"]
            lines += [f"| bench ({b['model']}, {'bf16' if b['bf16'] else 'fp32'}) | value |", "|---|---:|"]
            lines += [f"| {k} | {v:.3g} |" for k, v in f.items()]
            lines += [f"| Fisher, {b['fisher_samples']} RTE samples (s) | {b['fisher_seconds']['ours']:.2f} |",
                      f"| training samples/s (fishtune.harness.train, SST-2, batch {b['batch_size']}) | {sps['trainer_none']:.0f} |",
                      f"| training samples/s (HF Trainer) | {sps['trainer_trainer']:.0f} |", ""]
        else:
            lines += [f"bench: FAILED ({b['error']})", ""]
    rows = result.get("sharing")
    if rows:
        lines += ["| bert-base LoRA runs at once on one GPU | runs per hour | vs 1 at once | wall s | "
                  "training samples/s per run | all runs | GPU util % | GPU MB |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            if "skipped" in r:
                lines.append(f"| {r['concurrent']} | skipped: {r['skipped']} | | | | | | |")
                continue
            fmt = lambda k: "" if r.get(k) is None else f"{r[k]:g}"  # noqa: E731
            lines.append(f"| {r['concurrent']} | {r['runs_per_hour']:g}{'' if r['ok'] else ' (FAILED)'} | "
                         f"{fmt('vs_one')} | {r['wall_s']:g} | {fmt('train_samples_per_s_per_run')} | "
                         f"{fmt('train_samples_per_s_all')} | {fmt('gpu_util_mean_pct')} | {fmt('gpu_mem_max_mb')} |")
        model = "tiny_bert" if result["dry_run"] else "bert_base_random"
        lines += ["", f"Each run: `python -m fishtune.run profile=paper model={model} task=sst2 peft=lora "
                      f"mask=none data.train_samples={result['settings']['share_samples']} train.max_epochs=1`, "
                      "start-up and evaluation included; runs per hour = runs / wall time of the level."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print(f"gpu-check: no CUDA GPU visible to torch {torch.__version__} "
              f"(CUDA build: {torch.version.cuda or 'none'}); nothing measured (--dry-run checks this script on CPU)", file=sys.stderr)
        return 1
    t_start = time.perf_counter()
    deadline = t_start + args.budget_s
    levels = [int(x) for x in args.levels.split(",") if x.strip()]
    if args.dry_run:
        levels = [n for n in levels if n <= 2]
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if args.out is None:
        args.out = tempfile.mkdtemp(prefix="gpu-check-dry-") if args.dry_run else str(ROOT / "results")
    out = Path(args.out)
    work = Path(args.work) if args.work else out / "gpu" if args.dry_run else ROOT / "runs" / "gpu-check"
    work.mkdir(parents=True, exist_ok=True)
    for old in [*work.glob("share*"), *(work / d for d in ("paper", "bench"))]:  # an earlier check's, not others
        shutil.rmtree(old) if old.is_dir() else old.unlink(missing_ok=True)
    machine = machine_info(args.dry_run)
    log(f"{machine.get('gpu') or 'CPU (dry run)'}, torch {machine['torch']}; details in {work}")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip() or "0"
    result = {"dry_run": args.dry_run, "machine": machine,
              "settings": {"levels": levels, "share_samples": 8 if args.dry_run else args.share_samples,
                           "paper_task": args.paper_task, "paper_epochs": args.paper_epochs,
                           "budget_s": args.budget_s, "glue_dir": str(FIXTURES if args.dry_run else args.glue_dir)}}
    if "paper" not in skip:
        result["paper_run"] = paper_run(args, work)
    if "bench" not in skip:
        result["bench"] = bench(args, work)
    if "sharing" not in skip:
        result["sharing"] = sharing(args, work, levels, deadline, None if args.dry_run else visible)
    result["total_seconds"] = round(time.perf_counter() - t_start, 1)
    path = out / "gpu.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    text = tables(result)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.md").write_text(text)
    print(text)
    failed = [k for k in ("paper_run", "bench") if k in result and not result[k]["ok"]]
    failed += [f"sharing {r['concurrent']}" for r in result.get("sharing", []) if r.get("ok") is False]
    log(f"wrote {path} and {out / 'gpu.md'} in {result['total_seconds']:.0f} s"
        + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
