"""The vectorised tar writer is byte-identical to tarfile's deterministic USTAR output."""

import io
import tarfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mvrec_dist.data.ingest.tar_writer import RECORD, tar_bytes, write_bytes


def reference_tar(names, payloads):
    bio = io.BytesIO()
    with tarfile.open(fileobj=bio, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in zip(names, payloads):
            info = tarfile.TarInfo(name.decode())
            info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = \
                len(data), 0, 0o644, 0, 0, "", ""
            tar.addfile(info, io.BytesIO(data))
    return bio.getvalue()


member = st.tuples(st.from_regex(rb"\A[a-z][a-z0-9]{0,20}\.(json|txt|npy)\Z"),
                   st.one_of(st.binary(max_size=1100), st.sampled_from([b"", b"x" * 512, b"y" * 1024])))


@settings(max_examples=100, deadline=None)
@given(st.lists(member, max_size=12), st.integers(1, 4))
def test_identical_to_tarfile(members, split_at):
    names = [m[0] for m in members]
    payloads = [m[1] for m in members]
    # Pieces written back to back, including a memoryview, give the same member.
    pieces = [(p[:split_at], memoryview(p)[split_at:]) for p in payloads]
    out = tar_bytes(names, pieces)
    assert bytes(out) == reference_tar(names, payloads)
    assert len(out) % RECORD == 0
    sizes = np.array([len(p) for p in payloads], dtype=np.int64)
    assert tar_bytes(names, pieces, sizes) == out


def test_rejects_long_names_and_mismatched_lengths():
    with pytest.raises(ValueError, match="100 bytes"):
        tar_bytes([b"x" * 101], [(b"",)])
    with pytest.raises(ValueError, match="names for"):
        tar_bytes([b"a"], [])


def test_write_bytes_reports_size_and_sha256(tmp_path):
    info = write_bytes(str(tmp_path / "d" / "f.bin"), b"abc")
    assert info == {"bytes": 3, "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}
    assert (tmp_path / "d" / "f.bin").read_bytes() == b"abc"
