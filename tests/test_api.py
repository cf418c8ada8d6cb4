"""The public library API (`import fishtune`) on models built with peft and adapters directly (or with
trainable parameters chosen by hand), as a user's own script builds them: masks with exactly k trainable
entries, and training through MaskedOptimizer or transformers.Trainer + FishMaskCallback that changes
exactly the chosen entries.
Every check compares with the tensors as they were before training, not with the library's view."""
import ast
import itertools
import subprocess
import sys
import warnings
from functools import lru_cache

import pytest
import torch

import fishtune
from conftest import ROOT, loader, model_cfg
from fishtune.harness.tasks import get_task

SST2 = get_task("sst2")


@lru_cache(maxsize=1)
def tokenizer():
    from fishtune.harness.models import load_tokenizer

    return load_tokenizer(model_cfg("tiny_bert"))


def base(seed=0):
    from transformers import BertConfig, BertForSequenceClassification

    tok = tokenizer()
    torch.manual_seed(seed)
    conf = BertConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, num_labels=2, **model_cfg("tiny_bert")["tiny"])
    return BertForSequenceClassification(conf)


def peft_lora(layers=(0, 1, 2), init="pissa", seed=0):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(base(seed), LoraConfig(task_type="SEQ_CLS", r=2, lora_alpha=4, target_modules=["query", "value"],
                                                 layers_to_transform=list(layers), init_lora_weights=init))


def peft_ia3(seed=0):
    from peft import IA3Config, get_peft_model

    return get_peft_model(base(seed), IA3Config(task_type="SEQ_CLS", target_modules=["key", "value", "intermediate.dense"],
                                                feedforward_modules=["intermediate.dense"]))


def houlsby(seed=0):
    import adapters
    from adapters import DoubleSeqBnConfig

    model = base(seed)
    adapters.init(model)
    model.add_adapter("fish", config=DoubleSeqBnConfig(reduction_factor=4, leave_out=[3, 4, 5]))
    model.train_adapter("fish")  # the adapter and the classifier train, the rest is frozen
    return model


def own_choice(seed=0):
    """No PEFT library: the user trains the biases of the bottom 3 layers and the classifier (BitFit-like)."""
    model = base(seed)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("classifier.") or
                         (name.endswith(".bias") and any(f"layer.{i}." in name for i in range(3))))
    return model


MODELS = {"peft_lora": peft_lora, "peft_ia3": peft_ia3, "adapters_houlsby": houlsby, "own_choice": own_choice}


def batches(n=None, batch_size=8):
    return list(loader(tokenizer(), SST2, batch_size=batch_size, n=n, shuffle=True, seed=0))


def masked_model(kind):
    """(model, masks, k): a fish mask keeping the head and a quarter of the method's entries."""
    model = MODELS[kind]()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    head = sum(p.numel() for n, p in trainable.items() if "classifier" in n.split("."))
    k = head + (sum(p.numel() for p in trainable.values()) - head) // 4
    masks = fishtune.fish_masks(model, batches(), k, num_samples=16)
    assert fishtune.apply_masks(model, masks) == k
    return model, masks, k


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_exactly_chosen_changed(model, before, masks, k):
    changed = 0
    for n, p in model.named_parameters():
        moved = p.detach() != before[n]
        if n in masks:
            assert torch.equal(p.detach()[~masks[n]], before[n][~masks[n]]), f"{n}: a masked-out entry moved"
            assert moved[masks[n]].all(), f"{n}: {int((~moved[masks[n]]).sum())} chosen entries did not train"
        else:
            assert not moved.any(), f"{n}: a parameter outside the method moved"
        changed += int(moved.sum())
    assert changed == k


