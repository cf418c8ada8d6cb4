"""The mask modes' specs (fishtune/modes.py): one ModeSpec and one conf/mask yaml make a mode, and the
library, the config checks, the run, its result file and the reports all follow it.

snip (SNIP's |theta x grad|) is the mode added that way: its scores are checked against a per-sample
loop, and it runs end to end on a tiny model. A throwaway mode registered at test time (a ModeSpec put
into MODES and a yaml in a copy of conf/) shows that nothing else needs an edit."""
import json
import shutil
import subprocess
import sys
import warnings

import pytest
import torch
from omegaconf import OmegaConf

from conftest import CONF, GLUE_FIXTURES, ROOT, loader, run_config, tiny_peft_model
from fishtune.harness.checks import ConfigError
from fishtune.harness.results import load_mask_file, load_results
from fishtune.harness.validate import check_config
from fishtune.masks import build_mask, fish_masks, size_proportional
from fishtune.modes import FISHER, FISHER_MODES, MASK_MODES, MODES, ModeSpec, check_mode
from fishtune.reports import ROWS, results_frame, row_label, row_mode
from results_factory import write_result

QUICK = ["train.max_epochs=1", "fisher.samples=16", "data.train_samples=24", "data.dev_samples=12"]
HEAD = 66  # tiny_bert's classifier on RTE: 32 x 2 + 2


# --- the table and what is derived from it ------------------------------------------------------

