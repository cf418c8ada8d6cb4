"""The model families fishtune knows: one FamilySpec each, every fact about a family in one place.

A family is an architecture as transformers builds it for sequence classification (BERT, RoBERTa,
DistilBERT, DeBERTa-v2, ModernBERT, LLaMA, Mistral, Qwen2). Its spec says which transformers
`model_type` it is (a checkpoint's config.json names it: `model.family=auto` reads it there), where its
transformer blocks are in parameter names (the layer prefix, from which the layer regex and peft's
`layers_pattern` derive), what its classification head's modules are called, which modules the PEFT
methods target by default, which `model.head` values it takes, whether it is a decoder (reads prompts),
the transformers config class of its tiny random test models, what the harness must change on its
transformers config or for a prefix method, and which PEFT methods it cannot take, with the reason.

The library (masks.py: the head, describe_parameter's layer index) and the harness (validate.py,
models.py, methods.py) read it here. It imports neither torch nor the harness, so that both can.
Which methods a family takes is `refused` here, the one place: every method of the harness
(fishtune.harness.methods.METHODS) but those; SUPPORT_MATRIX there is derived from it.
Adding a family: docs/OWN.md, "Your own model".
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Mapping


@dataclass(frozen=True)
class FamilySpec:
    """One model family: the names and defaults the code needs to find its parts."""
    name: str
    model_type: str                       # transformers' config.model_type of its checkpoints
    layer_prefix: str                     # the blocks, as `<prefix>.<index>` in parameter names
    head_modules: tuple[str, ...]         # the classification head's top-level module names
    lora_targets: tuple[str, ...]         # LoRA-style methods' default targets (Table 6)
    ia3_targets: tuple[str, str] | None   # (attention, feed-forward) regexes within a layer; None: no IA3
    heads: tuple[str, ...]                # the model.head values it takes (what the classifier reads)
    decoder: bool                         # reads prompts built from the task templates
    tiny_config: str                      # the transformers config class of its tiny random models
    # Set on the transformers config of every model the harness builds.
    config_overrides: Mapping[str, object] = field(default_factory=dict)
    # The attention implementation an adapters-library prefix needs (None: the model's own).
    prefix_attention: str | None = None
    # PEFT method -> why this family cannot take it; it takes every other method of the harness.
    refused: Mapping[str, str] = field(default_factory=dict)

    @property
    def layers_pattern(self) -> str:
        """peft's `layers_pattern`: the name of the ModuleList whose index counts layers."""
        return self.layer_prefix.rsplit(".", 1)[-1]

    @cached_property
    def layer_regex(self) -> re.Pattern[str]:
        """Matches `<layer prefix>.<index>.` in a parameter or module name; group 1 is the index."""
        return re.compile(rf"(?:^|\.){re.escape(self.layer_prefix)}\.(\d+)\.")


# IA3 (Liu et al. 2022): l_k and l_v scale the key and value projections' outputs, l_ff the feed-forward
# activation, i.e. the *input* of the FFN's down projection. Regexes within one layer (methods.py puts
# `<layer prefix>.<index>.` before them): BERT's "output.dense" right after the index is the FFN's, not
# attention.output.dense.
_BERT_IA3 = (r"attention\.self\.(key|value)", r"output\.dense")
_DECODER_IA3 = (r"self_attn\.(k_proj|v_proj)", r"mlp\.down_proj")

# Why a combination is refused: neither library can do it as the paper defines the method.
_PLUGIN_NO_PREFIX = ("adapters 1.3.0 reaches {model} only through its plugin interface, which has no prefix tuning "
                     "(peft's prefix tuning is not the paper's flat prefix inside the adapters library)")
_NO_UNIPELT = "UniPELT needs prefix tuning (see prefix), and peft has no UniPELT"

