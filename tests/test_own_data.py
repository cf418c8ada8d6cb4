"""Your own data (task=file, conf/task/file.yaml): tasks defined by files run end to end on tiny BERT, their
metrics checked against scikit-learn and scipy on the run's own saved dev predictions, their labels against
the files read here with the standard library; what makes a run's identity; and every bad-input line."""
import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from conftest import ROOT, run_config, run_cli
from fishtune.harness.run import plan, run

OWN = ROOT / "tests" / "fixtures" / "own"
CSV_TASK = ["task=file", f"task.train={OWN}/three_class_train.csv", f"task.dev={OWN}/three_class_dev.csv",
            "task.text=review", "task.label=sentiment"]
JSONL_TASK = ["task=file", f"task.train={OWN}/pairs_train.jsonl", f"task.dev={OWN}/pairs_dev.jsonl",
              "task.text=[first,second]", "task.label=similarity", "task.kind=regression"]
QUICK = ["train.max_epochs=2", "train.lr_scale=40", "train.batch_size=16", "fisher.samples=16"]
SENTIMENTS = ["negative", "neutral", "positive"]   # sorted: the ids 0, 1, 2


def _csv_labels(path):
    with open(path, newline="") as f:
        return [row["sentiment"] for row in csv.DictReader(f)]


def test_three_class_csv_task_end_to_end(tmp_path):
    """String labels, three classes, a fish mask (its Fisher over three classes); F1 macro and accuracy as
    scikit-learn computes them from the run's own saved predictions, the labels as the file has them."""
    result = run(run_config(tmp_path, *CSV_TASK, "task.name=reviews", "task.metric=f1_acc", "mask=fish", *QUICK),
                 progress=False)
    assert result["task"] == "reviews" and result["run_id"].startswith("tiny_bert-reviews-lora-")
    task = result["config"]["task"]
    assert task["labels"] == SENTIMENTS   # the ids, recorded in the result
    assert set(task["sha256"]) == {"train", "dev"} and all(len(h) == 64 for h in task["sha256"].values())
    # the dev file read with csv, its labels mapped by the recorded order: the run's labels, in file order
    labels = [SENTIMENTS.index(s) for s in _csv_labels(OWN / "three_class_dev.csv")]
    assert result["dev_labels"] == labels and result["dev_examples"] == 30 and result["train_examples"] == 60
    preds = result["dev_predictions"]
    assert set(preds) <= {0, 1, 2}
    best = result["best"]["metrics"]
    assert best["f1"] == pytest.approx(100 * f1_score(labels, preds, average="macro"))
    assert best["accuracy"] == pytest.approx(100 * accuracy_score(labels, preds))
    assert best["score"] == pytest.approx((best["f1"] + best["accuracy"]) / 2)
    assert result["fisher_seconds"] > 0 and result["history"][-1]["dev_loss"] > 0


def test_regression_jsonl_pair_task_end_to_end(tmp_path, monkeypatch):
    """Two text columns, a numeric label, the default metric (pearson_spearman): Pearson and Spearman as
    scipy computes them from the run's dev predictions.

    The result file keeps each score rounded to 6 decimals, which can tie two close predictions and move
    Spearman; so the predictions are also taken as the run scored them (every evaluation's arrays, seen on
    their way into the metrics), scipy checked on those, and the file's predictions checked to be them."""
    import fishtune.harness.train

    scored = []
    metrics = fishtune.harness.train.glue_metrics
    monkeypatch.setattr(fishtune.harness.train, "glue_metrics",
                        lambda task, preds, labels: scored.append((preds, labels)) or metrics(task, preds, labels))
    # fp32 and the mean head: tiny BERT's pooled [CLS] barely varies, and bf16 logits would tie the scores
    result = run(run_config(tmp_path, *JSONL_TASK, *QUICK, "model.head=mean", "train.precision=fp32"), progress=False)
    assert result["config"]["task"]["labels"] is None and result["config"]["task"]["metric"] is None
    with open(OWN / "pairs_dev.jsonl") as f:
        labels = [json.loads(line)["similarity"] for line in f]
    assert result["dev_labels"] == labels
    assert len(scored) == len(result["history"])   # one evaluation per epoch
    preds, seen_labels = scored[result["best"]["epoch"] - 1]   # in the order evaluated (by length)
    assert np.ptp(preds) > 1e-3, preds   # not constant: the correlations are defined
    assert sorted(zip(np.round(preds, 6).tolist(), seen_labels.tolist())) == \
        sorted(zip(result["dev_predictions"], labels))   # the file's predictions are these
    best = result["best"]["metrics"]
    assert best["pearson"] == pytest.approx(100 * pearsonr(preds, seen_labels)[0], rel=1e-6)
    assert best["spearman"] == pytest.approx(100 * spearmanr(preds, seen_labels)[0], rel=1e-6)
    assert best["score"] == pytest.approx((best["pearson"] + best["spearman"]) / 2)


