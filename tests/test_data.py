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
