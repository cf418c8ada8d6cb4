import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from conftest import ROOT, run_config
from fishtune.harness import data
from fishtune.harness.results import ADAPTIVE_KEYS, FILE_KEYS, load_mask_file, mask_path
from fishtune.harness.metrics import glue_metrics
from fishtune.harness.cli import check_group_overrides, parse_overrides
from fishtune.harness.run import ConfigError, plan, run
from fishtune.harness.tasks import get_task

QUICK = ["train.max_epochs=2", "fisher.samples=16", "data.train_samples=24", "data.dev_samples=12"]


# The keys a FISH run writes: RunResult's file keys but the adaptive run's own (tests/test_results.py checks
# that the committed files hold theirs in this order).
RESULT_KEYS = [k for k in FILE_KEYS if k not in ADAPTIVE_KEYS]


def test_run_writes_result_file_then_skips(tmp_path, capsys):
    cfg = run_config(tmp_path, "task=mrpc", "mask=fish", "budget=2", *QUICK)
    result = run(cfg, progress=False)
    path = plan(cfg).path
    assert path.exists() and json.loads(path.read_text())["run_id"] == result["run_id"]
    # The file's keys in the order every run since schema 1 writes them; only the schema number moved.
    assert list(json.loads(path.read_text())) == RESULT_KEYS and result["schema"] == 2
    for key in ("config", "model", "task", "method", "layers", "rank", "mask", "seed", "trainable", "total",
                "ratio_pct", "history", "best", "stop_reason", "fisher_seconds", "train_seconds",
                "samples_per_second", "versions", "git_commit"):
        assert key in result, key
    assert (result["model"], result["task"], result["method"], result["mask"]) == ("tiny_bert", "mrpc", "lora", "fish")
    assert result["layers"] == 5 and result["budget"] == 2 and len(result["history"]) == 2
    assert {"train_loss", "dev_loss", "metrics", "score"} <= set(result["history"][0])
    assert {"f1", "accuracy"} <= set(result["best"]["metrics"]) and result["best"]["epoch"] in (1, 2)
    assert result["ratio_pct"] == pytest.approx(100 * result["trainable"] / result["total"])
    assert result["fisher_seconds"] > 0
    # per-example dev predictions of the best epoch, in the dev subsample's order, reproduce its score
    spec = get_task("mrpc")
    dev = data.subsample(data.load_split(spec, "dev", cfg["data"]["glue_dir"]), 12, cfg["seed"])
    assert result["dev_labels"] == [ex["label"] for ex in dev] and len(result["dev_predictions"]) == 12
    assert glue_metrics(spec, result["dev_predictions"], result["dev_labels"])["score"] == \
        pytest.approx(result["best"]["score"])
    # The budget is the original run's count: LoRA r1 on 2 tiny layers (Q,K,V: 3 x 2 x (32+32)) + head 66.
    assert result["trainable"] == 2 * 3 * 64 + 66
    original = run(run_config(tmp_path, "task=mrpc", "mask=none", "budget=2", *QUICK), progress=False)
    assert original["trainable"] == result["trainable"] and original["layers"] == 2
    assert original["budget_ratio_pct"] == result["budget_ratio_pct"] == original["ratio_pct"] > result["ratio_pct"]
    mask, fisher_seconds = load_mask_file(mask_path(path))
    assert sum(int(m.sum()) for m in mask.values()) == result["trainable"] - 66
    assert fisher_seconds == result["fisher_seconds"]  # kept, so a resumed run reports what its mask cost
    # the placement in the result file is the mask file's, tensor by tensor (the file keeps them sorted by name)
    assert sorted((t["name"], t["chosen"], t["entries"]) for t in result["placement"]) == \
        [(n, int(m.sum()), m.numel()) for n, m in sorted(mask.items())]
    assert {t["module"] for t in result["placement"]} == {f"{m}.lora_{ab}" for m in ("query", "key", "value") for ab in "AB"}
    assert sorted({t["layer"] for t in result["placement"]}) == [0, 1, 2, 3, 4] and result["head_entries"] == 66
    assert not path.with_suffix(".ckpt.pt").exists()

    capsys.readouterr()
    again = run(cfg, progress=False)   # found, quietly: a sweep counts it in its one line (test_sweep_over_...)
    assert capsys.readouterr() == ("", "") and again == json.loads(path.read_text())