# --- masks -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", list(MODELS))
def test_fish_masks_choose_exactly_k_with_the_head_inside(kind):
    model = MODELS[kind]()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    head = {n for n in trainable if "classifier" in n.split(".")}
    head_size = sum(trainable[n].numel() for n in head)
    assert head and head_size == 32 * 2 + 2
    k = head_size + 50
    masks = fishtune.fish_masks(model, batches(), k, num_samples=16)
    assert list(masks) == list(trainable)  # one per trainable parameter, in model order
    assert all(m.dtype == torch.bool and m.shape == trainable[n].shape for n, m in masks.items())
    assert sum(int(m.sum()) for m in masks.values()) == k
    assert all(masks[n].all() for n in head)
    # the 50 chosen are the 50 largest Fisher scores among the method's entries (the head not ranked)
    for n in head:
        trainable[n].requires_grad_(False)
    fisher = fishtune.empirical_fisher(model, batches(), 16)
    scores = torch.cat([fisher[n].flatten() for n in fisher])
    chosen = torch.cat([masks[n].flatten() for n in fisher])
    assert int(chosen.sum()) == 50 and scores[chosen].min() >= scores[~chosen].max()


@pytest.mark.parametrize("mode", ["fish_shuffled", "fish_spread"])
def test_the_mechanism_modes_choose_exactly_k_with_the_head_inside(mode):
    model = peft_lora()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    head = [n for n in trainable if "classifier" in n.split(".")]
    k = sum(trainable[n].numel() for n in head) + 50
    fish = fishtune.fish_masks(model, batches(), k, num_samples=16)
    masks = fishtune.fish_masks(model, batches(), k, mode=mode, num_samples=16, seed=1)
    assert sum(int(m.sum()) for m in masks.values()) == k and all(masks[n].all() for n in head)
    method = [n for n in trainable if n not in head]
    if mode == "fish_shuffled":  # fish's count in every tensor of the method
        assert [int(masks[n].sum()) for n in method] == [int(fish[n].sum()) for n in method]
    else:  # each tensor of the method its share of the 50 by size
        sizes = [trainable[n].numel() for n in method]
        assert all(abs(int(masks[n].sum()) - 50 * z / sum(sizes)) < 1 for n, z in zip(method, sizes))


def test_fish_masks_modes_head_options_and_budget_errors():
    model = peft_lora()
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    everything = fishtune.fish_masks(model, None, None, mode="none")
    assert all(m.all() for m in everything.values()) and sum(int(m.sum()) for m in everything.values()) == total
    rand = [fishtune.fish_masks(model, None, 100, mode="rand", seed=s) for s in (1, 1, 2)]
    assert all(torch.equal(rand[0][n], rand[1][n]) for n in rand[0])
    assert any(not torch.equal(rand[0][n], rand[2][n]) for n in rand[0])
    # the head by names, or by a predicate: here the classifier's bias only
    bias = [n for n, p in model.named_parameters() if p.requires_grad and n.endswith("classifier.modules_to_save.default.bias")]
    for head in (bias, lambda n: n in bias):
        masks = fishtune.fish_masks(model, batches(), 10, num_samples=8, head=head)
        assert masks[bias[0]].all() and sum(int(m.sum()) for m in masks.values()) == 10
    with pytest.raises(ValueError, match="between 66 and"):
        fishtune.fish_masks(model, batches(), 65)
    with pytest.raises(ValueError, match="impossible"):
        fishtune.fish_masks(model, batches(), total + 1, mode="rand")
    with pytest.raises(ValueError, match="unknown mask mode"):
        fishtune.fish_masks(model, batches(), 100, mode="best")


