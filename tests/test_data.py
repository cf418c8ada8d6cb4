from collections import Counter

import pytest
import torch

from conftest import GLUE_FIXTURES, loader, model_cfg
from fishtune.harness import data
from fishtune.harness.models import load_tokenizer
from fishtune.harness.tasks import TASKS, get_task


@pytest.mark.parametrize("name", list(TASKS))
def test_every_task_reads_its_fixture(name):
    spec = TASKS[name]
    for split in ("train", "dev"):
        ex = data.load_split(spec, split, GLUE_FIXTURES)
        assert len(ex) in (16, 40)
        assert all(isinstance(e["text_a"], str) and e["text_a"] for e in ex)
        assert all((e["text_b"] is None) != spec.is_pair for e in ex)
        if spec.is_regression:
            assert all(isinstance(e["label"], float) and 0 <= e["label"] <= 5 for e in ex)
        else:
            assert set(Counter(e["label"] for e in ex)) <= set(range(spec.num_labels))


def test_tsv_quirks(tmp_path):
    # MRPC's header starts with a byte-order mark; RTE labels are words; quotes are text, not quoting.
    mrpc = data.load_split(get_task("mrpc"), "train", GLUE_FIXTURES)
    assert mrpc[0]["text_a"].startswith("Amrozi accused his brother")
    assert data.load_split(get_task("rte"), "train", GLUE_FIXTURES)[0]["label"] == 1  # not_entailment
    d = tmp_path / "WNLI"
    d.mkdir()
    (d / "train.tsv").write_text('index\tsentence1\tsentence2\tlabel\n0\t"Quoted" start\tend "q\t1\n')
    (d / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n")
    ex = data.load_split(get_task("wnli"), "train", tmp_path)
    assert ex == [{"text_a": '"Quoted" start', "text_b": 'end "q', "label": 1}]


def test_missing_glue_dir_and_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="GLUE directory not found"):
        data.check_glue_files(get_task("rte"), tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"RTE/train.tsv"):
        data.check_glue_files(get_task("rte"), tmp_path)