@pytest.mark.parametrize("mode", ["fish_shuffled", "fish_spread"])
def test_the_mechanism_modes_run_with_the_fish_budget(tmp_path, mode):
    fish = run(run_config(tmp_path, "task=mrpc", "mask=fish", *QUICK), progress=False)
    other = run(run_config(tmp_path, "task=mrpc", f"mask={mode}", *QUICK), progress=False)
    assert other["mask"] == mode and other["trainable"] == fish["trainable"] and other["fisher_seconds"] > 0
    per_tensor = {m: [t["chosen"] for t in r["placement"]] for m, r in ((mode, other), ("fish", fish))}
    if mode == "fish_shuffled":
        assert per_tensor[mode] == per_tensor["fish"]
    else:
        assert max(per_tensor[mode]) - min(per_tensor[mode]) <= 1  # the method's tensors are all one size


def test_result_file_records_the_zero_fisher_fill(tmp_path):
    """peft's default LoRA init (B = 0) leaves every lora_A's Fisher zero: with k past the lora_B entries
    the mask fills the rest with lora_A entries by position, and the run warns and records how many."""
    from fishtune import ZeroFisherWarning

    # tiny_bert, LoRA r1 on 5 layers' Q, K, V: 15 lora_B tensors of 32 entries; the head has 66.
    cfg = run_config(tmp_path, "task=rte", "mask=fish", "peft.init=default", f"mask.k={66 + 15 * 32 + 20}", *QUICK)
    with pytest.warns(ZeroFisherWarning, match="20 zero-score entries were chosen by position"):
        result = run(cfg, progress=False)
    # independently of the count: the mask's chosen lora_A entries (whose Fisher is zero by construction)
    assert sum(t["chosen"] for t in result["placement"] if "lora_A" in t["module"]) == 20
    assert result["zero_fisher_filled"] == 20 == json.loads(plan(cfg).path.read_text())["zero_fisher_filled"]
    # A run that starts again from its saved mask (interrupted before its result file) reports the same.
    plan(cfg).path.unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ZeroFisherWarning)  # the mask is read back, not chosen again
        assert run(cfg, progress=False)["zero_fisher_filled"] == 20
    rand = run(run_config(tmp_path, "task=rte", "mask=rand", *QUICK), progress=False)
    assert "zero_fisher_filled" not in rand  # a mask that reads no Fisher has nothing to count


def test_result_records_precision_memory_throughput_and_threads(tmp_path):
    result = run(run_config(tmp_path, "task=sst2", "mask=rand", "train.precision=bf16", *QUICK), progress=False)
    assert (result["precision"], result["precision_reason"]) == ("bf16", "train.precision=bf16")
    assert result["peak_memory_mb"] == result["peak_rss_mb"] > 0 and result["cuda_max_allocated_mb"] is None
    # at least the model's weights were resident
    assert result["peak_rss_mb"] > result["total"] * 4 / 2**20
    assert result["threads"] == torch.get_num_threads() >= 1
    assert result["tokens_per_second"] > result["samples_per_second"] > 0
    assert [t["epoch"] for t in result["throughput"]] == [h["epoch"] for h in result["history"]]
    assert all(t["tokens_per_second"] > t["samples_per_second"] > 0 for t in result["throughput"])


def test_the_fisher_and_mask_under_bf16_autocast_equal_fp32(tmp_path, monkeypatch):
    import fishtune.fisher

    fishers, masks, results = {}, {}, {}
    estimate = fishtune.fisher.empirical_fisher

    def recorded(*args, **kwargs):  # the run's own Fisher, as fish_masks receives it
        fishers[precision] = estimate(*args, **kwargs)
        return fishers[precision]

    monkeypatch.setattr(fishtune.fisher, "empirical_fisher", recorded)  # the Fisher modes' score calls it there
    for precision in ("fp32", "bf16", "auto"):
        cfg = run_config(tmp_path / precision, "task=mrpc", "mask=fish", f"train.precision={precision}", *QUICK)
        results[precision] = run(cfg, progress=False)
        masks[precision] = load_mask_file(mask_path(plan(cfg).path))[0]
    assert results["bf16"]["precision"] == "bf16" and results["fp32"]["precision"] == "fp32"
    for precision in ("bf16", "auto"):  # the Fisher is estimated in fp32 whatever the training precision
        assert all(f.dtype == torch.float32 for f in fishers[precision].values())
        assert all(torch.equal(fishers[precision][n], fishers["fp32"][n]) for n in fishers["fp32"])
        assert all(torch.equal(masks[precision][n], masks["fp32"][n]) for n in masks["fp32"])


