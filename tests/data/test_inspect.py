"""The inspect tool prints a dataset summary and single samples."""

import pytest

from mvrec_dist.data.inspect import main
from tests.data.test_verify import dataset  # noqa: F401  (module-scoped ingested dataset)


def test_summary_and_samples(dataset, capsys):  # noqa: F811
    assert main([str(dataset)]) == 0
    out = capsys.readouterr().out
    assert "users=300" in out and "train" in out and "reconciliation ok: True" in out
    assert "300 samples in 3 shards" in out and "(12 blocks of <= 32)" in out
    assert main([str(dataset), "--split", "test", "--key", "u0000000150"]) == 0
    out = capsys.readouterr().out
    assert "sample u0000000150" in out and "history.npy: int32" in out and "raw item ids" in out
    assert main([str(dataset), "--key", "i0000000002"]) == 0
    assert '"item": 2' in capsys.readouterr().out
    assert main([str(dataset), "--split", "valid"]) == 0
    assert "valid/valid-00000.tar  100 samples in 4 blocks" in capsys.readouterr().out


def test_unknown_key_and_missing_dataset(dataset, tmp_path, capsys):  # noqa: F811
    assert main([str(dataset), "--key", "u0000999999"]) == 1
    assert "no sample u0000999999" in capsys.readouterr().err
    assert main([str(tmp_path / "none")]) == 1
    with pytest.raises(SystemExit):
        main([])