def test_hub_path_asks_for_nyu_mll_glue(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, name, split):
        calls.append((path, name, split))
        return [{"sentence1": "a", "sentence2": "b", "label": 0}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    ex = data.load_split(get_task("rte"), "dev", None)
    assert calls == [("nyu-mll/glue", "rte", "validation")]
    assert ex == [{"text_a": "a", "text_b": "b", "label": 0}]


def test_dynamic_padding_and_truncation():
    tok = load_tokenizer(model_cfg("tiny_bert"))
    spec = get_task("mrpc")
    dl = loader(tok, spec, batch_size=4)
    lengths = []
    for batch in dl:
        longest = int(batch["attention_mask"].sum(1).max())
        assert batch["input_ids"].shape[1] == longest  # padded to the batch's own longest example
        lengths.append(longest)
        assert batch["labels"].dtype == torch.long
    assert len(set(lengths)) > 1
    short = data.encode([{"text_a": "word " * 400, "text_b": None, "label": 0}], tok, get_task("sst2"))
    assert len(short[0]["input_ids"]) == get_task("sst2").max_length


def test_templates_for_decoder_models():
    tok = load_tokenizer(model_cfg("tiny_llama"))
    ex = {"text_a": "The cat sat.", "text_b": "A cat sat.", "label": 1}
    enc = data.encode([ex], tok, get_task("rte"), use_template=True)[0]
    text = tok.decode(enc["input_ids"], skip_special_tokens=True)
    assert "determine if the following statement is entailed" in text
    assert "token_type_ids" not in enc or set(enc["token_type_ids"]) == {0}  # one prompt, not a pair


def test_subsample_is_seeded_and_ordered():
    ex = list(range(100))
    rows = [{"i": i} for i in ex]
    a, b, c = (data.subsample(rows, 10, s) for s in (1, 1, 2))
    assert a == b and a != c and [r["i"] for r in a] == sorted(r["i"] for r in a)
    assert data.subsample(rows, None, 0) is rows


# --- your own data (task=file): read with `datasets`, labels ordered, cells as written ---------------

def _own(tmp_path, train, dev, suffix=".csv", **cfg):
    (tmp_path / f"train{suffix}").write_text(train)
    (tmp_path / f"dev{suffix}").write_text(dev)
    return {"name": "own", "train": str(tmp_path / f"train{suffix}"), "dev": str(tmp_path / f"dev{suffix}"),
            "text": "text", "label": "label", "kind": "classification", "metric": None, "max_length": 64,
            "template": None, "lr": 5e-5, **cfg}


def test_file_task_orders_numeric_labels_by_value_and_text_alphabetically(tmp_path):
    cfg = _own(tmp_path, "text,label\na,10\nb,2\nc,1\nd,2\n", "text,label\ne,1\nf,10\n")
    task = data.file_task(cfg)
    assert task.labels == (1, 2, 10) and task.num_labels == 3 and task.metric == "accuracy"
    assert [e["label"] for e in data.load_split(task, "train")] == [2, 1, 0, 1]
    assert [e["label"] for e in data.load_split(task, "dev")] == [0, 2]
    (tmp_path / "words").mkdir()
    words = data.file_task(_own(tmp_path / "words", "text,label\na,pos\nb,neg\nc,Neutral\n", "text,label\nd,neg\n"))
    assert words.labels == ("Neutral", "neg", "pos")   # Python's order of text: capitals first
    assert data.load_split(words, "dev") == [{"text_a": "d", "text_b": None, "label": 1}]


def test_file_task_keeps_each_cell_as_written(tmp_path):
    # TSV: a quote is text (no quoting, as in GLUE's files); "NA", "null", "" and "01.50" stay the texts they are
    tsv = 'text\tother\tlabel\n"quoted start\tx\t1\nNA\tnull\t0\n01.50\t\t1\n\t2\t0\n'
    task = data.file_task(_own(tmp_path, tsv, tsv, suffix=".tsv", text=["text", "other"]))
    assert task.is_pair and task.sha256[0] == task.sha256[1]
    assert data.load_split(task, "train") == [
        {"text_a": '"quoted start', "text_b": "x", "label": 1}, {"text_a": "NA", "text_b": "null", "label": 0},
        {"text_a": "01.50", "text_b": "", "label": 1}, {"text_a": "", "text_b": "2", "label": 0}]


def test_regression_labels_are_floats_and_the_template_defaults(tmp_path):
    jsonl = '{"text": "a", "label": 3}\n{"text": "b", "label": 1.5}\n{"text": "c", "label": "2"}\n'
    task = data.file_task(_own(tmp_path, jsonl, jsonl, suffix=".jsonl", kind="regression", metric="spearman"))
    assert task.is_regression and task.num_labels == 1 and task.metric == "spearman"
    labels = [e["label"] for e in data.load_split(task, "dev")]
    assert labels == [3.0, 1.5, 2.0] and all(type(x) is float for x in labels)   # MSE wants floats
    assert task.template == 'For the text "{text_a}", what is its score?'
    assert task.recorded() == {"labels": None, "sha256": {"train": task.sha256[0], "dev": task.sha256[1]}}


def test_content_hash_of_a_file_and_of_a_folder(tmp_path):
    import hashlib

    (tmp_path / "f.csv").write_bytes(b"text,label\na,1\n")
    assert data.content_sha256(tmp_path / "f.csv") == hashlib.sha256(b"text,label\na,1\n").hexdigest()
    folder = tmp_path / "ds"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.arrow").write_bytes(b"1")
    (folder / "sub" / "b.json").write_bytes(b"2")
    before = data.content_sha256(folder)
    (folder / "sub" / "b.json").write_bytes(b"3")
    assert data.content_sha256(folder) != before
    (folder / "sub" / "b.json").write_bytes(b"2")
    assert data.content_sha256(folder) == before


def test_glue_labels_come_from_the_task_table():
    # the ids the hub uses: a label's position in TaskSpec.labels (RTE's words, the others' 0 / 1)
    assert get_task("rte").labels == ("entailment", "not_entailment") and get_task("cola").labels == ("0", "1")
    assert get_task("stsb").labels is None and get_task("stsb").num_labels == 1 and get_task("mrpc").num_labels == 2


def test_a_file_task_prompts_a_decoder_with_the_generic_template(tmp_path):
    task = data.file_task(_own(tmp_path, "text,other,label\nThe cat sat.,A cat sat.,yes\nx,y,no\n",
                               "text,other,label\nx,y,no\n", text=["text", "other"]))
    assert task.template == 'For the text pair "{text_a}" and "{text_b}", what is their label?'
    tok = load_tokenizer(model_cfg("tiny_llama"))
    enc = data.encode(data.load_split(task, "train")[:1], tok, task, use_template=True)[0]
    # the tiny models' tokenizer is uncased: the prompt comes back lower-cased, its punctuation spaced
    assert tok.decode(enc["input_ids"], skip_special_tokens=True) == \
        'for the text pair " the cat sat. " and " a cat sat. ", what is their label?'
    assert enc["labels"] == 1   # yes, after no
