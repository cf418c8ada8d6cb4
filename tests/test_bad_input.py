"""Bad input, as a new user types it: every kind ends in exactly one line on stderr naming the bad value,
exit code 2, no traceback, and no model loaded.

Most cases call `fishtune.run.main()` in this process: the CLI's own path (group check, Hydra's
composition, plan(), execute's data loading) with sys.argv set, so dozens of cases cost seconds. A few
run as real subprocesses: they also show that a bad value is reported before torch is even imported
(about a second after the command starts), and cover the hub, whose cache location is fixed at import.
"""
import json
import subprocess
import sys

import pytest
import torch

from conftest import GLUE_FIXTURES, ROOT, run_cli
from fishtune.harness import run as run_module
from fishtune.harness.validate import ConfigError, check_config

OWN = ROOT / "tests" / "fixtures" / "own"


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    """cli(*overrides) -> (exit code, stderr lines) of `python -m fishtune.run` on tiny_bert and the fixtures."""
    import fishtune.harness.models

    def refuse(*a, **k):
        raise AssertionError("a model was loaded although the input was bad")
    monkeypatch.setattr(fishtune.harness.models, "load_model", refuse)

    def call(*overrides: str, glue=GLUE_FIXTURES, model: str | None = "tiny_bert") -> tuple[int, list[str]]:
        # tiny_bert unless a case names its model (a group given twice is itself refused)
        named = any(o.startswith("model=") for o in overrides)
        argv = [*([f"model={model}"] if model and not named else []), f"data.glue_dir={glue}",
                f"paths.runs_dir={tmp_path / 'runs'}", *overrides]
        return run_cli(monkeypatch, capsys, argv)
    return call