def test_load_from_disk_folder_task(tmp_path):
    """A datasets.save_to_disk folder per split, Matthews correlation (mcc) against scikit-learn."""
    import datasets

    for split in ("train", "dev"):
        with open(OWN / f"three_class_{split}.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "data" / split))
    cfg = run_config(tmp_path, "task=file", f"task.train={tmp_path / 'data' / 'train'}",
                     f"task.dev={tmp_path / 'data' / 'dev'}", "task.text=review", "task.label=sentiment",
                     "task.metric=mcc", "train.max_epochs=1", "train.lr_scale=40", "train.batch_size=16")
    result = run(cfg, progress=False)
    assert result["config"]["task"]["labels"] == SENTIMENTS
    labels, preds = result["dev_labels"], result["dev_predictions"]
    assert labels == [SENTIMENTS.index(s) for s in _csv_labels(OWN / "three_class_dev.csv")]
    assert result["best"]["metrics"] == {"matthews": pytest.approx(100 * matthews_corrcoef(labels, preds)),
                                         "score": pytest.approx(100 * matthews_corrcoef(labels, preds))}


def test_identity_holds_the_files_paths_and_content(tmp_path):
    """A changed file is another run (another file name); the same content under another path too. A GLUE
    run's config is not touched (its identity, and every committed result's, stays what it was)."""
    data = tmp_path / "data"
    data.mkdir()
    for name in ("three_class_train.csv", "three_class_dev.csv"):
        (data / name).write_bytes((OWN / name).read_bytes())
    ours = ["task=file", f"task.train={data}/three_class_train.csv", f"task.dev={data}/three_class_dev.csv",
            "task.text=review", "task.label=sentiment"]
    first = plan(run_config(tmp_path, *ours))
    assert plan(run_config(tmp_path, *ours)).path == first.path   # deterministic
    assert plan(run_config(tmp_path, *CSV_TASK)).path != first.path   # same bytes, another path
    with open(data / "three_class_dev.csv", "a") as f:
        f.write("The film was good again,positive\n")
    changed = plan(run_config(tmp_path, *ours))
    assert changed.path != first.path and changed.path.name.startswith("tiny_bert-file-lora-L1-")
    assert changed.config["task"]["sha256"]["train"] == first.config["task"]["sha256"]["train"]
    assert changed.config["task"]["sha256"]["dev"] != first.config["task"]["sha256"]["dev"]
    glue = run_config(tmp_path, "task=rte")
    assert plan(glue).config == glue


# --- bad input: one line, exit 2, no model loaded ------------------------------------------------

@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    """cli(*overrides) -> (exit code, stderr lines) of `python -m fishtune.run model=tiny_bert ...`."""
    import fishtune.harness.models

    def refuse(*a, **k):
        raise AssertionError("a model was loaded although the input was bad")
    monkeypatch.setattr(fishtune.harness.models, "load_model", refuse)
    monkeypatch.chdir(tmp_path)   # the cases' files are relative paths in tmp_path

    def call(*overrides: str) -> tuple[int, list[str]]:
        return run_cli(monkeypatch, capsys, ["model=tiny_bert", f"paths.runs_dir={tmp_path / 'runs'}", *overrides])
    return call


TRAIN_CSV = (OWN / "three_class_train.csv").read_text()
DEV_CSV = (OWN / "three_class_dev.csv").read_text()
TRAIN_JSONL = (OWN / "pairs_train.jsonl").read_text()
DEV_JSONL = (OWN / "pairs_dev.jsonl").read_text()
CSV = ["task=file", "task.train=train.csv", "task.dev=dev.csv", "task.text=review", "task.label=sentiment"]
JSONL = ["task=file", "task.train=train.jsonl", "task.dev=dev.jsonl", "task.text=[first,second]",
         "task.label=similarity", "task.kind=regression"]
CSVS = {"train.csv": TRAIN_CSV, "dev.csv": DEV_CSV}
JSONLS = {"train.jsonl": TRAIN_JSONL, "dev.jsonl": DEV_JSONL}

# (files written in the working folder, overrides, the one line after "fishtune: error: ")
BAD = [
    # the config's keys
    (CSVS, ["task=file"], "task.train=null: give the training data: a path to a .csv, .tsv, .jsonl, .json or a "
                          "datasets.save_to_disk folder"),
    (CSVS, [*CSV, "task.dev=nope.csv"], "task.dev='nope.csv': no such file or folder"),
    ({**CSVS, "dev.txt": DEV_CSV}, [*CSV, "task.dev=dev.txt"],
     "task.dev='dev.txt': unknown kind of file; use .csv, .tsv, .jsonl, .json or a datasets.save_to_disk folder"),
    (CSVS, [*CSV, "task.name=my-data"], "task.name='my-data': must be letters, digits and _ (it is part of each "
                                        "result file's name)"),
    (CSVS, [*CSV, "task.name=rte"], "task.name='rte' is a GLUE task's name: the tables would take your data for "
                                    "GLUE's; choose another"),
    (CSVS, [*CSV, "task.text=[a,b,c]"], "task.text=['a', 'b', 'c']: one column name, or a list of two "
                                        "([premise,hypothesis])"),
    (CSVS, [*CSV, "task.label=review"], "task.label='review' is also a text column (task.text)"),
    (CSVS, [*CSV, "task.kind=ordinal"], "task.kind='ordinal': choose one of: classification, regression"),
    (CSVS, [*CSV, "task.metric=auc"], "task.metric='auc': a classification takes one of: accuracy, f1, matthews, "
                                      "f1_acc, mcc, or null (accuracy)"),
    (CSVS, [*CSV, "task.metric=pearson"], "task.metric='pearson' (a metric of the other task.kind): a "
                                          "classification takes one of: accuracy, f1, matthews, f1_acc, mcc"),
    (JSONLS, [*JSONL, "task.metric=f1"], "task.metric='f1' (a metric of the other task.kind): a regression takes "
                                         "one of: pearson, spearman, pearson_spearman, or null (pearson_spearman)"),
    (CSVS, [*CSV, "task.max_length=0"], "task.max_length=0: must be an integer >= 1"),
    (CSVS, [*CSV, "task.template='Is {text_a} like {text_b}?'"],
     "task.template='Is {text_a} like {text_b}?': a text with {text_a} and no other {field}"),
    # what is in the files
    (CSVS, [*CSV, "task.label=answer"], "train.csv: no column 'answer' (task.label); its columns: review, sentiment"),
    (CSVS, [*CSV, "task.text=[review,context]"], "train.csv: no column 'context' (task.text); its columns: review, "
                                                 "sentiment"),
    ({**CSVS, "dev.csv": "text,sentiment\nfine,neutral\n"}, CSV,
     "dev.csv: no column 'review' (task.text); its columns: text, sentiment"),
    (JSONLS, [*JSONL, "task.label=score"], "train.jsonl: no column 'score' (task.label); its columns: first, second, "
                                           "similarity"),
    ({**CSVS, "train.csv": ""}, CSV, "train.csv: an empty file (no examples)"),
    ({**CSVS, "train.csv": "review,sentiment\n"}, CSV, "train.csv: no examples (a header only?)"),
    ({**JSONLS, "dev.jsonl": ""}, JSONL, "dev.jsonl: an empty file (no examples)"),
    ({**CSVS, "train.csv": "review,review,sentiment\na,b,positive\n"}, CSV,
     "train.csv: the header names column 'review' twice (has: review, review, sentiment)"),
    ({**CSVS, "train.csv": TRAIN_CSV.encode("utf-16")}, CSV,
     "train.csv: not UTF-8 text: byte 0xff at offset 0 (a UTF-16 file: save it as UTF-8); CSV files are read as UTF-8"),
    ({**CSVS, "dev.csv": DEV_CSV + "The meal was odd,mixed\nIt was meh,unsure\n"}, CSV,
     "dev.csv: column 'sentiment' holds label(s) the training file train.csv never has: 'mixed', 'unsure' "
     "(it has: 'negative', 'neutral', 'positive')"),
    ({**CSVS, "train.csv": "review,sentiment\nfine,positive\ngood,positive\n"}, CSV,
     "train.csv: column 'sentiment' holds one label only ('positive'); a classifier needs two or more"),
    ({**CSVS, "train.csv": "review,sentiment\nfine,positive\ngood,\n"}, CSV,
     "train.csv: example 2 has no label in column 'sentiment'"),
    ({**JSONLS, "train.jsonl": TRAIN_JSONL + '{"first": "a", "second": "b", "similarity": "high"}\n'}, JSONL,
     "train.jsonl: column 'similarity' holds 'high' in example 61, not a finite number (task.kind=regression needs "
     "a number in every row)"),
    ({**JSONLS, "dev.jsonl": '{"first": "a", "second": null, "similarity": 1}\n'}, JSONL,
     "dev.jsonl: example 1 has no text in column 'second' (null)"),
    ({"train.jsonl": '{"t": "a", "y": 1}\n{"t": "b", "y": "two"}\n', "dev.jsonl": '{"t": "a", "y": 1}\n'},
     ["task=file", "task.train=train.jsonl", "task.dev=dev.jsonl", "task.text=t", "task.label=y"],
     "train.jsonl: column 'y' mixes numbers and text as labels (e.g. 1 and 'two'); write them all one way"),
    ({**JSONLS, "dev.jsonl": "{not json\n"}, JSONL, "dev.jsonl: cannot be read as JSON lines: "),
]


@pytest.mark.parametrize("files,overrides,message", BAD, ids=[m[:60] for _, _, m in BAD])
def test_bad_own_data_is_one_line_and_exit_2(cli, tmp_path, files, overrides, message):
    for name, content in files.items():
        (tmp_path / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    code, lines = cli(*overrides)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"fishtune: error: {message}"), lines


def test_a_datasetdict_folder_names_its_splits(cli, tmp_path):
    import datasets

    rows = {"review": ["good", "bad"], "sentiment": ["positive", "negative"]}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows),
                          "validation": datasets.Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "dd"))
    code, lines = cli("task=file", "task.train=dd", "task.dev=dd/validation", "task.text=review",
                      "task.label=sentiment")
    assert code == 2 and lines == ["fishtune: error: dd: a DatasetDict (splits: train, validation), not one split; "
                                   "give a split's folder, e.g. dd/train"], lines


def test_bad_own_data_is_reported_before_torch(tmp_path):
    """A real process: the column error comes from the plan, before torch is imported (datasets reads the
    file without it), so before any claim, model or tokenising."""
    main = ("import atexit, sys; atexit.register(lambda: print('heavy imported:', "
            "[m for m in ('torch', 'transformers', 'peft', 'adapters') if m in sys.modules])); "
            "sys.argv[0] = 'fishtune.run'; from fishtune.harness.cli import main; main()")
    out = subprocess.run([sys.executable, "-c", main, "model=tiny_bert", f"paths.runs_dir={tmp_path}",
                          *CSV_TASK, "task.label=answer"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        f"fishtune: error: {OWN}/three_class_train.csv: no column 'answer' (task.label); its columns: review, sentiment"]
    assert "heavy imported: []" in out.stdout, out.stdout
