"""The dry run (benchmarks/dryrun.py) on the tiny configs: every method each family takes goes through the
harness's path, and the counts it reports from the built models equal count_on_meta's (the meta device,
an independent build); the committed results/dryrun.csv agrees with the paper's printed ratios."""
import subprocess
import sys

import pandas as pd
import pytest
import torch

from conftest import ROOT, model_cfg

sys.path.insert(0, str(ROOT / "benchmarks"))
import dryrun  # noqa: E402

from fishtune.harness.methods import METHODS, SUPPORT_MATRIX, count_on_meta
from fishtune.harness.models import arch_config, load_tokenizer, model_config
from fishtune.harness.schedules import layer_schedule, original_layers
from fishtune.reports.ratios import TOLERANCE

TINY = ("tiny_bert", "tiny_modernbert", "tiny_llama")
SMALL = ["--fisher-samples", "2", "--batch", "2", "--steps", "1", "--eval", "2"]


def meta_counts(conf, method: str, family: str) -> tuple[int, int, int]:
    """(the budget-1 original run's trainable count, the fish run's layers and total) on the meta device."""
    peft, depth = METHODS[method].defaults, conf.num_hidden_layers
    original = count_on_meta(conf, peft, original_layers(peft, 1, depth), family)
    fish_layers = layer_schedule(peft, depth)[1]
    return original["trainable"], fish_layers, count_on_meta(conf, peft, fish_layers, family)["total"]


@pytest.fixture(scope="module")
def tiny_rows(tmp_path_factory):
    out = tmp_path_factory.mktemp("dryrun") / "dryrun.csv"
    assert dryrun.main(["--models", ",".join(TINY), "--in-process", "--out", str(out), *SMALL]) == 0
    return pd.read_csv(out)


def test_every_combination_runs_with_its_columns(tiny_rows):
    assert list(tiny_rows.columns) == dryrun.COLUMNS
    expected = {(m, method) for m in TINY for method in SUPPORT_MATRIX[model_cfg(m)["family"]]}
    assert set(zip(tiny_rows.model, tiny_rows.method)) == expected and len(tiny_rows) == len(expected)
    assert (tiny_rows.status == "ok").all(), tiny_rows[tiny_rows.status != "ok"][["model", "method", "status"]]
    ok = tiny_rows
    assert (ok.max_length == 384).all() and (ok.task == "rte").all()
    for key in ("seconds_per_step", "fisher_seconds", "peak_rss_mb", "weights_mb", "act_mb_per_sample", "gpu_est_mb"):
        assert (ok[key] > 0).all(), key
    # The estimate is the sum of its parts (MB rounding aside): weights + state + 32 samples' activations.
    assert (ok.gpu_est_mb >= ok.weights_mb + ok.train_state_mb - 1).all()


def test_counts_equal_count_on_meta(tiny_rows):
    for r in tiny_rows.itertuples():
        cfg = model_cfg(r.model)
        conf = model_config(cfg, 2, load_tokenizer(cfg))
        trainable, layers, total = meta_counts(conf, r.method, cfg["family"])
        assert (r.trainable, r.k, r.layers, r.total) == (trainable, trainable, layers, total), (r.model, r.method)
        assert r.ratio_pct == pytest.approx(100 * trainable / total, abs=1e-6)


def test_a_combination_in_its_own_process(tmp_path):
    """The default path: each combination in a fresh interpreter, its row written back."""
    out = tmp_path / "dryrun.csv"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "dryrun.py"), "--models", "tiny_llama", "--methods",
                           "lora", "--out", str(out), *SMALL], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = pd.read_csv(out).itertuples()
    assert (row.model, row.method, row.status) == ("tiny_llama", "lora", "ok")
    assert row.peak_rss_mb > 100   # the interpreter with torch loaded, at least


