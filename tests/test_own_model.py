"""Your own checkpoint (docs/OWN.md, "Your own model"): `model.path=DIR` trains that model, never another.

One tiny random checkpoint per family (RoBERTa, DistilBERT, DeBERTa-v2, Qwen2, Mistral), written with
transformers' own save_pretrained, is trained through `model.path` with a fish and a rand mask, and its
result file must record that model's own parameter count: the saved model's sum of p.numel() plus the
method's r x (in + out) per wrapped module, counted here from the saved model's modules, not by the code
under test. A checkpoint that lacks a layer weight, a head the family cannot take, a model_type no
family knows and a path with the embedded MiniLM each stop in one line with exit code 2, before training.
"""
from __future__ import annotations

import json
import sys

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from conftest import GLUE_FIXTURES, model_cfg, run_config, run_cli
from fishtune.families import FAMILIES
from fishtune.harness.cli import main as fishtune_main
from fishtune.harness.checks import ConfigError
from fishtune.harness.models import embedded_path, load_model
from fishtune.harness.run import run
from fishtune.harness.validate import check_config

OWN = ["roberta", "distilbert", "deberta_v2", "qwen2", "mistral"]
QUICK = ["task=rte", "train.max_epochs=1", "fisher.samples=8", "data.train_samples=16", "data.dev_samples=8",
         "train.batch_size=8", "train.precision=fp32"]


def save_checkpoint(folder, family: str, cls: str | None = None) -> torch.nn.Module:
    """A tiny random model of `family` (its tiny yaml's architecture) and the embedded MiniLM's tokenizer,
    saved as a user would save theirs."""
    tok = transformers.AutoTokenizer.from_pretrained(embedded_path())
    conf = getattr(transformers, FAMILIES[family].tiny_config)(
        vocab_size=len(tok), pad_token_id=tok.pad_token_id, num_labels=2, **model_cfg(f"tiny_{family}")["tiny"])
    torch.manual_seed(1)
    cls = cls or transformers.models.auto.modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES[conf.model_type]
    model = getattr(transformers, cls)(conf)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """family -> (folder, the saved model): one per family, shared by the tests of this file."""
    root = tmp_path_factory.mktemp("own")
    return {f: (root / f"tiny-{f}", save_checkpoint(root / f"tiny-{f}", f)) for f in OWN}


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    """cli(*overrides) -> (exit code, stderr lines) of `python -m fishtune.run` on the GLUE fixtures; training
    fails the test."""
    import fishtune.harness.train

    def refuse(*a, **k):
        raise AssertionError("training started although the input was bad")
    monkeypatch.setattr(fishtune.harness.train, "train", refuse)

    def call(*overrides: str) -> tuple[int, list[str]]:
        argv = [f"data.glue_dir={GLUE_FIXTURES}", f"paths.runs_dir={tmp_path / 'runs'}", *QUICK, *overrides]
        return run_cli(monkeypatch, capsys, argv)
    return call


def lora_entries(model: torch.nn.Module, family: str, layers: int, rank: int = 1) -> int:
    """LoRA's r x (in + out) over the family's Table 6 targets in the bottom `layers` layers, read off the
    saved model's own Linear modules."""
    fam = FAMILIES[family]
    return sum(rank * (m.in_features + m.out_features) for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and (hit := fam.layer_regex.search(n)) and int(hit.group(1)) < layers
               and n.rsplit(".", 1)[-1] in fam.lora_targets)


@pytest.mark.parametrize("mask", ["fish", "rand"])
@pytest.mark.parametrize("family", OWN)
def test_own_checkpoint_trains_with_its_own_counts(tmp_path, checkpoints, family, mask):
    folder, saved = checkpoints[family]
    result = run(run_config(tmp_path, "model=custom", f"model.path={folder}", f"mask={mask}", *QUICK), progress=False)
    assert result["model"] == f"tiny_{family}" and result["run_id"].startswith(f"tiny_{family}-rte-lora-L5-r1-")
    assert result["config"]["model"]["family"] == family and result["config"]["model"]["path"] == str(folder)
    head = sum(p.numel() for name in FAMILIES[family].head_modules for p in getattr(saved, name).parameters())
    assert result["head_entries"] == head
    # the saved model plus LoRA r1 on 5 layers (peft's frozen copy of the head is no part of the model)
    assert result["total"] == sum(p.numel() for p in saved.parameters()) + lora_entries(saved, family, 5)
    # FISH keeps the budget of the original run: LoRA r1 on 1 layer, plus the head
    assert result["trainable"] == head + lora_entries(saved, family, 1)
    assert len(result["history"]) == 1 and result["best"]["score"] is not None


@pytest.mark.parametrize("family", OWN)
def test_the_body_loads_as_saved_and_the_head_is_new(checkpoints, family):
    folder, saved = checkpoints[family]
    cfg = {"name": "x", "family": family, "source": "hub", "path": str(folder), "head": "pooler"}
    torch.manual_seed(7)
    loaded = load_model(cfg, 2).state_dict()
    ours = saved.state_dict()
    head = FAMILIES[family].head_modules
    body = [k for k in ours if k.split(".")[0] not in head]
    assert body and all(torch.equal(loaded[k], ours[k]) for k in body)
    # the head is initialised under the run's seed, not taken from the checkpoint
    weights = [k for k in ours if k.split(".")[0] in head and k.endswith("weight")]
    assert weights and all(not torch.equal(loaded[k], ours[k]) for k in weights)


