"""The key-map loader: every mismatch is an error naming the file and the key; weights-only reads."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mvrec_dist.models.item_encoders.video import CheckpointError, KeyMap, apply_key_map, load_public_checkpoint


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.bn = nn.BatchNorm1d(2)


_MAP = KeyMap(
    layout="toy",
    sources={"lin.weight": ("a.w",), "lin.bias": ("a.b",), "bn.weight": ("n.w",), "bn.bias": ("n.b",),
             "bn.running_mean": ("n.m",), "bn.running_var": ("n.v",), "bn.num_batches_tracked": ("n.t",)},
    ignored={r"head\..*": "classifier"},
    optional=frozenset({"bn.num_batches_tracked"}),
)


def _public() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"a.w": torch.randn(2, 3, generator=g), "a.b": torch.randn(2, generator=g),
            "n.w": torch.rand(2, generator=g), "n.b": torch.rand(2, generator=g), "n.m": torch.rand(2, generator=g),
            "n.v": torch.rand(2, generator=g) + 1, "n.t": torch.tensor(5), "head.weight": torch.zeros(7, 2)}


def test_loads_every_tensor_and_reports(tmp_path):
    torch.save(_public(), tmp_path / "ok.pth")
    m = _Tiny()
    report = load_public_checkpoint(m, tmp_path / "ok.pth", _MAP)
    assert torch.equal(m.lin.weight, _public()["a.w"]) and torch.equal(m.bn.running_var, _public()["n.v"])
    assert int(m.bn.num_batches_tracked) == 5
    assert report.ignored == {"head.weight": "classifier"} and report.kept == []
    assert set(report.loaded) == set(m.state_dict())


def test_unwraps_known_wrappers(tmp_path):
    torch.save({"model": _public(), "optimizer": {}, "epoch": 3}, tmp_path / "wrapped.pth")
    load_public_checkpoint(_Tiny(), tmp_path / "wrapped.pth", _MAP)


def test_missing_unexpected_and_mismatched_keys_are_named(tmp_path):
    sd = _public()
    del sd["a.b"]
    sd["n.w"] = torch.zeros(3)
    sd["stray.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "bad.pth")
    m = _Tiny()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(CheckpointError) as e:
        load_public_checkpoint(m, tmp_path / "bad.pth", _MAP)
    msg = str(e.value)
    assert "bad.pth" in msg
    assert "missing key 'a.b' (for module 'lin.bias')" in msg
    assert "shape mismatch: n.w is (3,), module 'bn.weight' is (2,)" in msg
    assert "unexpected key 'stray.weight'" in msg
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())  # nothing half-loaded


def test_optional_keys_may_be_absent():
    sd = _public()
    del sd["n.t"]
    report = apply_key_map(_Tiny(), sd, _MAP, source="mem")
    assert report.kept == ["bn.num_batches_tracked"]


def test_incomplete_key_map_is_an_error():
    partial = KeyMap(layout="toy", sources={k: v for k, v in _MAP.sources.items() if k != "lin.weight"})
    with pytest.raises(CheckpointError, match=r"does not cover module keys 'lin\.weight'"):
        apply_key_map(_Tiny(), _public(), partial, source="mem")


def test_concatenated_sources():
    m = nn.Linear(2, 4, bias=False)
    km = KeyMap(layout="toy", sources={"weight": ("q", "k")})
    q, k = torch.ones(2, 2), torch.full((2, 2), 2.0)
    apply_key_map(m, {"q": q, "k": k}, km, source="mem")
    assert torch.equal(m.weight, torch.cat([q, k]))
    with pytest.raises(CheckpointError, match="cannot concatenate q, k"):
        apply_key_map(m, {"q": q, "k": torch.ones(2, 3)}, km, source="mem")


def test_unreadable_files(tmp_path):
    with pytest.raises(CheckpointError, match=r"absent\.pth: checkpoint file not found"):
        load_public_checkpoint(_Tiny(), tmp_path / "absent.pth", _MAP)
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match=r"junk\.pth: not a readable weights-only"):
        load_public_checkpoint(_Tiny(), tmp_path / "junk.pth", _MAP)
    torch.save({"a.w": _Arbitrary()}, tmp_path / "pickle.pth")  # arbitrary objects: refused, never executed
    with pytest.raises(CheckpointError, match=r"pickle\.pth: not a readable weights-only"):
        load_public_checkpoint(_Tiny(), tmp_path / "pickle.pth", _MAP)
    torch.save({"a.w": [1, 2]}, tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match=r"list\.pth: entries that are not tensors: 'a\.w'"):
        load_public_checkpoint(_Tiny(), tmp_path / "list.pth", _MAP)


class _Arbitrary:
    pass