class Attention(torch.nn.Module):
    """Trainable Linear a (4 -> 16), GELU, one attention-like product over `prefix` virtual keys and the
    sequence, a frozen Linear b: what each saves for backward is counted by hand in the test below."""

    def __init__(self, prefix: int = 0):
        super().__init__()
        self.a, self.b = torch.nn.Linear(4, 16), torch.nn.Linear(16, 2)
        self.b.requires_grad_(False)
        self.prefix = torch.nn.Parameter(torch.ones(1, prefix, 16))

    def forward(self, input_ids, attention_mask):
        g = torch.nn.functional.gelu(self.a(torch.nn.functional.one_hot(input_ids, 4).float()))
        keys = torch.cat([self.prefix, g], dim=1)
        s = torch.softmax(g @ keys.transpose(-1, -2), dim=-1)
        return type("Out", (), {"logits": self.b(s @ keys)[:, 0]})


@pytest.mark.parametrize("prefix", [0, 3])
def test_saved_activation_bytes_counts_what_backward_keeps(prefix):
    """a saves its input x (L x 4); GELU its input h (L x 16); g @ keys^T saves g (L x 16) and keys
    ((L + P) x 16, a new storage: cat copies; keys^T is a view of it); softmax its output s
    (L x (L + P), the quadratic part); s @ keys saves s and keys again (counted once); the frozen b saves no
    input. fp32, one sample; no parameter is counted."""
    L = 10
    batch = {"input_ids": torch.zeros(1, L, dtype=torch.long), "attention_mask": torch.ones(1, L),
             "labels": torch.zeros(1, dtype=torch.long)}
    total, quadratic = dryrun.saved_activation_bytes(Attention(prefix), batch, "cpu", prefix=prefix)
    assert (total, quadratic) == (4 * (L * 4 + L * 16 + L * 16 + (L + prefix) * 16 + L * (L + prefix)),
                                  4 * L * (L + prefix))


def test_gpu_estimate_drops_the_quadratic_part_unless_eager():
    assert dryrun.gpu_estimate(100, 10, 7, 3, "sdpa", 32) == 100 + 10 + 32 * 4
    assert dryrun.gpu_estimate(100, 10, 7, 3, "eager", 32) == 100 + 10 + 32 * 7
    assert dryrun.gpu_estimate(100, 10, 7, 3, "eager", 32, scale=3) == 100 + 10 + 32 * (4 * 3 + 3 * 9)
    assert dryrun.gpu_estimate(100, 10, 7, 3, "sdpa", 32, scale=3) == 100 + 10 + 32 * 4 * 3


@pytest.mark.parametrize("argv, word", [(["--models", "nope"], "nope"), (["--methods", "lorax"], "lorax"),
                                        (["--batch", "0"], "--batch"), (["--task", "mnli"], "mnli")])
def test_bad_input_is_one_line_and_exit_2(argv, word, capsys):
    assert dryrun.main([*argv, "--in-process"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and word in err


def test_committed_csv_matches_the_paper_and_the_meta_counts():
    """results/dryrun.csv: the paper's models, the counts of its rows that ran equal count_on_meta's from the
    architecture configs, and the budget ratios lie within the ratios' tolerance of the printed ones."""
    table = pd.read_csv(ROOT / "results" / "dryrun.csv")
    assert list(table.columns) == dryrun.COLUMNS
    assert set(table.model) == set(dryrun.PAPER_MODELS)
    ran = table[table.status == "ok"]
    assert len(ran)
    for r in ran.itertuples():
        cfg = model_cfg(r.model)
        trainable, layers, total = meta_counts(arch_config(cfg), r.method, cfg["family"])
        assert (r.trainable, r.layers, r.total) == (trainable, layers, total), (r.model, r.method)
    # Within the tolerance, or within the printed ratio's own rounding (4 decimals: LLaMA's .0007 is .00066).
    printed = ran[ran.paper_ratio_pct.notna()]
    off = (printed.budget_ratio_pct - printed.paper_ratio_pct).abs()
    assert len(printed) and (off <= (TOLERANCE * printed.paper_ratio_pct).clip(lower=0.00005)).all()
