"""The model families fishtune knows: one FamilySpec each, every fact about a family in one place.

A family is an architecture as transformers builds it for sequence classification (BERT, ModernBERT,
LLaMA). Its spec says where its transformer blocks are in parameter names (the layer prefix, from
which the layer regex and peft's `layers_pattern` derive), what its classification head is called,
which modules the PEFT methods target by default, which `model.head` values it takes, whether it is
a decoder (reads prompts), the transformers config class of its tiny random test models, and what
the harness must change on its transformers config or for a prefix method.

The library (masks.py: the head, describe_parameter's layer index) and the harness (validate.py,
models.py, methods.py) read it here. It imports neither torch nor the harness, so that both can.
Which PEFT methods a family can take is not a family fact: each MethodSpec says which families it
supports (fishtune.harness.methods.SUPPORT_MATRIX is derived from them).
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
    layer_prefix: str                     # the blocks, as `<prefix>.<index>` in parameter names
    head_module: str                      # the classification head's module name
    lora_targets: tuple[str, ...]         # LoRA-style methods' default targets (Table 6)
    ia3_targets: tuple[str, str] | None   # (attention, feed-forward) regexes within a layer; None: no IA3
    heads: tuple[str, ...]                # the model.head values it takes (what the classifier reads)
    decoder: bool                         # reads prompts built from the task templates
    tiny_config: str                      # the transformers config class of its tiny random models
    # Set on the transformers config of every model the harness builds.
    config_overrides: Mapping[str, object] = field(default_factory=dict)
    # The attention implementation an adapters-library prefix needs (None: the model's own).
    prefix_attention: str | None = None

    @property
    def layers_pattern(self) -> str:
        """peft's `layers_pattern`: the name of the ModuleList whose index counts layers."""
        return self.layer_prefix.rsplit(".", 1)[-1]

    @cached_property
    def layer_regex(self) -> re.Pattern[str]:
        """Matches `<layer prefix>.<index>.` in a parameter or module name; group 1 is the index."""
        return re.compile(rf"(?:^|\.){re.escape(self.layer_prefix)}\.(\d+)\.")


FAMILIES: dict[str, FamilySpec] = {f.name: f for f in [
    FamilySpec("bert", "encoder.layer", "classifier",
               # W_Q, W_K, W_V.
               lora_targets=("query", "key", "value"),
               # IA3 (Liu et al. 2022): l_k and l_v scale the key and value projections' outputs, l_ff the
               # feed-forward activation, i.e. the *input* of the FFN's down projection. Regexes within
               # one layer: peft's own default "output.dense" also matches attention.output.dense.
               ia3_targets=(r"attention\.self\.(key|value)", r"output\.dense"),
               # the pooler (tanh(pooler(h_CLS))), the masked mean of the last hidden states, or [CLS]
               heads=("pooler", "mean", "cls"), decoder=False, tiny_config="BertConfig"),
    FamilySpec("modernbert", "layers", "classifier",
               lora_targets=("Wo",),  # W_O: the attention's and the MLP's output projections
               ia3_targets=None,      # Q, K and V are fused into one Wqkv (methods.py: why IA3 is refused)
               heads=("pooler",), decoder=False, tiny_config="ModernBertConfig",
               # torch.compile of its MLP would bypass the per-sample hooks of the Fisher
               config_overrides={"reference_compile": False}),
    FamilySpec("llama", "layers", "score",
               lora_targets=("o_proj",),
               ia3_targets=(r"self_attn\.(k_proj|v_proj)", r"mlp\.down_proj"),
               heads=("pooler",), decoder=True, tiny_config="LlamaConfig",
               # adapters 1.3.0 inverts its all-ones prefix mask on LLaMA, which is right for the additive
               # float mask of eager attention and wrong for the boolean mask transformers 4.57 builds for
               # sdpa: there every prefix position would be masked out and the prefix get no gradient.
               prefix_attention="eager"),
]}


def families_by_head() -> dict[str, tuple[str, ...]]:
    """model.head value -> the families that take it, in the order first named (pooler, mean, cls)."""
    heads = dict.fromkeys(h for f in FAMILIES.values() for h in f.heads)
    return {h: tuple(n for n, f in FAMILIES.items() if h in f.heads) for h in heads}