# (overrides, a fragment of the one line: the bad value and what is allowed)
BAD = [
    # the eight that worked before
    (["task=foo"], "unknown task 'foo'; choose one of: cola, file, mrpc, rte, sst2, stsb, wnli"),
    (["model=gpt9"], "unknown model 'gpt9'; choose one of: "),
    (["peft=bitfit"], "unknown peft 'bitfit'; choose one of: "),
    (["mask=best"], "unknown mask 'best'; choose one of: adaptive, adaptive_fish, fish, fish_shuffled, fish_spread, head_only, none, rand, rev"),
    (["mask=fish", "budget=9"], "unknown budget level 9; choose one of: 1, 2, 3, 4"),
    (["mask=fish", "mask.k=100000"], "budget k=100000 is impossible for lora on 5 layers"),
    (["data.glue_dir=/nonexistent/glue"], "GLUE directory not found: /nonexistent/glue"),
    (["model=tiny_modernbert", "peft=prefix"], "PEFT method 'prefix' does not support the modernbert model family"),
    # values
    (["seed=abc"], "seed='abc': must be an integer 0..4294967295"),
    (["seed=-1"], "seed=-1: must be an integer 0..4294967295"),
    (["budget=abc"], "unknown budget level 'abc'; choose one of: 1, 2, 3, 4"),
    (["train.lr=-1"], "train.lr=-1: must be a finite number > 0, or null (the task table's)"),
    (["train.lr=0"], "train.lr=0: must be a finite number > 0"),
    (["train.lr=inf"], "train.lr=inf: must be a finite number > 0"),
    (["train.lr_scale=0"], "train.lr_scale=0: must be a finite number > 0"),
    (["train.weight_decay=-0.1"], "train.weight_decay=-0.1: must be a finite number >= 0"),
    (["train.batch_size=0"], "train.batch_size=0: must be an integer >= 1"),
    (["train.batch_size=8.5"], "train.batch_size=8.5: must be an integer >= 1"),
    (["train.eval_batch_size=0"], "train.eval_batch_size=0: must be an integer >= 1"),
    (["data.train_samples=0"], "data.train_samples=0: must be an integer >= 1, or null (all)"),
    (["data.dev_samples=-5"], "data.dev_samples=-5: must be an integer >= 1, or null (all)"),
    (["mask=fish", "fisher.samples=0"], "fisher.samples=0: must be an integer >= 1 (mask=fish ranks entries"),
    (["mask=rev", "fisher.chunk_size=0"], "fisher.chunk_size=0: must be an integer >= 1"),
    (["mask=adaptive", "mask.start=fish", "fisher.samples=0"], "fisher.samples=0: must be an integer >= 1"),
    (["mask=adaptive", "mask.start=best"], "mask.start='best': choose one of: all, fish"),
    (["mask=adaptive", "mask.granularity=rows:0"], "mask.granularity='rows:0': choose tensor or rows:N"),
    (["train.max_epochs=0"], "train.max_epochs=0: must be an integer >= 1"),
    (["train.patience=-1"], "train.patience=-1: must be an integer >= 1"),
    (["train.patience=0"], "train.patience=0: must be an integer >= 1"),
    (["train.precision=fp16"], "train.precision='fp16': choose one of: auto, fp32, bf16"),
    (["train.device=tpu"], "train.device='tpu': choose one of: auto, cpu, cuda, cuda:N"),
    (["peft.rank=0"], "peft.rank=0: must be an integer >= 1"),
    (["peft.rank=64"], "peft.rank=64: must be an integer 1..32 (tiny_bert's hidden size)"),
    (["peft=prefix", "peft.prefix_length=0"], "peft.prefix_length=0: must be an integer >= 1"),
    (["peft=unipelt", "peft.bottleneck=0"], "peft.bottleneck=0: must be an integer >= 1"),
    (["peft.layers=7"], "cannot insert lora on 7 layers: tiny_bert has 6 (allowed 1..6)"),
    (["peft.dropout=1.5"], "peft.dropout=1.5: must be a finite number >= 0 and < 1"),
    (["model.family=t5"], "unknown model family 't5'; choose one of: bert, modernbert, llama, roberta, distilbert, "
                          "deberta_v2, mistral, qwen2"),
    # your own model (docs/OWN.md): what the harness would otherwise change or ignore without a word
    (["model.family=auto"], "model.family=auto reads a checkpoint's config.json, and model 'tiny_bert' (source tiny) "
                            "has none; choose one of: bert, "),
    (["model.path=/some/folder"], "model.path='/some/folder' is not read by model 'tiny_bert' (source tiny: it has "
                                  "random weights); to train your checkpoint pass model=custom model.path=/some/folder"),
    (["model=custom"], "model.path is not set, and model 'custom' reads a checkpoint: pass model.path=FOLDER"),
    (["peft.targets=[nope]"], "peft.targets: 'nope' names no linear module in the bottom 1 layer(s) of this bert model; "
                              "its layers' linear modules are: attention.output.dense, attention.self.key, "
                              "attention.self.query, attention.self.value, intermediate.dense, output.dense"),
    (["model.tiny.hidden_size=33"], "model.tiny: hidden size 33 is not a multiple of the 2 attention heads"),
    (["mask=fish", "peft.fish_layers=100"], "peft.fish_layers=100: the model has 6 layers (allowed 1..6); only the "
                                            "shipped schedule of lora is fitted to a shallower model"),
    (["peft.budget_layers=[1,2,3,9]"], "peft.budget_layers=[1, 2, 3, 9]: the model has 6 layers (allowed 1..6)"),
    (["mask.mode=top"], "unknown mask mode 'top'; choose one of: none, fish, rand, rev, fish_shuffled, fish_spread"),
    # an experiment is a sweep: without -m Hydra would do one default run and say nothing
    (["+row=nope"], "unknown row 'nope'; choose one of: fish, fish_layers10, "),
    (["+experiment=table1"], "an experiment is a sweep: run it with -m (python -m fishtune.run -m +experiment=table1)"),
    # claims (sweeps sharing a runs folder)
    (["claim.timeout_s=0"], "claim.timeout_s=0: must be a finite number > 0"),
    (["claim.heartbeat_s=-5"], "claim.heartbeat_s=-5: must be a finite number > 0"),
    (["claim.timeout_s=90", "claim.heartbeat_s=60"], "claim.timeout_s=90: must be at least twice claim.heartbeat_s=60"),
    (["claim.enabled=maybe"], "claim.enabled='maybe': must be true or false"),
    # a group given twice: Hydra would take the last one without a word
    (["task=rte", "task=sst2"], "task is given twice (task=rte and task=sst2); give it once (several values: "
                                "task=a,b with -m)"),
    (["peft=lora", "mask=fish", "peft=ia3"], "peft is given twice (peft=lora and peft=ia3)"),
    # a task's max_length past the model's positions would index past its position embeddings
    (["task=file", f"task.train={OWN}/three_class_train.csv", f"task.dev={OWN}/three_class_dev.csv",
      "task.text=review", "task.label=sentiment", "task.max_length=600"],
     "task.max_length=600: tiny_bert reads at most 512 tokens"),
    # issue 40 (identity): the command line checked before Hydra: unknown keys with the closest known one,
    # malformed overrides, a runs folder that cannot be one
    (["trian.lr=1"], "unknown key 'trian.lr'; did you mean train.lr?"),
    (["train.lrr=0.1"], "unknown key 'train.lrr'; did you mean train.lr?"),
    (["+train.lrr=0.1"], "unknown key 'train.lrr' (+ adds a key that fishtune never reads); did you mean train.lr?"),
    (["+train.foo=1"], "unknown key 'train.foo' (+ adds a key that fishtune never reads); train has: batch_size, "),
    (["peft.rnak=2"], "unknown key 'peft.rnak'; did you mean peft.rank?"),
    (["sed=1"], "unknown key 'sed'; did you mean seed?"),
    (["~train.lrx"], "unknown key 'train.lrx'; did you mean train.lr?"),
    (["seed=["], "cannot read the override 'seed=[': no viable alternative at input '['"),
    (["task=rte,"], "cannot read the override 'task=rte,': mismatched input '<EOF>'"),
    (["train lr=1"], "cannot read the override 'train lr=1': a key must be a dotted name"),
    (["paths.runs_dir="], "paths.runs_dir='': must be a folder path (e.g. paths.runs_dir=runs)"),
    (["paths.runs_dir=/dev/null/runs"], "paths.runs_dir=/dev/null/runs: /dev/null is a file, not a folder"),
]