class PlainClassifier(torch.nn.Module):
    """No transformers, no PEFT library: embeddings, a dropout and two linear layers, called as fish_masks
    calls a model (`model(**inputs).logits`)."""

    def __init__(self, vocab: int, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = torch.nn.Embedding(vocab, 16)
        self.dropout = torch.nn.Dropout(0.5)
        self.hidden = torch.nn.Linear(16, 16)
        self.classifier = torch.nn.Linear(16, 2)
        self.embed.requires_grad_(False)

    def forward(self, input_ids, attention_mask=None, **_):
        from types import SimpleNamespace

        mask = attention_mask.unsqueeze(-1).float()
        x = (self.embed(input_ids) * mask).sum(1) / mask.sum(1)
        return SimpleNamespace(logits=self.classifier(torch.relu(self.hidden(self.dropout(x)))))


def _module_state(model):
    """Everything fish_masks could leave changed: each module's training flag and hooks, each
    parameter's requires_grad and .grad."""
    modules = [(name, m.training, len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
                len(getattr(m, "_backward_pre_hooks", {}))) for name, m in model.named_modules()]
    params = [(name, p.requires_grad, p.grad is None, len(getattr(p, "_backward_hooks", None) or {}))
              for name, p in model.named_parameters()]
    return modules, params


@pytest.mark.parametrize("kind", ["peft_lora", "adapters_houlsby", "plain"])
@pytest.mark.parametrize("mode", ["fish", "rand"])
def test_fish_masks_leaves_every_module_as_it_found_it(kind, mode):
    """The model comes back with every module's flag as it was, not only the top one's: a PeftModel
    reports training=True while its inner modules may be in eval (a model from from_pretrained), and
    setting the top flag back switched every dropout on. Here the flags are a mixed pattern, so any
    module put back wrong shows."""
    model = PlainClassifier(len(tokenizer())) if kind == "plain" else MODELS[kind]()
    for i, m in enumerate(model.modules()):
        m.training = i % 3 != 1
    if kind == "peft_lora":  # and the case of the issue: the wrapper in train mode, its dropouts in eval
        model.eval()
        model.training = True
    before = _module_state(model)
    dropouts_on = [m.training for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    head = sum(p.numel() for n, p in trainable.items() if "classifier" in n.split("."))
    fishtune.fish_masks(model, batches(), head + 20, mode=mode, num_samples=16)
    assert _module_state(model) == before
    assert [m.training for m in model.modules() if isinstance(m, torch.nn.Dropout)] == dropouts_on
    if kind == "peft_lora":
        assert model.training and not any(dropouts_on)


def _lora_with_zero_a():
    """peft's default LoRA init (B = 0): every lora_A's gradient, and so its Fisher, is exactly zero,
    and every lora_B's is not (A is random)."""
    model = peft_lora(init=True)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    head = sum(p.numel() for n, p in trainable.items() if "classifier" in n.split("."))
    lora_a = {n: p.numel() for n, p in trainable.items() if "lora_A" in n}
    lora_b = {n: p.numel() for n, p in trainable.items() if "lora_B" in n}
    return model, head, lora_a, lora_b


def test_zero_fisher_fill_is_warned_once_with_its_counts_and_tensors():
    model, head, lora_a, lora_b = _lora_with_zero_a()
    b_entries, a_entries = sum(lora_b.values()), sum(lora_a.values())
    # k takes every lora_B entry and 10 more: those 10 can only be zero-score lora_A entries, by position
    # the first ones of the first lora_A tensor in model order.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        masks = fishtune.fish_masks(model, batches(), head + b_entries + 10, num_samples=16)
    zero = [w.message for w in caught if issubclass(w.category, fishtune.ZeroFisherWarning)]
    assert len(zero) == 1 and issubclass(fishtune.ZeroFisherWarning, UserWarning)
    [w] = zero
    first_a = next(iter(lora_a))
    assert (w.needed, w.nonzero, w.candidates, w.filled) == (b_entries + 10, b_entries, a_entries + b_entries, 10)
    assert w.tensors == {first_a: 10}
    assert masks[first_a].flatten()[:10].all() and int(masks[first_a].sum()) == 10
    assert f"k asks for {b_entries + 10} candidate entries but only {b_entries} of {a_entries + b_entries}" in str(w)
    assert first_a in str(w)
    # fish_spread gives each tensor its share by size: every lora_A's share is zero-score entries.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        spread = fishtune.fish_masks(model, batches(), head + 40, mode="fish_spread", num_samples=16)
    [w] = [w.message for w in caught if issubclass(w.category, fishtune.ZeroFisherWarning)]
    assert w.tensors == {n: int(spread[n].sum()) for n in lora_a if spread[n].any()}
    assert w.filled == sum(int(spread[n].sum()) for n in lora_a) > 0


def test_no_zero_fisher_warning_within_the_non_zero_scores_and_it_can_be_an_error():
    model, head, lora_a, lora_b = _lora_with_zero_a()
    with warnings.catch_warnings():
        warnings.simplefilter("error", fishtune.ZeroFisherWarning)
        fishtune.fish_masks(model, batches(), head + sum(lora_b.values()), num_samples=16)  # no fill: no error
        with pytest.raises(fishtune.ZeroFisherWarning, match="1 zero-score entries were chosen by position"):
            fishtune.fish_masks(model, batches(), head + sum(lora_b.values()) + 1, num_samples=16)
        fishtune.fish_masks(model, None, head + sum(lora_b.values()) + 1, mode="rand")  # reads no Fisher


def test_original_k_counts_the_original_configuration_on_the_meta_device():
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    config = base().config
    k = fishtune.original_k(lambda: get_peft_model(AutoModelForSequenceClassification.from_config(config),
                                                   LoraConfig(task_type="SEQ_CLS", r=2, lora_alpha=4,
                                                              target_modules=["query", "value"], layers_to_transform=[0],
                                                              init_lora_weights="pissa")))
    real = peft_lora(layers=[0])
    assert k == fishtune.trainable_entries(real) == sum(p.numel() for p in real.parameters() if p.requires_grad)
    assert k == 2 * 2 * (32 + 32) + 66  # LoRA r2 on Q and V of one layer, plus the head


def test_masks_save_and_load_beside_a_peft_adapter(tmp_path):
    from peft import PeftModel

    model, masks, k = masked_model("peft_lora")
    model.save_pretrained(tmp_path)
    fishtune.save_masks(masks, tmp_path, mode="fish", num_samples=16)
    assert (tmp_path / "adapter_model.safetensors").exists() and (tmp_path / "fish_mask.safetensors").exists()
    loaded = fishtune.load_masks(tmp_path)
    assert loaded.keys() == masks.keys() and all(torch.equal(loaded[n], masks[n]) for n in masks)
    from safetensors import safe_open
    with safe_open(str(tmp_path / "fish_mask.safetensors"), "pt") as f:
        assert f.metadata()["chosen"] == str(k) and f.metadata()["mode"] == "fish"
    # the shared adapter loads onto a fresh base with the same parameter names: the mask applies as it is
    again = PeftModel.from_pretrained(base(seed=1), tmp_path, is_trainable=True)
    assert fishtune.apply_masks(again, loaded) == k


# --- training --------------------------------------------------------------------------------------

OPTIMIZERS = {
    "adamw": lambda params: torch.optim.AdamW(params, lr=1e-2, weight_decay=0.01),
    "sgd_momentum": lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=0.01),
    "adam": lambda params: torch.optim.Adam(params, lr=1e-2, weight_decay=0.01),  # L2 decay: a gradient on every entry
}


def plain_steps(model, opt, data, steps=6):
    model.train()
    for batch in itertools.islice(itertools.cycle(data), steps):
        logits = model(**{key: v for key, v in batch.items() if key != "labels"}).logits
        torch.nn.functional.cross_entropy(logits, batch["labels"]).backward()
        opt.step()
        opt.zero_grad()


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("kind", list(MODELS))
def test_masked_optimizer_changes_exactly_the_chosen_entries(kind, optimizer):
    model, masks, k = masked_model(kind)
    before = snapshot(model)
    opt = fishtune.MaskedOptimizer(OPTIMIZERS[optimizer](model.parameters()), model, masks)
    plain_steps(model, opt, batches())
    assert_exactly_chosen_changed(model, before, masks, k)


def test_masked_optimizer_holds_entries_that_old_momentum_would_move():
    """Momentum gathered before the mask keeps moving an entry whose gradient is zero."""
    model, masks, k = masked_model("peft_lora")
    data = batches()
    sgd = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    plain_steps(model, sgd, data, steps=2)  # unmasked: every entry has momentum now
    before = snapshot(model)
    plain_steps(model, fishtune.MaskedOptimizer(sgd, model, masks), data, steps=2)
    assert_exactly_chosen_changed(model, before, masks, k)


def test_masked_optimizer_is_an_optimizer_for_schedulers_and_checkpoints():
    model, masks, _ = masked_model("peft_lora")
    inner = torch.optim.AdamW(model.parameters(), lr=1e-2)
    opt = fishtune.MaskedOptimizer(inner, model, masks)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 ** step)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "lr_scheduler.step() before optimizer.step()"
        for batch in batches()[:2]:
            logits = model(**{key: v for key, v in batch.items() if key != "labels"}).logits
            torch.nn.functional.cross_entropy(logits, batch["labels"]).backward()
            opt.step()
            opt.zero_grad()
            scheduler.step()
    assert opt.param_groups is inner.param_groups and inner.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.25)
    assert opt.state is inner.state and len(opt.state) > 0
    state = opt.state_dict()
    fresh = fishtune.MaskedOptimizer(torch.optim.AdamW(model.parameters(), lr=1.0), model, masks)
    fresh.load_state_dict(state)
    assert fresh.param_groups[0]["lr"] == inner.param_groups[0]["lr"]
    assert all(torch.equal(fresh.state[p]["exp_avg"], inner.state[p]["exp_avg"]) for p in inner.state)