def test_bert_mean_head_loads_the_encoder_and_a_missing_pooler_is_refused(tmp_path):
    """A BERT checkpoint saved without a pooler (BertForMaskedLM): head=mean loads every encoder weight;
    head=pooler would train a random pooler, and is refused."""
    saved = save_checkpoint(tmp_path / "mlm", "bert", "BertForMaskedLM").state_dict()
    cfg = {"name": "x", "family": "bert", "source": "hub", "path": str(tmp_path / "mlm"), "head": "mean"}
    loaded = load_model(cfg, 2).state_dict()
    encoder = [k for k in loaded if k.startswith("bert.")]
    assert len(encoder) > 50 and all(torch.equal(loaded[k], saved[k]) for k in encoder)
    with pytest.raises(ConfigError, match=r"2 weight\(s\) of the bert model are not in the checkpoint .*: "
                                          r"bert\.pooler\.dense\.bias, bert\.pooler\.dense\.weight \(a checkpoint "
                                          r"without BERT's pooler: pass model.head=mean or cls\)$"):
        load_model(dict(cfg, head="pooler"), 2)


def test_a_checkpoint_missing_a_layer_weight_stops_before_training(tmp_path, checkpoints, cli):
    import shutil

    folder = tmp_path / "broken"
    shutil.copytree(checkpoints["roberta"][0], folder)
    weights = load_file(folder / "model.safetensors")
    gone = "roberta.encoder.layer.3.attention.self.query.weight"
    del weights[gone]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    code, lines = cli(f"model.path={folder}", "mask=fish")
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"fishtune: error: model.path='{folder}': 1 weight(s) of the roberta model are not in "
                               f"the checkpoint") and lines[0].endswith(gone), lines


def test_a_head_the_family_cannot_take_is_refused_before_loading(checkpoints, cli, monkeypatch):
    import fishtune.harness.models

    monkeypatch.setattr(fishtune.harness.models, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    code, lines = cli(f"model.path={checkpoints['distilbert'][0]}", "model.head=mean")
    assert (code, lines) == (2, ["fishtune: error: model.head='mean' is not available for the distilbert family; "
                                 "choose one of: pooler"])


def test_an_unknown_model_type_names_the_supported_ones_and_the_docs(tmp_path, cli):
    (tmp_path / "gpt").mkdir()
    (tmp_path / "gpt" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    code, lines = cli(f"model.path={tmp_path / 'gpt'}")
    assert (code, lines) == (2, [f"fishtune: error: model.path='{tmp_path / 'gpt'}' holds a 'gpt2' model, which no "
                                 f"model family of fishtune knows; supported model_types: bert, modernbert, llama, "
                                 f"roberta, distilbert, deberta-v2, mistral, qwen2 (to add one: docs/OWN.md, "
                                 f"\"Your own model\")"])


def test_a_family_that_is_not_the_checkpoints_is_refused(checkpoints, cli):
    """The issue's case: model=bert_base with another architecture's folder would load none of its weights."""
    code, lines = cli("model=bert_base", f"model.path={checkpoints['roberta'][0]}")
    assert code == 2 and lines == [f"fishtune: error: model.family='bert', but model.path='{checkpoints['roberta'][0]}' "
                                   f"holds a 'roberta' model (family roberta); pass model.family=auto or leave it out"]


def test_a_path_with_the_embedded_minilm_never_trains_minilm(tmp_path, checkpoints, monkeypatch, capsys):
    folder = checkpoints["qwen2"][0]
    # As a config (the Python API, a sweep's yaml): refused in one line.
    with pytest.raises(ConfigError, match=r"^model.path='.*' is not read by model 'minilm' \(source embedded: its "
                                          r"weights come from the package\); to train your checkpoint pass "
                                          r"model=custom model.path="):
        check_config(run_config(tmp_path, "model=minilm", f"model.path={folder}"))
    # On the command line, model.path alone chooses model=custom: the checkpoint trains, under its own name.
    from hydra.core.global_hydra import GlobalHydra

    monkeypatch.setattr(sys, "argv", ["fishtune.run", f"model.path={folder}", "mask=rand", *QUICK,
                                      f"data.glue_dir={GLUE_FIXTURES}", f"paths.runs_dir={tmp_path / 'runs'}"])
    GlobalHydra.instance().clear()
    fishtune_main()
    [path] = (tmp_path / "runs").glob("*.json")
    result = json.loads(path.read_text())
    assert path.name.startswith("tiny_qwen2-rte-lora-") and result["config"]["model"]["family"] == "qwen2"
    assert result["total"] == sum(p.numel() for p in checkpoints["qwen2"][1].parameters()) + \
        lora_entries(checkpoints["qwen2"][1], "qwen2", 5)
    assert "minilm" not in json.dumps(result["config"]["model"])


def test_every_family_maps_its_model_type_and_refuses_only_known_methods():
    from fishtune.families import MODEL_TYPES
    from fishtune.harness.methods import METHODS, SUPPORT_MATRIX

    assert {MODEL_TYPES[f.model_type] for f in FAMILIES.values()} == set(FAMILIES)
    for name, fam in FAMILIES.items():
        assert set(fam.refused) <= set(METHODS), name
        assert SUPPORT_MATRIX[name] == tuple(m for m in METHODS if m not in fam.refused)
        # the tiny yaml of every family exists: tests/test_methods.py runs every method it takes on it
        assert model_cfg(f"tiny_{name}")["family"] == name
