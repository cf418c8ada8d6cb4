"""Every PEFT method (methods.METHODS) on tiny random models: where it is inserted, how many parameters
it trains, that the head trains, that Fisher scores and masked Adam work on every candidate tensor,
and that unsupported combinations are refused by name. Offline, CPU, a few seconds per family.

The expectations come from outside the code under test: counts from a formula per *library config
type* (peft's LoraConfig, IA3Config, VeraConfig; adapters' bottleneck, prefix, LoRA and their
UniPELT union) applied to the config object the library holds and to the shapes of the modules it
wrapped, the names of the method's parameters from peft's own registry of prefixes, the layers from
the parameter names. A new method that uses one of these library configs needs no edit here."""
from __future__ import annotations

import re
from functools import lru_cache

import pytest
import torch
from omegaconf import OmegaConf

from fishtune.harness import CONF_DIR, methods, models
from fishtune.fisher import empirical_fisher
from fishtune.masks import build_mask
from fishtune.harness.methods import SUPPORT_MATRIX, count_on_meta, count_parameters, insert_method, split_trainable
from fishtune.families import FAMILIES
from fishtune.masks import is_head
from fishtune.masks import apply_masks
from fishtune.harness.train import TrainSettings, masked_adam

CONF = str(CONF_DIR)
COMBOS = [(family, name) for family, names in SUPPORT_MATRIX.items() for name in names]
REFUSED = [(family, name) for family in SUPPORT_MATRIX for name in methods.METHODS if name not in SUPPORT_MATRIX[family]]


@lru_cache(maxsize=None)
def model_cfg(family: str):
    return OmegaConf.load(f"{CONF}/model/tiny_{family}.yaml")


@lru_cache(maxsize=None)
def tokenizer(family: str):
    return models.load_tokenizer(model_cfg(family))


def peft_cfg(name: str, **overrides) -> dict:
    return dict(OmegaConf.to_container(OmegaConf.load(f"{CONF}/peft/{name}.yaml")), **overrides)


def build(family: str, name: str, layers: int, **overrides):
    torch.manual_seed(0)
    model = models.load_model(model_cfg(family), 2, tokenizer(family))
    return insert_method(model, peft_cfg(name, **overrides), layers, family)


def batch(family: str) -> dict:
    enc = tokenizer(family)(["a short one", "a somewhat longer second sentence here", "third", "and a fourth"],
                            padding=True, return_tensors="pt")
    return {**enc, "labels": torch.tensor([0, 1, 1, 0])}


# --- the independent count: one formula per library config type ----------------------------------

def _peft_module_count(cfg, layer) -> int:
    """Trainable entries peft adds to one wrapped module, from its base layer's (in, out) shape."""
    base = layer.get_base_layer()
    i, o = base.in_features, base.out_features
    kind = type(cfg).__name__
    if kind == "LoraConfig":  # A (r x in), B (out x r); DoRA adds one magnitude per output feature
        return cfg.r * (i + o) + (o if cfg.use_dora else 0)
    if kind == "IA3Config":  # one vector: the input of a feed-forward module, else the output
        return i if layer.is_feedforward else o
    if kind == "VeraConfig":  # lambda_d (r) and lambda_b (out); the projections A, B are frozen buffers
        return cfg.r + o
    raise AssertionError(f"no reference count for peft's {kind}: add its formula here")