def trainer_for(model, masks, tmp_path, steps=4):
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from fishtune.harness import data

    tok = tokenizer()
    train_set = data.encode(data.load_split(SST2, "train", ROOT / "tests" / "fixtures" / "glue"), tok, SST2)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, gradient_accumulation_steps=2,
                             max_grad_norm=1.0, weight_decay=0.01, learning_rate=1e-2, max_steps=steps, seed=0,
                             report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True, disable_tqdm=True)
    return Trainer(model=model, args=args, train_dataset=train_set, data_collator=DataCollatorWithPadding(tok),
                   callbacks=[fishtune.FishMaskCallback(masks)])


@pytest.mark.parametrize("kind", list(MODELS))
def test_trainer_with_callback_changes_exactly_the_chosen_entries(kind, tmp_path):
    model, masks, k = masked_model(kind)
    before = snapshot(model)
    trainer = trainer_for(model, masks, tmp_path)
    trainer.train()
    # the Trainer's default AdamW, with decay on some groups: decoupled decay shrinks every entry it gets
    inner = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    assert isinstance(inner, torch.optim.AdamW) and {g["weight_decay"] for g in inner.param_groups} == {0.0, 0.01}
    assert trainer.state.global_step == 4
    assert_exactly_chosen_changed(model, before, masks, k)
    # the gradient hooks are gone after training: gradients of masked-out entries are whole again
    assert all(not p._backward_hooks for p in model.parameters())