# (ids without this machine's paths: pytest keeps them in .pytest_cache, where test_api looks for such paths)
@pytest.mark.parametrize("overrides,message", BAD, ids=[" ".join(o).replace(f"{ROOT}/", "") for o, _ in BAD])
def test_bad_value_is_one_line_and_exit_2(cli, overrides, message):
    code, lines = cli(*overrides)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("fishtune: error: ") and message in lines[0], lines


# Paths that are no checkpoint or tokenizer: (how to make it under tmp_path, overrides, the line's fragment)
def _file(tmp_path):
    (tmp_path / "weights.bin").write_text("not a folder")
    return tmp_path / "weights.bin"


def _empty(tmp_path):
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty"


BAD_PATHS = [
    (_file, "model.path={}", "model.path='{}' is a file; pass the folder that holds the checkpoint's config.json"),
    (_empty, "model.path={}", "model.path='{}': the folder has no config.json, so it is no transformers checkpoint"),
    (lambda t: t / "nowhere", "model.path={}", "model.path='{}': no such folder"),
    (_file, "+model.tokenizer={}", "model.tokenizer='{}' is a file; pass the folder a tokenizer was saved to"),
]


@pytest.mark.parametrize("make,override,message", BAD_PATHS, ids=["path-file", "path-empty", "path-missing", "tokenizer-file"])
def test_a_path_that_is_no_checkpoint_is_one_line(cli, tmp_path, make, override, message):
    path = make(tmp_path)
    # model.path alone chooses model=custom (fishtune.harness.run.with_custom_model); the tokenizer goes with tiny_bert
    code, lines = cli(override.format(path), model="tiny_bert" if "tokenizer" in override else None)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("fishtune: error: " + message.format(path)), lines


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_cuda_without_a_gpu(cli):
    code, lines = cli("train.device=cuda")
    assert code == 2 and len(lines) == 1 and "train.device='cuda': no CUDA GPU is visible" in lines[0], lines


GOOD_TSV = "index\tsentence1\tsentence2\tlabel\n0\tA man runs.\tSomeone moves.\tentailment\n"