def test_the_modes_module_imports_no_torch():
    code = ("import sys, fishtune.modes, fishtune.harness.validate, fishtune.harness.schedules; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)


def test_the_derived_tables_keep_what_they_were_before_the_specs():
    # As the tuples and ROWS were written by hand; a mode added later comes after them.
    assert MASK_MODES[:6] == ("none", "fish", "rand", "rev", "fish_shuffled", "fish_spread")
    assert FISHER_MODES == ("fish", "rev", "fish_shuffled", "fish_spread")
    before = {"none": "original", "fish": "fish", "rand": "rand", "rev": "rev", "adaptive": "adaptive",
              "head_only": "head only"}
    assert list(ROWS)[:6] == list(before) and {m: ROWS[m] for m in before} == before
    assert dict(ROWS) == {name: spec.row for name, spec in MODES.items() if spec.row is not None}
    assert "fish_shuffled" not in ROWS and row_label("fish_shuffled") == "fish_shuffled"
    assert all(row_mode(row_label(m)) == m for m in MODES)


def test_every_mode_has_its_yaml_and_every_yaml_names_a_mode(tmp_path):
    # composed as a run composes them (adaptive_fish.yaml takes its mode from adaptive.yaml)
    files = {f.stem: run_config(tmp_path, f"mask={f.stem}")["mask"]["mode"] for f in (CONF / "mask").glob("*.yaml")}
    assert set(files.values()) <= set(MODES)
    assert set(MODES) <= set(files)  # each mode under its own name (adaptive_fish is adaptive's second)
    # The package's conf/ is the same folder (a link), so the installed command sees the same modes.
    assert (ROOT / "fishtune" / "conf" / "mask").resolve() == (CONF / "mask").resolve()


@pytest.mark.parametrize("fields,message", [
    ({"pick": "largest"}, "read scores, and it has no score"),
    ({"score": FISHER}, "a pick is needed with trains='k'"),
    ({"trains": "all", "pick": "random"}, "a pick is needed with trains='k' and only then"),
    ({"score": FISHER, "pick": "largest", "allocation": "layer"}, "allocation='layer'; choose one of: global, fish, size"),
    ({"score": FISHER, "pick": "top"}, "pick='top'; choose one of: largest, smallest, random"),
])
def test_a_spec_that_contradicts_itself_is_refused_when_written(fields, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        ModeSpec("x", **fields)


def test_the_library_refuses_the_harness_modes_in_one_line():
    assert check_mode("fish") is MODES["fish"]
    with pytest.raises(ValueError, match=r"mask mode 'head_only' is the harness's only \(fishtune.run\); choose "
                                         r"one of: none, fish, rand, rev, fish_shuffled, fish_spread"):
        build_mask({"a": torch.ones(3)}, 1, "head_only")
    with pytest.raises(ValueError, match="unknown mask mode 'best'"):
        check_mode("best")


# --- the harness follows the specs of the shipped modes -----------------------------------------

@pytest.mark.parametrize("mask,original_layers,k", [
    ("none", True, None), ("head_only", True, "head"), ("fish", False, "budget"), ("rand", False, "budget"),
    ("rev", False, "budget"), ("fish_shuffled", False, "budget"), ("fish_spread", False, "budget"),
    ("adaptive", False, None), ("adaptive_fish", False, "budget"),
])
def test_the_plan_of_each_shipped_mode_is_what_it_was(tmp_path, mask, original_layers, k):
    """Layers and budget k as the runner set them by name before the specs: the original run's layers for
    none and head_only, k the original run's trainable count for every budget-matched mode (and adaptive
    starting from fish), the head's for head_only."""
    from fishtune.harness.run import plan

    original = plan(run_config(tmp_path, "mask=none", "budget=2"))
    p = plan(run_config(tmp_path, f"mask={mask}", "budget=2"))
    assert p.layers == (2 if original_layers else 5)
    assert p.k == {None: None, "head": HEAD, "budget": original.head + original.candidates}[k]


def test_a_head_only_run_trains_the_head_and_records_no_score(tmp_path):
    from fishtune.harness.run import run

    cfg = run_config(tmp_path, "task=rte", "mask=head_only", *QUICK)
    result = run(cfg, progress=False)
    assert (result["layers"], result["trainable"], result["fisher_seconds"]) == (1, HEAD, 0.0)
    assert "zero_fisher_filled" not in result
    # the method is inserted (on the original run's layer) and frozen
    assert result["placement"] and not any(t["chosen"] for t in result["placement"])


# --- snip: scores against a per-sample loop -----------------------------------------------------

def _snip_reference(model, tok, spec, n: int) -> dict[str, torch.Tensor]:
    """|theta * sum_n d loss_n / d theta| over the first n of the 12 samples the tests' loaders hold (in
    the same order: the loader neither shuffles nor sorts), one sample at a time (batch size 1: no
    padding), by plain autograd on the loss of fishtune.default_loss."""
    from fishtune.fisher import default_loss

    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    grads = {name: torch.zeros_like(p) for name, p in params.items()}
    model.eval()
    for batch in list(loader(tok, spec, batch_size=1, n=12))[:n]:
        loss = default_loss(model, batch).sum()
        for name, g in zip(params, torch.autograd.grad(loss, list(params.values()), allow_unused=True)):
            if g is not None:
                grads[name] += g
    return {name: (p.detach() * grads[name]).abs() for name, p in params.items()}


def test_snip_scores_equal_a_per_sample_loop_and_leave_the_model_as_it_came():
    model, tok, spec = tiny_peft_model(layers=3)
    model.train()
    flags = [m.training for m in model.modules()]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    # 10 of the 12 samples: the second batch of 8 is cut, as fisher.samples cuts it
    got = MODES["snip"].score.compute(model, loader(tok, spec, batch_size=8, n=12), 10, None)
    assert [m.training for m in model.modules()] == flags and all(p.grad is None for p in model.parameters())
    assert [n for n, p in model.named_parameters() if p.requires_grad] == trainable
    want = _snip_reference(model, tok, spec, 10)
    assert list(got) == list(want)
    for name in want:
        assert got[name].shape == want[name].shape
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6 * float(want[name].abs().max()) + 1e-12)
    # PiSSA's init: no LoRA tensor scores zero by construction (the classifier's bias starts at zero, and so its score)
    assert all(float(s.min()) > 0 for n, s in want.items() if "lora_" in n)


def test_fish_masks_snip_picks_the_largest_reference_scores_head_kept():
    model, tok, spec = tiny_peft_model(layers=3)
    head = [n for n, p in model.named_parameters() if p.requires_grad and "classifier" in n]
    k = HEAD + 100
    masks = fish_masks(model, loader(tok, spec, batch_size=8, n=12), k, mode="snip", num_samples=10)
    assert sum(int(m.sum()) for m in masks.values()) == k and all(masks[n].all() for n in head)
    ref = _snip_reference(model, tok, spec, 10)
    chosen = torch.cat([ref[n][masks[n]] for n in ref if n not in head])
    left = torch.cat([ref[n][~masks[n]] for n in ref if n not in head])
    assert len(chosen) == 100 and float(chosen.min()) >= float(left.max()) * (1 - 1e-4)


# --- snip end to end in the harness -------------------------------------------------------------

def test_snip_runs_end_to_end_budget_matched_and_recorded(tmp_path):
    from fishtune.harness.run import plan, run

    cfg = run_config(tmp_path, "task=rte", "mask=snip", *QUICK)
    check_config(cfg)
    result = run(cfg, progress=False)
    on_disk = json.loads(plan(cfg).path.read_text())
    assert on_disk["mask"] == result["mask"] == "snip" and result["layers"] == 5
    assert result["trainable"] == plan(run_config(tmp_path, "task=rte", "mask=fish")).k  # budget-matched
    # its score has a cost and a zero-fill count, like the Fisher modes (rand records neither)
    assert on_disk["fisher_seconds"] > 0 and on_disk["zero_fisher_filled"] == 0
    masks, seconds = load_mask_file(plan(cfg).path.with_suffix(".mask.pt"))
    assert seconds == on_disk["fisher_seconds"] and sum(int(m.sum()) for m in masks.values()) == result["trainable"] - HEAD
    [read] = load_results(tmp_path)
    assert results_frame([read])["row"].tolist() == ["snip"]


def test_snip_with_a_zero_init_warns_and_records_every_entry_as_filled(tmp_path):
    """peft's default LoRA init: B = 0, so theta_B = 0 and dL/dA = 0: every |theta x grad| is zero, and every
    candidate entry the budget asks for is chosen by position."""
    from fishtune import ZeroFisherWarning
    from fishtune.harness.run import run

    cfg = run_config(tmp_path, "task=rte", "mask=snip", "peft.init=default", *QUICK)
    with pytest.warns(ZeroFisherWarning, match=r"only 0 of 960 have a non-zero \|theta x grad\| score"):
        result = run(cfg, progress=False)
    assert result["zero_fisher_filled"] == result["trainable"] - HEAD > 0


@pytest.mark.parametrize("overrides,message", [
    (["fisher.samples=0"], "fisher.samples=0: must be an integer >= 1 (mask=snip ranks entries by a |theta x grad| "),
    (["mask.k=0"], "mask.k=0: must be an integer >= 1"),
    (["mask.mode=snipp"], "unknown mask mode 'snipp'; choose one of: none, fish, rand, rev, fish_shuffled, "
                          "fish_spread, adaptive, head_only, snip"),
])
def test_snip_is_validated(tmp_path, overrides, message):
    with pytest.raises(ConfigError) as e:
        check_config(run_config(tmp_path, "mask=snip", *overrides))
    assert str(e.value).startswith(message)


def test_snip_rows_show_in_the_study_views(tmp_path):
    from fishtune.reports.mask_report import mask_table
    from fishtune.reports.study import report

    labels = [0, 1] * 10
    for mask, seed in [(m, s) for m in ("none", "fish", "snip") for s in (1, 2, 3)]:
        preds = [y if i % (3 + seed) else 1 - y for i, y in enumerate(labels)]
        write_result(tmp_path / "runs", task="sst2", mask=mask, seed=seed, score=60.0 + seed + 5 * (mask == "snip"),
                     dev_labels=labels, dev_predictions=preds)
    out = report(tmp_path / "runs", tmp_path / "out", n_resamples=20, verbose=False)
    assert out["table"]["row"].tolist() == ["baseline", "original", "fish", "snip"]  # in MODES' order
    snip = out["table"][out["table"]["row"] == "snip"].iloc[0]
    assert (snip["SST-2"], snip["SST-2_n"]) == (pytest.approx(67.0), 3)
    assert (tmp_path / "out" / "figure.png").stat().st_size > 0   # a colour for every row
    assert mask_table(load_results(tmp_path / "runs"))["row"].tolist() == ["original", "fish", "snip"]


# --- a mode added as one ModeSpec and one yaml, nothing else ------------------------------------

def test_a_mode_added_as_one_spec_and_one_yaml_runs_everywhere(tmp_path, monkeypatch):
    """rev_spread (each tensor's share of k by size, the smallest Fisher scores within it) exists only
    here: its spec put into MODES and its yaml into a copy of conf/. The library, the checks, the run,
    its result file and the report rows take it."""
    from hydra import compose, initialize_config_dir

    from fishtune.harness.run import plan, run

    spec = ModeSpec("rev_spread", FISHER, pick="smallest", allocation="size", row="rev spread")
    monkeypatch.setitem(MODES, spec.name, spec)
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    (conf / "mask" / "rev_spread.yaml").write_text("mode: rev_spread\nk: null\nbudget_rank: null\n")
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = OmegaConf.to_container(compose("config", overrides=[
            f"data.glue_dir={GLUE_FIXTURES}", f"paths.runs_dir={tmp_path / 'runs'}", "model=tiny_bert", "task=rte",
            "mask=rev_spread", *QUICK]), resolve=True)
    check_config(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no zero-score policy: nothing to warn of
        result = run(cfg, progress=False)
    assert result["mask"] == "rev_spread" and result["layers"] == 5
    assert result["fisher_seconds"] > 0 and result["zero_fisher_filled"] == 0
    # the placement: each tensor's share of k by size; within it the smallest scores
    chosen = [t["chosen"] for t in result["placement"]]
    assert chosen == size_proportional([t["entries"] for t in result["placement"]], result["trainable"] - HEAD)
    assert result["trainable"] == plan(run_config(tmp_path, "task=rte", "mask=fish")).k
    assert ROWS["rev_spread"] == "rev spread" and check_mode("rev_spread") is spec
    assert results_frame(load_results(tmp_path / "runs"))["row"].tolist() == ["rev spread"]
    # and the library's build_mask: within each tensor the smallest scores
    scores = {"a": torch.tensor([3.0, 1.0, 2.0, 0.5]), "b": torch.tensor([5.0, 4.0])}
    assert {n: m.tolist() for n, m in build_mask(scores, 3, "rev_spread").items()} == \
        {"a": [False, True, False, True], "b": [False, True]}