# --- layout ----------------------------------------------------------------------------------------

def test_import_fishtune_is_light_and_the_aggregator_needs_no_torch():
    code = ("import sys, fishtune, fishtune.harness.schedules, fishtune.harness.validate, fishtune.reports.aggregate; "
            "assert 'torch' not in sys.modules, 'torch imported'; fishtune.MaskedOptimizer; "
            "assert 'torch' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def _module_name(path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def import_graph() -> dict[str, set[str]]:
    """module -> the fishtune modules it imports (anywhere in it, inside functions too; not under
    `if TYPE_CHECKING:`), from the source alone. `from . import NAME` names the submodule NAME when
    there is one, else the package itself."""
    package = ROOT / "fishtune"
    modules = {_module_name(p): p for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        edges: set[str] = set()
        skip: set[int] = set()
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if _is_type_checking(node):
                skip |= {id(n) for n in ast.walk(node)}
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[:len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if not target.startswith("fishtune"):
                    continue
                subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules]
                edges |= set(subs) if subs and len(subs) == len(node.names) else {target, *subs}
            elif isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name.startswith("fishtune")}
        graph[name] = {e for e in edges if e in modules and e != name}
    return graph


def test_layout_library_at_the_root_harness_and_reports_below():
    package = ROOT / "fishtune"
    assert (package / "harness").is_dir() and (package / "reports").is_dir()
    root = {p.stem for p in package.glob("*.py")} - {"__init__"}
    assert set(fishtune.LIBRARY) <= root, "fishtune.LIBRARY names a module that is not at the root"
    for name in sorted(root - set(fishtune.LIBRARY)):  # an entry point: it runs the main of its namesake below
        text = (package / f"{name}.py").read_text()
        # (fishtune.run's main is the command line's, harness/cli.py; its namesake below is the runner)
        assert len(text.splitlines()) <= 8 and (f".{name} import main" in text or
                                                name == "run" and ".harness.cli import main" in text), name
        kind = "harness" if (package / "harness" / f"{name}.py").exists() else "reports"
        assert (package / kind / f"{name}.py").exists(), name
    graph = import_graph()
    for module, imported in graph.items():
        if module.count(".") == 1 and module.split(".")[1] in fishtune.LIBRARY:
            outside = sorted(m for m in imported if m.startswith(("fishtune.harness", "fishtune.reports")))
            assert not outside, f"library module {module} imports {outside}"
        if module.startswith("fishtune.harness"):
            assert not [m for m in imported if m.startswith("fishtune.reports")], f"{module} imports a report"
        if module.startswith("fishtune.reports"):
            loop = sorted(imported & {"fishtune.harness.train", "fishtune.harness.run"})
            assert not loop, f"report {module} imports the training loop {loop}"


def test_no_import_circle_in_the_package():
    graph = import_graph()
    assert "fishtune.harness.cli" in graph["fishtune.run"]  # the graph sees relative imports
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module, path):
        state[module] = 1
        for nxt in sorted(graph[module]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_public_names_are_documented_and_typed():
    """The project's standard for the public API: every name in fishtune.__all__ resolves to the object
    the library module named for it defines, with a docstring of its own (a class's, not one inherited
    from UserWarning or torch's Optimizer), and its signature (a class's: its constructor's) annotates
    every parameter, a function's return too, with hints that resolve (a misspelt or unimported type in
    a string annotation would pass a check for presence alone)."""
    import inspect
    import typing

    assert sorted(fishtune.__all__) == sorted(fishtune._EXPORTS)
    for name in fishtune.__all__:
        obj = getattr(fishtune, name)
        assert obj.__module__ == f"fishtune.{fishtune._EXPORTS[name]}", (name, obj.__module__)
        doc = vars(obj).get("__doc__") if inspect.isclass(obj) else obj.__doc__
        assert doc and len(doc.strip()) > 40, f"{name}: no docstring of its own"
        if inspect.isclass(obj):
            if "__init__" not in vars(obj):
                continue  # the base class's constructor: not this API's to annotate
            func, needs_return = obj.__init__, False  # __init__ returns None; PEP 484 lets it go unsaid
        else:
            assert inspect.isfunction(obj), name
            func, needs_return = obj, True
        params = [p for p in inspect.signature(func).parameters.values() if p.name != "self"]
        hints = typing.get_type_hints(func)  # raises if a hint names something the module cannot see
        missing = [p.name for p in params if p.name not in hints]
        assert not missing, f"{name}: parameters without a type hint: {missing}"
        assert not needs_return or "return" in hints, f"{name}: no return type hint"


def test_no_absolute_machine_path_in_the_repository():
    """Code, configs and docs name paths relative to the repository (or $GLUE_DIR), never one machine's.
    The committed result files keep the configs their runs had, paths included: records, not code."""
    import re

    pattern = re.compile("/" + "(?:work|root|home)" + "/")
    skip = {".git", ".venv", "__pycache__", "runs", "fixtures"}
    found = []
    for path in ROOT.rglob("*"):
        if path.is_file() and not skip & set(path.relative_to(ROOT).parts) and path.suffix in (
                ".py", ".md", ".yaml", ".toml", ".txt", ".cfg", "") and path.stat().st_size < 2_000_000:
            text = path.read_text(errors="ignore")
            found += [f"{path.relative_to(ROOT)}:{text[:m.start()].count(chr(10)) + 1}" for m in pattern.finditer(text)]
    assert not found, found