@pytest.mark.parametrize("task,train,message", [
    ("rte", GOOD_TSV + "1\tonly two columns\n", "RTE/train.tsv:3: 2 columns, rte needs at least 4"),
    ("rte", GOOD_TSV + "1\tA.\tB.\tmaybe\n", "RTE/train.tsv:3: label 'maybe' is not one of rte's labels "
                                            "(entailment, not_entailment)"),
    ("mrpc", "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n2\t1\t2\tA.\tB.\n",
     "MRPC/train.tsv:2: label '2' is not one of mrpc's labels (0, 1)"),
    ("stsb", "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
             "0\tg\tf\t2012\t1\tn\tn\tA plane.\tA jet.\tfive\n", "STS-B/train.tsv:2: score 'five' is not a number"),
    ("rte", "index\tsentence1\tsentence2\tlabel\n", "RTE/train.tsv: no examples (an empty split)"),
    ("rte", "", "RTE/train.tsv: no examples (an empty split)"),
    ("sst2", "text\tlabel\nfine\t1\n", "SST-2/train.tsv:1: the header lacks column 'sentence' (has: text, label)"),
    # issue 40: each of these was a traceback after torch, the claim and tokenising (8-17 s)
    ("rte", GOOD_TSV.encode("utf-16"), "RTE/train.tsv: not UTF-8 text: byte 0xff at offset 0 (a UTF-16 file: "
                                       "save it as UTF-8); GLUE files are UTF-8 TSV"),
    ("rte", b"PK\x03\x04\x14\x00\x08\x00\x08\x00\xa4\x8b\x00\x00", "RTE/train.tsv: not UTF-8 text: byte 0xa4 at "
                                                                 "offset 10; GLUE files are UTF-8 TSV"),
    ("rte", GOOD_TSV + "1\t" + "x" * 131_073 + "\tB.\tentailment\n",
     "RTE/train.tsv:3: a field longer than 131,072 characters (Python csv's limit): no GLUE TSV has one"),
    ("rte", "index\tsentence1\tsentence1\tsentence2\tlabel\n0\tA.\tA.\tB.\tentailment\n",
     "RTE/train.tsv:1: the header names column 'sentence1' twice (has: index, sentence1, sentence1, sentence2, label)"),
    ("stsb", "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
             "0\tg\tf\t2012\t1\tn\tn\tA plane.\tA jet.\t7\n", "STS-B/train.tsv:2: score '7' is outside stsb's range 0..5"),
])
def test_malformed_glue_file_is_path_line_and_exit_2(cli, tmp_path, task, train, message):
    from fishtune.harness.tasks import get_task

    folder = tmp_path / "glue" / get_task(task).glue_name
    folder.mkdir(parents=True)
    (folder / "train.tsv").write_bytes(train if isinstance(train, bytes) else train.encode())
    (folder / "dev.tsv").write_text((GLUE_FIXTURES / get_task(task).glue_name / "dev.tsv").read_text())
    code, lines = cli(f"task={task}", glue=tmp_path / "glue")
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"fishtune: error: {tmp_path / 'glue'}/") and lines[0].endswith(message), lines


def test_every_option_in_conf_passes(tmp_path):
    """No option of any group is refused by the checks: each model, method, mask, task and profile."""
    from conftest import CONF, run_config

    (tmp_path / "own").mkdir()  # model=custom needs a checkpoint: its config.json is all the checks read
    (tmp_path / "own" / "config.json").write_text(json.dumps({"model_type": "roberta"}))
    # task=file needs its files and columns (conf/task/file.yaml)
    own = {("model", "custom"): [f"model.path={tmp_path / 'own'}"],
           ("task", "file"): [f"task.train={OWN}/three_class_train.csv", f"task.dev={OWN}/three_class_dev.csv",
                              "task.text=review", "task.label=sentiment"]}
    for group in ("model", "peft", "mask", "task", "profile"):
        for option in sorted(f.stem for f in (CONF / group).glob("*.yaml")):
            check_config(run_config(tmp_path, f"{group}={option}", *own.get((group, option), [])))
    check_config(run_config(tmp_path, "model=tiny_modernbert", "peft=dora", "mask=adaptive", "mask.start=fish"))


def test_check_config_needs_no_torch():
    code = ("import sys; from fishtune.harness.validate import check_config; "
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'adapters', 'datasets') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


# Real processes: the command as typed, and proof that nothing heavy was imported, let alone a model loaded.
_MAIN = ("import atexit, sys; atexit.register(lambda: print('heavy imported:', "
         "[m for m in ('torch', 'transformers', 'peft', 'adapters') if m in sys.modules])); "
         "sys.argv[0] = 'fishtune.run'; from fishtune.harness.cli import main; main()")