def _adapters_layer_count(cfg, c) -> int:
    """Trainable entries the adapters library adds to one layer, from its config and the architecture."""
    h = c.hidden_size
    kv = h // c.num_attention_heads * getattr(c, "num_key_value_heads", c.num_attention_heads)
    kind, gate = type(cfg).__name__, h + 1  # a gate is h -> 1
    if kind == "UniPELTConfig":  # the union of its gated parts
        return sum(_adapters_layer_count(part, c) for part in cfg.configs)
    if kind in ("BnConfig", "SeqBnConfig", "DoubleSeqBnConfig"):  # down h->b (+b), up b->h (+h) per adapter
        b = int(h // cfg.reduction_factor)
        return (cfg.mh_adapter + cfg.output_adapter) * (2 * h * b + b + h + (gate if cfg.use_gating else 0))
    if kind == "PrefixTuningConfig":  # flat: keys and values of prefix_length positions, kv-heads wide
        assert cfg.flat
        return 2 * cfg.prefix_length * kv + (gate if cfg.use_gating else 0)
    if kind == "LoRAConfig":  # r x (in + out) per attention matrix, a gate each
        shapes = {"q": (h, h), "k": (h, kv), "v": (h, kv)}
        return sum(cfg.r * sum(shapes[m]) + (gate if cfg.use_gating else 0) for m in cfg.attn_matrices)
    raise AssertionError(f"no reference count for adapters' {kind}: add its formula here")


def expected_count(model, family: str, layers: int) -> int:
    """The method's trainable entries (head excluded), by its library config's formula."""
    if hasattr(model, "peft_config"):
        from peft.tuners.tuners_utils import BaseTunerLayer

        cfg = model.peft_config["default"]
        wrapped = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
        assert wrapped and len(wrapped) % layers == 0, "the same modules wrapped in every chosen layer"
        return sum(_peft_module_count(cfg, m) for m in wrapped)
    conf = model.config
    return layers * _adapters_layer_count(model.adapters_config.get(methods.ADAPTER_NAME), conf)


def method_marker(model) -> tuple[str, ...]:
    """What every parameter name of the method contains, as its library registers it: peft's prefix
    for the config's peft type (lora_, ia3_, vera_lambda_, ...), adapters' adapter name."""
    if hasattr(model, "peft_config"):
        from peft.mapping import PEFT_TYPE_TO_PREFIX_MAPPING

        return (PEFT_TYPE_TO_PREFIX_MAPPING[model.peft_config["default"].peft_type],)
    return (f".{methods.ADAPTER_NAME}.",)


def layers_of(model, family: str) -> set[int]:
    """Layer indices named by trainable non-head parameters, plus layers reading a prefix from
    adapters' shared prefix pool (its one flat parameter is named after the first layer only)."""
    pattern = re.compile(rf"(?:^|\.){re.escape(FAMILIES[family].layer_prefix)}\.(\d+)\.")
    found = {int(m.group(1)) for n, p in model.named_parameters()
             if p.requires_grad and not is_head(n, family) and (m := pattern.search(n))}
    for n, module in model.named_modules():
        if methods.ADAPTER_NAME in getattr(module, "prefixes", {}):
            found.add(int(pattern.search(n + ".").group(1)))
    return found


def check_layers_and_count(model, family: str, layers: int) -> None:
    assert layers_of(model, family) == set(range(layers))
    _, candidates = split_trainable(model, family)
    assert sum(q.numel() for q in candidates.values()) == expected_count(model, family, layers)


HEAD_SIZE = {"bert": lambda h: 2 * h + 2, "modernbert": lambda h: 2 * h + 2, "llama": lambda h: 2 * h,
             "mistral": lambda h: 2 * h, "qwen2": lambda h: 2 * h, "roberta": lambda h: h * h + h + 2 * h + 2,
             "distilbert": lambda h: h * h + h + 2 * h + 2, "deberta_v2": lambda h: h * h + h + 2 * h + 2}


@pytest.mark.parametrize("family,name", COMBOS)
def test_inserted_on_exactly_the_bottom_layers_with_the_formula_count(family, name):
    model = build(family, name, 3)
    check_layers_and_count(model, family, 3)
    head, candidates = split_trainable(model, family)
    # the whole head trains: a 2-class Linear on the hidden size (the decoders' score has no bias), after
    # a hidden x hidden dense layer in RoBERTa, DistilBERT and DeBERTa-v2
    h = models.model_config(model_cfg(family), 2, tokenizer(family)).hidden_size
    assert all(not set(FAMILIES[family].head_modules).isdisjoint(n.split(".")) for n in head)
    assert sum(q.numel() for q in head.values()) == HEAD_SIZE[family](h)
    # nothing of the base model trains: every candidate belongs to the method
    assert all(any(k in n for k in method_marker(model)) for n in candidates), list(candidates)
    # the model is still called as model(**batch).logits
    assert model(**{k: v for k, v in batch(family).items() if k != "labels"}).logits.shape == (4, 2)
    # the meta-device count (what runs and `make ratios` use) is the real model's count
    counts = count_on_meta(models.model_config(model_cfg(family), 2, tokenizer(family)), peft_cfg(name), 3, family)
    assert (counts["trainable"], counts["total"]) == count_parameters(model)
    assert counts["head"] == sum(q.numel() for q in head.values())


@pytest.mark.parametrize("family,name", COMBOS)
def test_first_and_all_layers_on_meta(family, name):
    conf = models.model_config(model_cfg(family), 2, tokenizer(family))
    for layers in (1, conf.num_hidden_layers):
        model = models.build_on_meta(conf)
        with torch.device("meta"):
            model = insert_method(model, peft_cfg(name, init="default"), layers, family)
        check_layers_and_count(model, family, layers)


@pytest.mark.parametrize("family,name", COMBOS)
def test_every_chosen_layer_carries_the_same_count(family, name):
    """The method's count grows by the same amount with every layer it is inserted on (nothing shared
    across layers, nothing outside them): L layers train L times what one layer trains."""
    conf = models.model_config(model_cfg(family), 2, tokenizer(family))
    method = {n: count_on_meta(conf, peft_cfg(name), n, family) for n in range(1, conf.num_hidden_layers + 1)}
    one = method[1]["trainable"] - method[1]["head"]
    assert one > 0
    assert all(c["trainable"] - c["head"] == n * one for n, c in method.items()), method


@pytest.mark.parametrize("family,name", COMBOS)
def test_fisher_and_masked_adam_on_every_candidate(family, name):
    """Fisher scores reach every candidate tensor (prefix embeddings and gates included); a mask from
    them trains the chosen entries and leaves every other entry bit-identical after Adam steps."""
    model = build(family, name, 2)
    data = batch(family)
    head, candidates = split_trainable(model, family)
    for q in head.values():
        q.requires_grad_(False)  # as the runner does: the head is always trained, not scored
    fisher = empirical_fisher(model, [data], num_samples=4)
    for q in head.values():
        q.requires_grad_(True)
    assert set(fisher) == set(candidates)
    silent = [n for n, s in fisher.items() if not (torch.isfinite(s).all() and s.abs().sum() > 0)]
    assert not silent, f"zero or non-finite Fisher: {silent}"

    k = sum(q.numel() for q in candidates.values()) // 3
    masks = build_mask({n: fisher[n] for n in candidates}, k, "fish", seed=0)
    assert sum(int(m.sum()) for m in masks.values()) == k
    before = {n: q.detach().clone() for n, q in model.named_parameters()}
    apply_masks(model, masks)
    opt = masked_adam(model, masks, TrainSettings(lr=1e-2))
    model.train()
    inputs = {key: v for key, v in data.items() if key != "labels"}
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model(**inputs).logits, data["labels"])
        loss.backward()
        opt.step()
        opt.zero_grad()
    after = dict(model.named_parameters())
    for n, q in before.items():
        if n in masks:
            assert torch.equal(after[n][~masks[n]], q[~masks[n]]), f"{n}: a masked-out entry moved"
        elif n not in head:
            assert torch.equal(after[n], q), f"{n}: a frozen parameter moved"
    assert any(not torch.equal(after[n][m], before[n][m]) for n, m in masks.items()), "no chosen entry trained"
    assert all(not torch.equal(after[n], before[n]) for n in head), "the head did not train"