def test_same_config_and_seed_reproduce_mask_and_metrics(tmp_path):
    results = []
    for sub in ("a", "b"):
        cfg = run_config(tmp_path / sub, "task=cola", "mask=fish", *QUICK)
        results.append(run(cfg, progress=False))
        results[-1]["mask"] = load_mask_file(mask_path(plan(cfg).path))[0]
    a, b = results
    assert a["history"] == b["history"] and a["config_hash"] == b["config_hash"]
    assert all(torch.equal(a["mask"][n], b["mask"][n]) for n in a["mask"])


def test_schedules_deeper_than_the_model_scale_down(tmp_path):
    # IA3's paper schedule (3, 5, 8, 10; FISH 12) on a 6-layer model: x 6/12, rounded up.
    layers = {b: plan(run_config(tmp_path, "peft=ia3", "mask=none", f"budget={b}")).layers for b in (1, 2, 3, 4)}
    assert layers == {1: 2, 2: 3, 3: 4, 4: 5}
    fish = plan(run_config(tmp_path, "peft=ia3", "mask=fish", "budget=4"))
    assert fish.layers == 6 and fish.k == plan(run_config(tmp_path, "peft=ia3", "mask=none", "budget=4")).candidates + 66
    # LoRA's schedule (1-4, FISH 5) fits 6 layers and is used as written.
    assert plan(run_config(tmp_path, "mask=none", "budget=3")).layers == 3