def _cli_process(tmp_path, *overrides, glue=GLUE_FIXTURES, **env):
    import os

    # An empty hub cache: the hub cases must not depend on what this machine has cached.
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run([sys.executable, "-c", _MAIN, f"data.glue_dir={glue}",
                           f"paths.runs_dir={tmp_path / 'runs'}", *overrides],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize("overrides,message,heavy", [
    (["seed=abc"], "fishtune: error: seed='abc': must be an integer 0..4294967295", "[]"),
    (["model=tiny_bert", "train.lr=-1"], "fishtune: error: train.lr=-1: must be a finite number > 0", "[]"),
    # hub model, offline, not cached: the id, the reason and the fix, before torch
    (["model=bert_base"], "fishtune: error: hub model 'bert-base-uncased' cannot be had: it is not in the local "
                          "cache and HF_HUB_OFFLINE=1 forbids downloading; run with HF_HUB_OFFLINE=0 to download "
                          "it, or set model.path to a local folder", "[]"),
    (["model=llama32_1b"], "fishtune: error: hub model 'meta-llama/Llama-3.2-1B' cannot be had: it is not in the "
                           "local cache and HF_HUB_OFFLINE=1 forbids downloading", "[]"),
    # the hub dataset (data.glue_dir=null), offline, not cached
    # your own model: a folder that is not there, said before torch (model.path alone chooses model=custom)
    (["model.path=/nonexistent/model"], "fishtune: error: model.path='/nonexistent/model': no such folder", "[]"),
    (["data.glue_dir=null"], "fishtune: error: hub dataset 'nyu-mll/glue' (rte) cannot be had: it is not in the "
                             "local cache and HF_HUB_OFFLINE=1 forbids downloading; run with HF_HUB_OFFLINE=0 to "
                             "download it, or set data.glue_dir (or GLUE_DIR) to a folder", None),
])
def test_cli_process_reports_before_loading_anything(tmp_path, overrides, message, heavy):
    out = _cli_process(tmp_path, *overrides)
    assert out.returncode == 2, out.stderr
    [line] = out.stderr.strip().splitlines()
    assert line.startswith(message), line
    if heavy is not None:  # datasets (for the hub dataset check) may pull torch in; no model either way
        assert f"heavy imported: {heavy}" in out.stdout, out.stdout


def test_bad_glue_content_is_one_line_before_torch(tmp_path):
    """Issue 40: a GLUE file's content is read in the plan, before torch, a claim and tokenising (it came
    8-17 s after the command, as a traceback)."""
    import time

    folder = tmp_path / "glue" / "STS-B"
    folder.mkdir(parents=True)
    dev = (GLUE_FIXTURES / "STS-B" / "dev.tsv").read_text()
    (folder / "dev.tsv").write_text(dev)
    (folder / "train.tsv").write_text(dev.replace("\t5.000\n", "\t7\n", 1))
    start = time.perf_counter()
    out = _cli_process(tmp_path, "model=tiny_bert", "task=stsb", glue=tmp_path / "glue")
    seconds = time.perf_counter() - start
    assert out.returncode == 2, out.stderr
    [line] = out.stderr.strip().splitlines()
    assert line.startswith(f"fishtune: error: {folder / 'train.tsv'}:") and line.endswith(
        "score '7' is outside stsb's range 0..5"), line
    assert "heavy imported: []" in out.stdout, out.stdout
    print(f"bad STS-B file reported in {seconds:.1f} s")


def test_gated_hub_model_names_the_fix(monkeypatch):
    """Online, a gated model without a token (as meta-llama/Llama-3.2-1B is): log in, or a local path."""
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError

    from fishtune.harness import validate

    def gated(repo_id, filename, **kw):
        raise GatedRepoError("401 Client Error: access to model meta-llama/Llama-3.2-1B is restricted")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", gated)
    monkeypatch.setattr(validate, "_hub_unreachable", lambda: None)
    with pytest.raises(ConfigError, match=r"^hub model 'meta-llama/Llama-3.2-1B' cannot be had: it is gated and this "
                                          r"machine has no access; .*`huggingface-cli login` or set HF_TOKEN, or set "
                                          r"model.path to a local folder$"):
        validate.check_hub_model("meta-llama/Llama-3.2-1B")


def test_unreachable_hub_is_said_at_once(monkeypatch):
    from fishtune.harness import validate

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    with pytest.raises(ConfigError, match=r"hub model 'org/none' cannot be had: it is not in the local cache and "
                                          r"127.0.0.1 cannot be reached from this machine"):
        validate.check_hub_model("org/none")


def test_failure_record_of_an_infinite_value_is_json(tmp_path):
    """A sweep records a config error too; its config (train.lr=inf) must still be valid JSON."""
    from conftest import run_config

    cfg = run_config(tmp_path, "train.lr=inf")
    with pytest.raises(ConfigError):
        check_config(cfg)
    path = run_module.record_failure(cfg, ConfigError("train.lr=inf: must be a finite number > 0"))
    record = json.loads(path.read_text())
    assert record["config"]["train"]["lr"] == "inf" and record["reason"].startswith("train.lr=inf")