FAMILIES: dict[str, FamilySpec] = {f.name: f for f in [
    FamilySpec("bert", "bert", "encoder.layer", ("classifier",),
               lora_targets=("query", "key", "value"),  # W_Q, W_K, W_V
               ia3_targets=_BERT_IA3,
               # the pooler (tanh(pooler(h_CLS))), the masked mean of the last hidden states, or [CLS]
               heads=("pooler", "mean", "cls"), decoder=False, tiny_config="BertConfig"),
    FamilySpec("modernbert", "modernbert", "layers", ("classifier",),
               lora_targets=("Wo",),  # W_O: the attention's and the MLP's output projections
               ia3_targets=None,      # Q, K and V are fused into one Wqkv (refused below)
               # ModernBertForSequenceClassification's own `head` (dense + norm) sits before the classifier;
               # it is part of the model body here, as before this table knew several head modules.
               heads=("pooler",), decoder=False, tiny_config="ModernBertConfig",
               # torch.compile of its MLP would bypass the per-sample hooks of the Fisher
               config_overrides={"reference_compile": False},
               refused={
                   "prefix": "adapters 1.3.0 reaches ModernBERT only through its plugin interface, which has no "
                             "prefix tuning, and peft's prefix tuning needs past_key_values, which ModernBERT lacks",
                   "ia3": "ModernBERT fuses Q, K and V into one Wqkv projection, so peft's IA3 cannot scale keys and "
                          "values without also scaling queries, and adapters' IA3 scales the GLU input projection "
                          "instead of the feed-forward activation",
                   "unipelt": _NO_UNIPELT}),
    FamilySpec("llama", "llama", "layers", ("score",),
               lora_targets=("o_proj",),  # W_O
               ia3_targets=_DECODER_IA3,
               heads=("pooler",), decoder=True, tiny_config="LlamaConfig",
               # adapters 1.3.0 inverts its all-ones prefix mask on LLaMA, which is right for the additive
               # float mask of eager attention and wrong for the boolean mask transformers 4.57 builds for
               # sdpa: there every prefix position would be masked out and the prefix get no gradient.
               prefix_attention="eager"),
    # BERT's layout under `roberta.`; its head (`classifier`: dense + out_proj) reads <s>, the first token.
    FamilySpec("roberta", "roberta", "encoder.layer", ("classifier",),
               lora_targets=("query", "key", "value"),
               ia3_targets=_BERT_IA3,
               heads=("pooler",), decoder=False, tiny_config="RobertaConfig"),
    # Its head is two modules: pre_classifier (hidden x hidden, ReLU) reads [CLS], then the classifier.
    FamilySpec("distilbert", "distilbert", "transformer.layer", ("pre_classifier", "classifier"),
               lora_targets=("q_lin", "k_lin", "v_lin"),
               ia3_targets=(r"attention\.(k_lin|v_lin)", r"ffn\.lin2"),
               heads=("pooler",), decoder=False, tiny_config="DistilBertConfig"),
    # The head is `pooler` (ContextPooler: dense + activation over [CLS]) and `classifier`; DeBERTa's
    # pretrained checkpoints carry neither, so both start new, as a BERT classifier does.
    FamilySpec("deberta_v2", "deberta-v2", "encoder.layer", ("pooler", "classifier"),
               lora_targets=("query_proj", "key_proj", "value_proj"),
               ia3_targets=(r"attention\.self\.(key_proj|value_proj)", r"output\.dense"),
               heads=("pooler",), decoder=False, tiny_config="DebertaV2Config"),
    FamilySpec("mistral", "mistral", "layers", ("score",),
               lora_targets=("o_proj",),
               ia3_targets=_DECODER_IA3,
               heads=("pooler",), decoder=True, tiny_config="MistralConfig",
               prefix_attention="eager"),  # as LLaMA: adapters' prefix mask is right for eager attention only
    FamilySpec("qwen2", "qwen2", "layers", ("score",),
               lora_targets=("o_proj",),
               ia3_targets=_DECODER_IA3,
               heads=("pooler",), decoder=True, tiny_config="Qwen2Config",
               refused={"prefix": _PLUGIN_NO_PREFIX.format(model="Qwen2"), "unipelt": _NO_UNIPELT}),
]}

# transformers' config.model_type -> the family (model.family=auto reads a checkpoint's config.json).
MODEL_TYPES: dict[str, str] = {f.model_type: f.name for f in FAMILIES.values()}


def families_by_head() -> dict[str, tuple[str, ...]]:
    """model.head value -> the families that take it, in the order first named (pooler, mean, cls)."""
    heads = dict.fromkeys(h for f in FAMILIES.values() for h in f.heads)
    return {h: tuple(n for n, f in FAMILIES.items() if h in f.heads) for h in heads}
