"""``EmbeddingTables`` unsharded: the init every sharding starts from, sequence and (weighted) pooled lookups."""

from __future__ import annotations

import pytest
import torch

from mvrec_dist.models.embedding_init import init_table_block
from mvrec_dist.models.tables import Bags, EmbeddingTables, TableSpec, table_inputs

SPECS = (TableSpec(name="item", num_embeddings=50, embedding_dim=8, features=("item_id",), seed=3),
         TableSpec(name="user", num_embeddings=40, embedding_dim=8, features=("user_id",), keyed_by="user", seed=4),
         TableSpec(name="clip", num_embeddings=30, embedding_dim=4, features=("clips_pos", "clips_neg"), pooled=True,
                   weighted=True, keyed_by="clip", seed=5),
         TableSpec(name="tag", num_embeddings=20, embedding_dim=4, features=("tags",), pooled=True, seed=6))


def test_each_table_starts_from_its_own_sharding_invariant_init():
    tables = EmbeddingTables(SPECS)
    params = dict(tables.named_parameters())
    assert sorted(params) == ["pooled.embedding_bags.tag.weight", "sequence.embeddings.item.weight",
                              "sequence.embeddings.user.weight", "weighted.embedding_bags.clip.weight"]
    for name, spec in (("sequence.embeddings.item.weight", SPECS[0]), ("weighted.embedding_bags.clip.weight", SPECS[2])):
        expected = init_table_block(row_start=0, row_end=spec.num_embeddings, col_start=0, col_end=spec.embedding_dim,
                                    dim=spec.embedding_dim, std=spec.init_std, seed=spec.seed)
        torch.testing.assert_close(params[name].detach(), expected, rtol=0, atol=0)
        assert not params[name][0].any()  # padding row


def test_lookups_by_feature_match_the_weights():
    tables = EmbeddingTables(SPECS)
    w = {n.split(".")[-2]: p.detach() for n, p in tables.named_parameters()}
    items, users = torch.tensor([4, 0, 9]), torch.tensor([7])
    pos = Bags(ids=torch.tensor([1, 2, 3, 5]), lengths=torch.tensor([3, 1]), weights=torch.tensor([.5, .25, .25, 1.]))
    neg = Bags(ids=torch.tensor([6]), lengths=torch.tensor([0, 1]), weights=torch.tensor([2.0]))
    tags = Bags(ids=torch.tensor([1, 1, 2]), lengths=torch.tensor([2, 1]))
    out = tables(**table_inputs(SPECS, {"item_id": items, "user_id": users, "clips_pos": pos, "clips_neg": neg,
                                        "tags": tags}))
    torch.testing.assert_close(out["item_id"], w["item"][items])
    torch.testing.assert_close(out["user_id"], w["user"][users])
    c = w["clip"]
    torch.testing.assert_close(out["clips_pos"], torch.stack([.5 * c[1] + .25 * c[2] + .25 * c[3], c[5]]))
    torch.testing.assert_close(out["clips_neg"], torch.stack([torch.zeros(4), 2.0 * c[6]]))
    torch.testing.assert_close(out["tags"], torch.stack([2 * w["tag"][1], w["tag"][2]]))


def test_bad_specs_are_refused():
    with pytest.raises(ValueError, match="per-sample weights need a pooled table"):
        TableSpec(name="x", num_embeddings=3, embedding_dim=2, features=("f",), weighted=True)
    with pytest.raises(ValueError, match="must be unique"):
        EmbeddingTables([SPECS[0], TableSpec(name="item2", num_embeddings=3, embedding_dim=2, features=("item_id",))])
    with pytest.raises(KeyError, match=r"features \['user_id'\]"):
        table_inputs(SPECS[:2], {"item_id": torch.tensor([1])})


def test_a_meta_build_draws_no_init():
    # 2^33 rows x 128: drawing the init would need 4 TiB; on meta (the trainer's first build, the
    # planner) the table is shapes only, so building it must not touch memory.
    t = EmbeddingTables([TableSpec(name="big", num_embeddings=2**33, embedding_dim=128, features=("f",))],
                        device="meta")
    assert t.sequence.embeddings["big"].weight.is_meta
