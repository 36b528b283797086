"""Builder of the ``minilm`` title-text encoder: the architecture from the config, weights from an installed package.

With ``pretrained`` set (default ``all-minilm-l6-v2``), the weights are the package's
``model.safetensors``, loaded only after ``pretrained_text.weights_file`` has checked its sha256
against the published one, through the explicit ``bert_key_map`` (a missing or unexpected key,
or a shape mismatch, fails the build, naming each). The config's architecture fields must equal
the package's ``config.json``; a difference is refused naming the field, rather than surfacing
later as a shape mismatch or, for ``layer_norm_eps``, not at all. With ``pretrained: null`` the
encoder keeps BERT's random init (tiny CI models).
"""

from __future__ import annotations

from typing import Any

from mvrec_dist.config.content import TextEncoderConfig
from mvrec_dist.data.pretrained_text import PretrainedTextError, model_config, weights_file
from mvrec_dist.models.item_encoders.text.bert import bert_key_map
from mvrec_dist.models.item_encoders.text.encoder import TextEncoder
from mvrec_dist.models.item_encoders.video.checkpoints import LoadReport, apply_key_map
from mvrec_dist.models.registry import CONTENT_ENCODERS

__all__ = ["minilm", "load_pretrained_text", "pretrained_size_problems", "CONFIG_JSON_KEYS"]

CONFIG_JSON_KEYS: dict[str, str] = {
    "vocab_size": "vocab_size", "hidden_size": "hidden_size", "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads", "intermediate_size": "intermediate_size",
    "max_positions": "max_position_embeddings", "type_vocab_size": "type_vocab_size",
    "layer_norm_eps": "layer_norm_eps",
}
"""``TextEncoderConfig`` architecture field -> the BERT ``config.json`` key it must equal."""

# What bert.py implements; a config.json asking for anything else is another architecture.
_FIXED = {"hidden_act": "gelu", "position_embedding_type": "absolute"}


def pretrained_size_problems(cfg: TextEncoderConfig, config_json: dict[str, Any]) -> list[str]:
    """Where the config's architecture differs from a pretrained model's ``config.json``.

    Args:
        cfg: The encoder config.
        config_json: The model's ``config.json`` (``pretrained_text.model_config``).

    Returns:
        ``"<field>: ..."`` problems (empty when the architecture matches).
    """
    problems = []
    for field, key in CONFIG_JSON_KEYS.items():
        ours, theirs = getattr(cfg, field), config_json.get(key)
        if ours != theirs:
            problems.append(f"{field}: the config says {ours!r}, {cfg.pretrained}'s config.json has {key} = {theirs!r}")
    for key, value in _FIXED.items():
        if config_json.get(key, value) != value:
            problems.append(f"{cfg.pretrained}'s config.json has {key} = {config_json[key]!r}; this BERT implements "
                            f"only {value!r}")
    return problems


def load_pretrained_text(model: TextEncoder, name: str) -> LoadReport:
    """Load a registry entry's checked weights into ``model.bert``.

    Args:
        model: The encoder (its architecture already checked against the entry's ``config.json``).
        name: ``pretrained_text`` registry entry.

    Returns:
        The ``LoadReport`` (``pooler.*`` and ``embeddings.position_ids`` ignored).

    Raises:
        PretrainedTextError: when the package is absent or its weights' sha256 is not the published one.
        CheckpointError: on any missing or unexpected key or shape mismatch.
    """
    from safetensors.torch import load_file  # only pretrained builds read safetensors

    path = weights_file(name)  # checks the sha256 before anything reads the tensors
    return apply_key_map(model.bert, load_file(str(path)), bert_key_map(model.bert), source=str(path))


@CONTENT_ENCODERS.register(TextEncoderConfig)
def minilm(cfg: TextEncoderConfig) -> TextEncoder:
    """Build the title-text encoder a config describes: architecture, weights (pretrained or random), fine-tuning mode.

    Args:
        cfg: The ``minilm`` variant config.

    Returns:
        The encoder, ``out_dim = cfg.hidden_size``.

    Raises:
        PretrainedTextError: when ``pretrained`` is set and the package is absent, its weights
            differ from the published ones, or the architecture fields differ from its ``config.json``.
    """
    if cfg.pretrained is not None:
        problems = pretrained_size_problems(cfg, model_config(cfg.pretrained))
        if problems:
            raise PretrainedTextError(
                f"model.content_encoder: the architecture differs from the pretrained model {cfg.pretrained!r} "
                "(set these fields to the model's, or pretrained: null for a random init):\n  - "
                + "\n  - ".join(problems))
    model = TextEncoder(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_layers=cfg.num_layers,
                        num_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
                        max_positions=cfg.max_positions, type_vocab_size=cfg.type_vocab_size,
                        layer_norm_eps=cfg.layer_norm_eps, dropout=cfg.dropout, pooling=cfg.pooling,
                        normalize=cfg.normalize, adapter_hidden=cfg.adapter_hidden)
    if cfg.pretrained is not None:
        load_pretrained_text(model, cfg.pretrained)
    model.apply_finetune(cfg.finetune, cfg.top_blocks)
    return model
