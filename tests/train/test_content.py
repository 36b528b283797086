"""Tests of mvrec_dist.train.content without Ray: the driver's content checks ask the model config what the
item tower reads (kind, shape, cached features), on a manifest-only dataset given a content section."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mvrec_dist.config import TrainJobConfig, load_config
from mvrec_dist.data.manifest import load_manifest
from mvrec_dist.train.content import ContentSetupError, content_problems, open_content_store
from tests.helpers.content import TINY_R3D

VIDEO = ["model.item_tower=id+content", "model.loss.name=inbatch_softmax", *TINY_R3D]  # 2 frames of 32x32


def _with_content(src: Path, dst: Path, section: dict) -> Path:
    """A copy of ``src`` whose manifest lists a content split (its shards need not exist for these checks)."""
    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    m["content"] = {"index": "content/index.npy", "member": "x.npy", **section}
    m["splits"]["content"] = {"samples": 0, "shards": []}
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


def _cfg(dataset: Path, *extra: str) -> TrainJobConfig:
    return load_config(TrainJobConfig, None, [f"data.dataset_dir={dataset}", *VIDEO, *extra])


@pytest.mark.parametrize("section, problem", [
    ({"shape": [2, 32, 32, 3], "dtype": "uint8"}, None),  # an older manifest: no kind means frames
    ({"kind": "frames", "shape": [2, 32, 32, 3], "dtype": "uint8"}, None),
    ({"kind": "frames", "shape": [5, 64, 64, 3], "dtype": "uint8"},
     "model.content_encoder takes 2 frames of 32x32 but the dataset's content holds 5 frames of 64x64"),
    # Frames and tokens live in sections of their own: a frames encoder finds no frames here.
    ({"kind": "tokens", "shape": [16], "dtype": "int32"},
     "model.item_tower='id+content' needs video content but"),
])
def test_the_dataset_content_must_be_what_the_encoder_reads(manifest_dataset, tmp_path, section, problem):
    cfg = _cfg(_with_content(manifest_dataset, tmp_path / "ds", section))
    problems = content_problems(cfg)
    assert problems == [] if problem is None else problems[0].startswith(problem)


def test_cached_features_need_no_frame_shape_match_but_a_feature_store(manifest_dataset, tmp_path):
    ds = _with_content(manifest_dataset, tmp_path / "ds", {"kind": "frames", "shape": [5, 64, 64, 3], "dtype": "uint8"})
    cfg = _cfg(ds, "model.content_encoder.finetune=frozen", "model.content_encoder.cached_trunk=true",
               f"data.content_features={tmp_path / 'none'}", "trunk_cache.build_if_missing=true")
    assert cfg.model.content_kind == "features"
    assert content_problems(cfg) == []  # training builds the missing store
    strict = _cfg(ds, "model.content_encoder.finetune=frozen", "model.content_encoder.cached_trunk=true",
                  f"data.content_features={tmp_path / 'none'}", "trunk_cache.build_if_missing=false")
    assert content_problems(strict)[0].startswith("data.content_features:")
    with pytest.raises(ContentSetupError, match="compute the trunk features first"):
        open_content_store(strict, load_manifest(str(ds)), None)


def test_id_only_runs_read_no_content(manifest_dataset):
    cfg = load_config(TrainJobConfig, None, [f"data.dataset_dir={manifest_dataset}"])
    assert content_problems(cfg) == [] and open_content_store(cfg, load_manifest(str(manifest_dataset)), None) is None


@pytest.mark.parametrize("cached", [False, True])
def test_title_ids_of_another_tokenizer_are_refused_live_and_cached(manifest_dataset, tmp_path, cached):
    """The driver refuses a pretrained text encoder on ids another tokenizer wrote, whether it reads
    them live or its cached features were (to be) computed from them."""
    dst = tmp_path / "ds"
    shutil.copytree(manifest_dataset, dst)
    m = json.loads((dst / "manifest.json").read_text())
    m["text"] = {"kind": "tokens", "index": "text/index.npy", "member": "tokens.npy", "shape": [48], "dtype": "int32",
                 "tokenizer": {"name": "some-other-model", "package": "x", "version": "1", "pad_id": 0}}
    m["splits"]["text"] = {"samples": 0, "shards": []}
    (dst / "manifest.json").write_text(json.dumps(m))
    extra = ["model.content_encoder.finetune=frozen", "model.content_encoder.cached_trunk=true",
             f"data.content_features={tmp_path / 'features'}", "trunk_cache.build_if_missing=true"] if cached else []
    cfg = load_config(TrainJobConfig, None, [f"data.dataset_dir={dst}", "model.item_tower=id+content",
                                             "model.loss.name=inbatch_softmax", "model.content_encoder.name=minilm",
                                             *extra])
    problems = content_problems(cfg)
    assert len(problems) == 1 and "tokenised with 'some-other-model'" in problems[0]