@pytest.mark.parametrize("override,message", [
    ("task=qnli", "unknown task 'qnli'; choose one of: cola, file, mrpc, rte, sst2, stsb, wnli"),
    ("model=gpt9", "unknown model 'gpt9'; choose one of: "),
    ("peft=bitfit", "unknown peft 'bitfit'; choose one of: "),
    ("mask=best", "unknown mask 'best'; choose one of: adaptive, adaptive_fish, fish, fish_shuffled, fish_spread, head_only, none, rand, rev"),
    ("task=rte,qnli", "unknown task 'qnli'"),
])
def test_unknown_group_option_is_one_clear_line(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        check_group_overrides(parse_overrides([override]))


def test_plugin_groups_and_plain_keys_pass_the_check():
    check_group_overrides(parse_overrides(["hydra/launcher=submitit_slurm", "task=rte,mrpc", "train.lr=1e-3",
                                           "+experiment=table5"]))
    with pytest.raises(ConfigError, match="unknown experiment 'table9'"):
        check_group_overrides(parse_overrides(["+experiment=table9"]))


def test_cli_error_exits_nonzero_with_one_line():
    out = subprocess.run([sys.executable, "-m", "fishtune.run", "task=qnli"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "fishtune: error: unknown task 'qnli'; choose one of: cola, file, mrpc, rte, sst2, stsb, wnli"]


@pytest.fixture
def no_model_loading(monkeypatch):
    import fishtune.harness.models

    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the config was validated")
    monkeypatch.setattr(fishtune.harness.models, "load_model", refuse)  # run.execute imports it from there


@pytest.mark.parametrize("overrides,message", [
    (["mask=fish", "mask.k=100000"], r"budget k=100000 is impossible for lora on 5 layers: it must lie between "
                                     r"the head's 66 and all 1026 inserted entries"),
    (["mask=fish", "budget=5"], r"unknown budget level 5; choose one of: 1, 2, 3, 4"),
    (["peft.layers=7"], r"cannot insert lora on 7 layers: tiny_bert has 6 \(allowed 1..6\)"),
    (["data.glue_dir=/nonexistent/glue"], r"GLUE directory not found: /nonexistent/glue"),
    (["model.family=t5"], r"unknown model family 't5'; choose one of: bert, modernbert, llama"),
    (["peft.name=bitfit"], r"unknown PEFT method 'bitfit'; choose one of: "),
    (["task.name=qnli"], r"unknown task 'qnli'"),
    (["mask.mode=top"], r"unknown mask mode 'top'"),
])
def test_bad_config_fails_before_any_model_loads(tmp_path, no_model_loading, overrides, message):
    with pytest.raises(ConfigError, match=message):
        run(run_config(tmp_path, *overrides), progress=False)


def test_missing_glue_file(tmp_path, no_model_loading):
    (tmp_path / "glue" / "RTE").mkdir(parents=True)
    (tmp_path / "glue" / "RTE" / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n")
    with pytest.raises(ConfigError, match=r"GLUE file not found: .*RTE/dev.tsv"):
        run(run_config(tmp_path, f"data.glue_dir={tmp_path / 'glue'}"), progress=False)


def test_wandb_offline_logs_keys_tags_group_and_epochs(tmp_path, monkeypatch):
    import wandb

    real_init, seen = wandb.init, {"logs": []}

    def spying_init(**kwargs):  # the real offline run; we keep what it recorded
        run = real_init(**kwargs)
        seen.update(config=dict(run.config), tags=list(run.tags), group=run.group, name=run.name)
        real_log = run.log
        monkeypatch.setattr(run, "log", lambda data, step=None: (seen["logs"].append((step, data)),
                                                                  real_log(data, step=step)))
        return run

    monkeypatch.setattr(wandb, "init", spying_init)
    cfg = run_config(tmp_path, "task=rte", "mask=rand", "logger=wandb", "logger.mode=offline", "logger.table=table5",
                     *QUICK)
    result = run(cfg, progress=False)
    for key, value in (("table", "table5"), ("method", "lora"), ("budget", 1), ("lr", 5e-5)):
        assert seen["config"][key] == value
    # the config's groups stay dicts (tests/test_tracking.py: through the CLI, with the profile)
    assert (seen["config"]["mask"]["mode"], seen["config"]["task"]["name"]) == ("rand", "rte")
    assert {"table:table5", "method:lora", "budget:1", "mask:rand"} <= set(seen["tags"])
    # masks and seeds share a group; no profile outside Hydra; 24 training examples at the paper's 5e-5
    assert seen["group"] == "tiny_bert-rte-lora-r1-b1-n24-lr5e-05" and seen["name"] == result["run_id"]
    assert [step for step, _ in seen["logs"]] == [1, 2]
    assert [d["dev_score"] for _, d in seen["logs"]] == [h["score"] for h in result["history"]]
    assert {"train_loss", "dev_loss", "dev_accuracy"} <= set(seen["logs"][0][1])
    offline = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(offline) == 1 and offline[0].stat().st_size > 0


def test_sweep_records_a_crash_and_finishes_the_other_runs(tmp_path):
    from conftest import GLUE_FIXTURES
    from fishtune.harness.results import load_failures, load_results

    # fisher.chunk_size=0 is bad only for the run that estimates a Fisher (mask=fish), not mask=none.
    out = subprocess.run([sys.executable, "-m", "fishtune.run", "-m", "model=tiny_bert", "task=rte", "mask=fish,none",
                          "fisher.chunk_size=0", f"data.glue_dir={GLUE_FIXTURES}", f"paths.runs_dir={tmp_path}",
                          *QUICK], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "FAILED (fisher.chunk_size=0: must be an integer >= 1" in out.stderr
    assert [r.mask for r in load_results(tmp_path)] == ["none"]
    failures = load_failures(tmp_path)
    assert len(failures) == 1 and failures[0].config["mask"]["mode"] == "fish"
    assert failures[0].reason.startswith("fisher.chunk_size=0") and failures[0].traceback


def test_a_bug_while_planning_is_a_bug_not_a_bad_value(tmp_path, monkeypatch):
    import fishtune.harness.methods as methods

    def broken(*args, **kwargs):
        raise KeyError("lora_A")   # fishtune's own mistake, not the user's

    monkeypatch.setattr(methods, "count_on_meta", broken)
    with pytest.raises(KeyError) as caught:
        plan(run_config(tmp_path, "task=rte"))
    assert not isinstance(caught.value, ConfigError)


def test_a_sweep_says_one_line_and_a_sweep_of_finished_runs_launches_nothing(tmp_path):
    """A sweep says what came of its runs in one line at its end (no line per run it found finished); a
    sweep whose runs are all finished says so in one line before Hydra starts: no job launched, no Hydra
    folder, torch never imported (train.precision=fp32: nothing of this machine's to ask it)."""
    from conftest import GLUE_FIXTURES
    from fishtune.harness.results import load_results

    args = ["-m", "model=tiny_bert", "task=rte", "peft=lora,adapter", "mask=none,rand", "train.precision=fp32",
            f"data.glue_dir={GLUE_FIXTURES}", f"paths.runs_dir={tmp_path}", *QUICK]

    def sweep() -> subprocess.CompletedProcess:
        main = "import sys; sys.argv[0] = 'fishtune.run'; from fishtune.harness.cli import main; main(); " \
               "print('torch imported' if 'torch' in sys.modules else 'no torch')"
        out = subprocess.run([sys.executable, "-c", main, *args], cwd=ROOT, capture_output=True, text=True,
                             timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        return out

    first = sweep()
    assert "fishtune: sweep done: 4 runs: 4 trained, 0 finished before, 0 failed, 0 left to other live sweeps\n" \
        in first.stdout and first.stdout.count(": best rte score ") == 4
    # the libraries' INFO lines (adapters' "Adding adapter 'fishtune'.") are muted; Hydra's own stay
    assert not re.search(r"\]\[(adapters|transformers)[\w.]*\]\[INFO\]", first.stdout + first.stderr), first.stdout
    results = load_results(tmp_path)
    assert len(results) == 4 and len(list((tmp_path / "hydra").iterdir())) == 1
    # One result gone (as if its job was killed): the sweep launches, trains that one, finds three quietly.
    gone = results[1].path
    Path(gone).unlink()
    second = sweep()
    assert "fishtune: sweep done: 4 runs: 1 trained, 3 finished before, 0 failed, 0 left to other live sweeps\n" \
        in second.stdout and second.stdout.count(": best rte score ") == 1 and "skip" not in second.stdout
    assert Path(gone).stem in second.stdout and len(load_results(tmp_path)) == 4
    # All four finished: one line, nothing launched.
    hydra = sorted((tmp_path / "hydra").iterdir())
    third = sweep()
    assert third.stdout == "fishtune: 4 of 4 finished, 0 to train\nno torch\n" and third.stderr == ""
    assert sorted((tmp_path / "hydra").iterdir()) == hydra
    # A result that no longer stands for its run (edited by hand) is not taken for finished: the sweep
    # launches, and the run sets it aside and trains again.
    data = json.loads(Path(gone).read_text())
    Path(gone).write_text(json.dumps({**data, "config": {**data["config"], "seed": 7}}))
    fourth = sweep()
    assert "fishtune: sweep done: 4 runs: 1 trained, 3 finished before" in fourth.stdout
    assert len(list(tmp_path.glob("*.damaged"))) == 1 and len(load_results(tmp_path)) == 4


def test_finished_jobs_counts_a_sweep_only_when_every_run_is_there(tmp_path):
    """sweeps.finished_jobs against the runs as plan() names them: the count when all are there, None as soon
    as one is missing, force is on, or a config fails its checks (the launch then says why)."""
    from fishtune.harness.sweeps import finished_jobs

    cfgs = [run_config(tmp_path, "task=rte", f"mask={m}", "seed=1", *QUICK) for m in ("none", "rand")]
    for cfg in cfgs:
        run(cfg, progress=False)
    sweep = ["model=tiny_bert", "task=rte", "mask=none,rand", "seed=1", f"paths.runs_dir={tmp_path}",
             f"data.glue_dir={cfgs[0]['data']['glue_dir']}", *QUICK]
    assert finished_jobs(sweep) == 2
    assert finished_jobs([*sweep, "force=true"]) is None
    assert finished_jobs([*sweep, "claim.timeout_s=1"]) is None   # a bad value (not of the identity): plan says it
    assert finished_jobs([s.replace("seed=1", "seed=1,2") for s in sweep]) is None
    plan(cfgs[1]).path.unlink()
    assert finished_jobs(sweep) is None