@pytest.mark.parametrize("family,name", REFUSED)
def test_unsupported_combination_names_the_supported_ones(family, name):
    with pytest.raises(ValueError, match=rf"{name}.*{family}.*{family} supports {', '.join(SUPPORT_MATRIX[family])}"):
        build(family, name, 2)


def test_unknown_method_and_layer_count_are_refused():
    with pytest.raises(ValueError, match="choose one of: " + re.escape(", ".join(methods.METHODS))):
        methods.check_method("bitfit", "bert")
    with pytest.raises(ValueError, match=r"allowed 1\.\.6"):
        build("bert", "lora", 7)


@pytest.mark.parametrize("rank", [1, 32])
def test_lora_any_rank_with_pissa(rank):
    model = build("bert", "lora", 6, rank=rank)  # hidden 32: rank 32 is a full-rank PiSSA split
    _, candidates = split_trainable(model, "bert")
    # W_Q, W_K, W_V (32 x 32) on each of 6 layers
    assert sum(q.numel() for q in candidates.values()) == expected_count(model, "bert", 6) == 6 * 3 * rank * 64


def test_lora_ranks_and_layers_on_bert_base_meta():
    """LoRA rank 1..32 on 1..12 layers of bert-base, counted without weights."""
    conf = models.arch_config(OmegaConf.load(f"{CONF}/model/bert_base.yaml"))
    for rank, layers in [(1, 1), (2, 12), (4, 5), (8, 3), (16, 7), (32, 12)]:
        counts = count_on_meta(conf, peft_cfg("lora", rank=rank), layers, "bert")
        assert counts["trainable"] - counts["head"] == layers * 3 * rank * (768 + 768)
        assert counts["head"] == 768 * 2 + 2


# The per-layer sizes the paper's Table 1 ratios imply on bert-base (docs/METHODS.md has the arithmetic):
# the paper's six methods, whatever others fishtune adds.
PAPER_PER_LAYER = {"lora": 4608, "dora": 6912, "adapter": 149_088, "prefix": 46_080, "ia3": 4608, "unipelt": 21_513}


def test_bert_base_per_layer_counts_match_the_paper_arithmetic():
    conf = models.arch_config(OmegaConf.load(f"{CONF}/model/bert_base.yaml"))
    per_layer = {}
    for name in PAPER_PER_LAYER:
        p = peft_cfg(name)
        one, two = (count_on_meta(conf, p, n, "bert")["trainable"] for n in (1, 2))
        per_layer[name] = two - one
    assert per_layer == PAPER_PER_LAYER


# Table 6: the modules LoRA goes on in one layer (ModernBERT: the attention's and the MLP's W_O).
TABLE_6_LORA = {"bert": {"attention.self.query", "attention.self.key", "attention.self.value"},
                "modernbert": {"attn.Wo", "mlp.Wo"}, "llama": {"self_attn.o_proj"}}


@pytest.mark.parametrize("family", sorted(TABLE_6_LORA))
def test_lora_goes_on_the_table_6_modules(family):
    from peft.tuners.tuners_utils import BaseTunerLayer

    conf = models.model_config(model_cfg(family), 2, tokenizer(family))
    with torch.device("meta"):
        model = insert_method(models.build_on_meta(conf), peft_cfg("lora", init="default"), 1, family)
    prefix = f"{FAMILIES[family].layer_prefix}.0."
    wrapped = {n.split(prefix, 1)[1] for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)}
    assert wrapped == TABLE_6_LORA[family]


def test_one_spec_and_one_yaml_per_method():
    """Adding a method means one MethodSpec and one yaml: every shipped peft config has a spec, every
    spec a config of its own name, and every family a spec refuses has its reason."""
    from pathlib import Path

    yamls = sorted(p.stem for p in (Path(CONF) / "peft").glob("*.yaml"))
    assert yamls == sorted(methods.METHODS)
    for name, spec in methods.METHODS.items():
        assert spec.defaults["name"] == name and spec.library in ("peft", "adapters")
        assert set(spec.unsupported) <= set(SUPPORT_MATRIX) - set(spec.families), name
        assert spec.schedule() == ([int(x) for x in spec.defaults["budget_layers"]], int(spec.defaults["fish_layers"]))


def test_the_adaptive_yaml_repeats_the_library_defaults():
    """conf/mask/adaptive.yaml spells out AdaptiveSettings' defaults (they are part of a run's config hash,
    so they stay in the yaml); the two must agree."""
    import dataclasses

    from fishtune.adaptive import AdaptiveSettings

    shipped = OmegaConf.to_container(OmegaConf.load(f"{CONF}/mask/adaptive.yaml"))
    for f in dataclasses.fields(AdaptiveSettings):
        if f.name in shipped:
            assert shipped[f.name] == f.default, f.name
